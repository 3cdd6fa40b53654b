"""The memory kinds of the kernel's cow.c selftest (selftests.md 3.2-3.4), built on the model.

Each kind is built as the selftest builds it; "Basic COW after fork" must then hold on
every one: the child keeps its snapshot when the parent writes.
"""

from __future__ import annotations

import errno

import pytest

import gupsim
from gupsim import (
    MADV_COLLAPSE,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def entry(p, addr):
    vma = p.mm.find_vma(addr)
    i = vma.idx(addr)
    return int(vma.pfn[i]), int(vma.pte[i])


def thp(k, p, size=PMD_SIZE):
    """A 2 MiB-aligned THP area (the selftest's set-up); returns (addr, test size)."""
    a = p.mmap(0, 2 * size, RW, ANON)
    a = (a + size - 1) // size * size
    p.madvise(a, size, MADV_HUGEPAGE)
    p.write(a, b"\x01")
    pfn, pte = entry(p, a + size - PAGE_SIZE)
    assert pte & PTE.PRESENT, "the last subpage must be populated (else skip)"
    p.write(a, b"\x01" * size)
    return a, size


def base_page(k, p):
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.madvise(a, PAGE_SIZE, MADV_NOHUGEPAGE)
    p.write(a, b"\x01" * PAGE_SIZE)
    return a, PAGE_SIZE


def base_page_swapped(k, p):
    a, n = base_page(k, p)
    p.madvise(a, n, MADV_PAGEOUT)
    assert entry(p, a)[1] & PTE.SWAP
    return a, n


def thp_pte_mapped(k, p):
    a, n = thp(k, p)
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, PROT_READ)
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, RW)
    assert not entry(p, a)[1] & PTE.PMD
    return a, n


def thp_pte_mapped_swapped(k, p):
    a, n = thp_pte_mapped(k, p)
    p.madvise(a, n, MADV_PAGEOUT)
    assert entry(p, a)[1] & PTE.SWAP
    return a, n


def single_pte_of_thp(k, p):
    a, n = thp(k, p)
    p.madvise(a + PAGE_SIZE, n - PAGE_SIZE, MADV_DONTNEED)
    assert k.page(entry(p, a)[0]).folio.order == 9
    return a, PAGE_SIZE


def partially_mremapped_thp(k, p):
    a, n = thp(k, p)
    dst = p.mmap(0, 2 * n, PROT_READ, ANON)
    dst = (dst + n - 1) // n * n + n // 2       # deliberately not 2 MiB aligned
    p.mremap(a + n // 2, n // 2, n // 2, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    assert k.page(entry(p, dst)[0]).folio.order == 9
    return a, n // 2


def partially_shared_thp(k, p):
    a, n = thp(k, p)
    p.madvise(a + PAGE_SIZE, n - PAGE_SIZE, MADV_DONTFORK)
    p.fork().exit()
    p.madvise(a + PAGE_SIZE, n - PAGE_SIZE, MADV_DOFORK)
    return a, n


def hugetlb(k, p):
    a = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    p.write(a, b"\x01" * PMD_SIZE)
    return a, PMD_SIZE


KINDS = [base_page, base_page_swapped, thp, thp_pte_mapped, thp_pte_mapped_swapped,
         single_pte_of_thp, partially_mremapped_thp, partially_shared_thp, hugetlb]


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__)
def test_basic_cow_after_fork(k, p, make):
    a, n = make(k, p)
    child = p.fork()
    snapshot = child.read(a, n)
    p.write(a, b"\xff" * n)
    assert child.read(a, n) == snapshot
    assert p.read(a, n) == b"\xff" * n


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__)
def test_basic_cow_with_mprotect_optimization(k, p, make):
    a, n = make(k, p)
    child = p.fork()
    snapshot = child.read(a, n)
    p.mprotect(a, n, PROT_READ)
    p.mprotect(a, n, RW)
    p.write(a, b"\xff" * n)
    assert child.read(a, n) == snapshot


def test_swap_in_restores_contents_and_exclusivity(k, p):
    a, n = base_page_swapped(k, p)
    assert p.proc_status()["RssAnon"] == 0
    assert p.read(a, 4) == b"\x01" * 4
    pfn, pte = entry(p, a)
    assert k.page(pfn).anon_exclusive and not pte & PTE.WRITE
    p.write(a, b"\x02")            # exclusive: reused in place, no copy
    assert entry(p, a)[0] == pfn


def test_pageout_without_swap_keeps_anon_pages():
    k = gupsim.Kernel(memory="64MiB", debug=True)
    p = k.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(a, b"x")
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert entry(p, a)[1] & PTE.PRESENT


def test_huge_zero_page_on_read_and_cow_on_write(k, p):
    k.thp.use_zero_page = True
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    a = (a + PMD_SIZE - 1) // PMD_SIZE * PMD_SIZE
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    assert p.read(a, 4) == bytes(4)
    pfn, pte = entry(p, a)
    assert pfn == k.mem.huge_zero_pfn and pte & PTE.PMD
    p.write(a + PAGE_SIZE, b"w")
    assert p.read(a + PAGE_SIZE, 1) == b"w" and p.read(a, 1) == b"\0"


@pytest.mark.parametrize("shared", ["none", "whole", "lower", "upper"])
def test_collapse_keeps_the_childs_view(k, p, shared):
    """cow.c 3.3: MADV_COLLAPSE before or after fork; the child keeps its old view."""
    a, n = thp_pte_mapped(k, p)
    if shared == "none":
        p.madvise(a, n, MADV_COLLAPSE)
        assert entry(p, a)[1] & PTE.PMD
    if shared == "lower":
        p.madvise(a + n // 2, n // 2, MADV_DONTFORK)
    if shared == "upper":
        p.madvise(a, n // 2, MADV_DONTFORK)
    child = p.fork()
    p.madvise(a, n, MADV_DOFORK)
    if shared != "none":
        p.madvise(a, n, MADV_COLLAPSE)
        assert entry(p, a)[1] & PTE.PMD
    lo, hi = {"none": (0, n), "whole": (0, n), "lower": (0, n // 2),
              "upper": (n // 2, n)}[shared]
    snapshot = child.read(a + lo, hi - lo)
    p.write(a, b"\xff" * n)
    assert child.read(a + lo, hi - lo) == snapshot


def test_collapse_of_a_pinned_range_is_eagain(k, p):
    a, n = thp_pte_mapped(k, p)
    pfn = entry(p, a)[0]
    k.mem.refcount[k.mem.head_of(pfn)] += 1     # an extra reference, as a GUP pin holds
    with pytest.raises(OSError) as e:
        p.madvise(a, n, MADV_COLLAPSE)
    assert e.value.errno == errno.EAGAIN
    k.mem.refcount[k.mem.head_of(pfn)] -= 1


def test_hugetlb_pool_exhaustion_is_enomem_at_mmap(k, p):
    with pytest.raises(OSError) as e:
        p.mmap(0, 8 * PMD_SIZE, RW, ANON | MAP_HUGETLB)
    assert e.value.errno == errno.ENOMEM


def test_hugetlb_fixed_address_must_be_huge_aligned(p):
    with pytest.raises(OSError) as e:
        p.mmap(0x40001000, PMD_SIZE, RW, ANON | MAP_HUGETLB | MAP_FIXED)
    assert e.value.errno == errno.EINVAL


def test_bulk_free_leaves_the_buddy_lists_as_freeing_page_by_page() -> None:
    """Allocator.free_folios() (munmap, exit) hands order-0 folios back in aligned blocks;
    the free lists, the counts and the next allocations must be exactly those that one
    free_folio() per page gives, also for a fragmented, unaligned set."""
    import numpy as np

    from gupsim.memory import Kind
    from gupsim.memory.alloc import aligned_blocks

    def machine() -> tuple[gupsim.Kernel, np.ndarray]:
        k = gupsim.Kernel(memory="64MiB")
        pfns = k.alloc.alloc_bulk_order0(3000, Kind.ANON, True, 0, np.zeros(3000, np.int64))
        return k, pfns

    rng = np.random.default_rng(7)
    k1, pfns = machine()
    k2, same = machine()
    assert (pfns == same).all()
    chosen = np.sort(rng.choice(pfns, size=2100, replace=False))
    k1.alloc.mem.refcount[chosen] = 0
    k2.alloc.mem.refcount[chosen] = 0
    for pfn in chosen.tolist():
        k1.alloc.free_folio(pfn)
    k2.alloc.free_folios(chosen[::-1].copy())
    for r1, r2 in ((k1.alloc.movable, k2.alloc.movable), (k1.alloc.normal, k2.alloc.normal)):
        assert r1.nr_free == r2.nr_free
        assert [sorted(f) for f in r1.free] == [sorted(f) for f in r2.free]
    assert k1.vmstat["pgfree"] == k2.vmstat["pgfree"]
    assert [k1.alloc.alloc_frames(0, True) for _ in range(50)] == \
        [k2.alloc.alloc_frames(0, True) for _ in range(50)]
    blocks = aligned_blocks(np.arange(1024, 1024 + 1536, dtype=np.int64))
    assert blocks == [(1024, 10), (2048, 9)]
