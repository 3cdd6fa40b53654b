"""O_DIRECT of memory shared with a child: the pages are extracted round by round as the
bios take them (up to 256 bvecs each), and every round's GUP-fast grabs the first page it
must unshare and drops it again before the slow path unshares and pins: one dropped pin
per round, so the totals say how many rounds there were. Written by hand from this
kernel's answers (6.18); the model once pinned the whole range in one call (one dropped
pin).

The writes stay within what the round count cannot depend on: past 256 pages, whether the
pages GUP unshared are physically contiguous decides how many bvecs a bio merges them
into: on this host a 4 MiB write took 5 rounds one day and 4 another (and a whole 2 MiB
THP 769 pins where the model, whose allocator hands out contiguous frames, counts 770).
1 MiB is one round either way, and 1 MiB at an unaligned offset is 257 pages in two
rounds (a second bio, or the first one's merged tail) either way.

Replay on the model and this kernel:  gupsim run --host THIS_FILE
"""

NAME = 'O_DIRECT after fork: one pin_user_pages_fast() per bio round'
NEEDS = ('thp', 'o_direct')


def scenario(system):
    p0 = system.spawn("p0")
    a = p0.map(kind='anon', length=4194304, shared=False, writable=True, fill=1)
    t = p0.map(kind='thp', length=4194304, shared=False, writable=True, fill=1)
    p0.fork()
    p0.odirect_write(region=a, offset=0, length=1048576)
    p0.odirect_write(region=a, offset=1049088, length=1048576)
    p0.odirect_write(region=t, offset=0, length=1048576)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map anon 4MiB writable', 'ok', 0, 0, 0, 0, None),
    ('map thp 4MiB writable', 'ok', 0, 0, 0, 0, None),
    ('fork', 'ok', 0, 0, 0, 0, None),
    ('odirect_write', 'ok', 257, 257, 0, 0, None),
    ('odirect_write', 'ok', 259, 259, 0, 0, None),
    ('odirect_write', 'ok', 512, 512, 0, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
