"""MMU notifiers from every PTE-changing path: each test changes PTEs one way and checks
that an interval subscription saw the kernel's event over the kernel's range, with an odd
sequence, and that the reader's read_retry became true."""

from __future__ import annotations

import functools
import time

import pytest
from callcount import python_calls
from notifier_helpers import Mirror, mm_seq, watch

import gupsim
from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_HWPOISON,
    MADV_PAGEOUT,
    MADV_REMOVE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGETLB,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFY_UNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    MmuIntervalNotifier,
    MmuNotifierEvent,
    Page,
    Process,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_retry,
)
from gupsim.memory.migrate import isolate_folio, migrate_folio, putback_folio
from gupsim.mm import PTE
from gupsim.mm.mmu_notifier import ULONG_MAX
from gupsim.mm.reclaim import compact_range, split_folio

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
P = PAGE_SIZE


def region(p: Process, pages: int = 16, flags: int = ANON) -> int:
    a = p.mmap(0, pages * P, RW, flags)
    for i in range(pages):
        p.write(a + i * P, bytes([i + 1]))
    return a


def pte(p: Process, addr: int) -> tuple[int, int]:
    vma = p.mm.find_vma(addr)
    return int(vma.pte[vma.idx(addr)]), int(vma.pfn[vma.idx(addr)])


def saw(p: Process, sub: MmuIntervalNotifier, mirror: Mirror, seq: int,
        event: MmuNotifierEvent, start: int, end: int) -> None:
    """The subscription saw (event, [start, end)) with an odd seq; the mm is idle again
    with a larger even seq; a reader that began before must retry."""
    assert (event, start, end) in mirror.events(), mirror.events()
    assert all(c.cur_seq % 2 == 1 and c.mm_seq == c.cur_seq for c in mirror.calls)
    assert mm_seq(p) % 2 == 0 and mm_seq(p) > seq
    assert mmu_interval_read_retry(sub, seq)


# -- munmap, MAP_FIXED, mremap -------------------------------------------------------------


def test_munmap_unmaps_its_range(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.munmap(a + 4 * P, 2 * P)
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a + 4 * P, a + 6 * P)
    assert m.events() == [(MMU_NOTIFY_UNMAP, a + 4 * P, a + 6 * P)]


def test_munmap_of_nothing_mapped_notifies_nothing(p):
    a = region(p)
    p.munmap(a, 16 * P)
    sub, m, seq = watch(p, a, 16 * P)
    p.munmap(a, 16 * P)
    assert m.calls == [] and not mmu_interval_read_retry(sub, seq)


def test_map_fixed_over_a_mapping_unmaps_it(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.mmap(a + 2 * P, 4 * P, RW, ANON | MAP_FIXED)
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a + 2 * P, a + 6 * P)


def test_mremap_move_unmaps_the_old_range(p):
    a = region(p, 8)
    dst = p.mmap(0, 8 * P, RW, ANON)
    p.munmap(dst, 8 * P)
    sub, m, seq = watch(p, a, 8 * P)
    new_sub, new_m, _ = watch(p, dst, 8 * P)
    assert p.mremap(a, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a, a + 8 * P)
    assert new_m.calls == []                 # nothing was mapped at the destination
    assert p.read(dst + 3 * P, 1) == b"\4"


def test_mremap_shrink_unmaps_the_tail(p):
    a = region(p, 8)
    sub, m, seq = watch(p, a, 8 * P)
    assert p.mremap(a, 8 * P, 3 * P) == a
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a + 3 * P, a + 8 * P)


def test_mremap_move_to_a_smaller_size_unmaps_tail_and_moved_part(p):
    a = region(p, 8)
    dst = p.mmap(0, 8 * P, RW, ANON)
    p.munmap(dst, 8 * P)
    sub, m, seq = watch(p, a, 8 * P)
    assert p.mremap(a, 8 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a + 2 * P, a + 8 * P)
    saw(p, sub, m, seq, MMU_NOTIFY_UNMAP, a, a + 2 * P)


# -- mprotect ----------------------------------------------------------------------------------


def test_mprotect_changes_protection_of_the_vma(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.mprotect(a + 4 * P, 4 * P, PROT_READ)
    saw(p, sub, m, seq, MMU_NOTIFY_PROTECTION_VMA, a + 4 * P, a + 8 * P)
    assert not pte(p, a + 4 * P)[0] & PTE.WRITE


def test_mprotect_to_the_same_protection_notifies_nothing(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.mprotect(a, 16 * P, RW)
    assert m.calls == [] and not mmu_interval_read_retry(sub, seq)


# -- madvise -----------------------------------------------------------------------------------


def test_madv_dontneed_clears(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.madvise(a + P, 2 * P, MADV_DONTNEED)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 3 * P)


def test_madv_remove_on_shmem_clears(p):
    a = region(p, 4, MAP_SHARED | MAP_ANONYMOUS)
    sub, m, seq = watch(p, a, 4 * P)
    p.madvise(a, 2 * P, MADV_REMOVE)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + 2 * P)


def test_madv_free_clears(p):
    a = region(p)
    sub, m, seq = watch(p, a, 16 * P)
    p.madvise(a, 4 * P, MADV_FREE)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + 4 * P)
    assert not pte(p, a)[0] & PTE.DIRTY


def test_madv_pageout_swaps_out_under_clear_per_page(p):
    a = region(p, 4)
    sub, m, seq = watch(p, a, 4 * P)
    p.madvise(a, 4 * P, MADV_PAGEOUT)
    for i in range(4):
        saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + i * P, a + (i + 1) * P)
        assert pte(p, a + i * P)[0] & PTE.SWAP


def test_madv_pageout_of_a_lazyfree_page_discards_it_under_clear(p):
    a = region(p, 2)
    p.madvise(a, 2 * P, MADV_FREE)
    sub, m, seq = watch(p, a, 2 * P)
    p.madvise(a, 2 * P, MADV_PAGEOUT)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    assert pte(p, a)[0] == 0 and p.read(a, 1) == b"\0"


def test_madv_pageout_of_file_pages_unmaps_them_under_clear(k, p):
    """Reclaim of page cache pages also unmaps through try_to_unmap (MMU_NOTIFY_CLEAR)."""
    f = k.fs("ext4").create("data", 2 * P)
    a = p.mmap(0, 2 * P, RW, MAP_SHARED, fd=f)
    p.write(a, b"f")
    p.write(a + P, b"g")
    sub, m, seq = watch(p, a, 2 * P)
    p.madvise(a, 2 * P, MADV_PAGEOUT)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 2 * P)
    assert pte(p, a)[0] == 0 and p.read(a + P, 1) == b"g"


def test_madv_cold_changes_no_pte_and_notifies_nothing(p):
    """The kernel's MADV_COLD only ages (clears accessed bits) without notifiers."""
    a = region(p, 4)
    before = [pte(p, a + i * P) for i in range(4)]
    sub, m, seq = watch(p, a, 4 * P)
    p.madvise(a, 4 * P, MADV_COLD)
    assert m.calls == [] and [pte(p, a + i * P) for i in range(4)] == before


def test_madv_hwpoison_clears_the_page(p):
    a = region(p, 2)
    sub, m, seq = watch(p, a, 2 * P)
    p.madvise(a + P, P, MADV_HWPOISON)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 2 * P)


# -- faults: COW break and unshare -------------------------------------------------------------


def test_cow_break_clears_the_page_in_the_writer(p):
    a = region(p, 4)
    child = p.fork()
    sub, m, seq = watch(p, a, 4 * P)
    old = pte(p, a + P)[1]
    p.write(a + P, b"new")
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 2 * P)
    assert m.events() == [(MMU_NOTIFY_CLEAR, a + P, a + 2 * P)]
    assert pte(p, a + P)[1] != old and child.read(a + P, 1) == b"\2"


def test_write_to_the_zero_page_clears_it(p):
    a = p.mmap(0, 2 * P, RW, ANON)
    assert p.read(a, 1) == b"\0"                 # maps the shared zero page
    sub, m, seq = watch(p, a, 2 * P)
    p.write(a, b"x")
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)


def test_unshare_for_a_read_only_pin_clears_the_page(p):
    a = region(p, 2)
    child = p.fork()
    sub, m, seq = watch(child, a, 2 * P)
    pages: list[Page | None] = []
    assert child.pin_user_pages_fast(a, 1, 0, pages) == 1     # R/O pin of a shared page
    saw(child, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    assert pte(child, a)[1] != pte(p, a)[1]                  # unshared: a copy of its own
    child.kernel.unpin_user_pages(pages)


def test_hugetlb_cow_clears_the_huge_page(k, p):
    a = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    p.write(a, b"h")
    p.fork()
    sub, m, seq = watch(p, a, PMD_SIZE)
    p.write(a + 5 * P, b"w")
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + PMD_SIZE)


# -- fork ----------------------------------------------------------------------------------------


def test_fork_write_protects_the_parents_private_vma(p):
    a = region(p, 8)
    sub, m, seq = watch(p, a, 8 * P)
    p.fork()
    saw(p, sub, m, seq, MMU_NOTIFY_PROTECTION_PAGE, a, a + 8 * P)
    assert not pte(p, a)[0] & PTE.WRITE


def test_fork_notifies_a_private_vma_made_read_only_too(p):
    """is_cow_mapping() reads VM_MAYWRITE, not VM_WRITE: an mprotect(PROT_READ) private
    mapping is still a COW mapping, and fork still invalidates it."""
    a = region(p, 4)
    p.mprotect(a, 4 * P, PROT_READ)
    sub, m, seq = watch(p, a, 4 * P)
    p.fork()
    saw(p, sub, m, seq, MMU_NOTIFY_PROTECTION_PAGE, a, a + 4 * P)


def test_fork_leaves_shared_mappings_alone(p):
    a = region(p, 4, MAP_SHARED | MAP_ANONYMOUS)
    sub, m, seq = watch(p, a, 4 * P)
    p.fork()
    assert m.calls == [] and not mmu_interval_read_retry(sub, seq)


# -- migration and compaction --------------------------------------------------------------------


def test_longterm_pin_migration_clears_each_moved_page() -> None:
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = region(p, 2)
    sub, m, seq = watch(p, a, 2 * P)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM, pages) == 2
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 2 * P)
    k.unpin_user_pages(pages)


def test_compaction_clears_each_moved_page() -> None:
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = region(p, 4)
    pfns = [pte(p, a + i * P)[1] for i in range(4)]
    sub, m, seq = watch(p, a, 4 * P)
    res = compact_range(k.env, min(pfns), max(pfns) + 1)
    assert res.rc == 0 and res.migrated == 4
    for i in range(4):
        saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + i * P, a + (i + 1) * P)
    assert [p.read(a + i * P, 1) for i in range(4)] == [b"\1", b"\2", b"\3", b"\4"]


def test_a_mirror_that_drops_its_pin_in_invalidate_lets_the_folio_migrate(k, p):
    """try_to_migrate() invalidates before the refcount test, as the kernel's migration
    unmaps first: a case-3 driver that unpins in its callback does not block it."""
    a = region(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    old = pages[0].pfn

    def unpin(sub, rng):
        if pages:
            k.unpin_user_pages(pages)
            pages.clear()

    sub, m, seq = watch(p, a, P, Mirror(on_invalidate=unpin))
    assert isolate_folio(k.mem, old)
    out = migrate_folio(k.alloc, old, isolated=True)
    assert out.rc == 0, out.reason
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    assert pte(p, a)[1] == out.new != old and p.read(a, 1) == b"\1"


def test_a_pinned_folio_still_fails_to_migrate_after_the_invalidation(k, p):
    a = region(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    old = pages[0].pfn
    sub, m, seq = watch(p, a, P)
    assert isolate_folio(k.mem, old)
    out = migrate_folio(k.alloc, old, isolated=True)
    putback_folio(k.alloc, old)
    assert out.rc == -gupsim.EAGAIN and pte(p, a)[1] == old
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)     # the kernel unmaps, then fails
    k.unpin_user_pages(pages)


# -- writeback and truncation ---------------------------------------------------------------------


def test_writeback_page_mkclean_write_protects_shared_mappings(k, p):
    f = k.fs("ext4").create("data", 4 * P)
    a = p.mmap(0, 4 * P, RW, MAP_SHARED, fd=f)
    priv = p.mmap(0, 4 * P, RW, MAP_PRIVATE, fd=f)
    p.write(a + P, b"dirty")
    assert p.read(priv + P, 1) == b"d"            # a private read-only mapping of it too
    sub, m, seq = watch(p, a, 4 * P)
    psub, pm, _ = watch(p, priv, 4 * P)
    assert f.writeback() >= 1
    saw(p, sub, m, seq, MMU_NOTIFY_PROTECTION_PAGE, a + P, a + 2 * P)
    assert pm.calls == []                         # page_mkclean skips private mappings
    assert not pte(p, a + P)[0] & PTE.WRITE


def test_truncate_clears_the_mapped_tail(k, p):
    f = k.fs("ext4").create("data", 4 * P)
    a = p.mmap(0, 4 * P, RW, MAP_SHARED, fd=f)
    for i in range(4):
        p.write(a + i * P, b"x")
    sub, m, seq = watch(p, a, 4 * P)
    f.truncate(P)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + 4 * P)
    assert pte(p, a + 2 * P)[0] == 0


# -- THP split and collapse ----------------------------------------------------------------------


def thp(p: Process) -> int:
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    p.write(a, b"thp")
    assert pte(p, a)[0] & PTE.PMD
    return a


def test_splitting_a_pmd_mapping_clears_the_whole_pmd(p):
    a = thp(p)
    sub, m, seq = watch(p, a, PMD_SIZE)
    p.mprotect(a, PMD_SIZE // 2, PROT_READ)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + PMD_SIZE)
    saw(p, sub, m, seq, MMU_NOTIFY_PROTECTION_VMA, a, a + PMD_SIZE // 2)
    assert m.events()[0] == (MMU_NOTIFY_CLEAR, a, a + PMD_SIZE)   # split, then protect
    assert not pte(p, a)[0] & PTE.PMD


def test_splitting_a_thp_folio_clears_each_of_its_mappings(k, p):
    """split_huge_page() unmaps the folio from every VMA first (unmap_folio)."""
    a = thp(p)
    p.mprotect(a, P, PROT_READ)              # PTE-mapped now, across two VMAs
    head = pte(p, a)[1]
    assert k.page(head).folio.order == 9
    sub, m, seq = watch(p, a, PMD_SIZE)
    assert split_folio(k.env, head) == 0
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + P)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a + P, a + PMD_SIZE)
    assert k.page(pte(p, a)[1]).folio.order == 0


def test_collapse_clears_the_pmd_range(k, p):
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    for i in range(0, 512, 7):
        p.write(a + i * P, b"c")
    assert not pte(p, a)[0] & PTE.PMD
    sub, m, seq = watch(p, a, PMD_SIZE)
    p.madvise(a, PMD_SIZE, MADV_COLLAPSE)
    saw(p, sub, m, seq, MMU_NOTIFY_CLEAR, a, a + PMD_SIZE)
    assert pte(p, a)[0] & PTE.PMD and p.read(a + 7 * P, 1) == b"c"


# -- exit -----------------------------------------------------------------------------------------


def test_exit_releases_then_unmaps_everything(p):
    a = region(p, 4)
    sub, m, seq = watch(p, a, 4 * P)
    mm = p.mm
    p.exit()
    saw_calls = m.events()
    assert saw_calls == [(MMU_NOTIFY_RELEASE, 0, ULONG_MAX), (MMU_NOTIFY_UNMAP, 0, ULONG_MAX)]
    assert all(c.cur_seq % 2 == 1 and c.mm_seq == c.cur_seq for c in m.calls)
    assert m.calls[1].cur_seq > m.calls[0].cur_seq      # two invalidations, one after the other
    assert mm.notifier_subscriptions.invalidate_seq % 2 == 0
    assert mmu_interval_read_retry(sub, seq)
    mmu_interval_notifier_remove(sub)


# -- cost without and with notifiers -----------------------------------------------------------



@pytest.mark.parametrize("subscribed", [False, True])
def test_bulk_paths_stay_vectorised(subscribed: bool) -> None:
    """mprotect and munmap of 64 MiB run the same Python as of 1 page, with or
    without a notifier on the range: notification is per operation, never per page."""
    k = Kernel(memory="1GiB")
    p = k.spawn("app")
    n = 16384
    big = p.mmap(0, n * P, RW, ANON | MAP_POPULATE)
    small = p.mmap(0, 4 * P, RW, ANON | MAP_POPULATE)
    if subscribed:
        for a, length in ((big, n * P), (small, 4 * P)):
            assert mmu_interval_notifier_insert(MmuIntervalNotifier(), p.mm, a, length,
                                                Mirror()) == 0
    for op in (lambda a, m: p.mprotect(a, m, PROT_READ),
               lambda a, m: p.mprotect(a, m, RW),
               lambda a, m: p.munmap(a + m // 2, m // 2)):
        c_small, _, _ = python_calls(functools.partial(op, small, 4 * P))
        t0 = time.perf_counter()
        c_big, _, _ = python_calls(functools.partial(op, big, n * P))
        assert c_big <= c_small + 60, (c_small, c_big)
        assert time.perf_counter() - t0 < 2.0
