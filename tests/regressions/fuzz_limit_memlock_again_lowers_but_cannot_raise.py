"""Found by `gupsim fuzz --seed 7` (program 0); a second limit_memlock was a ValueError
on the host and allowed by the model: the kernel lowers a limit and refuses to raise the
hard one without CAP_SYS_RESOURCE (EPERM); written by hand.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 7 program 0'
NEEDS = ()
SEED = 7


def scenario(system):
    p0 = system.spawn("p0")
    p0.limit_memlock(limit=65536)
    p2 = p0.fork()
    p2.limit_memlock(limit=4096)
    p2.map(kind='anon', length=16384, shared=False, writable=True, populate=True, fill=1)
    p2.limit_memlock(limit=1048576)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('limit_memlock 64KiB', 'ok', 0, 0, 0, 0, None, None, 0),
    ('fork', 'ok', 0, 0, 0, 0, None, None, 0),
    ('limit_memlock 4KiB', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map anon 16KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('limit_memlock 1MiB', 'EPERM', 0, 0, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
