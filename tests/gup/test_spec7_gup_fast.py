"""Spec 7: GUP-fast, the lockless walk, and its fallback to the slow path.

What the walk refuses before and after its grab (and what that costs in the pin
counters), the fork race (`write_protect_seq`), the re-check after the grab, PMD leaves
and VMA boundaries, and the fast-only variants. Which part of a call did what is read
from its record (`k.gup.last_call`: the path, the pages the walk kept, what the slow
path returned), never by spying on internal functions.
"""

from __future__ import annotations

from typing import Any

import pytest
from gup_helpers import (
    anon_rw,
    counters,
    delta,
    mapped_pfn,
    pte_of,
    thp_region,
)

from gupsim import (
    EFAULT,
    FOLL_LONGTERM,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
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
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
FALLBACK = "fast+slow fallback"
SITE_LONGTERM = "is_valid_gup_args: FOLL_LONGTERM without FOLL_PIN"


@pytest.mark.parametrize(("case", "fast_delta"), [
    ("absent", (0, 0)), ("readonly-pte", (0, 0)), ("zero-page", (0, 0)),
    ("movable-longterm", (0, 0)),
    ("shared-anon-ro-pin", (1, 1)), ("file-ro-longterm", (1, 1)),
])
def test_7_fast_refusals(case: str,
                         fast_delta: tuple[int, int]) -> None:
    """GUP-fast stops at what it cannot handle and leaves it to the slow path. Refusals
    before the grab cost nothing; those after it (folio checks, unshare) show as one pin
    acquired and released, as in the kernel."""
    movable = "32MiB" if case == "movable-longterm" else 0
    k = Kernel(memory="256MiB", movable=movable, debug=True)
    p = k.spawn("app")
    flags = 0
    a = anon_rw(p, touch=case not in ("absent", "zero-page"))
    if case == "zero-page":
        p.read(a, 1)
    elif case == "readonly-pte":
        flags = FOLL_WRITE
        p.fork()                      # the PTE is write-protected and shared
    elif case == "movable-longterm":
        assert k.page(mapped_pfn(p, a)).folio.zone == Zone.MOVABLE
        flags = FOLL_WRITE | FOLL_LONGTERM
    elif case == "shared-anon-ro-pin":
        p.fork()
    elif case == "file-ro-longterm":
        f = k.fs("ext4").create("ro", PAGE_SIZE)
        a = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
        p.read(a, 1)
        flags = FOLL_LONGTERM
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, flags, pages) == 1
    call = k.gup.last_call
    assert (call.path, call.fast, call.slow) == (FALLBACK, 0, 1)
    assert call.migrate_rounds == (1 if case == "movable-longterm" else 0)
    acq, rel = delta(k, before)
    slow_acq = 1 if not pages[0].folio.is_zero else 0
    slow_rel = 1 if case == "movable-longterm" else 0      # pinned, dropped, migrated
    assert (acq, rel) == (fast_delta[0] + slow_acq + slow_rel, fast_delta[1] + slow_rel)
    k.unpin_user_pages(pages)


@pytest.mark.parametrize("case", ["ext4-longterm-write", "secretmem"])
def test_7_refused_after_the_grab_then_refused_by_the_slow_path(k: Kernel, p: Process,
                                                                case: str) -> None:
    """Folios GUP-fast may not return (file pages for long-term writes, secretmem) are
    grabbed, checked, dropped (+1/+1); the slow path then refuses the VMA with -EFAULT."""
    if case == "secretmem":
        fd = k.filesystems.memfd_secret()
        fd.truncate(PAGE_SIZE)
        flags = FOLL_WRITE
    else:
        fd = k.fs("ext4").create("db", PAGE_SIZE)
        flags = FOLL_WRITE | FOLL_LONGTERM
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=fd)
    p.write(m, b"w")
    assert pte_of(p, m)[0] & PTE.WRITE
    before = counters(k)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(m, 1, flags, pages) == -EFAULT
    assert pages == [] and delta(k, before) == (1, 1)
    call = k.gup.last_call
    assert (call.path, call.fast, call.slow) == (FALLBACK, 0, -EFAULT)


def test_7_fork_in_progress_skips_the_fast_walk_for_pins_only(k: Kernel, p: Process) -> None:
    """While fork write-protects (odd write_protect_seq) pinning GUP-fast takes nothing;
    FOLL_GET does not look at the sequence."""
    a = anon_rw(p, touch=True)
    p.mm.write_protect_seq += 1
    try:
        pins: list[Page | None] = []
        gets: list[Page | None] = []
        assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pins) == 1
        assert p.get_user_pages_fast(a, 1, FOLL_WRITE, gets) == 1
    finally:
        p.mm.write_protect_seq -= 1
    assert [(c.entry, c.path, c.fast) for c in k.gup.calls] == [
        ("pin_user_pages_fast", FALLBACK, 0), ("get_user_pages_fast", "fast", 1)]
    assert counters(k) == (1, 0), "the slow path pinned once; the fast walk never grabbed"
    k.unpin_user_pages(pins)
    k.put_page(gets[0])


def test_7_fork_race_discards_pins_already_taken(k: Kernel, p: Process) -> None:
    """A fork that lands while GUP-fast is in its second VMA: the pins already taken are
    all given back (write_protect_seq moved) and the fast part reports 0. Fork saw the
    first page pinned at that moment, so it copied it for the child and left the parent's
    page in place; the second page was shared, so the slow path COWs it for the write."""
    a = anon_rw(p, 2, touch=True)
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, RW | 0x4)        # PROT_EXEC: a second VMA
    assert p.mm.find_vma(a) is not p.mm.find_vma(a + PAGE_SIZE)
    originals = [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    children: list[Process] = []

    def second_vma(**_: Any) -> None:
        k.gup.on_race("gup_fast:after_pte_read", lambda **_: children.append(p.fork()))

    k.gup.on_race("gup_fast:after_pte_read", second_vma)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pages) == 2
    call = k.gup.last_call
    assert (call.path, call.fast, call.slow) == (FALLBACK, 0, 2), "the slow path did it all"
    assert counters(k) == (2 + 2, 2), "fast: two pins taken and dropped; slow: two pins"
    (child,) = children
    assert k.vmstat["fork_copy_pinned"] == 1
    child_pfns = [mapped_pfn(child, a + i * PAGE_SIZE) for i in range(2)]
    assert child_pfns[0] != originals[0] and child_pfns[1] == originals[1]
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(2)]
    assert pages[0].pfn == originals[0] and pages[1].pfn != originals[1]
    assert all(pg.anon_exclusive and pg.refcount == 1 + GUP_PIN_COUNTING_BIAS for pg in pages)
    assert k.page(originals[1]).refcount == 1, "only the child maps it now"
    k.unpin_user_pages(pages)


def test_7_fork_race_with_get(k: Kernel, p: Process) -> None:
    """A fork racing a FOLL_GET walk write-protects the PTE: the re-check after the grab
    sees it changed, drops the reference and the slow path COWs for the write."""
    a = anon_rw(p, touch=True)
    original = mapped_pfn(p, a)
    children: list[Process] = []
    k.gup.on_race("gup_fast:after_pte_read", lambda **_: children.append(p.fork()))
    pages: list[Page | None] = []
    assert p.get_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    call = k.gup.last_call
    assert (call.path, call.fast, call.slow) == (FALLBACK, 0, 1)
    assert pages[0].pfn == mapped_pfn(p, a) != original
    assert mapped_pfn(children[0], a) == original
    assert k.page(original).refcount == 1, "the fast walk's reference was given back"
    k.put_page(pages[0])


@pytest.mark.parametrize(("race", "want", "fast_delta"), [
    ("mprotect", -EFAULT, (1, 1)),        # grabbed, the PTE changed: dropped again
    ("munmap", -EFAULT, (0, 0)),          # the folio was freed first: nothing to grab
])
def test_7_recheck_after_the_grab(k: Kernel, p: Process,
                                  race: str, want: int,
                                  fast_delta: tuple[int, int]) -> None:
    """Between reading a PTE and grabbing its folio anything may happen: GUP-fast re-reads
    the entry after the grab and gives the pin back if it changed; a folio freed meanwhile
    (refcount 0) is not grabbed at all. Either way the slow path has the last word."""
    a = anon_rw(p, touch=True)
    pfn = mapped_pfn(p, a)

    def competitor(**_: Any) -> None:
        if race == "mprotect":
            p.mprotect(a, PAGE_SIZE, PROT_READ)
        else:
            p.munmap(a, PAGE_SIZE)

    k.gup.on_race("gup_fast:after_pte_read", competitor)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == want
    call = k.gup.last_call
    assert (call.path, call.fast, call.slow) == (FALLBACK, 0, want)
    assert delta(k, (0, 0)) == fast_delta
    if race == "mprotect":
        assert k.page(pfn).refcount == 1
    else:
        assert k.mem.kind[pfn] == Kind.FREE
    assert k.warnings.sites() == []


def test_7_leaf_refused_after_the_grab_counts_the_whole_part(k: Kernel, p: Process) -> None:
    """A PMD leaf is grabbed for all its pages in the range at once, so when the unshare
    check refuses it (a R/O pin of a COW-shared THP) all of them show as acquired and
    released; the slow path then unshares page by page."""
    t = thp_region(k, p)
    p.fork()
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(t + 10 * PAGE_SIZE, 10, 0, pages) == 10
    assert counters(k) == (10 + 10, 10)
    assert all(pg.folio.order == 0 and pg.anon_exclusive for pg in pages)
    k.unpin_user_pages(pages)


def test_7_fast_only_never_falls_back(k: Kernel, p: Process) -> None:
    """get_user_pages_fast_only() returns what the lockless walk got, possibly 0."""
    a = anon_rw(p, 4)
    p.write(a, b"a")
    p.write(a + PAGE_SIZE, b"b")
    faults = k.vmstat["pgfault"]
    pages: list[Page | None] = []
    assert p.get_user_pages_fast_only(a, 4, FOLL_WRITE, pages) == 2
    assert p.get_user_pages_fast_only(a + 2 * PAGE_SIZE, 2, 0, pages) == 0
    assert [(c.path, c.fast, c.slow) for c in k.gup.calls] == [("fast", 2, None),
                                                               ("fast", 0, None)]
    assert k.vmstat["pgfault"] == faults and len(pages) == 2
    for pg in pages:
        k.put_page(pg)


def test_7_get_user_page_fast_only(k: Kernel, p: Process) -> None:
    """The one-page inline wrapper answers True only when GUP-fast took that page."""
    a = anon_rw(p, 2)
    p.write(a, b"x")
    page: list[Page | None] = [None]
    assert p.get_user_page_fast_only(a, FOLL_WRITE, page) is True
    call = k.gup.last_call
    assert (call.entry, call.path, call.fast, call.ret) == ("get_user_page_fast_only", "fast",
                                                            1, 1)
    assert page[0] is not None and page[0].pfn == mapped_pfn(p, a) and page[0].refcount == 2
    k.put_page(page[0])
    other: list[Page | None] = [None]
    assert p.get_user_page_fast_only(a + PAGE_SIZE, 0, other) is False
    assert other == [None] and pte_of(p, a + PAGE_SIZE)[0] == 0
    assert p.get_user_page_fast_only(a, FOLL_LONGTERM, other) is False
    assert k.warnings.sites() == [SITE_LONGTERM]


def test_7_fast_walk_spans_vmas_and_leaves(k: Kernel, p: Process) -> None:
    """The lockless walk crosses VMA boundaries and PMD leaves, grabbing each leaf's part
    of the range at once."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    nxt = p.mmap(t + PMD_SIZE, PAGE_SIZE, PROT_READ, ANON | 0x100000)   # MAP_FIXED_NOREPLACE
    p.read(nxt, 1)
    p.write(t + PMD_SIZE - PAGE_SIZE, b"z")
    pages = PageArray(4)
    n = p.get_user_pages_fast(t + PMD_SIZE - 3 * PAGE_SIZE, 4, 0, pages)
    call = k.gup.last_call
    assert n == 4 and (call.path, call.fast, call.slow) == (FALLBACK, 3, 1)
    assert pages.pfns[:3].tolist() == list(range(folio.pfn + 509, folio.pfn + 512))
    assert pages[3].folio.is_zero
    assert folio.refcount == 1 + 3
    for pg in pages:
        k.put_page(pg)
