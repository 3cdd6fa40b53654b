"""Found by `gupsim fuzz --seed 1` (program 80); shrunk from 13 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 1 program 80'
NEEDS = ('io_uring', 'mthp_64k')
SEED = 1


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='mthp', length=65536, shared=False, writable=True, populate='read', fill=1)
    p0.uring_setup_user(region=r1, offset=40960)
    p0.read(region=r1, offset=32768, n=16384)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map mthp 64KiB writable', 'ok', 0, 0, 0, 0, None),
    ('uring_setup_user', 'ok', 2, 0, 0, 0, None),
    ('read', 'ok', 0, 0, 0, 0, b'\x00' * 8208 + b'\x03' + b'\x00' * 3 + b'\x07' + b'\x00' * 3
     + b'\x04' + b'\x00' * 3 + b'\x08' + b'\x00' * 8163),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
