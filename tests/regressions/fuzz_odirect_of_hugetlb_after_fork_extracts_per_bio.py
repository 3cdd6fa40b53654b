"""Found by `gupsim fuzz --seed 12` (program 149); shrunk from 10 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 12 program 149'
NEEDS = ('hugetlb_2m', 'o_direct')
SEED = 12


def scenario(system):
    p0 = system.spawn("p0")
    r5 = p0.map(kind='memfd-hugetlb', length=2097152, shared=False, writable=True, populate=True,
        fill=1)
    p0.fork()
    p0.odirect_write(region=r5, offset=0, length=2097152)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map memfd-hugetlb 2MiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('fork', 'ok', 0, 0, 0, 0, None, None, 0),
    ('odirect_write', 'ok', 768, 768, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
