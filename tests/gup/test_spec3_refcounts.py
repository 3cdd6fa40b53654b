"""Spec 3: reference counting of GUP and pins.

FOLL_GET adds one reference; FOLL_PIN adds GUP_PIN_COUNTING_BIAS to a small folio and one
to both refcount and the exact pincount of a large one; the zero pages; refcount
overflow; the "maybe pinned" false positive; and the release family (unpin_user_page*,
unpin_folio*, folio_add_pin*, memfd_pin_folios refusals).
"""

from __future__ import annotations

from typing import Any

import pytest
from gup_helpers import (
    anon_rw,
    counters,
    delta,
    entries,
    mapped_pfn,
    thp_region,
)

import gupsim
from gupsim import (
    EFAULT,
    EINVAL,
    ENOMEM,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
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
from gupsim.memory import PG, Kind

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def test_3_get_adds_one_pin_adds_the_bias(k: Kernel, p: Process) -> None:
    """FOLL_GET is +1 and uncounted; FOLL_PIN on a small folio is +1024 and counted."""
    a = anon_rw(p, touch=True)
    folio = k.page(mapped_pfn(p, a)).folio
    got: list[Page | None] = []
    assert p.get_user_pages_fast(a, 1, 0, got) == 1
    assert folio.refcount == 2 and counters(k) == (0, 0)
    assert not gupsim.folio_maybe_dma_pinned(folio)
    pinned: list[Page | None] = [None, None]
    assert p.pin_user_pages(a, 1, 0, pinned) == 1
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pinned[1:]) == 1
    pinned[1] = pinned[0]                   # (a slice is a copy: record the second pin)
    assert folio.refcount == 2 + 2 * GUP_PIN_COUNTING_BIAS and folio.pincount == 0
    assert counters(k) == (2, 0)
    k.unpin_user_pages(pinned)
    k.put_page(got[0])
    assert folio.refcount == 1 and counters(k) == (2, 2)


def test_3_large_folio_pincount_is_exact(k: Kernel, p: Process) -> None:
    """The worked example of spec 3.6: pin 512 pages of a PMD-mapped THP, unpin 100."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    assert (folio.refcount, folio.pincount) == (1, 0)
    pages = PageArray(512)
    assert p.pin_user_pages_fast(t, 512, FOLL_WRITE, pages) == 512
    assert (folio.refcount, folio.pincount) == (513, 512)
    assert counters(k) == (512, 0)
    k.unpin_user_pages(pages[:100])
    assert (folio.refcount, folio.pincount) == (413, 412)
    assert gupsim.folio_maybe_dma_pinned(folio)
    k.unpin_user_pages(pages[100:])
    assert (folio.refcount, folio.pincount) == (1, 0)
    assert counters(k) == (512, 512)


def test_3_mthp_pincount(k: Kernel, p: Process) -> None:
    """A 16-page mTHP mapped by PTEs (16 references): pinning 4 pages gives 20 and 4."""
    k.thp.set("always", 64)
    a = p.mmap(0, 16 * PAGE_SIZE * 4, RW, ANON)
    a16 = -(-a // (16 * PAGE_SIZE)) * 16 * PAGE_SIZE
    p.write(a16, b"m")
    folio = k.page(mapped_pfn(p, a16)).folio
    assert (folio.order, folio.refcount) == (4, 16)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a16 + 3 * PAGE_SIZE, 4, FOLL_WRITE, pages) == 4
    assert (folio.refcount, folio.pincount) == (20, 4)
    k.unpin_user_pages(pages)


def test_3_zero_page_is_never_pin_counted(k: Kernel, p: Process) -> None:
    """Pinning the shared zero page changes nothing (but a GET reference does count)."""
    a = anon_rw(p, 3)
    zero = k.page(k.mem.zero_pfn)
    ref0 = zero.refcount
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 3, 0, pages) == 3
    assert all(pg == zero for pg in pages)
    assert zero.refcount == ref0 and counters(k) == (0, 0)
    k.unpin_user_pages(pages)
    k.unpin_user_pages_dirty_lock(pages, 3, True)
    assert zero.refcount == ref0 and counters(k) == (0, 0)
    got: list[Page | None] = []
    assert p.get_user_pages(a, 1, 0, got) == 1 and got[0] == zero
    assert zero.refcount == ref0 + 1
    k.put_page(got[0])
    assert zero.refcount == ref0


def test_3_huge_zero_folio_is_pin_counted(k: Kernel, p: Process) -> None:
    """The special case covers only the small zero page: a short-term R/O pin of the huge
    zero folio counts like any large folio (spec 3.1, open question 12.9)."""
    t = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(t, PMD_SIZE, MADV_HUGEPAGE)
    assert p.read(t, 1) == b"\0"
    huge_zero = k.page(mapped_pfn(p, t)).folio
    assert huge_zero.kind == Kind.HUGE_ZERO
    ref0 = huge_zero.refcount
    pages: list[Page | None] = []
    assert p.pin_user_pages(t, 3, 0, pages) == 3
    assert (huge_zero.refcount, huge_zero.pincount) == (ref0 + 3, 3)
    assert counters(k) == (3, 0)
    k.unpin_user_pages(pages)
    assert (huge_zero.refcount, huge_zero.pincount) == (ref0, 0)


@pytest.mark.parametrize("entry", entries("pin_user_pages", "pin_user_pages_fast"))
def test_3_refcount_overflow_is_refused(entry: EntryPoint) -> None:
    """No pre-check: the pin that wraps the refcount succeeds; the next one sees a negative
    refcount and is refused with -ENOMEM (GUP-fast warns in try_get_folio first)."""
    k = Kernel(memory="64MiB")               # no debug: a wrapped refcount breaks invariants
    p = k.spawn("app")
    a = anon_rw(p, touch=True)
    head = mapped_pfn(p, a)
    k.mem.refcount[head] += (1 << 31) - GUP_PIN_COUNTING_BIAS - 1   # ~2M earlier pins' worth
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, 0, pages) == 1
    assert k.page(head).refcount < 0, "wrapped, like an atomic_t"
    assert gupsim.page_maybe_dma_pinned(pages[0]), "unsigned compare: still maybe pinned"
    before = counters(k)
    assert entry.invoke(p, a, 1, 0, pages) == -ENOMEM
    assert len(pages) == 1 and delta(k, before) == (0, 0)
    want = ["try_grab_folio: refcount <= 0"]
    if entry.fast:
        want.insert(0, "try_get_folio: refcount < 0")
    assert k.warnings.sites() == want


def test_3_maybe_pinned_false_positive_at_1024_references(k: Kernel, p: Process) -> None:
    """A small folio with 1024 ordinary references reports "maybe pinned"; 1023 does not."""
    a = anon_rw(p, touch=True)
    page = k.page(mapped_pfn(p, a))
    got = PageArray(1)
    for _ in range(GUP_PIN_COUNTING_BIAS - 2):
        assert p.get_user_pages(a, 1, 0, got) == 1
    assert page.refcount == GUP_PIN_COUNTING_BIAS - 1
    assert not gupsim.page_maybe_dma_pinned(page)
    assert p.get_user_pages(a, 1, 0, got) == 1
    assert page.refcount == GUP_PIN_COUNTING_BIAS
    assert gupsim.page_maybe_dma_pinned(page) and counters(k) == (0, 0)
    for _ in range(GUP_PIN_COUNTING_BIAS - 1):
        k.put_page(page)
    assert page.refcount == 1 and not gupsim.page_maybe_dma_pinned(page)


def test_3_unpin_family(k: Kernel, p: Process) -> None:
    """NULL entries are skipped; a physical range is released folio by folio (optionally
    dirtying); unpin_user_folio() drops n pins; unpin_folios() groups equal neighbours."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(t, 20, FOLL_WRITE, pages) == 20
    k.mem.clear_flag(folio.pfn, PG.dirty)
    k.unpin_user_page_range_dirty_lock(pages[5], 10, True)
    assert (folio.pincount, folio.refcount, folio.dirty) == (10, 11, True)
    k.unpin_user_folio(folio, 4)
    assert folio.pincount == 6
    k.unpin_folios([folio, folio, None, folio])
    assert folio.pincount == 3
    k.unpin_user_pages([None, pages[0], None, pages[1], pages[2]])
    assert (folio.pincount, folio.refcount) == (0, 1)
    assert counters(k) == (20, 20)

    a = anon_rw(p, touch=True)
    small: list[Page | None] = []
    assert p.pin_user_pages(a, 1, 0, small) == 1
    k.folio_add_pin(small[0].folio)
    assert small[0].refcount == 1 + 2 * GUP_PIN_COUNTING_BIAS
    assert counters(k) == (21, 20), "folio_add_pin() does not count (spec 12.2)"
    assert k.folio_add_pins(small[0].folio, 2) == 0
    assert small[0].refcount == 1 + 4 * GUP_PIN_COUNTING_BIAS and counters(k) == (23, 20)
    k.unpin_user_folio(small[0].folio, 4)
    assert small[0].refcount == 1 and counters(k) == (23, 24)
    assert k.warnings.sites() == []


def test_3_unpin_folios_with_errno_count_and_memfd_refusals(k: Kernel, p: Process) -> None:
    """unpin_folios() catches an errno passed as the count like unpin_user_pages(); and
    memfd_pin_folios() refuses bad ranges, a zero capacity and files that are not memfds,
    pinning nothing."""
    fd = p.memfd_create("buf")
    fd.truncate(2 * PAGE_SIZE)
    folios: list[Any] = [None] * 2
    assert k.memfd_pin_folios(fd, 0, 2 * PAGE_SIZE - 1, folios, 2, [0]) == 2
    k.unpin_folios(folios, -EFAULT)
    assert k.warnings.sites() == ["unpin_folios: nfolios is an error value"]
    assert counters(k) == (2, 0)
    k.unpin_folios(folios)
    assert counters(k) == (2, 2)
    ext4 = k.fs("ext4").create("plain", 2 * PAGE_SIZE)
    for args in ((fd, -1, 10, 2), (fd, 10, 9, 2), (fd, 0, 10, 0), (ext4, 0, 10, 2),
                 (None, 0, 10, 2), (fd, 0, 2 * PAGE_SIZE, 2)):
        memfd, start, end, cap = args
        assert k.memfd_pin_folios(memfd, start, end, [None] * 2, cap, [0]) == -EINVAL, args
    assert counters(k) == (2, 2)
