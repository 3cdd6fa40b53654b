"""Found by `gupsim fuzz --seed 1` (program 6); shrunk from 12 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 1 program 6'
NEEDS = ('o_direct',)
SEED = 1


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='tmpfs', length=1048576, shared=False, writable=False, populate=False, fill=1)
    p5 = p0.fork()
    p5.odirect_read(region=r1, offset=0, length=0, fill=1)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map tmpfs 1MiB', 'ok', 0, 0, 0, 0, None),
    ('fork', 'ok', 0, 0, 0, 0, None),
    ('odirect_read', 'ok', 0, 0, 0, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
