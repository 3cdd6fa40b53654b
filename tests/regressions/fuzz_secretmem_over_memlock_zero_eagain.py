"""Found by `gupsim fuzz --seed 7` (program 0); the model answered EPERM (can_do_mlock),
the kernel EAGAIN: secretmem_mmap checks only mlock_future_ok; written by hand.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 7 program 0'
NEEDS = ()
SEED = 7


def scenario(system):
    p0 = system.spawn("p0")
    p0.limit_memlock(limit=0)
    p0.map(kind='secretmem', length=8192, shared=True, writable=True, populate=True, fill=1)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('limit_memlock 0B', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map secretmem 8KiB shared writable', 'EAGAIN', 0, 0, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
