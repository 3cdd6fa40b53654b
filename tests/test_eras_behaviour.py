"""The era switches that change behaviour (`gupsim.eras`), each on both sides of the
release that brought it: the same steps on the last kernel without the change and the
first with it, asserting what differs."""

from __future__ import annotations

import pytest

from gupsim import (
    EFAULT,
    FOLL_LONGTERM,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
    Process,
)
from gupsim.memory import Zone
from gupsim.memory.page import page_maybe_dma_pinned
from gupsim.mm.vma import PTE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def _machine(version: str, **kw: object) -> tuple[Kernel, Process]:
    k = Kernel(memory="64MiB", version=version, **kw)  # type: ignore[arg-type]
    return k, k.spawn()


def _filled(p: Process, fill: bytes, flags: int = ANON, size: int = PAGE_SIZE) -> int:
    a = p.mmap(0, size, RW, flags)
    p.write(a, fill * PAGE_SIZE)
    return a


def _pin(p: Process, a: int, flags: int) -> Page:
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, flags, pages) == 1
    assert pages[0] is not None
    return pages[0]


# -- fork-copies-pinned-anon (5.9) and fork-copies-pinned-hugetlb (5.12) ---------------------


def _dma_target_after_fork(version: str, flags: int = ANON, size: int = PAGE_SIZE,
                           **kw: object) -> tuple[bytes, bytes]:
    """Pin a buffer for DMA, fork, the parent writes: (what the pinned page holds, what
    the parent reads)."""
    k, p = _machine(version, **kw)
    a = _filled(p, b"\x01", flags, size)
    page = _pin(p, a, FOLL_WRITE | FOLL_LONGTERM)
    child = p.fork()
    p.write(a, b"\xff" * 8)
    seen = page.read(0, 8), p.read(a, 8)
    child.exit()
    k.unpin_user_page(page)
    assert k.check() == []
    return seen


def test_fork_shares_a_pinned_anon_page_until_5_8() -> None:
    """<= 5.8: the pinned page is shared COW; the parent's write copies (mapcount 2), so
    the device's page is the child's now: the DMA write lost after fork."""
    pinned, parent = _dma_target_after_fork("5.8")
    assert pinned == b"\x01" * 8 and parent == b"\xff" * 8


def test_fork_copies_a_pinned_anon_page_from_5_9() -> None:
    pinned, parent = _dma_target_after_fork("5.9")
    assert pinned == parent == b"\xff" * 8


@pytest.mark.parametrize("version, in_sync", [("5.11", False), ("5.12", True)])
def test_fork_and_pinned_hugetlb_page(version: str, in_sync: bool) -> None:
    """Pinned hugetlb pages are copied at fork only from 5.12 (anon pages from 5.9)."""
    pinned, parent = _dma_target_after_fork(version, ANON | MAP_HUGETLB, PMD_SIZE,
                                            nr_hugepages=4)
    assert parent == b"\xff" * 8
    assert (pinned == parent) is in_sync


# -- cow-reuse-page-count (5.9): the CVE-2020-29374 leak through a GUP reference ---------------


@pytest.mark.parametrize("version, leaks", [("5.7", True), ("5.9", False)])
def test_gup_reference_of_a_child_sees_the_parents_later_write(version: str,
                                                                leaks: bool) -> None:
    """The child takes a R/O GUP reference (vmsplice) on a page shared with the parent,
    then exits; the parent writes a secret. Before 5.9 the page is mapped once, so the
    write reuses it and the child's reference reads the secret; from 5.9 the extra
    reference forces a copy. (5.8 closed it differently: gup-forced-cow-break.)"""
    k, p = _machine(version)
    a = _filled(p, b"\x01")
    child = p.fork()
    pages: list[Page | None] = []
    assert child.get_user_pages_fast(a, 1, 0, pages) == 1
    child.exit()
    p.write(a, b"secret")
    assert (pages[0].read(0, 6) == b"secret") is leaks  # type: ignore[union-attr]
    k.put_page(pages[0])
    assert k.check() == []


# -- anon-exclusive-unshare (5.19), gup-forced-cow-break (5.8 only) ----------------------------


@pytest.mark.parametrize("version, in_sync", [("5.7", False), ("5.8", True), ("5.9", False),
                                              ("5.13", False), ("5.19", True)])
def test_ro_pin_of_a_page_shared_with_a_child(version: str, in_sync: bool) -> None:
    """A R/O pin of an anon page shared with a child, then the process writes: the pin
    loses sync (CVE-2020-29374 family) except on 5.8, whose GUP broke COW before taking
    the page, and from 5.19, where the pin unshares the page first."""
    k, p = _machine(version)
    a = _filled(p, b"\x01")
    child = p.fork()
    page = _pin(p, a, 0)
    p.write(a, b"\xff" * 8)
    assert (page.read(0, 8) == b"\xff" * 8) is in_sync
    k.unpin_user_page(page)
    child.exit()
    assert k.check() == []


@pytest.mark.parametrize("version, gup_fast_takes", [("5.7", True), ("5.8", False),
                                                     ("5.9", True)])
def test_gup_fast_read_needs_a_writable_entry_on_5_8(version: str,
                                                      gup_fast_takes: bool) -> None:
    """5.8 ran GUP-fast with FOLL_WRITE even to read: a R/O-mapped page falls back to the
    slow path (which breaks COW), so FOLL_FAST_ONLY gets nothing."""
    from gupsim.gup.fast import gup_fast
    from gupsim.gup.flags import FOLL_FAST_ONLY, FOLL_PIN
    from gupsim.gup.pages import PagesOut
    k, p = _machine(version)
    a = _filled(p, b"\x01")
    child = p.fork()                      # the parent's entry is write-protected now
    pages: list[Page | None] = []
    got = gup_fast(k.env, p.mm, a, a + PAGE_SIZE, FOLL_PIN | FOLL_FAST_ONLY,
                   PagesOut(pages, k.mem))
    assert (got == 1) is gup_fast_takes
    if got:
        k.unpin_user_pages(pages)
    child.exit()
    assert k.check() == []


# -- reliable-ro-longterm (6.2) ----------------------------------------------------------------


@pytest.mark.parametrize("version, in_sync", [("6.0", False), ("6.2", True)])
def test_ro_longterm_pin_of_the_zero_page(version: str, in_sync: bool) -> None:
    """A R/O long-term pin of never-written private memory: before 6.2 it pins the shared
    zero page and the process's first write goes elsewhere; from 6.2 it unshares first."""
    k, p = _machine(version)
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    page = _pin(p, a, FOLL_LONGTERM)
    assert (page.folio.is_zero) is not in_sync
    p.write(a, b"\xff" * 8)
    assert (page.read(0, 8) == b"\xff" * 8) is in_sync
    k.unpin_user_page(page)
    assert k.check() == []


# -- longterm-file-write-refused (6.5) ---------------------------------------------------------


def _ext4_shared(k: Kernel, p: Process) -> tuple[object, int]:
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"A" * 8)
    return f, a


@pytest.mark.parametrize("fast", [False, True])
def test_writable_longterm_pin_of_ext4_refused_from_6_5(fast: bool) -> None:
    k, p = _machine("6.5")
    _, a = _ext4_shared(k, p)
    pin = p.pin_user_pages_fast if fast else p.pin_user_pages
    assert pin(a, 1, FOLL_WRITE | FOLL_LONGTERM, []) == -EFAULT
    assert k.check() == []


def test_writable_longterm_pin_of_ext4_accepted_before_6_5_and_the_dma_data_lost() -> None:
    """6.3 accepts the pin; writeback cleans the page while the device keeps writing it;
    the driver unpins without dirtying, so reclaim drops the device's bytes. (A driver
    that dirties at unpin instead met ext4's BUG, later its "does not have buffers
    attached" warning, once reclaim had stripped the buffers: not modelled.)"""
    k, p = _machine("6.3")
    f, a = _ext4_shared(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    page = pages[0]
    assert page is not None
    f.fsync()                                       # type: ignore[attr-defined]
    assert not page.folio.dirty
    k.mem.write(page.pfn, 0, b"D" * 8)              # the device's DMA: no page_mkwrite
    k.unpin_user_page(page)
    p.munmap(a, PAGE_SIZE)
    assert f.drop_caches() == 1                     # type: ignore[attr-defined]
    assert f.pread(0, 8) == b"A" * 8                # type: ignore[attr-defined]
    assert k.check() == []


# -- pin-counting-bias (5.7): FOLL_PIN a placeholder in 5.6 -------------------------------------


@pytest.mark.parametrize("version, held, tracked", [("5.6", 1, False),
                                                    ("5.7", GUP_PIN_COUNTING_BIAS, True)])
def test_pin_counting(version: str, held: int, tracked: bool) -> None:
    k, p = _machine(version)
    a = _filled(p, b"\x01")
    before = k.page(int(p.mm.find_vma(a).pfn[0])).refcount      # type: ignore[union-attr]
    page = _pin(p, a, FOLL_WRITE)
    assert page.refcount - before == held
    assert page_maybe_dma_pinned(page) is tracked
    k.unpin_user_page(page)
    assert page.refcount == before and not page_maybe_dma_pinned(page)
    assert k.check() == []


def test_fork_cannot_see_a_5_6_pin() -> None:
    """With plain references nothing tells fork the page is pinned; the 5.9 copy rule
    would not help on 5.6 (and does not exist there)."""
    pinned, parent = _dma_target_after_fork("5.6")
    assert pinned != parent


# -- huge-zero-wp-thp (6.13) -------------------------------------------------------------------


@pytest.mark.parametrize("version, thp", [("6.11", False), ("6.13", True)])
def test_write_to_the_huge_zero_page(version: str, thp: bool) -> None:
    """From 6.13 the write fault replaces the huge zero PMD with a new THP; before, the
    PMD is split and one 4 KiB page copied."""
    k, p = _machine(version)
    k.thp.use_zero_page = True
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    a = (a + PMD_SIZE - 1) // PMD_SIZE * PMD_SIZE
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    assert p.read(a, 4) == bytes(4)
    p.write(a + PAGE_SIZE, b"w")
    vma = p.mm.find_vma(a)
    assert vma is not None
    i = vma.idx(a)
    assert bool(vma.pte[i] & PTE.PMD) is thp
    assert (k.page(int(vma.pfn[i])).folio.order == 9) is thp
    assert p.read(a + PAGE_SIZE, 1) == b"w" and p.read(a, 1) == b"\0"
    assert k.check() == []



# -- longterm-migrate-movable (5.13) -----------------------------------------------------------


@pytest.mark.parametrize("version, migrated", [("5.12", False), ("5.13", True)])
def test_longterm_pin_and_zone_movable(version: str, migrated: bool) -> None:
    """From 5.13 a long-term pin moves the page out of ZONE_MOVABLE first; before, the pin
    stays in the movable zone (which then cannot be offlined)."""
    k = Kernel(memory="256MiB", movable="128MiB", version=version)
    p = k.spawn()
    a = _filled(p, b"\x07")
    assert k.page(int(p.mm.find_vma(a).pfn[0])).folio.zone == Zone.MOVABLE  # type: ignore[union-attr]
    page = _pin(p, a, FOLL_WRITE | FOLL_LONGTERM)
    assert (page.folio.zone == Zone.NORMAL) is migrated
    assert page.read(0, 1) == b"\x07"
    k.unpin_user_page(page)
    assert k.check() == []


# -- gup-fast-write-protect-seq (5.11) ---------------------------------------------------------


@pytest.mark.parametrize("version, raced", [("5.9", True), ("5.11", False)])
def test_gup_fast_pin_racing_fork(version: str, raced: bool) -> None:
    """GUP-fast pins between fork's "is it pinned?" check and its write-protect. Before
    5.11 nothing stops it: the page is pinned and shared with the child anyway, so the
    parent's next write copies it and the DMA target is lost. From 5.11 the walk sees
    write_protect_seq odd and takes nothing (a real caller then falls back to the slow
    path, which waits for fork's mmap_lock)."""
    from gupsim.gup.fast import gup_fast
    from gupsim.gup.flags import FOLL_FAST_ONLY, FOLL_PIN
    from gupsim.gup.pages import PagesOut
    k, p = _machine(version)
    a = _filled(p, b"\x01")
    pages: list[Page | None] = []

    def pin_now(**_: object) -> None:
        flags = FOLL_PIN | FOLL_WRITE | FOLL_LONGTERM | FOLL_FAST_ONLY
        gup_fast(k.env, p.mm, a, a + PAGE_SIZE, flags, PagesOut(pages, k.mem))

    k.gup.on_race("fork:before_wrprotect", pin_now)
    child = p.fork()
    assert (len(pages) == 1) is raced
    if raced:
        page = pages[0]
        assert page is not None and page.mapcount == 2, "pinned, yet shared with the child"
        p.write(a, b"\xff" * 8)
        assert page.read(0, 8) == b"\x01" * 8 and p.read(a, 8) == b"\xff" * 8
        k.unpin_user_pages(pages)
    child.exit()
    assert k.check() == []


# -- longterm-migrate-cma (5.1: on in every profile) -------------------------------------------


@pytest.mark.parametrize("version", ["5.6", "6.13"])
def test_longterm_pin_migrates_out_of_cma_on_every_era(version: str) -> None:
    """CMA migration predates every profile that can pin (5.6 is the oldest with
    pin_user_pages*()): a long-term pin of a CMA page moves it out on 5.6 as on today."""
    k = Kernel(memory="256MiB", cma="128MiB", version=version)
    p = k.spawn()
    a = _filled(p, b"\x09")
    assert k.page(int(p.mm.find_vma(a).pfn[0])).folio.is_cma  # type: ignore[union-attr]
    page = _pin(p, a, FOLL_WRITE | FOLL_LONGTERM)
    assert not page.folio.is_cma and page.read(0, 1) == b"\x09"
    k.unpin_user_page(page)
    assert k.check() == []


# -- foll-force-no-foll-cow (6.0) ---------------------------------------------------------------


def _force_write_racing_continue(version: str) -> tuple[Kernel, bytes, bytes]:
    """A FOLL_FORCE write through /proc/self/mem to a R/O private memfd mapping; between
    its COW fault and the retry the copy is zapped and the memfd page mapped back R/O
    and dirty (UFFDIO_CONTINUE). (file contents, what the mapping shows) afterwards."""
    from gupsim.constants import MADV_DONTNEED
    from gupsim.drivers.proc_mem import proc_mem_write
    from gupsim.mm.userfaultfd import mfill_continue
    k, p = _machine(version)
    f = p.memfd_create("victim")
    f.truncate(PAGE_SIZE)
    f.pwrite(0, b"original")
    a = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    assert p.read(a, 8) == b"original"

    def swap_back(**_: object) -> None:
        p.madvise(a, PAGE_SIZE, MADV_DONTNEED)
        assert mfill_continue(k.env, p.mm, a, PAGE_SIZE) == PAGE_SIZE
        assert p.mm.find_vma(a).pte[0] & PTE.DIRTY  # type: ignore[union-attr]

    k.gup.on_race("gup_slow:after_fault", swap_back)
    assert proc_mem_write(k, p, p, a, b"pwned!!!") == 8
    return k, f.pread(0, 8), p.read(a, 8)


def test_foll_force_write_before_6_0_lands_in_the_file() -> None:
    """Before 6.0 the retry carries FOLL_COW and takes the dirty R/O entry of the shared
    memfd page: the write modifies a file the process may only read (CVE-2022-2590)."""
    k, file_bytes, mapped = _force_write_racing_continue("5.19")
    assert file_bytes == b"pwned!!!" and mapped == b"pwned!!!"
    assert k.check() == []


def test_foll_force_write_from_6_0_faults_again_and_writes_a_copy() -> None:
    """From 6.0 a R/O entry is taken only for an exclusive anonymous page: the memfd page
    is not, so GUP faults again (a new COW copy) and the file stays as it was."""
    k, file_bytes, mapped = _force_write_racing_continue("6.0")
    assert file_bytes == b"original" and mapped == b"pwned!!!"
    assert k.check() == []


@pytest.mark.parametrize("version", ["5.19", "6.0"])
def test_foll_force_write_without_a_race_writes_a_private_copy(version: str) -> None:
    """Without the race both rules end the same: FOLL_COW's dirty entry before 6.0, the
    exclusive anonymous copy from 6.0; the file is untouched and nothing warns."""
    from gupsim.drivers.proc_mem import proc_mem_write
    k, p = _machine(version)
    f = p.memfd_create("victim")
    f.truncate(2 * PAGE_SIZE)
    f.pwrite(0, b"original")
    a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    b = _filled(p, b"\x03")
    p.mprotect(b, PAGE_SIZE, PROT_READ)          # a R/O private anon page too
    assert proc_mem_write(k, p, p, a + PAGE_SIZE - 4, b"12345678") == 8
    assert proc_mem_write(k, p, p, b, b"anon") == 4
    assert f.pread(0, 8) == b"original" and p.read(a + PAGE_SIZE - 4, 8) == b"12345678"
    assert p.read(b, 5) == b"anon\x03"
    assert k.warnings.events == [] and k.check() == []


# -- mremap-move-multiple-vmas (6.17) ---------------------------------------------------------

def _split_in_three(p: Process) -> int:
    """Four pages, the middle two made R/O: three VMAs, each page's first byte its index."""
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    for i in range(4):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    p.mprotect(a + PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ)
    return a


@pytest.mark.parametrize("version, moves", [("6.13", False), ("6.17", True)])
def test_a_pure_move_over_several_vmas_from_6_17(version: str, moves: bool) -> None:
    from gupsim.constants import MREMAP_FIXED, MREMAP_MAYMOVE
    k, p = _machine(version)
    a = _split_in_three(p)
    dst = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, ANON)
    pin = _pin(p, a + 2 * PAGE_SIZE, 0)                 # a pinned page moves with its PTE
    if not moves:
        with pytest.raises(OSError) as exc:
            p.mremap(a, 4 * PAGE_SIZE, 4 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
        assert exc.value.errno == EFAULT
        assert p.read(a, 1) == b"\x01"                  # nothing moved
        k.unpin_user_page(pin)
        return
    assert p.mremap(a, 4 * PAGE_SIZE, 4 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst
    assert [p.read(dst + i * PAGE_SIZE, 1) for i in range(4)] == [b"\x01", b"\x02", b"\x03",
                                                                   b"\x04"]
    assert [(v.start - dst) // PAGE_SIZE for v in p.mm.vmas_in(dst, dst + 4 * PAGE_SIZE)] \
        == [0, 1, 3]                                     # still three VMAs, in order
    assert not p.mm.vmas_in(a, a + 4 * PAGE_SIZE)
    assert pin.pfn == p.mm.find_vma(dst + 2 * PAGE_SIZE).pfn[1]
    k.unpin_user_page(pin)
    assert k.check() == []


def test_a_multi_vma_move_keeps_gaps_refuses_a_leading_gap_and_an_ext4_member() -> None:
    from gupsim.constants import MAP_FIXED, MREMAP_FIXED, MREMAP_MAYMOVE
    move = MREMAP_MAYMOVE | MREMAP_FIXED
    k, p = _machine("6.17")
    a = _split_in_three(p)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)                   # a gap inside: kept at the target
    dst = p.mmap(0, 8 * PAGE_SIZE, PROT_READ, ANON)
    assert p.mremap(a, 4 * PAGE_SIZE, 4 * PAGE_SIZE, move, dst) == dst
    assert [p.read(dst + i * PAGE_SIZE, 1) for i in (0, 2, 3)] == [b"\x01", b"\x03", b"\x04"]
    assert p.read(dst + PAGE_SIZE, 1) == b"\x00"         # the target's own page, untouched
    g = p.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    p.munmap(g, PAGE_SIZE)                               # the range starts in a gap
    with pytest.raises(OSError) as exc:
        p.mremap(g, 3 * PAGE_SIZE, 3 * PAGE_SIZE, move, dst + 4 * PAGE_SIZE)
    assert exc.value.errno == EFAULT
    _, b = _ext4_shared(k, p)
    c = p.mmap(b + PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED)
    assert c == b + PAGE_SIZE
    with pytest.raises(OSError) as exc:
        p.mremap(b, 2 * PAGE_SIZE, 2 * PAGE_SIZE, move, dst + 4 * PAGE_SIZE)
    assert exc.value.errno == EFAULT, "an ext4 mapping cannot move together with others"
    assert p.mremap(b, PAGE_SIZE, PAGE_SIZE, move, dst + 4 * PAGE_SIZE) == dst + 4 * PAGE_SIZE
