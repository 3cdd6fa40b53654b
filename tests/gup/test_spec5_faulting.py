"""Spec 5: how GUP faults pages in.

FOLL_FORCE writes and reads, FOLL_NOFAULT, FOLL_NOWAIT, FOLL_ANON, FOLL_HWPOISON,
FOLL_SPLIT_PMD, FOLL_DUMP; unsharing COW-shared pages for R/O pins; shared and private
file mappings; no stack expansion; swap-in; and that a fault taken by GUP leaves what
the same access by the CPU leaves.
"""

from __future__ import annotations

import pytest
from gup_helpers import (
    anon_rw,
    entries,
    mapped_pfn,
    pte_of,
    release,
    thp_region,
)

from gupsim import (
    EFAULT,
    EHWPOISON,
    FOLL_ANON,
    FOLL_DUMP,
    FOLL_FORCE,
    FOLL_HWPOISON,
    FOLL_LONGTERM,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_SPLIT_PMD,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_HUGEPAGE,
    MADV_HWPOISON,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    Page,
    Process,
)
from gupsim.memory import PG, Kind
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def test_5_force_write_to_readonly_private_file_mapping(k: Kernel, p: Process) -> None:
    """A ptrace-style poke COWs into an anon page mapped read-only; the file is untouched
    and the copy is reused by the next poke. Shared mappings refuse FOLL_FORCE writes."""
    f = k.fs("ext4").create("text", PAGE_SIZE)
    f.pwrite(0, b"original")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    assert p.read(m, 8) == b"original"
    cache_pfn = mapped_pfn(p, m)
    pages: list[Page | None] = []
    assert p.get_user_pages(m, 1, FOLL_WRITE, pages) == -EFAULT
    assert k.get_user_pages_remote(p.mm, m, 1, FOLL_WRITE | FOLL_FORCE, pages, None) == 1
    copy = pages[0]
    assert copy.pfn != cache_pfn and copy.folio.kind == Kind.ANON and copy.anon_exclusive
    bits, pfn = pte_of(p, m)
    assert pfn == copy.pfn and not bits & PTE.WRITE, "COWed, but not made writable"
    k.dma_write(copy, 0, b"breakpt!")
    assert p.read(m, 8) == b"breakpt!" and f.pread(0, 8) == b"original"
    again: list[Page | None] = []
    assert k.get_user_pages_remote(p.mm, m, 1, FOLL_WRITE | FOLL_FORCE, again, None) == 1
    assert again[0] == copy, "the exclusive copy is written in place the second time"
    assert copy.refcount == 3
    k.put_page(copy)
    k.put_page(copy)
    shared = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    assert p.get_user_pages(shared, 1, FOLL_WRITE | FOLL_FORCE, []) == -EFAULT


def test_5_force_read_of_prot_none(k: Kernel, p: Process) -> None:
    """PROT_NONE refuses GUP, except a FOLL_FORCE read (VM_MAYREAD), as ptrace does."""
    a = anon_rw(p, touch=True)
    p.mprotect(a, PAGE_SIZE, PROT_NONE)
    pages: list[Page | None] = []
    assert p.get_user_pages(a, 1, 0, pages) == -EFAULT
    assert p.pin_user_pages_fast(a, 1, 0, pages) == -EFAULT
    assert p.get_user_pages(a, 1, FOLL_FORCE, pages) == 1
    assert pages[0].read(0, 1) == b"\x01"
    k.put_page(pages[0])


def test_5_nofault(k: Kernel, p: Process) -> None:
    """FOLL_NOFAULT returns what is present (a prefix) and never faults."""
    a = anon_rw(p, 3)
    p.write(a, b"x")
    faults = k.vmstat["pgfault"]
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 3, FOLL_NOFAULT, pages) == 1
    assert p.pin_user_pages(a + PAGE_SIZE, 2, FOLL_NOFAULT, pages) == -EFAULT
    assert k.vmstat["pgfault"] == faults and pte_of(p, a + PAGE_SIZE)[0] == 0
    k.unpin_user_pages(pages)


@pytest.mark.parametrize("entry", entries(where=lambda ep: not ep.fast and not ep.takes_mm))
def test_5_nowait_returns_zero_while_io_runs(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """FOLL_NOWAIT: a page that needs I/O ends the walk; with nothing done that is 0 (the
    one legitimate 0, and no WARN). The I/O was started, so a later call finds the page."""
    a = anon_rw(p, 3, touch=True)
    p.madvise(a + PAGE_SIZE, 2 * PAGE_SIZE, MADV_PAGEOUT)
    assert pte_of(p, a + PAGE_SIZE)[0] & PTE.SWAP and pte_of(p, a + 2 * PAGE_SIZE)[0] & PTE.SWAP
    first: list[Page | None] = []
    assert entry.invoke(p, a + 2 * PAGE_SIZE, 1, FOLL_NOWAIT, first) == 0
    assert first == [] and k.warnings.sites() == []
    prefix: list[Page | None] = []
    assert entry.invoke(p, a, 3, FOLL_NOWAIT, prefix) == 1
    assert prefix[0].pfn == mapped_pfn(p, a)
    later: list[Page | None] = []
    assert entry.invoke(p, a + PAGE_SIZE, 2, FOLL_NOWAIT, later) == 2
    assert [pg.read(0, 1) for pg in later] == [b"\x02", b"\x03"]
    release(k, entry, prefix + later)


def test_5_anon_only(k: Kernel, p: Process) -> None:
    """FOLL_ANON refuses every VMA that is not private anonymous memory, shmem included."""
    a = anon_rw(p)
    shm = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    f = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=k.fs("ext4").create("f", PAGE_SIZE))
    pages: list[Page | None] = []
    assert p.pin_user_pages(shm, 1, FOLL_ANON, pages) == -EFAULT
    assert p.pin_user_pages(f, 1, FOLL_ANON, pages) == -EFAULT
    assert p.pin_user_pages(a, 1, FOLL_ANON | FOLL_WRITE, pages) == 1
    k.unpin_user_pages(pages)


def test_5_hwpoison_after_a_good_page(k: Kernel, p: Process) -> None:
    """A poisoned page after good ones ends the walk: the prefix is returned either way."""
    a = anon_rw(p, 2, touch=True)
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_HWPOISON)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_HWPOISON, pages) == 1
    assert p.pin_user_pages(a + PAGE_SIZE, 1, FOLL_HWPOISON, pages) == -EHWPOISON
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, 0, pages) == -EFAULT
    k.unpin_user_pages(pages)


def test_5_split_pmd(k: Kernel, p: Process) -> None:
    """FOLL_SPLIT_PMD maps a THP with PTEs before returning its pages; the folio stays whole."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    pages: list[Page | None] = []
    assert p.pin_user_pages(t + PAGE_SIZE, 2, FOLL_SPLIT_PMD | FOLL_WRITE, pages) == 2
    bits, _ = pte_of(p, t + PAGE_SIZE)
    assert not bits & PTE.PMD and bits & PTE.PRESENT
    assert folio.order == 9 and folio.entire_mapcount == 0 and folio.mapcount == 512
    assert (folio.pincount, folio.refcount) == (2, 514)
    assert [pg.pfn for pg in pages] == [folio.pfn + 1, folio.pfn + 2]
    k.unpin_user_pages(pages)


def test_5_dump(k: Kernel, p: Process) -> None:
    """FOLL_DUMP (core dumps) skips holes that would read as zeros and the zero page, but
    faults in swapped-out and file-backed pages."""
    a = anon_rw(p, 4)
    p.write(a, b"present")
    p.write(a + PAGE_SIZE, b"swapped")
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_PAGEOUT)
    assert p.read(a + 2 * PAGE_SIZE, 1) == b"\0"          # the zero page
    f = k.fs("ext4").create("core", PAGE_SIZE)
    f.pwrite(0, b"file")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    h = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    dump = FOLL_DUMP | FOLL_FORCE
    pages: list[Page | None] = []
    faults = k.vmstat["pgfault"]
    assert p.get_user_pages(a + 3 * PAGE_SIZE, 1, dump, pages) == -EFAULT
    assert p.get_user_pages(a + 2 * PAGE_SIZE, 1, dump, pages) == -EFAULT
    assert p.get_user_pages(h, 1, dump, pages) == -EFAULT
    assert k.vmstat["pgfault"] == faults and pte_of(p, a + 3 * PAGE_SIZE)[0] == 0
    assert pages == []
    for addr, want in ((a, b"present"), (a + PAGE_SIZE, b"swapped"), (m, b"file")):
        got: list[Page | None] = []
        assert p.get_user_pages(addr, 1, dump, got) == 1
        assert got[0].read(0, len(want)) == want
        k.put_page(got[0])


def test_5_ro_pin_of_thp_shared_with_a_child_splits_the_pmd(k: Kernel, p: Process) -> None:
    """Unsharing one page of a COW-shared PMD-mapped THP splits the parent's PMD and copies
    that page alone (mapped R/O, not dirty); the child keeps the whole PMD mapping."""
    t = thp_region(k, p)
    p.write(t + 3 * PAGE_SIZE, b"three")
    child = p.fork()
    folio = k.page(mapped_pfn(p, t)).folio
    assert pte_of(child, t)[0] & PTE.PMD and folio.refcount == 2
    pages: list[Page | None] = []
    assert p.pin_user_pages(t + 3 * PAGE_SIZE, 1, 0, pages) == 1
    copy = pages[0]
    assert copy.folio.order == 0 and copy.folio.kind == Kind.ANON and copy.anon_exclusive
    assert copy.read(0, 5) == b"three"
    bits, pfn = pte_of(p, t + 3 * PAGE_SIZE)
    assert pfn == copy.pfn and not bits & (PTE.PMD | PTE.WRITE | PTE.DIRTY)
    assert pte_of(p, t + 4 * PAGE_SIZE) == (PTE.PRESENT | PTE.MKDIRTY | PTE.YOUNG,
                                           folio.pfn + 4), "the rest is PTE-mapped"
    assert pte_of(child, t)[0] & PTE.PMD and mapped_pfn(child, t + 3 * PAGE_SIZE) == folio.pfn + 3
    assert folio.pincount == 0 and folio.refcount == 511 + 1
    k.unpin_user_pages(pages)


def test_5_shared_mappings(k: Kernel, p: Process) -> None:
    """shmem has no zero page: a R/O pin of an untouched page allocates it. A short-term
    RW pin of an ext4 shared mapping write-faults through page_mkwrite (dirty, writable)."""
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(s, 1, 0, pages) == 1
    assert pages[0].folio.kind == Kind.SHMEM and pages[0].pfn == mapped_pfn(p, s)
    f = k.fs("ext4").create("wal", PAGE_SIZE)
    f.pwrite(0, b"abc")
    f.fsync()
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.read(m, 3) == b"abc"
    cache = k.page(mapped_pfn(p, m))
    assert not cache.folio.dirty and not pte_of(p, m)[0] & PTE.WRITE
    rw: list[Page | None] = []
    assert p.pin_user_pages_fast(m, 1, FOLL_WRITE, rw) == 1
    assert rw[0] == cache and cache.folio.dirty and pte_of(p, m)[0] & PTE.WRITE
    k.unpin_user_pages(pages)
    k.unpin_user_pages(rw)


def test_5_ro_pins_of_a_private_file_mapping(k: Kernel, p: Process) -> None:
    """Short-term R/O pins return the page-cache page itself; long-term ones unshare it
    into an anon copy first, so later writes by the process stay visible (spec 5 #10/#11)."""
    f = k.fs("ext4").create("lib", PAGE_SIZE)
    f.pwrite(0, b"code")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    short: list[Page | None] = []
    assert p.pin_user_pages(m, 1, 0, short) == 1
    assert short[0].pfn == f.page_cache[0] == mapped_pfn(p, m)
    long: list[Page | None] = []
    assert p.pin_user_pages(m, 1, FOLL_LONGTERM, long) == 1
    assert long[0].folio.kind == Kind.ANON and long[0].read(0, 4) == b"code"
    assert long[0].pfn == mapped_pfn(p, m) != f.page_cache[0]
    assert not pte_of(p, m)[0] & PTE.WRITE
    k.unpin_user_pages(short)
    k.unpin_user_pages(long)


def test_5_no_stack_expansion_and_swapped_pages(k: Kernel, p: Process) -> None:
    """GUP never grows a stack: just below a MAP_GROWSDOWN VMA is a hole (spec 5 #22). A
    swapped-out page is swapped in and pinned (#24)."""
    g = p.mmap(0, 4 * PAGE_SIZE, RW, ANON | 0x0100)       # MAP_GROWSDOWN
    assert p.pin_user_pages(g - PAGE_SIZE, 1, FOLL_WRITE, []) == -EFAULT
    assert p.mm.find_vma(g - PAGE_SIZE) is None and p.mm.find_vma(g).start == g
    a = anon_rw(p, touch=True)
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert pte_of(p, a)[0] & PTE.SWAP
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert pages[0].pfn == mapped_pfn(p, a) and pages[0].read(0, 1) == b"\x01"
    assert pages[0].anon_exclusive and pages[0].refcount == 1 + GUP_PIN_COUNTING_BIAS
    k.unpin_user_pages(pages)


def _state(k: Kernel, p: Process, addr: int) -> tuple[int, str, int, bool, bool]:
    """What a fault leaves behind: PTE kind bits, and the folio's kind, order, exclusivity
    and dirtiness."""
    bits, pfn = pte_of(p, addr)
    page = k.page(pfn)
    folio = page.folio
    mask = PTE.PRESENT | PTE.WRITE | PTE.SPECIAL | PTE.PMD | PTE.PUD | PTE.DIRTY
    return (bits & mask, folio.kind.name, folio.order,
            bool(k.mem.flags[pfn] & PG.anon_exclusive) or page.anon_exclusive, folio.dirty)


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
@pytest.mark.parametrize("kind", ["anon", "thp", "shmem", "ext4-shared", "ext4-private",
                                  "tmpfs-shared", "hugetlb"])
def test_5_gup_faults_like_the_cpu(k: Kernel, p: Process, kind: str, write: bool) -> None:
    """A fault taken by GUP leaves the same state as the same access by the CPU would."""

    def region() -> int:
        size = PMD_SIZE if kind in ("thp", "hugetlb") else PAGE_SIZE
        if kind in ("anon", "thp"):
            m = p.mmap(0, size, RW, ANON)
            if kind == "thp":
                p.madvise(m, size, MADV_HUGEPAGE)
            return m
        if kind == "shmem":
            return p.mmap(0, size, RW, MAP_SHARED | MAP_ANONYMOUS)
        if kind == "hugetlb":
            return p.mmap(0, size, RW, ANON | MAP_HUGETLB)
        fs = "tmpfs" if kind.startswith("tmpfs") else "ext4"
        f = k.fs(fs).create(f"{kind}-{len(p.mm.vmas)}", size)
        return p.mmap(0, size, RW, MAP_SHARED if kind.endswith("shared") else MAP_PRIVATE,
                      fd=f)

    cpu, dev = region(), region()
    if write:
        p.write(cpu, b"\0")
    else:
        p.read(cpu, 1)
    pages: list[Page | None] = []
    assert p.get_user_pages(dev, 1, FOLL_WRITE if write else 0, pages) == 1
    k.put_page(pages[0])
    assert _state(k, p, dev) == _state(k, p, cpu)
