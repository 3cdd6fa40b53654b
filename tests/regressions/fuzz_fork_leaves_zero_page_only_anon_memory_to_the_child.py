"""Found by `gupsim fuzz --seed 12` (program 29); shrunk from 15 to 4 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 12 program 29'
NEEDS = ()
SEED = 12


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='mthp-128k', length=262144, shared=False, writable=False, populate=False,
        fill=1)
    p0.vmsplice(region=r1, offset=0, length=4096)
    p4 = p0.fork()
    p4.pages(region=r1, offset=0, length=4096, other=None, soft_dirty=False)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map mthp-128k 256KiB', 'ok', 0, 0, 0, 0, None, None, 0),
    ('vmsplice', 'ok', 0, 0, 0, 0, None, None, 0),
    ('fork', 'ok', 0, 0, 0, 0, None, None, 0),
    ('pages', 'ok', 0, 0, 0, 0, None, '-', 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
