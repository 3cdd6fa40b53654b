"""Found by `gupsim fuzz --seed 1` (program 181); shrunk from 12 to 3 calls.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
`expect` holds the host's steps (the kernel is the truth): the model must give the same.
"""

NAME = 'fuzz seed 1 program 181'
NEEDS = ()
SEED = 1


def scenario(system):
    p0 = system.spawn("p0")
    p8 = p0.fork()
    r11 = p8.map(kind='memfd', length=8192, shared=False, writable=False, populate=False, fill=1)
    p8.madvise(region=r11, offset=0, length=4096, advice=9)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('fork', 'ok', 0, 0, 0, 0, None),
    ('map memfd 8KiB', 'ok', 0, 0, 0, 0, None),
    ('madvise 9', 'EACCES', 0, 0, 0, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
