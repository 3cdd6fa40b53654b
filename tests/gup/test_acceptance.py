"""The 30 acceptance tests of gup-spec.md section 11.2, one function each.

Each test drives the model through the public contract (DESIGN.md) and checks the
spec's expected result: return values, refcount and pincount, the vmstat pin counters,
MMF_HAS_PINNED and the WARN_ON_ONCE sites recorded in `k.warnings`.
"""

from __future__ import annotations

import pytest
from callcount import python_calls
from gup_helpers import (
    anon_rw,
    counters,
    delta,
    has_pinned,
    mapped_pfn,
    pte_of,
    special_vma,
    thp_region,
)

import gupsim
from gupsim import (
    EFAULT,
    EHWPOISON,
    EINVAL,
    ENOMEM,
    FOLL_GET,
    FOLL_HWPOISON,
    FOLL_LONGTERM,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_PIN,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_DONTNEED,
    MADV_HWPOISON,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.memory import Kind, Zone
from gupsim.memory.migrate import migrate_folio
from gupsim.mm import PTE, VM
from gupsim.mm.reclaim import split_folio

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
ACQ = "nr_foll_pin_acquired"
REL = "nr_foll_pin_released"
EEXIST = gupsim.EEXIST


# -- helpers -----------------------------------------------------------------------------


# -- 1 - 4: pinning fresh anonymous memory -------------------------------------------------


def test_11_2_01_pin_fresh_anon_rw(k: Kernel, p: Process) -> None:
    """A RW pin write-faults a fresh page and biases its refcount by 1024."""
    a = anon_rw(p)
    assert not has_pinned(p)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    folio = pages[0].folio
    assert folio.refcount == 1 + GUP_PIN_COUNTING_BIAS
    assert folio.kind == Kind.ANON and pages[0].anon_exclusive
    assert pages[0].pfn == mapped_pfn(p, a)
    assert delta(k, before) == (1, 0)
    assert has_pinned(p)
    assert gupsim.page_maybe_dma_pinned(pages[0])
    k.unpin_user_pages(pages)


def test_11_2_02_unpin_restores_refcount(k: Kernel, p: Process) -> None:
    """unpin_user_page() takes the bias back and counts one release."""
    a = anon_rw(p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    before = counters(k)
    k.unpin_user_page(pages[0])
    assert pages[0].folio.refcount == 1
    assert delta(k, before) == (0, 1)
    assert not gupsim.page_maybe_dma_pinned(pages[0])
    assert has_pinned(p), "MMF_HAS_PINNED is never cleared"


def test_11_2_03_ro_pin_of_fresh_anon_is_the_zero_page(k: Kernel, p: Process) -> None:
    """A short-term R/O pin of a never-touched page returns the uncounted zero page."""
    a = anon_rw(p)
    zero = k.page(k.mem.zero_pfn)
    ref0 = zero.refcount
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, 0, pages) == 1
    assert pages[0] == zero and pages[0].folio.is_zero
    assert zero.refcount == ref0
    assert delta(k, before) == (0, 0)
    assert not gupsim.page_maybe_dma_pinned(pages[0])
    k.unpin_user_page(pages[0])
    assert zero.refcount == ref0
    assert delta(k, before) == (0, 0)
    assert has_pinned(p)


def test_11_2_04_ro_longterm_pin_of_fresh_anon_is_a_real_page(k: Kernel, p: Process) -> None:
    """FOLL_LONGTERM unshares the zero page: a real anon page is allocated and pinned."""
    a = anon_rw(p)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_LONGTERM, pages) == 1
    folio = pages[0].folio
    assert not folio.is_zero and folio.kind == Kind.ANON
    assert pages[0].anon_exclusive
    assert folio.refcount == 1 + GUP_PIN_COUNTING_BIAS
    assert pages[0].pfn == mapped_pfn(p, a)
    bits, _ = pte_of(p, a)
    assert not bits & PTE.WRITE, "an unshare maps the new page read-only"
    assert delta(k, before) == (1, 0)
    k.unpin_user_pages(pages)


# -- 5 - 9: argument validation ----------------------------------------------------------


def test_11_2_05_gup_longterm_is_einval(k: Kernel, p: Process) -> None:
    """FOLL_LONGTERM is for pins only: get_user_pages() refuses it with -EINVAL and a WARN."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.get_user_pages(a, 1, FOLL_LONGTERM, pages) == -EINVAL
    assert pages == []
    assert k.warnings.sites() == ["is_valid_gup_args: FOLL_LONGTERM without FOLL_PIN"]
    assert delta(k, before) == (0, 0)
    assert mapped_pfn(p, a) and k.page(mapped_pfn(p, a)).refcount == 1


def test_11_2_06_pin_with_foll_get_is_zero(k: Kernel, p: Process) -> None:
    """pin_user_pages() answers invalid arguments with 0, not an errno."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_GET, pages) == 0
    assert pages == []
    assert k.warnings.sites() == ["is_valid_gup_args: FOLL_GET with FOLL_PIN"]
    assert delta(k, before) == (0, 0)
    assert not has_pinned(p), "refused before any walk: the mm never pinned"


def test_11_2_07_pin_without_pages_is_zero(k: Kernel, p: Process) -> None:
    """A pin needs a pages array; without one pin_user_pages() returns 0 and warns."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    assert p.pin_user_pages(a, 1, 0, None) == 0
    assert k.warnings.sites() == ["is_valid_gup_args: no pages array"]
    assert delta(k, before) == (0, 0)


def test_11_2_08_fast_nowait_is_einval(k: Kernel, p: Process) -> None:
    """FOLL_NOWAIT is outside the GUP-fast whitelist: -EINVAL with a WARN."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_NOWAIT, pages) == -EINVAL
    assert pages == []
    assert k.warnings.sites() == ["gup_fast_fallback: flag not allowed"]
    assert delta(k, before) == (0, 0)


def test_11_2_09_fast_internal_flag_is_einval(k: Kernel, p: Process) -> None:
    """FOLL_PIN is internal: callers may not pass it, even to the pin_* family."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_PIN, pages) == -EINVAL
    assert pages == []
    assert k.warnings.sites() == ["is_valid_gup_args: internal FOLL flag"]
    assert delta(k, before) == (0, 0)


# -- 10 - 12: holes and special mappings ------------------------------------------------------


@pytest.mark.parametrize("call", ["pin_user_pages_fast", "pin_user_pages"])
def test_11_2_10_partial_prefix(k: Kernel, p: Process, call: str) -> None:
    """GUP stops at the first hole and returns the prefix it got."""
    a = anon_rw(p, 3, touch=True)
    p.munmap(a + 2 * PAGE_SIZE, PAGE_SIZE)
    before = counters(k)
    pages = PageArray(3)
    pages.pfns[:] = 7                              # "untouched" must be visible
    assert getattr(p, call)(a, 3, FOLL_WRITE, pages) == 2
    assert pages.pfns.tolist() == [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE), 7]
    assert delta(k, before) == (2, 0)
    k.unpin_user_pages(pages, 2)
    assert delta(k, before) == (2, 2)


@pytest.mark.parametrize("call", ["pin_user_pages_fast", "pin_user_pages"])
def test_11_2_11_start_in_hole_is_efault(k: Kernel, p: Process, call: str) -> None:
    """Nothing obtained: the error of the first page (-EFAULT for a hole)."""
    a = anon_rw(p, 2, touch=True)
    p.munmap(a, PAGE_SIZE)
    before = counters(k)
    pages: list[Page | None] = []
    assert getattr(p, call)(a, 2, FOLL_WRITE, pages) == -EFAULT
    assert pages == []
    assert delta(k, before) == (0, 0)


def test_11_2_12_pfnmap_efault_mixedmap_eexist(k: Kernel, p: Process) -> None:
    """VM_IO|VM_PFNMAP is refused per VMA; a special PTE in VM_MIXEDMAP has no page."""
    pfnmap = special_vma(k, p, VM.IO | VM.PFNMAP)
    mixed = special_vma(k, p, VM.MIXEDMAP)
    before = counters(k)
    for call in ("pin_user_pages_fast", "pin_user_pages"):
        pages: list[Page | None] = []
        assert getattr(p, call)(pfnmap, 1, FOLL_WRITE, pages) == -EFAULT
        assert getattr(p, call)(mixed, 1, FOLL_WRITE, pages) == -EEXIST
        assert pages == []
    assert delta(k, before) == (0, 0)


# -- 13 - 15: FOLL_LONGTERM on files and movable memory ---------------------------------------


def test_11_2_13_longterm_rw_pin_by_file_kind(k: Kernel, p: Process) -> None:
    """Writable long-term pins of dirty-tracked shared file mappings are refused (-EFAULT);
    shmem has no write-notify and is accepted; a private ext4 mapping pins an anon COW copy."""
    ext4 = k.fs("ext4").create("data", 4 * PAGE_SIZE)
    ext4.pwrite(0, b"on disk")
    tmp = k.fs("tmpfs").create("shm", 4 * PAGE_SIZE)
    flags = FOLL_WRITE | FOLL_LONGTERM
    before = counters(k)

    shared = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_SHARED, fd=ext4)
    for call in ("pin_user_pages_fast", "pin_user_pages"):
        pages: list[Page | None] = []
        assert getattr(p, call)(shared, 4, flags, pages) == -EFAULT
        assert pages == []
    assert delta(k, before) == (0, 0)

    shm = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_SHARED, fd=tmp)
    pages = []
    assert p.pin_user_pages_fast(shm, 4, flags, pages) == 4
    assert all(pg.folio.kind == Kind.SHMEM for pg in pages)
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, shm + i * PAGE_SIZE) for i in range(4)]
    k.unpin_user_pages(pages)

    priv = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_PRIVATE, fd=ext4)
    pages = []
    assert p.pin_user_pages_fast(priv, 4, flags, pages) == 4
    assert all(pg.folio.kind == Kind.ANON and pg.anon_exclusive for pg in pages)
    assert pages[0].read(0, 7) == b"on disk"
    assert ext4.page_cache.get(0) != pages[0].pfn
    k.unpin_user_pages(pages)
    assert delta(k, before) == (8, 8)


def test_11_2_14_longterm_pin_migrates_out_of_movable() -> None:
    """A folio in ZONE_MOVABLE is migrated before a long-term pin; the new one is pinned."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = anon_rw(p, 4, touch=True)
    old = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    assert all(k.page(pfn).folio.zone == Zone.MOVABLE for pfn in old)
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 4, FOLL_WRITE | FOLL_LONGTERM, pages) == 4
    new = [pg.pfn for pg in pages]
    assert not set(new) & set(old)
    assert all(pg.folio.zone == Zone.NORMAL and not pg.folio.is_cma for pg in pages)
    assert new == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    assert all(pg.folio.refcount == 1 + GUP_PIN_COUNTING_BIAS for pg in pages)
    assert all(k.mem.kind[pfn] == Kind.FREE for pfn in old), "the old folios are freed"
    assert p.read(a + PAGE_SIZE, 1) == b"\x02", "contents moved with the page"
    # GUP-fast refuses unpinnable folios before counting; the slow path pins the old
    # folios (+4), drops those pins to migrate (+4 released), then pins the new ones (+4)
    assert delta(k, before) == (8, 4)
    k.unpin_user_pages(pages)


def test_11_2_15_longterm_migration_failure_is_enomem() -> None:
    """If migration fails the call returns -ENOMEM and keeps no pin."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = anon_rw(p, 2, touch=True)
    held: list[Page | None] = []
    assert p.get_user_pages(a + PAGE_SIZE, 1, 0, held) == 1   # an extra reference: unmovable
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM, pages) == -ENOMEM
    assert delta(k, before) == (2, 2), "both pins were taken, and dropped again"
    assert all(pg is None for pg in pages)
    moved, stuck = (k.page(mapped_pfn(p, a + i * PAGE_SIZE)) for i in range(2))
    assert moved.folio.zone == Zone.NORMAL, "what could migrate did"
    assert stuck.pfn == held[0].pfn and stuck.folio.zone == Zone.MOVABLE
    assert not gupsim.page_maybe_dma_pinned(moved)
    assert not gupsim.page_maybe_dma_pinned(stuck)
    k.put_page(held[0])


# -- 16 - 18: fork ------------------------------------------------------------------------


def test_11_2_16_fork_after_pin_copies_for_the_child(k: Kernel, p: Process) -> None:
    """fork() gives the child a copy of a pinned exclusive page; the parent keeps the pinned
    page mapped writable, so the pin and the parent keep seeing the same data."""
    a = anon_rw(p)
    p.write(a, b"before")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    pbits, ppfn = pte_of(p, a)
    child = p.fork()
    assert pte_of(p, a) == (pbits, ppfn)
    assert pbits & PTE.WRITE
    cpfn = mapped_pfn(child, a)
    assert cpfn != ppfn
    assert child.read(a, 6) == b"before"
    p.write(a, b"parent")
    assert k.dma_read(pages[0], 0, 6) == b"parent"
    child.write(a, b"child!")
    assert k.dma_read(pages[0], 0, 6) == b"parent"
    assert p.read(a, 6) == b"parent"
    k.unpin_user_pages(pages)


def test_11_2_17_fork_after_get_shares_the_page(k: Kernel, p: Process) -> None:
    """A plain GET reference does not make fork copy: the page is shared, both PTEs R/O."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert p.get_user_pages(a, 1, 0, pages) == 1
    assert not has_pinned(p)
    child = p.fork()
    pbits, ppfn = pte_of(p, a)
    cbits, cpfn = pte_of(child, a)
    assert ppfn == cpfn == pages[0].pfn
    assert not pbits & PTE.WRITE and not cbits & PTE.WRITE
    assert not pages[0].anon_exclusive
    assert k.vmstat["fork_copy_pinned"] == 0
    k.put_page(pages[0])


def test_11_2_18_fork_racing_gup_fast(k: Kernel, p: Process) -> None:
    """A fork between GUP-fast's PTE read and its grab makes the fast part give up (0 pages,
    its pins dropped); the slow path then pins, after a COW, a page the child does not map."""
    a = anon_rw(p, touch=True)
    original = mapped_pfn(p, a)
    children: list[Process] = []
    slow_faults: list[int] = []
    k.gup.on_race("gup_fast:after_pte_read", lambda **_: children.append(p.fork()))
    k.gup.on_race("gup_slow:before_fault", lambda **kw: slow_faults.append(kw["address"]))
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert len(children) == 1 and slow_faults == [a]
    child = children[0]
    assert mapped_pfn(child, a) == original
    assert pages[0].pfn == mapped_pfn(p, a) != original
    assert pages[0].anon_exclusive
    assert delta(k, before) == (2, 1), "fast pin taken and dropped, then the slow pin"
    assert k.page(original).refcount == 1, "only the child maps the original now"
    k.unpin_user_pages(pages)


# -- 19 - 20: unmapping and reclaim while pinned ---------------------------------------------


def test_11_2_19_madv_dontneed_while_pinned(k: Kernel, p: Process) -> None:
    """MADV_DONTNEED unmaps a pinned page but cannot free it; the pin frees it later."""
    a = anon_rw(p)
    p.write(a, b"old data")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    old = pages[0]
    p.madvise(a, PAGE_SIZE, MADV_DONTNEED)
    bits, _ = pte_of(p, a)
    assert bits == 0
    assert old.folio.refcount == GUP_PIN_COUNTING_BIAS
    assert old.folio.kind == Kind.ANON
    assert p.read(a, 8) == bytes(8)
    p.write(a, b"new")
    assert mapped_pfn(p, a) != old.pfn
    assert k.dma_read(old, 0, 8) == b"old data"
    k.unpin_user_page(old)
    assert k.mem.kind[old.pfn] == Kind.FREE and k.mem.refcount[old.pfn] == 0


def test_11_2_20_pinned_anon_is_not_reclaimed_migrated_or_split(k: Kernel, p: Process) -> None:
    """Reclaim skips a pinned page, migration fails, and a pinned THP will not split."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert mapped_pfn(p, a) == pages[0].pfn
    assert k.vmstat["pswpout"] == 0
    res = migrate_folio(k.alloc, pages[0].pfn)
    assert res.rc != 0 and mapped_pfn(p, a) == pages[0].pfn

    t = thp_region(k, p)
    thp: list[Page | None] = []
    assert p.pin_user_pages_fast(t + PAGE_SIZE, 1, FOLL_WRITE, thp) == 1
    head = thp[0].folio.pfn
    assert split_folio(k.env, head) == -gupsim.EAGAIN
    assert k.page(head).folio.order == 9
    k.unpin_user_pages(thp)
    assert split_folio(k.env, head) == 0, "without the pin the same split succeeds"
    k.unpin_user_pages(pages)


# -- 21 - 22: the unpin family ----------------------------------------------------------------


@pytest.mark.parametrize("npages", [-EFAULT, (1 << 64) - EFAULT])
def test_11_2_21_unpin_with_errno_count(k: Kernel, p: Process, npages: int) -> None:
    """An errno passed as the count is caught: WARN, and nothing is released."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    before = counters(k)
    k.unpin_user_pages(pages, npages)
    assert k.warnings.sites() == ["unpin_user_pages: npages is an error value"]
    assert delta(k, before) == (0, 0)
    assert pages[0].refcount == 1 + GUP_PIN_COUNTING_BIAS
    k.unpin_user_pages(pages)


def test_11_2_22_unpin_dirty_lock_dirties_clean_folios(k: Kernel, p: Process) -> None:
    """unpin_user_pages_dirty_lock(..., true) marks each clean folio dirty, then unpins."""
    f = k.fs("ext4").create("log", 2 * PAGE_SIZE)
    f.pwrite(0, b"x" * 2 * PAGE_SIZE)
    f.fsync()
    m = p.mmap(0, 2 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(m, 2, 0, pages) == 2
    assert [pg.folio.dirty for pg in pages] == [False, False]
    before = counters(k)
    k.unpin_user_pages_dirty_lock(pages, 2, True)
    assert [pg.folio.dirty for pg in pages] == [True, True]
    assert delta(k, before) == (0, 2)
    assert not any(gupsim.page_maybe_dma_pinned(pg) for pg in pages)


# -- 23 - 25: unsharing, false positives, large folios --------------------------------------


def test_11_2_23_ro_pin_unshares_a_page_shared_with_a_child(k: Kernel, p: Process) -> None:
    """A R/O pin of a COW-shared anon page unshares it: in place if the parent is the only
    user left, else into a R/O copy that is pinned while the child keeps the original."""
    a = anon_rw(p, 2)
    p.write(a, b"shared")
    p.write(a + PAGE_SIZE, b"alone")
    child = p.fork()
    shared_pfn = mapped_pfn(p, a)
    alone_pfn = mapped_pfn(p, a + PAGE_SIZE)
    assert mapped_pfn(child, a) == shared_pfn
    child.munmap(a + PAGE_SIZE, PAGE_SIZE)     # the parent is again the only user of page 2
    assert not k.page(shared_pfn).anon_exclusive and not k.page(alone_pfn).anon_exclusive

    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, 0, pages) == 2
    copy, kept = pages
    assert copy.pfn != shared_pfn and copy.pfn == mapped_pfn(p, a)
    assert copy.anon_exclusive and copy.read(0, 6) == b"shared"
    assert not pte_of(p, a)[0] & PTE.WRITE
    assert mapped_pfn(child, a) == shared_pfn
    assert not k.page(shared_pfn).anon_exclusive
    assert kept.pfn == alone_pfn == mapped_pfn(p, a + PAGE_SIZE)
    assert kept.anon_exclusive
    assert not pte_of(p, a + PAGE_SIZE)[0] & PTE.WRITE
    assert [pg.folio.refcount for pg in pages] == [1 + GUP_PIN_COUNTING_BIAS] * 2
    k.unpin_user_pages(pages)


def test_11_2_24_maybe_pinned_false_positive() -> None:
    """1100 mappings of a page-cache page give it over 1024 references: 'maybe pinned'."""
    k = Kernel(memory="256MiB")            # no debug: 1100 mappings would be checked 1100 times
    p = k.spawn("app")
    f = k.fs("ext4").create("popular", PAGE_SIZE)
    f.pwrite(0, b"hot")
    for _ in range(1100):
        m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
        assert p.read(m, 3) == b"hot"
    page = k.page(f.page_cache[0])
    assert page.folio.order == 0
    assert page.folio.refcount >= 1101
    assert k.vmstat[ACQ] == 0
    assert gupsim.folio_maybe_dma_pinned(page.folio)
    assert k.check() == []


def test_11_2_25_thp_subrange_pin_is_exact(k: Kernel, p: Process) -> None:
    """Pinning 10 pages of a PMD-mapped THP adds exactly 10 to refcount and pincount;
    unpinning the 10 entries releases them as one group: no per-page work beyond reading
    the list, so it runs the Python code of unpinning one entry and one step per entry."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    one: list[Page | None] = []
    for _ in range(2):                      # the first round warms imports and caches
        assert p.pin_user_pages_fast(t + 30 * PAGE_SIZE, 1, FOLL_WRITE, one) == 1
        calls_one, _, _ = python_calls(lambda: k.unpin_user_pages(one))
    ref0 = folio.refcount
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(t + 10 * PAGE_SIZE, 10, FOLL_WRITE, pages) == 10
    assert [pg.pfn for pg in pages] == list(range(folio.pfn + 10, folio.pfn + 20))
    assert folio.refcount == ref0 + 10 and folio.pincount == 10
    assert delta(k, before) == (10, 0)
    calls_ten, _, _ = python_calls(lambda: k.unpin_user_pages(pages))
    assert calls_ten <= calls_one + len(pages), (calls_one, calls_ten)
    assert folio.refcount == ref0 and folio.pincount == 0
    assert delta(k, before) == (10, 10)


# -- 26 - 28: locked, NOFAULT, HWPOISON --------------------------------------------------------


def test_11_2_26_remote_with_locked_zero_is_refused(k: Kernel, p: Process) -> None:
    """*locked must be 1 on entry; 0 is a caller bug: WARN and return 0."""
    a = anon_rw(p, touch=True)
    before = counters(k)
    pages: list[Page | None] = []
    locked = [0]
    assert k.pin_user_pages_remote(p.mm, a, 1, FOLL_WRITE, pages, locked) == 0
    assert k.warnings.sites() == ["is_valid_gup_args: *locked != 1"]
    assert pages == [] and delta(k, before) == (0, 0)
    assert not p.mm.mmap_lock.held()


@pytest.mark.parametrize("call", ["pin_user_pages_fast", "pin_user_pages",
                                  "get_user_pages_fast"])
def test_11_2_27_nofault_on_absent_page(k: Kernel, p: Process, call: str) -> None:
    """FOLL_NOFAULT never faults: an absent page is -EFAULT and stays absent."""
    a = anon_rw(p)
    pages: list[Page | None] = []
    faults = k.vmstat["pgfault"]
    assert getattr(p, call)(a, 1, FOLL_NOFAULT | FOLL_WRITE, pages) == -EFAULT
    assert pages == [] and k.vmstat["pgfault"] == faults
    assert pte_of(p, a)[0] == 0


def test_11_2_28_hwpoison(k: Kernel, p: Process) -> None:
    """A poisoned page is -EHWPOISON with FOLL_HWPOISON, else -EFAULT."""
    a = anon_rw(p, touch=True)
    p.madvise(a, PAGE_SIZE, MADV_HWPOISON)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_WRITE | FOLL_HWPOISON, pages) == -EHWPOISON
    assert p.pin_user_pages(a, 1, FOLL_WRITE, pages) == -EFAULT
    assert p.get_user_pages(a, 1, FOLL_HWPOISON, pages) == -EHWPOISON
    assert p.get_user_pages(a, 1, 0, pages) == -EFAULT
    assert pages == []


# -- 29 - 30: memfd_pin_folios and io_uring -------------------------------------------------


def test_11_2_29_memfd_pin_folios(k: Kernel, p: Process) -> None:
    """memfd_pin_folios() pins each small shmem folio once; a range past i_size is -EINVAL."""
    fd = p.memfd_create("buf")
    fd.truncate(3 * PAGE_SIZE)
    before = counters(k)
    folios: list = [None] * 4
    offset = [-1]
    assert k.memfd_pin_folios(fd, 100, 3 * PAGE_SIZE - 1, folios, 4, offset) == 3
    assert offset == [100]
    got = folios[:3]
    assert folios[3] is None
    assert [f.pfn for f in got] == [fd.page_cache[i] for i in range(3)]
    assert all(f.kind == Kind.SHMEM and f.order == 0 for f in got)
    assert all(f.refcount == 1 + GUP_PIN_COUNTING_BIAS for f in got), "cache ref + one pin"
    assert delta(k, before) == (3, 0)
    assert k.memfd_pin_folios(fd, 0, 3 * PAGE_SIZE, [None] * 4, 4, [0]) == -EINVAL
    k.unpin_folios(got)
    assert delta(k, before) == (3, 3)
    assert all(f.refcount == 1 for f in got)


def test_11_2_30_io_uring_thp_charges_once(k: Kernel) -> None:
    """io_uring charges a THP's 512 pages once, to VmPin and (without CAP_IPC_LOCK) the
    user's locked_vm; a second buffer inside the same THP charges nothing."""
    from gupsim.drivers.io_uring import RING_PAGES, IoRing

    p = k.spawn("app", uid=1000, rlimit_memlock=8 << 20)
    t = thp_region(k, p)
    ring = IoRing(k, p)
    user = k.user(1000)
    assert user.locked_vm == RING_PAGES
    ring.register_buffers([(t, PMD_SIZE), (t + PAGE_SIZE, 2 * PAGE_SIZE)])
    assert ring.buffers is not None
    assert [b.acct_pages for b in ring.buffers] == [512, 0]
    assert p.mm.pinned_vm == 512
    assert p.proc_status()["VmPin"] == 512 * 4
    assert user.locked_vm == RING_PAGES + 512
    folio = k.page(mapped_pfn(p, t)).folio
    assert folio.pincount >= 1
    ring.close()
    assert p.mm.pinned_vm == 0 and user.locked_vm == 0
    assert folio.pincount == 0
