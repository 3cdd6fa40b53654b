"""mlock() with RLIMIT_MEMLOCK and CAP_IPC_LOCK, and mremap() moves and errors."""

from __future__ import annotations

import errno

import pytest

from gupsim import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def test_mlock_populates_and_shows_in_vmlck(p):
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.mlock(a, 4 * PAGE_SIZE)
    assert p.proc_status()["VmLck"] == 16
    p.munlock(a, 2 * PAGE_SIZE)
    assert p.proc_status()["VmLck"] == 8
    p.munmap(a, 4 * PAGE_SIZE)
    assert p.proc_status()["VmLck"] == 0


def test_mlock_over_rlimit_without_cap_ipc_lock_is_enomem(k):
    user = k.spawn("user", uid=1000, rlimit_memlock=8 * PAGE_SIZE)
    a = user.mmap(0, 16 * PAGE_SIZE, RW, ANON)
    user.mlock(a, 8 * PAGE_SIZE)
    with pytest.raises(OSError) as e:
        user.mlock(a + 8 * PAGE_SIZE, PAGE_SIZE)
    assert e.value.errno == errno.ENOMEM
    assert user.proc_status()["VmLck"] == 32


def test_mlock_with_zero_limit_is_eperm_but_root_may(k):
    user = k.spawn("user", uid=1000, rlimit_memlock=0)
    a = user.mmap(0, PAGE_SIZE, RW, ANON)
    with pytest.raises(OSError) as e:
        user.mlock(a, PAGE_SIZE)
    assert e.value.errno == errno.EPERM
    root = k.spawn("root", rlimit_memlock=0)
    b = root.mmap(0, PAGE_SIZE, RW, ANON)
    root.mlock(b, PAGE_SIZE)
    assert root.proc_status()["VmLck"] == 4


def test_mremap_moves_pages_with_their_contents(k, p):
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"moved")
    vma = p.mm.find_vma(a)
    pfn = int(vma.pfn[0])
    dst = p.mmap(0, 2 * PAGE_SIZE, PROT_READ, ANON)
    got = p.mremap(a, 2 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    assert got == dst and p.read(dst, 5) == b"moved"
    nv = p.mm.find_vma(dst)
    assert int(nv.pfn[0]) == pfn                 # the same frame, moved, not copied
    assert p.mm.find_vma(a) is None


def test_mremap_grow_without_maymove_is_enomem_when_blocked(p):
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    b = p.mmap(a + PAGE_SIZE, PAGE_SIZE, RW, ANON | 0x10)    # MAP_FIXED blocker
    assert b == a + PAGE_SIZE
    with pytest.raises(OSError) as e:
        p.mremap(a, PAGE_SIZE, 2 * PAGE_SIZE)
    assert e.value.errno == errno.ENOMEM
    moved = p.mremap(a, PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE)
    assert moved != a


@pytest.mark.parametrize("args, err", [
    ((1, PAGE_SIZE, PAGE_SIZE), errno.EINVAL),                    # unaligned
    ((0, PAGE_SIZE, 0), errno.EINVAL),                            # new size 0
    ((0, PAGE_SIZE, PAGE_SIZE, MREMAP_FIXED, 0), errno.EINVAL),   # FIXED without MAYMOVE
    ((0, PAGE_SIZE, PAGE_SIZE, 0x100), errno.EINVAL),             # unknown flag
])
def test_mremap_errors(p, args, err):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    old, *rest = args
    with pytest.raises(OSError) as e:
        p.mremap(a + old, *rest)
    assert e.value.errno == err
    assert p.mm.find_vma(a) is not None


def test_mremap_of_unmapped_range_is_efault(p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.munmap(a, PAGE_SIZE)
    with pytest.raises(OSError) as e:
        p.mremap(a, PAGE_SIZE, PAGE_SIZE, MREMAP_MAYMOVE)
    assert e.value.errno == errno.EFAULT
