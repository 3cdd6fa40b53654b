"""Found by `gupsim fuzz --seed 7` (program 0); map_fixed after munmap answered EEXIST
where a later map had landed in the hole on one back-end; now later maps avoid holes on
both; written by hand.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 7 program 0'
NEEDS = ()
SEED = 7


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='anon', length=16384, shared=False, writable=True, populate=True, fill=1)
    p0.munmap(region=r1)
    p0.map(kind='anon', length=16384, shared=False, writable=True, populate=True, fill=2)
    p0.map(kind='memfd', length=8192, shared=True, writable=True, populate=True, fill=3)
    p5 = p0.fork()
    p5.map_fixed(region=r1, fill=4)
    p0.map_fixed(region=r1, fill=5)
    p0.read(region=r1, offset=0, n=8)
    p5.read(region=r1, offset=4096, n=8)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map anon 16KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('munmap', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map anon 16KiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map memfd 8KiB shared writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('fork', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map_fixed', 'ok', 0, 0, 0, 0, None, None, 0),
    ('map_fixed', 'ok', 0, 0, 0, 0, None, None, 0),
    ('read', 'ok', 0, 0, 0, 0, b'\x05\x05\x05\x05\x05\x05\x05\x05', None, 0),
    ('read', 'ok', 0, 0, 0, 0, b'\x04\x04\x04\x04\x04\x04\x04\x04', None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
