"""Found by `gupsim fuzz --seed 7` (program 49); shrunk from 6 to 2 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 7 program 49'
NEEDS = ('io_uring',)
SEED = 7


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='mthp-1024k', length=2097152, shared=False, writable=True, populate=True,
        fill=1)
    p0.uring_register(buffers=[(r1, 1139613, 585484)], ring=2)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map mthp-1024k 2MiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('uring_register ring2', 'ok', 144, 143, 1024, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
