"""Found by `gupsim fuzz --seed 1` (program 137); shrunk from 9 to 2 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 1 program 137'
NEEDS = ('io_uring', 'thp')
SEED = 1


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='thp', length=4194304, shared=False, writable=True, populate=False, fill=1)
    p0.uring_register(buffers=[(r1, 680192, 2906050), (r1, 225280, 3022848)])


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map thp 4MiB writable', 'ok', 0, 0, 0, 0, None),
    ('uring_register', 'ok', 1448, 1444, 8192, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
