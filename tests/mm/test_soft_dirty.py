"""Soft-dirty tracking and clear_refs (mm/soft_dirty.py): what pagemap bit 55 would say
of each page, and what clearing does to the page tables, the pins and the notifiers."""

from __future__ import annotations

import pytest
from notifier_helpers import watch

from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    MMU_NOTIFY_SOFT_DIRTY,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
    Process,
)
from gupsim.mm import PTE
from gupsim.mm.vma import VM
from gupsim.scenarios.model import ModelSystem, model_pages

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
P = PAGE_SIZE


def soft(k: Kernel, p: Process, addr: int, n: int) -> list[bool]:
    """Soft-dirty per page, as the scenarios' page identity reads it."""
    return [seen.soft_dirty for seen in model_pages(k, p, addr, n * P)]


def entry(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    return int(vma.pte[vma.idx(addr)])


def test_a_new_mapping_reads_soft_dirty_until_clear_refs(k: Kernel, p: Process) -> None:
    a = p.mmap(0, 4 * P, RW, ANON)
    p.write(a, b"x")
    assert soft(k, p, a, 4) == [True] * 4          # VM_SOFTDIRTY, faulted or not
    p.clear_refs()
    assert not p.mm.find_vma(a).flags & VM.SOFTDIRTY
    assert soft(k, p, a, 4) == [False] * 4


def test_clear_refs_write_protects_and_the_next_write_sets_it_again(k: Kernel,
                                                                     p: Process) -> None:
    a = p.mmap(0, 2 * P, RW, ANON)
    p.write(a, b"ab" * P)
    pfn = int(p.mm.find_vma(a).pfn[0])
    p.clear_refs()
    assert not entry(p, a) & (PTE.WRITE | PTE.SOFT_DIRTY)
    p.write(a, b"c")                               # a write fault, reusing the page
    assert entry(p, a) & PTE.WRITE and soft(k, p, a, 2) == [True, False]
    assert int(p.mm.find_vma(a).pfn[0]) == pfn
    p.read(a + P, 1)
    assert soft(k, p, a, 2) == [True, False]       # a read does not make it dirty


def test_a_pinned_page_of_a_cow_mapping_stays_writable_and_soft_dirty(k: Kernel,
                                                                      p: Process) -> None:
    a = p.mmap(0, 2 * P, RW, ANON)
    p.write(a, b"ab" * P)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    p.clear_refs()
    assert entry(p, a) & PTE.WRITE and soft(k, p, a, 2) == [True, False]   # pte_is_pinned
    assert not entry(p, a + P) & PTE.WRITE
    k.unpin_user_pages(pages)


def test_a_shared_mapping_is_write_protected_even_when_pinned(k: Kernel,
                                                              p: Process) -> None:
    a = p.mmap(0, P, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.write(a, b"s")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    p.clear_refs()
    assert not entry(p, a) & (PTE.WRITE | PTE.SOFT_DIRTY)   # not a COW mapping
    k.unpin_user_pages(pages)


def test_swap_entries_and_moved_entries_keep_or_get_the_bit(k: Kernel, p: Process) -> None:
    a = p.mmap(0, 2 * P, RW, ANON)
    p.write(a, b"ab" * P)
    p.madvise(a, P, MADV_PAGEOUT)                  # swapped while soft-dirty
    assert entry(p, a) & PTE.SWAP
    p.clear_refs()
    assert soft(k, p, a, 2) == [False, False]
    p.write(a + P, b"d")
    p.madvise(a + P, P, MADV_PAGEOUT)
    assert soft(k, p, a, 2) == [False, True]       # the swap entry kept it
    assert p.read(a + P, 1) == b"d"                # and the page swapped in has it
    assert soft(k, p, a, 2) == [False, True]
    p.clear_refs()
    dst = p.mmap(0, 2 * P, PROT_READ, ANON)
    p.mremap(a, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    assert soft(k, p, dst, 2) == [True, True]      # move_soft_dirty_pte


def test_clear_refs_notifies_soft_dirty_over_the_address_space(p: Process) -> None:
    a = p.mmap(0, 2 * P, RW, ANON)
    p.write(a, b"x")
    _, mirror, _ = watch(p, a, 2 * P)
    p.clear_refs()
    assert [e for e, _, _ in mirror.events()] == [MMU_NOTIFY_SOFT_DIRTY]


def test_only_soft_dirty_clearing_is_modelled(p: Process) -> None:
    with pytest.raises(OSError, match="only 4"):
        p.clear_refs(1)


def test_the_scenario_op_reports_soft_dirty_tokens() -> None:
    with ModelSystem() as system:
        proc = system.spawn("p")
        r = proc.map("anon", 2 * P, populate=True, fill=1)
        proc.clear_refs()
        proc.write(r, 0, b"w")
        assert proc.pages(r, 0, 2 * P, soft_dirty=True).value == "1xd 2x"
        assert proc.pages(r, 0, 2 * P).value == "1x 2x"


def _cleared(k: Kernel, p: Process, n: int) -> int:
    """n written pages whose soft-dirty bits (and VM_SOFTDIRTY) clear_refs has cleared."""
    a = p.mmap(0, n * P, RW, ANON)
    p.write(a, b"w" * (n * P))
    p.clear_refs()
    assert soft(k, p, a, n) == [False] * n
    return a


@pytest.mark.parametrize("how", ["populate", "pin-reuse", "pin-cow"])
def test_every_way_of_dirtying_a_run_of_pages_sets_soft_dirty(k: Kernel, p: Process,
                                                              how: str) -> None:
    """pte_mkdirty() sets the soft-dirty bit with the dirty bit, whichever path maps
    the pages: MADV_POPULATE_WRITE's bulk faults, a pin's run of write faults that reuse
    exclusive pages (clear_refs left them write-protected), or copy them after fork."""
    from gupsim import MADV_DONTNEED, MADV_POPULATE_WRITE, PageArray
    n = 8
    a = _cleared(k, p, n)
    if how == "populate":
        p.madvise(a, n * P, MADV_DONTNEED)
        p.madvise(a, n * P, MADV_POPULATE_WRITE)
    else:
        if how == "pin-cow":
            child = p.fork()                        # every page shared: the pin copies
        vec = PageArray(n)
        assert p.pin_user_pages_fast(a, n, FOLL_WRITE | FOLL_LONGTERM, vec) == n
        k.unpin_user_pages(vec)
        if how == "pin-cow":
            child.exit()
    assert all(entry(p, a + i * P) & PTE.DIRTY for i in range(n))
    assert soft(k, p, a, n) == [True] * n


def test_the_childs_copy_of_a_pinned_page_is_soft_dirty(k: Kernel, p: Process) -> None:
    """fork() copies a maybe-pinned exclusive page for the child, mapped dirty (and so
    soft-dirty) as copy_present_page() maps it, whatever the parent's bits say."""
    from gupsim import PageArray
    a = _cleared(k, p, 2)
    vec = PageArray(2)
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE | FOLL_LONGTERM, vec) == 2
    child = p.fork()
    assert soft(k, child, a, 2) == [True, True]
    k.unpin_user_pages(vec)
