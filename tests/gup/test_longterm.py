"""FOLL_LONGTERM (spec 4): refusals per VMA, unsharing, migration out of ZONE_MOVABLE and
CMA, the retry loop and its errors, PF_MEMALLOC_PIN, and memfd_pin_folios().

A long-term pin may last forever, so the kernel refuses it where it would break the
file system (fs-dax, dirty-tracked shared files) and moves the pages it would pin out of
memory that must stay movable. These tests pin through every entry point and check the
count, the frames, their contents and the vmstat counters that say what happened.
"""

from __future__ import annotations

import pytest
from gup_helpers import COUNTED, entries, net_pins

import gupsim
from gupsim import (
    EFAULT,
    EINVAL,
    ENOMEM,
    EOPNOTSUPP,
    FOLL_LONGTERM,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    MFD_HUGETLB,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.memory import PG, Kind, OutOfMemory, Zone
from gupsim.mm import PTE, VM, VMA

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
LT = FOLL_LONGTERM
ACQ, REL = "nr_foll_pin_acquired", "nr_foll_pin_released"
PINS = [ep for ep in COUNTED if ep.pins]     # every pin_user_pages*() entry point
ENTRIES = entries(where=lambda ep: ep.pins)


# -- helpers -------------------------------------------------------------------------------


def mapped_pfn(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None, f"{addr:#x} is not mapped"
    i = vma.idx(addr)
    assert vma.pte[i] & PTE.PRESENT, f"{addr:#x} has no present PTE"
    return int(vma.pfn[i])


def pte_bits(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None
    return int(vma.pte[vma.idx(addr)])


def written_anon(p: Process, npages: int) -> int:
    """Private anonymous memory whose page i holds the byte i + 1 (faulted in, movable)."""
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    for i in range(npages):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]) * 8)
    return a


def movable_machine(**kw: str) -> Kernel:
    """A machine whose user pages land in ZONE_MOVABLE (or, with cma=, in CMA)."""
    kw.setdefault("memory", "256MiB")
    if "cma" not in kw:
        kw.setdefault("movable", "128MiB")
    return Kernel(nr_hugepages=2, debug=True, **kw)


def device_vma(k: Kernel, p: Process, flags: int) -> int:
    """What remap_pfn_range() leaves behind: special PTEs onto device frames, in a VMA with
    VM_IO / VM_PFNMAP; no system call of the model creates one."""
    frame = k.alloc.alloc_folio(0, Kind.RESERVED, movable=False)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.munmap(a, 2 * PAGE_SIZE)
    vma = VMA(a, a + 2 * PAGE_SIZE, VM.READ | VM.WRITE | VM.SHARED | VM.MAYREAD
              | VM.MAYWRITE | VM.MAYSHARE | flags)
    vma.pfn[:] = frame
    vma.pte[:] = PTE.PRESENT | PTE.SPECIAL | PTE.WRITE | PTE.YOUNG
    p.mm.insert_vma(vma)
    return a


def shared_file(k: Kernel, p: Process, kind: str, size: int = PMD_SIZE) -> int:
    """A MAP_SHARED mapping of a file of the given kind, RW, with its first byte written."""
    if kind == "memfd":
        f = p.memfd_create("buf")
        f.truncate(size)
    elif kind == "memfd-hugetlb":
        f = p.memfd_create("buf", MFD_HUGETLB)
        f.truncate(size)
    elif kind == "shared-anon":
        a = p.mmap(0, size, RW, MAP_SHARED | MAP_ANONYMOUS)
        p.write(a, b"S")
        return a
    else:
        f = k.fs(kind).create("file", size)
    a = p.mmap(0, size, RW, MAP_SHARED, fd=f)
    p.write(a, b"S")
    return a


# -- 4.1: refusals per VMA --------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("maptype", [MAP_SHARED, MAP_PRIVATE])
@pytest.mark.parametrize("write", [FOLL_WRITE, 0])
def test_fsdax_refuses_longterm_pins(k: Kernel, p: Process, entry: EntryPoint, maptype: int,
                                     write: int) -> None:
    """fs-dax blocks cannot be freed while DMA may target them: -EOPNOTSUPP, R/O or RW,
    shared or private, and nothing stays pinned; a short-term pin of the same page works."""
    f = k.fs("dax").create("pmem", 4 * PAGE_SIZE)
    a = p.mmap(0, 4 * PAGE_SIZE, RW, maptype, fd=f)
    p.read(a, 1)
    before = (k.vmstat[ACQ], k.vmstat[REL])
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 2, write | LT, pages) == -EOPNOTSUPP
    assert pages == [] and (k.vmstat[ACQ], k.vmstat[REL]) == before
    assert entry.invoke(p, a, 2, write, pages) == 2
    k.unpin_user_pages(pages)


@pytest.mark.parametrize("entry", ENTRIES)
def test_writable_longterm_pin_of_a_dirty_tracked_shared_file_is_efault(
        k: Kernel, p: Process, entry: EntryPoint) -> None:
    """ext4 MAP_SHARED: the device would write behind page_mkwrite's back for ever, so a
    writable long-term pin is refused [6.5]; short-term RW and long-term R/O pins work."""
    a = shared_file(k, p, "ext4", 4 * PAGE_SIZE)
    before = net_pins(k)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 2, FOLL_WRITE | LT, pages) == -EFAULT
    assert pages == [] and net_pins(k) == before
    for flags in (FOLL_WRITE, LT):
        got: list[Page | None] = []
        assert entry.invoke(p, a, 2, flags, got) == 2
        assert all(pg.folio.kind == Kind.FILE for pg in got)
        k.unpin_user_pages(got)
    assert net_pins(k) == before


def test_dirty_tracking_refusal_applies_to_the_vma_not_the_range(k: Kernel, p: Process) -> None:
    """A range that runs from anonymous memory into an ext4 shared mapping: the pages before
    the refused VMA are pinned and counted, the call returns that prefix."""
    a = p.mmap(0, 6 * PAGE_SIZE, RW, ANON)
    p.munmap(a + 2 * PAGE_SIZE, 4 * PAGE_SIZE)
    f = k.fs("ext4").create("file", 4 * PAGE_SIZE)
    b = p.mmap(a + 2 * PAGE_SIZE, 4 * PAGE_SIZE, RW, MAP_SHARED | gupsim.MAP_FIXED, fd=f)
    assert b == a + 2 * PAGE_SIZE
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 4, FOLL_WRITE | LT, pages) == 2
    assert [pg.folio.kind for pg in pages] == [Kind.ANON, Kind.ANON]
    k.unpin_user_pages(pages)


def test_gup_fast_takes_and_drops_a_writable_longterm_pin_of_a_file_folio(
        k: Kernel, p: Process) -> None:
    """gup_fast_folio_allowed() runs after the grab: for an ext4 folio GUP-fast pins and
    unpins (+1/-1 in vmstat), then the slow path refuses the VMA without pinning."""
    a = shared_file(k, p, "ext4", PAGE_SIZE)
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | LT, []) == -EFAULT
    assert (k.vmstat[ACQ], k.vmstat[REL]) == (1, 1)
    assert p.pin_user_pages(a, 1, FOLL_WRITE | LT, []) == -EFAULT
    assert (k.vmstat[ACQ], k.vmstat[REL]) == (1, 1)


@pytest.mark.parametrize("flags", [FOLL_WRITE | LT, LT, FOLL_WRITE, 0])
def test_secretmem_is_never_pinned(k: Kernel, p: Process, flags: int) -> None:
    """secretmem pages are not in the kernel's direct map: every pin is -EFAULT."""
    f = k.filesystems.memfd_secret()
    f.truncate(PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"secret")
    for entry in PINS:
        assert entry.invoke(p, a, 1, flags, []) == -EFAULT, entry.name
    assert net_pins(k) == 0


@pytest.mark.parametrize("kind", ["tmpfs", "memfd", "shared-anon", "hugetlbfs",
                                  "memfd-hugetlb"])
@pytest.mark.parametrize("entry", entries("pin_user_pages_fast", "pin_user_pages"))
def test_writable_longterm_pins_of_shmem_and_hugetlbfs_are_allowed(
        k: Kernel, p: Process, kind: str, entry: EntryPoint) -> None:
    """shmem/tmpfs, memfd and hugetlbfs have no write-notify: the long-term pin takes the
    page-cache page itself, shared with every mapping of the file."""
    a = shared_file(k, p, kind)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 2, FOLL_WRITE | LT, pages) == 2
    want = Kind.HUGETLBFS if "huge" in kind else Kind.SHMEM
    assert [pg.folio.kind for pg in pages] == [want, want]
    assert pages[0].pfn == mapped_pfn(p, a)
    p.write(a, b"X")
    assert k.dma_read(pages[0], 0, 1) == b"X"
    k.dma_write(pages[1], 0, b"D")
    assert p.read(a + PAGE_SIZE, 1) == b"D"
    k.unpin_user_pages(pages)


@pytest.mark.parametrize("kind", ["ext4", "tmpfs", "hugetlbfs", "anon"])
@pytest.mark.parametrize("maptype", [MAP_SHARED, MAP_PRIVATE])
@pytest.mark.parametrize("entry", ENTRIES)
def test_readonly_longterm_pins_are_allowed_everywhere(
        k: Kernel, p: Process, kind: str, maptype: int, entry: EntryPoint) -> None:
    """Without FOLL_WRITE nothing will be written behind the file system's back."""
    if kind == "anon":
        a = p.mmap(0, PMD_SIZE, RW, maptype | MAP_ANONYMOUS)
    else:
        a = p.mmap(0, PMD_SIZE, RW, maptype, fd=k.fs(kind).create("f", PMD_SIZE))
    p.read(a, 1)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 3, LT, pages) == 3
    assert net_pins(k) == 3
    k.unpin_user_pages(pages)
    assert net_pins(k) == 0


@pytest.mark.parametrize("flags", [VM.IO | VM.PFNMAP, VM.PFNMAP, VM.IO])
@pytest.mark.parametrize("foll", [FOLL_WRITE | LT, LT, FOLL_WRITE, 0])
def test_vm_io_and_vm_pfnmap_are_refused(k: Kernel, p: Process, flags: int, foll: int) -> None:
    """Device memory mapped with remap_pfn_range() has no struct page to pin: -EFAULT for
    every kind of pin, fast and slow."""
    a = device_vma(k, p, flags)
    for entry in PINS:
        pages: list[Page | None] = []
        assert entry.invoke(p, a, 1, foll, pages) == -EFAULT, entry.name
        assert pages == []
    assert net_pins(k) == 0


# -- 4.1: R/O long-term pins unshare what a COW mapping does not own ---------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_readonly_longterm_pin_of_private_file_page_is_an_exclusive_anon_copy(
        k: Kernel, p: Process, entry: EntryPoint) -> None:
    """[6.2] The pin is taken on a fresh anon copy, mapped R/O in place of the page-cache
    page, so a later write by the process lands in the pinned page (no COW away from it)."""
    f = k.fs("ext4").create("lib", 2 * PAGE_SIZE)
    f.pwrite(0, b"original")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_PRIVATE, fd=f)
    assert p.read(a, 8) == b"original"
    cache = f.page_cache[0]
    assert mapped_pfn(p, a) == cache
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, LT, pages) == 1
    copy = pages[0]
    assert copy.pfn != cache and copy.folio.kind == Kind.ANON and copy.anon_exclusive
    assert copy.read(0, 8) == b"original"
    assert mapped_pfn(p, a) == copy.pfn and not pte_bits(p, a) & PTE.WRITE
    assert not gupsim.page_maybe_dma_pinned(k.page(cache))
    p.write(a, b"REWRITE!")
    assert mapped_pfn(p, a) == copy.pfn, "the write reused the exclusive page"
    assert copy.read(0, 8) == b"REWRITE!"
    k.dma_write(copy, 0, b"DMA")
    assert p.read(a, 8) == b"DMARITE!"
    assert f.pread(0, 8) == b"original", "a private mapping never reaches the file"
    k.unpin_user_pages(pages)


def test_shortterm_readonly_pin_of_private_file_page_pins_the_page_cache(
        k: Kernel, p: Process) -> None:
    """Short-term R/O pins do not unshare: the page-cache page itself is pinned, and a later
    write by the process COWs away from it (the pin no longer sees the process)."""
    f = k.fs("ext4").create("lib", PAGE_SIZE)
    f.pwrite(0, b"original")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=f)
    p.read(a, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, 0, pages) == 1
    assert pages[0].pfn == f.page_cache[0] and pages[0].folio.kind == Kind.FILE
    p.write(a, b"mine")
    assert mapped_pfn(p, a) != pages[0].pfn
    assert pages[0].read(0, 8) == b"original"
    k.unpin_user_pages(pages)


def test_readonly_longterm_pin_of_shared_file_page_does_not_unshare(k: Kernel, p: Process) -> None:
    """Unsharing is for COW mappings only: in MAP_SHARED the page-cache page is pinned."""
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.read(a, 1)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, LT, pages) == 1
    assert pages[0].pfn == f.page_cache[0] == mapped_pfn(p, a)
    k.unpin_user_pages(pages)


def test_readonly_longterm_pin_of_the_zero_page_allocates_a_page_that_later_writes_reach(
        k: Kernel, p: Process) -> None:
    """A R/O long-term pin of never-written anon memory pins a real page, mapped R/O; the
    process's first write reuses it instead of COWing away from the device."""
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    assert p.read(a, 1) == b"\0" and mapped_pfn(p, a) == k.mem.zero_pfn
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, LT, pages) == 1
    assert pages[0].pfn != k.mem.zero_pfn and pages[0].anon_exclusive
    assert net_pins(k) == 1
    p.write(a, b"late")
    assert pages[0].read(0, 4) == b"late"
    k.unpin_user_pages(pages)


# -- 4.2 / 4.4: migration out of ZONE_MOVABLE and CMA ---------------------------------------


@pytest.mark.parametrize("where", ["movable", "cma"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_longterm_pin_migrates_out_of_movable_and_cma(where: str, entry: EntryPoint) -> None:
    """Each page is moved to ZONE_NORMAL outside CMA with its contents, the old frames are
    freed, the process maps the new ones, and the full count is returned."""
    k = movable_machine(**({"cma": "128MiB"} if where == "cma" else {}))
    p = k.spawn("app")
    a = written_anon(p, 4)
    old = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    folios = [k.page(pfn).folio for pfn in old]
    assert all(f.zone == Zone.MOVABLE for f in folios) if where == "movable" \
        else all(f.is_cma for f in folios)
    assert not any(gupsim.folio_is_longterm_pinnable(f) for f in folios)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 4, FOLL_WRITE | LT, pages) == 4
    assert all(pg.folio.zone == Zone.NORMAL and not pg.folio.is_cma for pg in pages)
    assert all(gupsim.folio_is_longterm_pinnable(pg.folio) for pg in pages)
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    assert not {pg.pfn for pg in pages} & set(old)
    assert [pg.read(0, 8) for pg in pages] == [bytes([i + 1]) * 8 for i in range(4)]
    assert all(k.mem.kind[pfn] == Kind.FREE for pfn in old), "the old frames are freed"
    assert k.vmstat["pgmigrate_success"] == 4 and k.vmstat["pgmigrate_fail"] == 0
    assert all(pg.refcount == 1 + GUP_PIN_COUNTING_BIAS for pg in pages)
    assert net_pins(k) == 4
    assert k.vmstat["nr_isolated_anon"] == 0, "nothing is left isolated"
    p.write(a, b"after")
    assert pages[0].read(0, 5) == b"after"
    k.unpin_user_pages(pages)
    assert net_pins(k) == 0


def test_gup_fast_refuses_unpinnable_folios_and_the_slow_path_migrates_them() -> None:
    """GUP-fast never pins a movable page long-term; the slow path pins it, finds it
    unpinnable, drops the pin, migrates, and pins again: one pin kept, two taken."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 1)
    pages: list[Page | None] = []
    assert p.get_user_pages_fast_only(a, 1, 0, pages) == 1, "GUP-fast itself works here"
    k.put_page(pages[0])
    pages = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | LT, pages) == 1
    assert (k.vmstat[ACQ], k.vmstat[REL]) == (2, 1)
    k.unpin_user_pages(pages)


def test_longterm_pin_migrates_only_what_is_unpinnable() -> None:
    """A range mixing pinnable pages (faulted in by an earlier long-term pin) and movable
    ones: only the movable ones move, the rest keep their frames, the count is complete."""
    k = movable_machine()
    p = k.spawn("app")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    first: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE | LT, first) == 2     # faulted in unmovable
    k.unpin_user_pages(first)
    for i in (2, 3):
        p.write(a + i * PAGE_SIZE, b"m")                            # ordinary faults: movable
    kept = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    assert [k.page(x).folio.zone for x in kept] == [Zone.NORMAL] * 2 + [Zone.MOVABLE] * 2
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 4, FOLL_WRITE | LT, pages) == 4
    assert [pg.pfn for pg in pages][:2] == kept[:2]
    assert k.vmstat["pgmigrate_success"] == 2
    k.unpin_user_pages(pages)


def test_a_hole_ends_the_range_and_only_the_prefix_is_migrated_and_pinned() -> None:
    """A hole stops the walk: only the prefix found is checked, migrated and pinned."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 4)
    p.munmap(a + 3 * PAGE_SIZE, PAGE_SIZE)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 4, FOLL_WRITE | LT, pages) == 3
    assert all(pg.folio.zone == Zone.NORMAL for pg in pages[:3])
    assert k.vmstat["pgmigrate_success"] == 3 and net_pins(k) == 3
    k.unpin_user_pages(pages[:3])


def test_fast_prefix_is_returned_when_the_slow_remainder_fails() -> None:
    """GUP-fast pins the pinnable prefix; migrating the rest fails (an extra reference):
    the call returns the prefix, which stays pinned, and nothing of the rest."""
    k = movable_machine()
    p = k.spawn("app")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    first: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_WRITE | LT, first) == 1   # page 0: unmovable
    k.unpin_user_pages(first)
    p.write(a + PAGE_SIZE, b"m")                                 # page 1: movable
    held: list[Page | None] = []
    assert p.get_user_pages_fast(a + PAGE_SIZE, 1, 0, held) == 1
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE | LT, pages) == 1
    assert pages[0] == first[0] and gupsim.page_maybe_dma_pinned(pages[0])
    assert pages[1:] in ([], [None]) and net_pins(k) == 1
    assert not gupsim.page_maybe_dma_pinned(held[0])
    k.unpin_user_pages(pages[:1])
    k.put_page(held[0])


def test_longterm_pin_of_a_movable_thp_migrates_the_whole_folio() -> None:
    """A PMD-mapped THP moves as one folio: 512 pages, one migration, one PMD mapping."""
    k = movable_machine()
    k.thp.set("always")
    p = k.spawn("app")
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.write(a + 7 * PAGE_SIZE, b"seven")
    old = k.page(mapped_pfn(p, a)).folio
    assert old.order == 9 and old.zone == Zone.MOVABLE
    vec = PageArray(512)
    assert p.pin_user_pages_fast(a, 512, FOLL_WRITE | LT, vec) == 512
    new = vec[0].folio
    assert new.order == 9 and new.zone == Zone.NORMAL and new.pincount == 512
    assert pte_bits(p, a) & PTE.PMD and mapped_pfn(p, a) == new.pfn
    assert vec[7].read(0, 5) == b"seven"
    assert k.vmstat["pgmigrate_success"] == 512 and k.mem.kind[old.pfn] == Kind.FREE
    k.unpin_user_pages(vec)


@pytest.mark.parametrize("kind", ["ext4", "tmpfs", "memfd"])
def test_longterm_pin_migrates_page_cache_and_the_file_follows(kind: str) -> None:
    """Page-cache folios move too: the file's cache now holds the new folio, so reads of
    the file and every mapping see what the device sees."""
    k = movable_machine()
    p = k.spawn("app")
    if kind == "memfd":
        f = p.memfd_create("buf")
        f.truncate(2 * PAGE_SIZE)
    else:
        f = k.fs(kind).create("data", 2 * PAGE_SIZE)
    f.pwrite(0, b"cached")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.read(a, 6) == b"cached"
    old = f.page_cache[0]
    assert k.page(old).folio.zone == Zone.MOVABLE
    flags = LT if kind == "ext4" else FOLL_WRITE | LT   # ext4 refuses writable ones
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, flags, pages) == 1
    new = pages[0].folio
    assert new.zone == Zone.NORMAL and f.page_cache[0] == new.pfn != old
    assert new.mapping == f.inode_id and new.index == 0
    assert k.mem.kind[old] == Kind.FREE
    k.dma_write(pages[0], 0, b"DEVICE")
    assert f.pread(0, 6) == b"DEVICE" and p.read(a, 6) == b"DEVICE"
    other = k.spawn("other")
    b = other.mmap(0, 2 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    assert other.read(b, 6) == b"DEVICE" and mapped_pfn(other, b) == new.pfn
    k.unpin_user_pages(pages)


# -- 4.4 / 4.5: when migration fails --------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_extra_reference_makes_the_longterm_pin_fail_with_enomem(entry: EntryPoint) -> None:
    """A GET reference on a movable page makes its refcount freeze fail: -ENOMEM, nothing
    pinned, the other page migrated anyway, and k.gup.last_migrate_failure says why."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 2)
    held: list[Page | None] = []
    assert p.get_user_pages_fast(a + PAGE_SIZE, 1, 0, held) == 1
    stuck = held[0].pfn
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 2, FOLL_WRITE | LT, pages) == -ENOMEM
    assert all(pg is None for pg in pages)
    assert net_pins(k) == 0 and k.vmstat[ACQ] >= 2, "every pin taken was dropped"
    assert not gupsim.page_maybe_dma_pinned(k.page(mapped_pfn(p, a)))
    assert mapped_pfn(p, a + PAGE_SIZE) == stuck, "the referenced page did not move"
    assert k.page(mapped_pfn(p, a)).folio.zone == Zone.NORMAL, "the other page moved"
    assert k.vmstat["pgmigrate_fail"] == 1 and k.vmstat["pgmigrate_success"] == 1
    assert f"{stuck:#x}" in k.gup.last_migrate_failure
    assert "references" in k.gup.last_migrate_failure
    assert k.vmstat["nr_isolated_anon"] == 0 and "lru" in held[0].folio.flags
    assert p.read(a + PAGE_SIZE, 1) == b"\x02"
    k.put_page(held[0])
    pages = []
    assert entry.invoke(p, a, 2, FOLL_WRITE | LT, pages) == 2
    k.unpin_user_pages(pages)


def test_a_folio_that_cannot_be_isolated_makes_the_loop_retry_up_to_the_limit() -> None:
    """Not on the LRU (sitting in a per-CPU batch, say): nothing is migrated, every round
    unpins and re-pins the whole range. The kernel would spin; the model stops after
    k.gup.migrate_retry_limit rounds with -ENOMEM and a warning."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 3)
    off_lru = mapped_pfn(p, a + PAGE_SIZE)
    k.mem.clear_flag(off_lru, PG.lru)
    k.gup.migrate_retry_limit = 5
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 3, FOLL_WRITE | LT, pages) == -ENOMEM
    assert all(pg is None for pg in pages)
    assert k.vmstat[ACQ] == k.vmstat[REL] == 3 * 5, "five rounds of three pins each"
    assert "__gup_longterm_locked: no progress" in k.warnings.sites()
    assert "isolated" in k.gup.last_migrate_failure and "5 rounds" in k.gup.last_migrate_failure
    assert f"{off_lru:#x}" in k.gup.last_migrate_failure
    assert k.vmstat["pgmigrate_success"] == 2, "the isolatable pages moved in round one"
    k.mem.set_flag(off_lru, PG.lru)
    assert p.pin_user_pages(a, 3, FOLL_WRITE | LT, pages) == 3
    k.unpin_user_pages(pages)


def test_no_unmovable_memory_for_the_target_is_enomem() -> None:
    """The target must come from ZONE_NORMAL outside CMA; when that is full the migration
    fails, the call returns -ENOMEM and holds nothing."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 1)
    while True:
        try:
            k.alloc.alloc_frames(0, movable=False)
        except OutOfMemory:
            break
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | LT, pages) == -ENOMEM
    assert net_pins(k) == 0 and pages == [None]
    assert "no memory" in k.gup.last_migrate_failure
    assert k.page(mapped_pfn(p, a)).folio.zone == Zone.MOVABLE
    assert p.read(a, 1) == b"\x01"


def test_isolation_keeps_the_folio_alive_while_its_pins_are_dropped() -> None:
    """Between unpinning and migrating, the process unmaps the page (race point
    longterm:before_migrate): the isolation reference keeps the folio allocated, migration
    finds it freed under it, and the re-pin finds no mapping: -EFAULT, no leak."""
    k = movable_machine()
    p = k.spawn("app")
    a = written_anon(p, 1)
    old = mapped_pfn(p, a)
    seen: list[int] = []

    def unmap(heads: list[int]) -> None:
        p.munmap(a, PAGE_SIZE)
        seen.append(int(k.mem.refcount[heads[0]]))
        assert k.mem.kind[heads[0]] != Kind.FREE

    k.gup.on_race("longterm:before_migrate", unmap)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_WRITE | LT, pages) == -EFAULT
    assert seen == [1], "only the isolation reference was left"
    assert k.mem.kind[old] == Kind.FREE and net_pins(k) == 0
    assert k.vmstat["pgmigrate_success"] == 0


# -- 4.3: PF_MEMALLOC_PIN ---------------------------------------------------------------------


@pytest.mark.parametrize("flags", [FOLL_WRITE | LT, LT])
@pytest.mark.parametrize("entry", ENTRIES)
def test_pages_faulted_in_by_a_longterm_pin_are_allocated_unmovable(flags: int,
                                                                   entry: EntryPoint) -> None:
    """While a long-term pin runs, faults allocate outside ZONE_MOVABLE and CMA, so nothing
    needs migrating; a short-term pin of the same kind of memory faults in movable pages."""
    k = movable_machine()
    p = k.spawn("app")
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 8, flags, pages) == 8
    assert all(pg.folio.zone == Zone.NORMAL for pg in pages)
    assert k.vmstat["pgmigrate_success"] == 0 and k.vmstat[ACQ] == 8
    assert not k.env.memalloc_pin, "the task leaves the PF_MEMALLOC_PIN section"
    short: list[Page | None] = []
    b = p.mmap(0, PAGE_SIZE, RW, ANON)
    assert entry.invoke(p, b, 1, FOLL_WRITE, short) == 1
    assert short[0].folio.zone == Zone.MOVABLE
    k.unpin_user_pages(pages)
    k.unpin_user_pages(short)


def test_pf_memalloc_pin_ends_with_a_failed_call() -> None:
    """Also on the error paths the task leaves the section: later faults are movable."""
    k = movable_machine()
    p = k.spawn("app")
    f = k.fs("dax").create("pmem", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.pin_user_pages(a, 1, LT, []) == -EOPNOTSUPP
    assert not k.env.memalloc_pin
    b = written_anon(p, 1)
    assert k.page(mapped_pfn(p, b)).folio.zone == Zone.MOVABLE


@pytest.mark.parametrize("how", ["fault", "memfd_pin_folios"])
def test_page_cache_allocated_by_a_longterm_pin_is_unmovable(how: str) -> None:
    """shmem folios allocated for a long-term pin (by its fault, or by memfd_pin_folios()
    filling a hole) are allocated unmovable in the first place: no migration."""
    k = movable_machine()
    p = k.spawn("app")
    f = p.memfd_create("buf")
    f.truncate(PAGE_SIZE)
    if how == "fault":
        a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
        pages: list[Page | None] = []
        assert p.pin_user_pages(a, 1, FOLL_WRITE | LT, pages) == 1
        folio = pages[0].folio
    else:
        folios: list = []
        assert k.memfd_pin_folios(f, 0, PAGE_SIZE - 1, folios, 1, [0]) == 1
        folio = folios[0]
    assert folio.zone == Zone.NORMAL
    assert k.vmstat["pgmigrate_success"] == 0


# -- 4.6: memfd_pin_folios() ------------------------------------------------------------------


def test_memfd_pin_folios_pins_each_folio_once_and_fills_holes(k: Kernel, p: Process) -> None:
    """Three small shmem folios for bytes 100 .. 3*4096-1: three folios, one pin each, the
    offset of byte 100 in the first; the hole in the middle is allocated and pinned."""
    f = p.memfd_create("buf")
    f.truncate(3 * PAGE_SIZE)
    f.pwrite(0, b"zero")
    f.pwrite(2 * PAGE_SIZE, b"two")
    assert 1 not in f.page_cache
    folios: list = []
    offset = [-1]
    assert k.memfd_pin_folios(f, 100, 3 * PAGE_SIZE - 1, folios, 8, offset) == 3
    assert offset == [100]
    assert [fo.pfn for fo in folios] == [f.page_cache[i] for i in range(3)]
    assert [fo.page(0).read(0, 4) for fo in folios] == [b"zero", bytes(4), b"two\0"]
    assert all(fo.refcount == 1 + GUP_PIN_COUNTING_BIAS for fo in folios)
    assert k.vmstat[ACQ] == 3
    assert [o.call for o in k.sanitizer.outstanding()] == ["memfd_pin_folios"]
    k.unpin_folios(folios)
    assert net_pins(k) == 0 and all(fo.refcount == 1 for fo in folios)


def test_memfd_pin_folios_stops_at_max_folios(k: Kernel, p: Process) -> None:
    """max_folios bounds the result; the offset is that of start in the first folio."""
    f = p.memfd_create("buf")
    f.truncate(4 * PAGE_SIZE)
    folios: list = []
    offset = [0]
    assert k.memfd_pin_folios(f, PAGE_SIZE + 5, 4 * PAGE_SIZE - 1, folios, 2, offset) == 2
    assert offset == [5] and [fo.index for fo in folios] == [1, 2]
    assert net_pins(k) == 2 and 3 not in f.page_cache
    k.unpin_folios(folios)


def test_memfd_pin_folios_on_hugetlbfs_pins_huge_folios(k: Kernel, p: Process) -> None:
    """hugetlbfs indices are in huge pages: a range inside two 2 MiB pages gives two huge
    folios with one pin each, and the offset inside the first huge page."""
    f = p.memfd_create("huge", MFD_HUGETLB)
    f.truncate(2 * PMD_SIZE)
    a = p.mmap(0, 2 * PMD_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a + PMD_SIZE + 3, b"second")
    folios: list = []
    offset = [0]
    start = 12345
    assert k.memfd_pin_folios(f, start, PMD_SIZE + 99, folios, 8, offset) == 2
    assert offset == [start]
    assert [fo.order for fo in folios] == [9, 9] and [fo.pincount for fo in folios] == [1, 1]
    assert [fo.index for fo in folios] == [0, 512]
    assert folios[1].page(0).read(3, 6) == b"second"
    assert mapped_pfn(p, a + PMD_SIZE) == folios[1].pfn
    assert k.vmstat[ACQ] == 2
    k.unpin_folios(folios)
    assert [fo.pincount for fo in folios] == [0, 0]


@pytest.mark.parametrize("args", [
    (0, 3 * PAGE_SIZE, 8),              # end >= i_size
    (0, 10 * PAGE_SIZE, 8),
    (-1, 100, 8),                       # start < 0
    (200, 100, 8),                      # start > end
    (0, 100, 0),                        # max_folios == 0
])
def test_memfd_pin_folios_argument_errors(k: Kernel, p: Process, args: tuple) -> None:
    """Bad ranges and max_folios == 0 are -EINVAL before anything is pinned."""
    f = p.memfd_create("buf")
    f.truncate(3 * PAGE_SIZE)
    start, end, max_folios = args
    folios: list = []
    assert k.memfd_pin_folios(f, start, end, folios, max_folios, [0]) == -EINVAL
    assert folios == [] and k.vmstat[ACQ] == 0


def test_memfd_pin_folios_wants_shmem_or_hugetlbfs(k: Kernel, p: Process) -> None:
    """Only shmem and hugetlbfs files can be pinned by folio; others are -EINVAL."""
    for f in (k.fs("ext4").create("e", PAGE_SIZE), k.fs("dax").create("d", PAGE_SIZE), None):
        assert k.memfd_pin_folios(f, 0, 100, [], 1, [0]) == -EINVAL
    assert k.vmstat[ACQ] == 0


def test_memfd_pin_folios_migrates_out_of_movable_memory() -> None:
    """The same check-and-migrate step as GUP: the folios come back in ZONE_NORMAL, the
    memfd's cache holds them, a mapping sees the device's writes."""
    k = movable_machine()
    p = k.spawn("app")
    f = p.memfd_create("buf")
    f.truncate(2 * PAGE_SIZE)
    f.pwrite(0, b"abc")
    old = f.page_cache[0]
    assert k.page(old).folio.zone == Zone.MOVABLE
    folios: list = []
    assert k.memfd_pin_folios(f, 0, 2 * PAGE_SIZE - 1, folios, 2, [0]) == 2
    assert all(fo.zone == Zone.NORMAL for fo in folios)
    assert f.page_cache[0] == folios[0].pfn != old and k.mem.kind[old] == Kind.FREE
    assert folios[0].page(0).read(0, 3) == b"abc"
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    k.dma_write(folios[1].page(0), 0, b"dev")
    assert p.read(a + PAGE_SIZE, 3) == b"dev"
    k.unpin_folios(folios)


def test_memfd_pins_can_be_split_and_released_by_range(k: Kernel, p: Process) -> None:
    """Spec 4.6 step 5: add pins to a pinned huge folio, then release sub-ranges page by
    page with unpin_user_page_range_dirty_lock(); the folio ends unpinned and dirty."""
    f = p.memfd_create("huge", MFD_HUGETLB)
    f.truncate(PMD_SIZE)
    folios: list = []
    assert k.memfd_pin_folios(f, 0, PMD_SIZE - 1, folios, 1, [0]) == 1
    fo = folios[0]
    assert k.folio_add_pins(fo, 3) == 0 and fo.pincount == 4
    k.unpin_folio(fo)
    k.unpin_user_page_range_dirty_lock(fo.page(10), 3, True)
    assert fo.pincount == 0 and fo.dirty
    assert net_pins(k) == 0
