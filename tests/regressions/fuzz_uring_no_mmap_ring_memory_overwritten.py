"""Found by `gupsim fuzz --seed 7` (program 67); variant: the process writes over its
ring (indices, masks, CQ tail).

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 7 program 67'
NEEDS = ('io_uring',)
SEED = 7


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='anon', length=16384, shared=False, writable=True, populate=True, fill=1)
    r2 = p0.map(kind='anon', length=16384, shared=False, writable=True, populate=True, fill=2)
    p0.uring_setup_user(region=r1, offset=0, ring=0)
    p0.uring_register(buffers=[(r2, 0, 4096)], ring=0)
    p0.write(region=r1, offset=0, data=bytes([5]) * 8192)
    p0.uring_write_fixed(index=0, length=100, ring=0)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map anon 16KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map anon 16KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('uring_setup_user', 'ok', 2, 0, 0, 0, None, None, 0),
    ('uring_register', 'ok', 1, 0, 4, 0, None, None, 0),
    ('write', 'ok', 0, 0, 4, 0, None, None, 0),
    ('uring_write_fixed', 'ok', 0, 0, 4, 0,
     b'\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02\x02',
     None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
