"""Populate (MAP_POPULATE, MAP_LOCKED, mlock, MADV_POPULATE_*) walks the GUP slow path.

The errnos and which pages end up mapped follow the kernel (checked on a 6.18 host:
mlock of PROT_NONE is ENOMEM, MADV_POPULATE_* without the permission is EINVAL, a hole
is ENOMEM after the part before it was populated). Populate pins nothing and takes no
reference.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from callcount import python_calls

import gupsim
from gupsim import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.constants import (
    EHWPOISON,
    MADV_HWPOISON,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MAP_LOCKED,
    MAP_NONBLOCK,
    MAP_POPULATE,
    MLOCK_ONFAULT,
    PROT_NONE,
)
from gupsim.memory import PG, Kind
from gupsim.mm.vma import PTE

ANON = MAP_PRIVATE | MAP_ANONYMOUS
RW = PROT_READ | PROT_WRITE
N = 16


def present(p: gupsim.Process, addr: int, n: int = N) -> np.ndarray:
    v = p.mm.find_vma(addr)
    i = v.idx(addr)
    return (v.pte[i:i + n] & PTE.PRESENT) != 0


def kinds(k: gupsim.Kernel, p: gupsim.Process, addr: int, n: int = N) -> set[int]:
    v = p.mm.find_vma(addr)
    i = v.idx(addr)
    return {int(x) for x in k.mem.kind[k.mem.head_of(v.pfn[i:i + n])]}


def test_map_populate_of_private_writable_memory_gives_own_pages_and_pins_nothing(k, p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    assert present(p, a).all()
    assert kinds(k, p, a) == {Kind.ANON}                # write faults: COW broken now
    v = p.mm.find_vma(a)
    assert (k.mem.refcount[v.pfn] == 1).all()           # the mapping's reference only
    assert k.vmstat["nr_foll_pin_acquired"] == 0
    assert k.sanitizer.outstanding() == []
    assert p.proc_status()["RssAnon"] == N * 4


def test_map_populate_of_read_only_memory_maps_the_zero_page(k, p):
    a = p.mmap(0, N * PAGE_SIZE, PROT_READ, ANON | MAP_POPULATE)
    assert present(p, a).all()
    assert kinds(k, p, a) == {Kind.ZERO}
    assert p.proc_status()["RssAnon"] == 0


def test_map_populate_with_map_nonblock_populates_nothing(p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON | MAP_POPULATE | MAP_NONBLOCK)
    assert not present(p, a).any()


def test_map_populate_of_a_shared_file_reads_without_dirtying(k, p):
    f = k.fs("ext4").create("f", N * PAGE_SIZE)
    a = p.mmap(0, N * PAGE_SIZE, RW, MAP_SHARED | MAP_POPULATE, fd=f)
    assert present(p, a).all()
    v = p.mm.find_vma(a)
    heads = k.mem.head_of(v.pfn)
    assert not (k.mem.flags[heads] & np.uint32(PG.dirty)).any()    # read faults only
    assert (k.mem.flags[heads] & np.uint32(PG.referenced)).all()   # FOLL_TOUCH
    assert not (v.pte & PTE.WRITE).any()                           # write-notify kept


def test_map_populate_skips_a_failing_mapping_and_still_succeeds(k, p):
    f = k.fs("ext4").create("short", PAGE_SIZE)         # one page; the mapping is four
    a = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, MAP_SHARED | MAP_POPULATE, fd=f)
    assert present(p, a, 4).tolist() == [True, False, False, False]


def test_populate_passes_the_slow_path_race_point(k, p):
    seen = []
    k.gup.on_race("gup_slow:before_fault", lambda **ctx: seen.append(ctx["address"]))
    a = p.mmap(0, N * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE)
    assert seen == [a]                                  # the walk is GUP's
    assert present(p, a).all()


@pytest.mark.parametrize(("prot", "want"), [
    (PROT_NONE, errno.ENOMEM), (PROT_READ, 0), (PROT_WRITE, 0), (PROT_EXEC, 0)])
def test_mlock_errno_by_protection(p, prot, want):
    """As on the host: PROT_NONE cannot be populated, so mlock() says ENOMEM (and the
    range stays locked); write-only and exec-only memory is faulted in (FOLL_FORCE)."""
    a = p.mmap(0, N * PAGE_SIZE, prot, ANON)
    if want:
        with pytest.raises(OSError) as e:
            p.mlock(a, N * PAGE_SIZE)
        assert e.value.errno == want
        assert not present(p, a).any()
    else:
        p.mlock(a, N * PAGE_SIZE)
        assert present(p, a).all()
    assert p.proc_status()["VmLck"] == N * 4


def test_mlock_of_a_file_mapping_past_eof_is_enomem_after_locking_what_exists(k, p):
    """As on the host: the walk stops at the SIGBUS page and mlock() says ENOMEM."""
    f = k.fs("ext4").create("short", PAGE_SIZE)
    a = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    with pytest.raises(OSError) as e:
        p.mlock(a, 4 * PAGE_SIZE)
    assert e.value.errno == errno.ENOMEM
    assert present(p, a, 4).tolist() == [True, False, False, False]
    assert p.proc_status()["VmLck"] == 16


def test_mlock_of_private_writable_memory_breaks_cow(k, p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON)
    p.mlock(a, N * PAGE_SIZE)
    assert kinds(k, p, a) == {Kind.ANON}
    assert p.proc_status()["RssAnon"] == N * 4


def test_mlock_after_mlock_onfault_populates(p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON)
    p.mlock(a, N * PAGE_SIZE, MLOCK_ONFAULT)
    assert not present(p, a).any()
    p.mlock(a, N * PAGE_SIZE)
    assert present(p, a).all()


def test_map_locked_populates(p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON | MAP_LOCKED)
    assert present(p, a).all()


@pytest.mark.parametrize(("prot", "advice", "want"), [
    (PROT_NONE, MADV_POPULATE_READ, errno.EINVAL),
    (PROT_NONE, MADV_POPULATE_WRITE, errno.EINVAL),
    (PROT_READ, MADV_POPULATE_READ, 0),
    (PROT_READ, MADV_POPULATE_WRITE, errno.EINVAL),
    (PROT_WRITE, MADV_POPULATE_READ, errno.EINVAL),
    (PROT_WRITE, MADV_POPULATE_WRITE, 0),
    (PROT_EXEC, MADV_POPULATE_READ, errno.EINVAL),
    (PROT_EXEC, MADV_POPULATE_WRITE, errno.EINVAL),
])
def test_madv_populate_errno_by_protection(p, prot, advice, want):
    """The table the host gives (no FOLL_FORCE: the mapping's own permissions apply)."""
    a = p.mmap(0, N * PAGE_SIZE, prot, ANON)
    if want:
        with pytest.raises(OSError) as e:
            p.madvise(a, N * PAGE_SIZE, advice)
        assert e.value.errno == want
    else:
        p.madvise(a, N * PAGE_SIZE, advice)
        assert present(p, a).all()


def test_madv_populate_over_a_hole_is_enomem_after_populating_what_precedes_it(p):
    a = p.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(OSError) as e:
        p.madvise(a, 3 * PAGE_SIZE, MADV_POPULATE_WRITE)
    assert e.value.errno == errno.ENOMEM
    assert present(p, a, 1).all()
    assert not present(p, a + 2 * PAGE_SIZE, 1).any()


def test_madv_populate_of_a_poisoned_page_is_ehwpoison(p):
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    p.madvise(a + 3 * PAGE_SIZE, PAGE_SIZE, MADV_HWPOISON)
    with pytest.raises(OSError) as e:
        p.madvise(a, N * PAGE_SIZE, MADV_POPULATE_READ)
    assert e.value.errno == EHWPOISON


def test_madv_populate_past_the_end_of_a_file_is_efault(k, p):
    f = k.fs("ext4").create("short", PAGE_SIZE)
    a = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    with pytest.raises(OSError) as e:
        p.madvise(a, 4 * PAGE_SIZE, MADV_POPULATE_READ)
    assert e.value.errno == errno.EFAULT
    assert present(p, a, 4).tolist() == [True, False, False, False]



@pytest.mark.parametrize("how", ("map_populate", "madv_populate_write", "mlock"))
def test_populating_1gib_of_private_memory_has_no_per_page_python(how: str) -> None:
    """The walk is GUP's, and GUP faults untouched private memory in as arrays."""
    k = gupsim.Kernel(memory="2GiB")
    p = k.spawn("app")

    def run(n: int) -> int:
        if how == "map_populate":
            return p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
        a = p.mmap(0, n * PAGE_SIZE, RW, ANON)
        if how == "mlock":
            p.mlock(a, n * PAGE_SIZE)
        else:
            p.madvise(a, n * PAGE_SIZE, MADV_POPULATE_WRITE)
        return a

    run(1024)                                            # warm-up: imports, caches
    small, _, _ = python_calls(lambda: run(1024))
    big, secs, a = python_calls(lambda: run(262144))
    assert big < 2000, (small, big)      # the allocator works per 4 MiB block; not per page
    assert secs < 2.0
    assert present(p, a, 262144).all()


# -- the same steps on the host kernel ---------------------------------------------------

SYS_mlock = 149
SYS_munlock = 150
CASES = [("mlock", prot) for prot in (PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC)] + [
    (advice, prot) for advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE)
    for prot in (PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC)] + [("hole", RW)]


def _errno_of(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def _model_errno(op: Any, prot: int) -> int:
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, prot, ANON)
    if op == "mlock":
        return _errno_of(lambda: p.mlock(a, 4 * PAGE_SIZE))
    if op == "hole":
        p.munmap(a + PAGE_SIZE, PAGE_SIZE)
        return _errno_of(lambda: p.madvise(a, 4 * PAGE_SIZE, MADV_POPULATE_WRITE))
    return _errno_of(lambda: p.madvise(a, 4 * PAGE_SIZE, op))


def _host_errno(op: Any, prot: int) -> int:
    from gupsim.live import libc
    a = libc.mmap(0, 4 * PAGE_SIZE, prot, ANON)
    try:
        if op == "mlock":
            rc = _errno_of(lambda: libc.syscall(SYS_mlock, a, 4 * PAGE_SIZE, name="mlock"))
            _errno_of(lambda: libc.syscall(SYS_munlock, a, 4 * PAGE_SIZE, name="munlock"))
            return rc
        if op == "hole":
            libc.munmap(a + PAGE_SIZE, PAGE_SIZE)
            return _errno_of(lambda: libc.madvise(a, 4 * PAGE_SIZE, MADV_POPULATE_WRITE))
        return _errno_of(lambda: libc.madvise(a, 4 * PAGE_SIZE, op))
    finally:
        libc.munmap(a, 4 * PAGE_SIZE)


@pytest.mark.host
def test_populate_errnos_agree_with_the_host() -> None:
    """mlock() and MADV_POPULATE_* by protection, and over a hole: model == host."""
    from gupsim.live import host_capabilities
    caps = host_capabilities()
    if not caps["root"]:
        pytest.skip(f"mlock needs CAP_IPC_LOCK here: {caps['root'].reason}")
    model = {case: _model_errno(*case) for case in CASES}
    host = {case: _host_errno(*case) for case in CASES}
    assert model == host
