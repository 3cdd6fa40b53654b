"""Pins and the rest of the memory manager (spec 6): fork, unmapping, migration,
compaction, reclaim, THP split, writeback, mremap and mprotect.

The question each test asks is the one a driver author asks: after this operation, is
the page my device holds still the page the process uses, is it still allocated, and
who sees what the device writes?
"""

from __future__ import annotations

import errno

import pytest

import gupsim
from gupsim import (
    EAGAIN,
    EFAULT,
    FOLL_LONGTERM,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_COLLAPSE,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
    Process,
    SegmentationFault,
)
from gupsim.memory import OutOfMemory, Zone
from gupsim.memory.memmap import Kind
from gupsim.memory.migrate import migrate_folio
from gupsim.mm import MMF, PTE
from gupsim.mm.reclaim import compact_range, split_folio

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
ACQ, REL = "nr_foll_pin_acquired", "nr_foll_pin_released"


# -- helpers -------------------------------------------------------------------------------


def entry_of(p: Process, addr: int) -> tuple[int, int]:
    """(PTE bits, PFN) of `addr` in `p`."""
    vma = p.mm.find_vma(addr)
    assert vma is not None, f"{addr:#x} is not mapped"
    i = vma.idx(addr)
    return int(vma.pte[i]), int(vma.pfn[i])


def mapped_pfn(p: Process, addr: int) -> int:
    bits, pfn = entry_of(p, addr)
    assert bits & PTE.PRESENT, f"{addr:#x} is not present"
    return pfn


def written_anon(p: Process, npages: int, tag: bytes = b"page") -> int:
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    for i in range(npages):
        p.write(a + i * PAGE_SIZE, tag + bytes([i]))
    return a


def thp(k: Kernel, p: Process) -> int:
    """A PMD-mapped anonymous THP, every page written with its index."""
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    for i in range(0, 512, 64):
        p.write(a + i * PAGE_SIZE, b"thp" + bytes([i // 64]))
    bits, pfn = entry_of(p, a)
    assert bits & PTE.PMD and k.page(pfn).folio.order == 9
    return a


def hugetlb(p: Process) -> int:
    a = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    p.write(a, b"huge")
    return a


def is_free(k: Kernel, pfn: int) -> bool:
    return int(k.mem.kind[int(k.mem.head_of(pfn))]) == Kind.FREE


# -- 6.1: fork ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [FOLL_WRITE, 0, FOLL_WRITE | FOLL_LONGTERM, FOLL_LONGTERM])
@pytest.mark.parametrize("entry", ["pin_user_pages_fast", "pin_user_pages"])
def test_fork_copies_a_pinned_small_page_for_the_child(k: Kernel, p: Process, flags: int,
                                                      entry: str) -> None:
    """The parent keeps the pinned page mapped writable and exclusive; the child gets a
    copy at once. Parent writes reach the device, child writes do not, and the device's
    writes reach the parent only."""
    a = written_anon(p, 2)
    pages: list[Page | None] = []
    assert getattr(p, entry)(a, 1, flags, pages) == 1
    pinned = pages[0]
    child = p.fork()
    bits, pfn = entry_of(p, a)
    assert pfn == pinned.pfn and bits & PTE.WRITE and pinned.anon_exclusive
    cbits, cpfn = entry_of(child, a)
    assert cpfn != pinned.pfn and cbits & PTE.WRITE and k.page(cpfn).anon_exclusive
    assert child.read(a, 5) == b"page\0"
    assert pinned.refcount == 1 + GUP_PIN_COUNTING_BIAS and pinned.mapcount == 1
    assert k.vmstat["fork_copy_pinned"] == 1
    assert entry_of(child, a + PAGE_SIZE)[1] == entry_of(p, a + PAGE_SIZE)[1], \
        "the unpinned page is shared"
    p.write(a, b"parent")
    child.write(a, b"child!")
    assert k.dma_read(pinned, 0, 6) == b"parent"
    k.dma_write(pinned, 0, b"device")
    assert p.read(a, 6) == b"device" and child.read(a, 6) == b"child!"
    assert mapped_pfn(p, a) == pinned.pfn, "no COW in the parent"
    k.unpin_user_pages(pages)


def test_fork_copies_every_exclusive_page_of_a_pinned_thp(k: Kernel, p: Process) -> None:
    """maybe_pinned is per folio: the parent's PMD is split (the folio is not), the child
    gets its own copy of all 512 pages, the parent keeps the pinned folio."""
    a = thp(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + 64 * PAGE_SIZE, 2, FOLL_WRITE, pages) == 2
    folio = pages[0].folio
    child = p.fork()
    assert folio.order == 9 and folio.pincount == 2, "the folio itself is not split"
    assert not entry_of(p, a)[0] & PTE.PMD, "the parent's PMD mapping was split"
    assert all(mapped_pfn(p, a + i * PAGE_SIZE) == folio.pfn + i for i in (0, 64, 511))
    kids = [mapped_pfn(child, a + i * PAGE_SIZE) for i in range(0, 512, 64)]
    assert not any(folio.pfn <= c < folio.pfn + 512 for c in kids)
    assert k.vmstat["fork_copy_pinned"] == 512
    assert [child.read(a + i * PAGE_SIZE, 4) for i in range(0, 512, 64)] == \
        [b"thp" + bytes([j]) for j in range(8)]
    p.write(a + 64 * PAGE_SIZE, b"P")
    child.write(a + 64 * PAGE_SIZE, b"C")
    assert k.dma_read(pages[0], 0, 1) == b"P"
    k.dma_write(pages[1], 0, b"D")
    assert p.read(a + 65 * PAGE_SIZE, 1) == b"D" and child.read(a + 65 * PAGE_SIZE, 1) == b"\0"
    k.unpin_user_pages(pages)


def test_fork_copies_a_pinned_hugetlb_page_whole(k: Kernel, p: Process) -> None:
    """hugetlb: the child gets a whole new huge page; the parent keeps the pinned one."""
    a = hugetlb(p)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a + 3 * PAGE_SIZE, 1, FOLL_WRITE, pages) == 1
    folio = pages[0].folio
    free = k.meminfo()["HugePages_Free"]
    child = p.fork()
    assert k.meminfo()["HugePages_Free"] == free - 1, "one huge page for the child's copy"
    assert mapped_pfn(p, a) == folio.pfn and entry_of(p, a)[0] & PTE.WRITE
    copy = k.page(mapped_pfn(child, a)).folio
    assert copy != folio and copy.order == 9 and child.read(a, 4) == b"huge"
    p.write(a + 3 * PAGE_SIZE, b"P")
    child.write(a + 3 * PAGE_SIZE, b"C")
    assert k.dma_read(pages[0], 0, 1) == b"P"
    k.dma_write(pages[0], 1, b"D")
    assert p.read(a + 3 * PAGE_SIZE, 2) == b"PD" and child.read(a + 3 * PAGE_SIZE, 2) == b"C\0"
    k.unpin_user_pages(pages)


def test_fork_without_pins_shares_copy_on_write(k: Kernel, p: Process) -> None:
    """No pin, no copy: the page is shared, both PTEs read-only, no longer exclusive; a
    GET reference (not a pin) changes nothing and leaves MMF_HAS_PINNED clear."""
    a = written_anon(p, 1)
    held: list[Page | None] = []
    assert p.get_user_pages_fast(a, 1, FOLL_WRITE, held) == 1
    child = p.fork()
    page = held[0]
    assert not p.mm.flags & MMF.HAS_PINNED
    assert mapped_pfn(child, a) == mapped_pfn(p, a) == page.pfn
    assert not entry_of(p, a)[0] & PTE.WRITE and not entry_of(child, a)[0] & PTE.WRITE
    assert not page.anon_exclusive and page.mapcount == 2
    assert k.vmstat["fork_copy_pinned"] == 0
    p.write(a, b"x")
    assert mapped_pfn(p, a) != page.pfn, "COW can go the other way for a GET reference"
    k.put_page(page)


def test_fork_after_the_unpin_shares_although_the_mm_once_pinned(k: Kernel, p: Process) -> None:
    """MMF_HAS_PINNED is sticky, but the copy decision also asks the folio."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    k.unpin_user_pages(pages)
    child = p.fork()
    assert p.mm.flags & MMF.HAS_PINNED
    assert mapped_pfn(child, a) == mapped_pfn(p, a)
    assert k.vmstat["fork_copy_pinned"] == 0


def test_fork_copies_a_false_positive(k: Kernel, p: Process) -> None:
    """1024 ordinary references look like a pin on a small folio: fork copies it (harmless,
    spec 6.1 #5) once the mm has pinned anything at all."""
    a = written_anon(p, 2)
    other: list[Page | None] = []
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, FOLL_WRITE, other) == 1
    page = k.page(mapped_pfn(p, a))
    for _ in range(GUP_PIN_COUNTING_BIAS):
        k.get_page(page)
    assert gupsim.page_maybe_dma_pinned(page)
    child = p.fork()
    assert mapped_pfn(child, a) != page.pfn and mapped_pfn(p, a) == page.pfn
    assert k.vmstat["fork_copy_pinned"] == 2
    for _ in range(GUP_PIN_COUNTING_BIAS):
        k.put_page(page)
    k.unpin_user_pages(other)


def test_the_child_does_not_inherit_mmf_has_pinned(k: Kernel, p: Process) -> None:
    """MMF_HAS_PINNED is not among the flags fork passes on (mmf_init_flags()): a child
    that never pinned shares even a false-positive page with its own child."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    child = p.fork()
    assert p.mm.flags & MMF.HAS_PINNED and not child.mm.flags & MMF.HAS_PINNED
    b = written_anon(child, 1)
    page = k.page(mapped_pfn(child, b))
    for _ in range(GUP_PIN_COUNTING_BIAS):
        k.get_page(page)
    grandchild = child.fork()
    assert mapped_pfn(grandchild, b) == page.pfn, "shared: the child never pinned"
    for _ in range(GUP_PIN_COUNTING_BIAS):
        k.put_page(page)
    k.unpin_user_pages(pages)


def test_madv_dontfork_keeps_a_pinned_range_out_of_the_child(k: Kernel, p: Process) -> None:
    """The pre-5.9 RDMA workaround: the child has no mapping there at all."""
    a = written_anon(p, 2)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pages) == 2
    p.madvise(a, 2 * PAGE_SIZE, MADV_DONTFORK)
    child = p.fork()
    with pytest.raises(SegmentationFault):
        child.read(a, 1)
    assert k.vmstat["fork_copy_pinned"] == 0
    assert [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(2)] == [pg.pfn for pg in pages]
    k.unpin_user_pages(pages)


def test_fork_fails_with_enomem_when_the_pinned_page_cannot_be_copied() -> None:
    """No memory for the child's copy: fork() fails with ENOMEM and the parent is as it was."""
    k = Kernel(memory="64MiB", debug=True)
    p = k.spawn("app")
    a = written_anon(p, 3)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 3, FOLL_WRITE, pages) == 3
    while True:
        try:
            k.alloc.alloc_frames(0, movable=True)
        except OutOfMemory:
            break
    with pytest.raises(OSError) as e:
        p.fork()
    assert e.value.errno == errno.ENOMEM
    assert [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(3)] == [pg.pfn for pg in pages]
    assert all(entry_of(p, a + i * PAGE_SIZE)[0] & PTE.WRITE for i in range(3))
    assert p.mm.write_protect_seq % 2 == 0, "GUP-fast is not left locked out"
    assert len(k.processes) == 1
    k.unpin_user_pages(pages)


def test_fork_shares_pinned_shmem(k: Kernel, p: Process) -> None:
    """Shared memory is shared with the child as it is: one page, seen by all."""
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.write(a, b"shm")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    child = p.fork()
    k.dma_write(pages[0], 0, b"DEV")
    assert p.read(a, 3) == child.read(a, 3) == b"DEV"
    assert mapped_pfn(child, a) == pages[0].pfn
    k.unpin_user_pages(pages)


# -- 6.4: unmapping while pinned ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["munmap", "dontneed", "exit"])
def test_unmapped_pinned_pages_stay_allocated_until_unpinned(k: Kernel, p: Process,
                                                             how: str) -> None:
    """The pin's references keep unmapped pages allocated; the unpin frees them."""
    a = written_anon(p, 2)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pages) == 2
    freed = k.vmstat["pgfree"]
    if how == "munmap":
        p.munmap(a, 2 * PAGE_SIZE)
    elif how == "dontneed":
        p.madvise(a, 2 * PAGE_SIZE, MADV_DONTNEED)
    else:
        p.exit()
    assert k.vmstat["pgfree"] == freed, "nothing was freed"
    for pg in pages:
        assert not is_free(k, pg.pfn)
        assert pg.refcount == GUP_PIN_COUNTING_BIAS and pg.mapcount == 0
    assert k.dma_read(pages[1], 0, 5) == b"page\x01", "the data is still there"
    if how == "dontneed":
        assert p.read(a, 5) == bytes(5), "a new zero-filled page"
        k.dma_write(pages[0], 0, b"lost")
        assert p.read(a, 4) == bytes(4), "the device and the process have parted"
        assert mapped_pfn(p, a) != pages[0].pfn
    elif how == "munmap":
        with pytest.raises(SegmentationFault):
            p.read(a, 1)
    else:
        assert [r.kind for r in k.sanitizer.reports] == ["leak"]
    pfns = [pg.pfn for pg in pages]
    k.unpin_user_pages(pages)
    assert all(is_free(k, pfn) for pfn in pfns)
    assert k.vmstat["pgfree"] == freed + 2
    assert not k.warnings.sites()


def test_madv_free_leaves_a_pinned_page_mapped(k: Kernel, p: Process) -> None:
    """A lazily freed page with a pin is never discarded, so the process keeps it."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    p.madvise(a, PAGE_SIZE, gupsim.MADV_FREE)
    assert mapped_pfn(p, a) == pages[0].pfn
    k.dma_write(pages[0], 0, b"dev")
    assert p.read(a, 3) == b"dev"
    k.unpin_user_pages(pages)


def test_madv_free_then_pageout_discards_only_clean_unpinned_pages(k: Kernel,
                                                                   p: Process) -> None:
    """Reclaim drops a lazyfree page (reads give zeros, no swap used) unless it was
    written again or pinned; those become swap-backed again and keep their data."""
    a = written_anon(p, 3)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    p.madvise(a, 3 * PAGE_SIZE, gupsim.MADV_FREE)
    assert k.vmstat["pglazyfree"] == 3 and "swapbacked" not in pages[0].folio.flags
    p.write(a + 2 * PAGE_SIZE, b"again")
    p.madvise(a, 3 * PAGE_SIZE, MADV_PAGEOUT)
    assert k.vmstat["pglazyfreed"] == 1 and k.vmstat["pswpout"] == 0
    assert mapped_pfn(p, a) == pages[0].pfn and "swapbacked" in pages[0].folio.flags
    assert p.read(a, 5) == b"page\0" and p.read(a + PAGE_SIZE, 5) == bytes(5)
    assert p.read(a + 2 * PAGE_SIZE, 5) == b"again"
    k.unpin_user_pages(pages)


def test_madv_free_is_einval_outside_private_anonymous_memory(k: Kernel, p: Process) -> None:
    """madvise_free_single_vma() refuses VMAs that are not anonymous (shmem, files)."""
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    with pytest.raises(OSError) as e:
        p.madvise(a, PAGE_SIZE, gupsim.MADV_FREE)
    assert e.value.errno == errno.EINVAL

def test_munmap_of_a_pinned_thp_keeps_the_whole_folio(k: Kernel, p: Process) -> None:
    """One pinned subpage keeps the whole THP allocated after munmap."""
    a = thp(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + 5 * PAGE_SIZE, 1, FOLL_WRITE, pages) == 1
    folio = pages[0].folio
    p.munmap(a, PMD_SIZE)
    assert folio.order == 9 and folio.refcount == 1 and folio.pincount == 1
    assert folio.mapcount == 0
    k.unpin_user_pages(pages)
    assert is_free(k, folio.pfn)


def test_munmap_of_a_pinned_hugetlb_page_keeps_it_out_of_the_pool(k: Kernel, p: Process) -> None:
    """A pinned huge page returns to the hugetlb pool only at unpin."""
    a = hugetlb(p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    free = k.meminfo()["HugePages_Free"]
    p.munmap(a, PMD_SIZE)
    assert k.meminfo()["HugePages_Free"] == free and k.dma_read(pages[0], 0, 4) == b"huge"
    k.unpin_user_pages(pages)
    assert k.meminfo()["HugePages_Free"] == free + 1


def test_truncate_orphans_a_pinned_page_cache_folio(k: Kernel, p: Process) -> None:
    """Truncation removes the folio from the page cache (mapping NULL) but the pin keeps
    it allocated; DMA goes to memory the file no longer has."""
    f = k.fs("ext4").create("data", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a + PAGE_SIZE, b"tail")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, FOLL_WRITE, pages) == 1
    f.truncate(PAGE_SIZE)
    folio = pages[0].folio
    assert 1 not in f.page_cache and folio.mapping == 0 and not is_free(k, folio.pfn)
    k.dma_write(pages[0], 0, b"DMA")
    f.truncate(2 * PAGE_SIZE)
    assert f.pread(PAGE_SIZE, 4) == bytes(4)
    k.unpin_user_pages(pages)
    assert is_free(k, folio.pfn)


# -- 6.3: migration, compaction, reclaim, THP split ------------------------------------------


def test_migration_refuses_a_pinned_folio(k: Kernel, p: Process) -> None:
    """The refcount freeze fails for a pinned folio; the same folio unpinned moves."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    pfn = pages[0].pfn
    res = migrate_folio(k.alloc, pfn)
    assert res.rc == -EAGAIN and "references" in res.reason
    assert mapped_pfn(p, a) == pfn and k.vmstat["pgmigrate_fail"] == 1
    k.unpin_user_pages(pages)
    res = migrate_folio(k.alloc, pfn)
    assert res.rc == 0 and mapped_pfn(p, a) == res.new != pfn
    assert p.read(a, 5) == b"page\0" and is_free(k, pfn)


def test_migration_refuses_a_pinned_page_cache_folio(k: Kernel, p: Process) -> None:
    """Page cache too: the pin's references make the refcount freeze fail."""
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.write(a, b"shm")
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, 0, pages) == 1
    res = migrate_folio(k.alloc, pages[0].pfn, lambda old, new: True)
    assert res.rc == -EAGAIN and mapped_pfn(p, a) == pages[0].pfn
    k.unpin_user_pages(pages)


def test_compaction_skips_pinned_folios_and_moves_the_rest() -> None:
    """Compaction (and CMA allocation, offlining) clears a range of movable memory; a
    pinned anon folio is not even isolated, a pinned page-cache folio fails to migrate,
    and both keep the range busy (-EBUSY) until they are unpinned."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = written_anon(p, 4)
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.write(s, b"shm")
    pfns = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)] + [mapped_pfn(p, s)]
    assert all(k.page(x).folio.zone == Zone.MOVABLE for x in pfns)
    lo, hi = min(pfns), max(pfns) + 1
    pinned: list[Page | None] = []
    shm: list[Page | None] = []
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, FOLL_WRITE, pinned) == 1
    assert p.pin_user_pages_fast(s, 1, FOLL_WRITE, shm) == 1
    res = compact_range(k.env, lo, hi)
    assert res.rc == -gupsim.EBUSY
    assert set(res.skipped) == {pfns[1]} and set(res.failed) == {pfns[4]}
    assert res.migrated == 3
    assert mapped_pfn(p, a + PAGE_SIZE) == pfns[1] and mapped_pfn(p, s) == pfns[4]
    moved = [mapped_pfn(p, a + i * PAGE_SIZE) for i in (0, 2, 3)]
    assert all(not lo <= x < hi for x in moved)
    assert all(k.page(x).folio.zone == Zone.MOVABLE for x in moved), "still movable memory"
    assert [p.read(a + i * PAGE_SIZE, 5) for i in range(4)] == \
        [b"page" + bytes([i]) for i in range(4)]
    assert k.vmstat["compact_fail"] == 1 and k.vmstat["nr_isolated_anon"] == 0
    k.unpin_user_pages(pinned)
    k.unpin_user_pages(shm)
    res = compact_range(k.env, lo, hi)
    assert res.rc == 0 and res.migrated == 2
    assert p.read(s, 3) == b"shm" and p.read(a + PAGE_SIZE, 5) == b"page\x01"


def test_compaction_moves_unmapped_page_cache() -> None:
    """Clean page cache that no process maps is movable like any other."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    f = k.fs("ext4").create("data", PAGE_SIZE)
    f.pwrite(0, b"cached")
    old = f.page_cache[0]
    assert k.page(old).folio.zone == Zone.MOVABLE
    res = compact_range(k.env, old, old + 1)
    assert res.rc == 0 and f.page_cache[0] != old and f.pread(0, 6) == b"cached"


def test_page_cache_migrate_hook_swaps_only_the_entry_it_still_holds() -> None:
    """Inode.migrate_folio() replaces the cache entry only while it holds the old folio,
    and the machine-wide hook finds unmapped tmpfs page cache too."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    f = k.fs("tmpfs").create("shm", PAGE_SIZE)
    f.pwrite(0, b"tmp")
    old = f.page_cache[0]
    inode = k.fs("tmpfs").files["shm"]
    assert not inode.migrate_folio(old + 1, old) and f.page_cache[0] == old
    res = compact_range(k.env, old, old + 1)
    assert res.rc == 0 and f.page_cache[0] != old and f.pread(0, 3) == b"tmp"

def test_pageout_skips_a_pinned_anon_page(k: Kernel, p: Process) -> None:
    """MADV_PAGEOUT with a swap device: the unpinned page goes to swap, the pinned one
    stays mapped (a maybe-pinned anon folio is never added to the swap cache)."""
    a = written_anon(p, 2)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    p.madvise(a, 2 * PAGE_SIZE, MADV_PAGEOUT)
    assert k.vmstat["pswpout"] == 1
    assert mapped_pfn(p, a) == pages[0].pfn
    assert entry_of(p, a + PAGE_SIZE)[0] & PTE.SWAP
    k.unpin_user_pages(pages)
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert entry_of(p, a)[0] & PTE.SWAP and k.vmstat["pswpout"] == 2
    assert p.read(a, 5) == b"page\0" and p.read(a + PAGE_SIZE, 5) == b"page\x01"
    assert k.vmstat["pswpin"] == 2


def test_pageout_skips_a_pinned_thp_without_splitting_it(k: Kernel, p: Process) -> None:
    """MADV_PAGEOUT leaves a maybe-pinned THP whole and mapped."""
    a = thp(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, 0, pages) == 1
    p.madvise(a, PMD_SIZE, MADV_PAGEOUT)
    assert k.vmstat["pswpout"] == 0 and pages[0].folio.order == 9
    assert entry_of(p, a)[0] & PTE.PMD
    k.unpin_user_pages(pages)


def test_thp_split_refuses_a_pinned_folio_but_pmd_split_is_fine(k: Kernel, p: Process) -> None:
    """split_huge_page() fails with -EAGAIN while pinned; splitting only the PMD mapping
    (here by mprotect of half the range) keeps the folio and the pin, and the exclusive
    bit reaches every page so the pin stays coherent."""
    a = thp(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + 300 * PAGE_SIZE, 1, FOLL_WRITE, pages) == 1
    folio = pages[0].folio
    assert split_folio(k.env, folio.pfn) == -EAGAIN
    assert folio.order == 9 and k.vmstat["thp_split_page_failed"] == 1
    p.mprotect(a, PMD_SIZE // 2, PROT_READ)
    assert not entry_of(p, a)[0] & PTE.PMD and folio.order == 9 and folio.pincount == 1
    assert pages[0].anon_exclusive
    p.write(a + 300 * PAGE_SIZE, b"still")
    assert mapped_pfn(p, a + 300 * PAGE_SIZE) == pages[0].pfn
    assert k.dma_read(pages[0], 0, 5) == b"still"
    k.unpin_user_pages(pages)
    assert split_folio(k.env, folio.pfn) == 0 and k.page(folio.pfn).folio.order == 0


def test_collapse_refuses_a_range_with_a_pinned_page(k: Kernel, p: Process) -> None:
    """MADV_COLLAPSE will not copy away from a pinned page (EAGAIN), then works unpinned."""
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    for i in range(0, 512, 128):
        p.write(a + i * PAGE_SIZE, b"small")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    with pytest.raises(OSError) as e:
        p.madvise(a, PMD_SIZE, MADV_COLLAPSE)
    assert e.value.errno == errno.EAGAIN
    assert mapped_pfn(p, a) == pages[0].pfn
    k.unpin_user_pages(pages)
    p.madvise(a, PMD_SIZE, MADV_COLLAPSE)
    assert entry_of(p, a)[0] & PTE.PMD and p.read(a + 128 * PAGE_SIZE, 5) == b"small"


# -- 6.6: writeback ---------------------------------------------------------------------------


def test_writeback_of_a_pinned_folio_cleans_it_and_misses_later_dma(k: Kernel, p: Process) -> None:
    """folio_mkclean() write-protects and cleans the folio whether or not it is pinned; a
    later device write bypasses page_mkwrite, so the folio stays clean and writeback
    does not see it, until unpin_user_pages_dirty_lock(..., true) re-dirties it."""
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"cpu")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    folio = pages[0].folio
    assert folio.dirty and entry_of(p, a)[0] & PTE.WRITE
    assert f.writeback() == 1
    assert not folio.dirty and not entry_of(p, a)[0] & PTE.WRITE, "pinned or not, cleaned"
    assert f.backing[0][:3] == b"cpu"
    k.dma_write(pages[0], 0, b"DMA")
    assert not folio.dirty and f.writeback() == 0, "nothing told the file system"
    assert f.backing[0][:3] == b"cpu" and p.read(a, 3) == b"DMA"
    k.unpin_user_pages_dirty_lock(pages, True)
    assert folio.dirty and f.writeback() == 1
    assert f.backing[0][:3] == b"DMA"


def test_dma_during_writeback_reaches_the_disk_unannounced(k: Kernel, p: Process) -> None:
    """With the I/O in flight the device changes the folio: the disk gets the bytes the
    folio holds at completion, while the folio is clean (what stable pages forbid for the
    CPU, whose write faults and waits in page_mkwrite)."""
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"v1")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert f.writeback(wait=False) == 1 and pages[0].folio.writeback
    k.dma_write(pages[0], 0, b"v2")
    assert f.end_writeback() == 1
    assert f.backing[0][:2] == b"v2" and not pages[0].folio.dirty
    p.write(a, b"v3")
    assert pages[0].folio.dirty, "the CPU's write went through page_mkwrite"
    k.unpin_user_pages(pages)


# -- 6.5: mremap, mprotect ------------------------------------------------------------------


def test_mremap_moves_pinned_pages_with_the_mapping(k: Kernel, p: Process) -> None:
    """The PTEs move, the folios stay: pins remain coherent at the new address."""
    a = written_anon(p, 2)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pages) == 2
    target = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    b = p.mremap(a, 2 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, target)
    assert b == target
    assert [mapped_pfn(p, b + i * PAGE_SIZE) for i in range(2)] == [pg.pfn for pg in pages]
    assert all(pg.anon_exclusive for pg in pages)
    with pytest.raises(SegmentationFault):
        p.read(a, 1)
    p.write(b + PAGE_SIZE, b"moved")
    assert k.dma_read(pages[1], 0, 5) == b"moved"
    k.dma_write(pages[0], 0, b"dev")
    assert p.read(b, 3) == b"dev"
    child = p.fork()
    assert mapped_pfn(child, b) != pages[0].pfn, "still pinned: still copied at fork"
    k.unpin_user_pages(pages)


def test_mremap_dontunmap_moves_pinned_pages(k: Kernel, p: Process) -> None:
    """MREMAP_DONTUNMAP moves the pinned pages like a plain move."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    b = p.mremap(a, PAGE_SIZE, PAGE_SIZE, MREMAP_MAYMOVE | gupsim.MREMAP_DONTUNMAP)
    assert mapped_pfn(p, b) == pages[0].pfn and pages[0].anon_exclusive
    assert p.read(a, 5) == bytes(5), "the old range is still mapped, now empty"
    k.unpin_user_pages(pages)


def test_mremap_dontunmap_argument_checks_and_shared_files(k: Kernel, p: Process) -> None:
    """MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and an unchanged size (EINVAL otherwise);
    since 5.13 it takes file and shared mappings too, whose old range refaults the file."""
    a = written_anon(p, 2)
    for flags, new_len in ((gupsim.MREMAP_DONTUNMAP, PAGE_SIZE),
                           (MREMAP_MAYMOVE | gupsim.MREMAP_DONTUNMAP, 2 * PAGE_SIZE)):
        with pytest.raises(OSError) as e:
            p.mremap(a, PAGE_SIZE, new_len, flags)
        assert e.value.errno == errno.EINVAL
    f = k.fs("ext4").create("data", PAGE_SIZE)
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(m, b"file")
    b = p.mremap(m, PAGE_SIZE, PAGE_SIZE, MREMAP_MAYMOVE | gupsim.MREMAP_DONTUNMAP)
    assert not entry_of(p, m)[0] & PTE.PRESENT
    assert p.read(m, 4) == b"file" and p.read(b, 4) == b"file"
    assert mapped_pfn(p, m) == mapped_pfn(p, b)

def test_mprotect_readonly_keeps_pinned_pages_exclusive(k: Kernel, p: Process) -> None:
    """PTEs become read-only but the pages stay exclusive, so write access returns
    without a COW: the process writes into the pinned page again."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    p.mprotect(a, PAGE_SIZE, PROT_READ)
    assert not entry_of(p, a)[0] & PTE.WRITE and pages[0].anon_exclusive
    with pytest.raises(SegmentationFault):
        p.write(a, b"x")
    got: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_LONGTERM, got) == 1 and got[0] == pages[0]
    k.unpin_user_pages(got)
    p.mprotect(a, PAGE_SIZE, RW)
    cows = k.vmstat["cow_fault"]
    p.write(a, b"again")
    assert mapped_pfn(p, a) == pages[0].pfn and k.vmstat["cow_fault"] == cows
    assert k.dma_read(pages[0], 0, 5) == b"again"
    k.unpin_user_pages(pages)


def test_prot_none_keeps_pins_but_refuses_new_ones(k: Kernel, p: Process) -> None:
    """PROT_NONE: existing pins stay, new GUP calls are -EFAULT, the page comes back."""
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    p.mprotect(a, PAGE_SIZE, PROT_NONE)
    assert pages[0].refcount == 1 + GUP_PIN_COUNTING_BIAS
    for entry in ("pin_user_pages_fast", "pin_user_pages"):
        assert getattr(p, entry)(a, 1, 0, []) == -EFAULT
    with pytest.raises(SegmentationFault):
        p.read(a, 1)
    k.dma_write(pages[0], 0, b"kept")
    p.mprotect(a, PAGE_SIZE, RW)
    assert p.read(a, 4) == b"kept" and mapped_pfn(p, a) == pages[0].pfn
    k.unpin_user_pages(pages)
