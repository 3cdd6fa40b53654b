"""Found by `gupsim fuzz --seed 13` (program 57); the host gave the child no free huge
page (its fork preparation asked 0 for one inherited 2 MiB page): EFAULT there, ok on
the model; the host now frees one per inherited page.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 13 program 57'
NEEDS = ('hugetlb_2m', 'io_uring')
SEED = 13


def scenario(system):
    p0 = system.spawn("p0")
    r3 = p0.map(kind='memfd-hugetlb', length=2097152, shared=False, writable=True, populate=False,
        fill=1)
    p5 = p0.fork()
    p5.uring_setup_user(region=r3, offset=0, ring=0)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, pages, late):
# Step.key(); a file written before a field existed compares the fields it has
HOST = [
    ('map memfd-hugetlb 2MiB writable', 'ok', 0, 0, 0, 0, None, None, 0),
    ('fork', 'ok', 0, 0, 0, 0, None, None, 0),
    ('uring_setup_user', 'ok', 2, 0, 0, 0, None, None, 0),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
