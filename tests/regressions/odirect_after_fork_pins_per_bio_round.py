"""O_DIRECT of memory shared with a child: the pages are extracted round by round as the
bios take them (up to 256 bvecs each), and every round's GUP-fast grabs the first page it
must unshare and drops it again before the slow path unshares and pins: one dropped pin
per round, so the totals say how many rounds there were (a 2 MiB THP is one bvec).
Written by hand from this kernel's answers (6.18); the model once pinned the whole range
in one call (one dropped pin).

Replay on the model and this kernel:  gupsim run --host THIS_FILE
"""

NAME = 'O_DIRECT after fork: one pin_user_pages_fast() per bio round'
NEEDS = ('thp', 'o_direct')


def scenario(system):
    p0 = system.spawn("p0")
    a = p0.map(kind='anon', length=4194304, shared=False, writable=True, fill=1)
    t = p0.map(kind='thp', length=4194304, shared=False, writable=True, fill=1)
    p0.fork()
    p0.odirect_write(region=a, offset=0, length=4194304)
    p0.odirect_write(region=a, offset=512, length=2097152)
    p0.odirect_write(region=t, offset=0, length=4194304)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map anon 4MiB writable', 'ok', 0, 0, 0, 0, None),
    ('map thp 4MiB writable', 'ok', 0, 0, 0, 0, None),
    ('fork', 'ok', 0, 0, 0, 0, None),
    ('odirect_write', 'ok', 1029, 1029, 0, 0, None),
    ('odirect_write', 'ok', 513, 513, 0, 0, None),
    ('odirect_write', 'ok', 1284, 1284, 0, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
