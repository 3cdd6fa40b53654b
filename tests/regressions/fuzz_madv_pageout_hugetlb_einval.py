"""Found by `gupsim fuzz --seed 11` (program 93); shrunk from 12 to 2 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 11 program 93'
NEEDS = ('hugetlb_2m',)
SEED = 11


def scenario(system):
    p0 = system.spawn("p0")
    r1 = p0.map(kind='memfd-hugetlb', length=2097152, shared=False, writable=False,
        populate=False, fill=1)
    p0.madvise(region=r1, offset=0, length=4096, advice=21)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map memfd-hugetlb 2MiB', 'ok', 0, 0, 0, 0, None, None, 0),
    ('madvise 21', 'EINVAL', 0, 0, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
