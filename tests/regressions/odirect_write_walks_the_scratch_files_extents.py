"""An O_DIRECT write is walked extent by extent (iomap), each piece checked for alignment
when it is reached: a misaligned length fails with EINVAL after the aligned pieces before
it were pinned and written. The scratch file is preallocated (unwritten); a buffered
write (before each odirect_read) makes a written prefix, and every piece ext4 maps splits
the unwritten extent at its end, even a piece iomap then refuses. Written by hand from
this kernel's answers (6.18, ext4).

Replay on the model and this kernel:  gupsim run --host THIS_FILE
"""

NAME = 'O_DIRECT write: iomap walks the scratch file extent by extent'
NEEDS = ('o_direct',)


def scenario(system):
    p0 = system.spawn("p0")
    r = p0.map(kind='anon', length=65536, fill=2)
    p0.odirect_write(region=r, offset=0, length=20000)   # one unwritten extent: no pin
    p0.odirect_read(region=r, offset=0, length=6144, fill=1)   # written [0, 8 KiB)
    p0.odirect_write(region=r, offset=0, length=7000)    # inside the written extent
    p0.odirect_write(region=r, offset=0, length=20000)   # [0, 8 KiB) pinned, then EINVAL
    p0.odirect_write(region=r, offset=0, length=16384)
    p0.odirect_write(region=r, offset=0, length=30000)   # 16 KiB + [16, 20) KiB, EINVAL
    p0.odirect_read(region=r, offset=0, length=1000, fill=3)


# (op, outcome, acquired, released, VmPin kB, VmLck kB, data)
HOST = [
    ('map anon 64KiB writable', 'ok', 0, 0, 0, 0, None),
    ('odirect_write', 'EINVAL', 0, 0, 0, 0, None),
    ('odirect_read', 'ok', 2, 2, 0, 0, None),
    ('odirect_write', 'EINVAL', 0, 0, 0, 0, None),
    ('odirect_write', 'EINVAL', 2, 2, 0, 0, None),
    ('odirect_write', 'ok', 4, 4, 0, 0, None),
    ('odirect_write', 'EINVAL', 5, 5, 0, 0, None),
    ('odirect_read', 'EINVAL', 0, 0, 0, 0, None),
]


def expect(trace):
    """The host's steps, one for one."""
    got = [s.key()[:len(h)] for s, h in zip(trace.steps, HOST, strict=False)]
    got += [s.key() for s in trace.steps[len(HOST):]]
    return [] if got == HOST else [f"the steps differ from the host's: {got} != {HOST}"]
