"""Anonymous memory: zero page, first-write faults, COW after fork, THP, errors."""

from __future__ import annotations

import errno

import pytest

import gupsim
from gupsim import (
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.memory import Kind

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def pfn_at(p: gupsim.Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    return int(vma.pfn[vma.idx(addr)])


def test_first_read_maps_the_shared_zero_page(k, p):
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert p.read(a, 16) == bytes(16)
    assert pfn_at(p, a) == k.mem.zero_pfn
    assert p.proc_status()["VmRSS"] == 0           # the zero page is not counted in rss


def test_first_write_allocates_an_exclusive_anon_page(k, p):
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.read(a, 1)
    p.write(a, b"x")
    page = k.page(pfn_at(p, a))
    assert page.folio.kind == Kind.ANON
    assert page.anon_exclusive and page.refcount == 1 and page.mapcount == 1
    assert p.proc_status()["RssAnon"] == 4


def test_fork_shares_copy_on_write_and_clears_exclusive(k, p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(a, b"parent")
    child = p.fork()
    page = k.page(pfn_at(p, a))
    assert pfn_at(child, a) == page.pfn
    assert not page.anon_exclusive and page.mapcount == 2 and page.refcount == 2
    child.write(a, b"child!")
    assert p.read(a, 6) == b"parent" and child.read(a, 6) == b"child!"
    assert pfn_at(child, a) != page.pfn
    # the parent is now the only user: its next write reuses the page in place
    p.write(a, b"again!")
    assert pfn_at(p, a) == page.pfn and k.page(page.pfn).anon_exclusive


def test_munmap_frees_pages_and_access_faults(k, p):
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"x")
    pfn = pfn_at(p, a)
    p.munmap(a, 2 * PAGE_SIZE)
    assert k.mem.refcount[pfn] == 0 and k.mem.kind[pfn] == Kind.FREE
    with pytest.raises(gupsim.SegmentationFault):
        p.read(a, 1)


def test_page_referenced_elsewhere_survives_munmap(k, p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(a, b"keep")
    pfn = pfn_at(p, a)
    k.mem.refcount[pfn] += 1          # someone else (a driver) holds a reference
    p.munmap(a, PAGE_SIZE)
    assert k.mem.kind[pfn] == Kind.ANON and k.page(pfn).read(0, 4) == b"keep"
    k.mem.refcount[pfn] -= 1


def test_write_to_readonly_mapping_is_sigsegv(p):
    a = p.mmap(0, PAGE_SIZE, PROT_READ, ANON)
    with pytest.raises(gupsim.SegmentationFault):
        p.write(a, b"x")


def test_map_populate_fills_without_storing_bytes(k, p):
    before = k.mem.stored_bytes()
    a = p.mmap(0, 64 << 20, RW, ANON | MAP_POPULATE)
    assert p.proc_status()["RssAnon"] == 64 << 10
    assert k.mem.stored_bytes() == before
    assert p.read(a + (5 << 20), 8) == bytes(8)


def test_thp_write_fault_maps_a_pmd_when_madvised(k, p):
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    assert a % PMD_SIZE == 0
    p.madvise(a, 2 * PMD_SIZE, MADV_HUGEPAGE)
    p.write(a + 100, b"t")
    folio = k.page(pfn_at(p, a)).folio
    assert folio.order == 9 and folio.refcount == 1 and folio.entire_mapcount == 1
    assert p.proc_status()["RssAnon"] == 2048


def test_thp_never_gives_small_pages(k, p):
    k.thp.set("never")
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    p.write(a, b"t")
    assert k.page(pfn_at(p, a)).folio.order == 0


def test_mthp_size_knob(k, p):
    k.thp.set("always", size_kb=64)
    k.thp.set("never", size_kb=2048)
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.write(a, b"t")
    folio = k.page(pfn_at(p, a)).folio
    assert folio.order == 4 and folio.refcount == 16 and folio.mapcount == 16


def test_dontneed_drops_pages_and_reads_zero_again(k, p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(a, b"x")
    p.madvise(a, PAGE_SIZE, MADV_DONTNEED)
    assert p.read(a, 1) == b"\0" and p.proc_status()["RssAnon"] == 0


def test_dontfork_and_wipeonfork(k, p):
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"A")
    p.write(a + PAGE_SIZE, b"B")
    p.madvise(a, PAGE_SIZE, MADV_DONTFORK)
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_WIPEONFORK)
    child = p.fork()
    with pytest.raises(gupsim.SegmentationFault):
        child.read(a, 1)
    assert child.read(a + PAGE_SIZE, 1) == b"\0"
    assert p.read(a + PAGE_SIZE, 1) == b"B"


def test_wipeonfork_on_shared_memory_is_einval(p):
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    with pytest.raises(OSError) as e:
        p.madvise(a, PAGE_SIZE, MADV_WIPEONFORK)
    assert e.value.errno == errno.EINVAL


def test_shared_anonymous_memory_is_shared_with_the_child(p):
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    child = p.fork()
    child.write(a, b"from child")
    assert p.read(a, 10) == b"from child"


@pytest.mark.parametrize("args, err", [
    ((0, 0, RW, ANON), errno.EINVAL),                         # zero length
    ((0, PAGE_SIZE, RW, MAP_ANONYMOUS), errno.EINVAL),        # neither shared nor private
    ((0, PAGE_SIZE, RW, MAP_PRIVATE), errno.EBADF),           # file mapping without a file
    ((0x10001, PAGE_SIZE, RW, ANON | MAP_FIXED), errno.EINVAL),  # unaligned fixed address
    ((0, PAGE_SIZE, 0x80, ANON), errno.EINVAL),               # unknown prot bit
    ((0, 1 << 48, RW, ANON), errno.ENOMEM),                   # larger than the address space
])
def test_mmap_errors_change_nothing(k, p, args, err):
    before = (list(p.mm.vmas), k.alloc.nr_free_pages())
    with pytest.raises(OSError) as e:
        p.mmap(*args)
    assert e.value.errno == err
    assert (list(p.mm.vmas), k.alloc.nr_free_pages()) == before
    assert k.check() == []


def test_munmap_mprotect_madvise_errors(p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    for call, err in [
        (lambda: p.munmap(a + 1, PAGE_SIZE), errno.EINVAL),
        (lambda: p.munmap(a, 0), errno.EINVAL),
        (lambda: p.mprotect(a + 1, PAGE_SIZE, PROT_READ), errno.EINVAL),
        (lambda: p.mprotect(a, 2 * PAGE_SIZE, PROT_READ), errno.ENOMEM),
        (lambda: p.madvise(a, PAGE_SIZE, 9999), errno.EINVAL),
        (lambda: p.madvise(a + 1, PAGE_SIZE, MADV_DONTNEED), errno.EINVAL),
    ]:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == err
    assert p.mm.find_vma(a).flags & gupsim.mm.VM.WRITE


def test_partial_munmap_splits_the_vma(p):
    a = p.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    p.write(a + 2 * PAGE_SIZE, b"z")
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    assert [(v.start - a, v.end - a) for v in p.mm.vmas] == [(0, PAGE_SIZE),
                                                             (2 * PAGE_SIZE, 3 * PAGE_SIZE)]
    assert p.read(a + 2 * PAGE_SIZE, 1) == b"z"


def test_exit_frees_everything(k, p):
    free = k.alloc.nr_free_pages()
    a = p.mmap(0, 1 << 20, RW, ANON | MAP_POPULATE)
    p.write(a, b"x")
    p.exit()
    assert k.alloc.nr_free_pages() == free
    with pytest.raises(ProcessLookupError):
        p.read(a, 1)


def test_terabyte_machine_boots_cheaply():
    import resource
    import time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    k = gupsim.Kernel(memory="1TiB")
    assert time.perf_counter() - t < 1.0
    p = k.spawn()
    a = p.mmap(0, 1 << 20, RW, ANON)
    p.write(a, b"x")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 << 10, f"booting 1 TiB grew the process by {grown_kib} KiB"
