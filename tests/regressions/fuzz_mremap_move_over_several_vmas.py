"""Found by `gupsim fuzz --seed 12` (program 9); shrunk from 15 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 12 program 9'
NEEDS = ('mthp_64k',)
SEED = 12


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='mthp', length=65536, shared=False, writable=False, populate=False, fill=1)
    p0.mprotect(region=r1, offset=20480, length=1083, writable=True, prot=None)
    p0.mremap_move(region=r1, offset=0, length=36864)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map mthp 64KiB', 'ok', 0, 0, 0, 0, None, None, 0),
    ('mprotect writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('mremap_move 36KiB', 'ok', 0, 0, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
