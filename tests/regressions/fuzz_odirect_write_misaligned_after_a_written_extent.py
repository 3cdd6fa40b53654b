"""Found by `gupsim fuzz --seed 22` (program 55); shrunk from 15 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 22 program 55'
NEEDS = ('o_direct',)
SEED = 22


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='mthp-256k', length=524288, shared=False, writable=True, populate=False,
        fill=1)
    p0.odirect_read(region=r1, offset=0, length=4096, fill=1)
    p0.odirect_write(region=r1, offset=0, length=331882)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map mthp-256k 512KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('odirect_read', 'ok', 1, 1, 0, 0, None, None, 0),
    ('odirect_write', 'EINVAL', 1, 1, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
