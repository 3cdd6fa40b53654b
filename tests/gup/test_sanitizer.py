"""The pin sanitizer (k.sanitizer): every reference GUP hands out remembers the call site
that took it, and releasing it the wrong way is reported with both call sites.

The misuses are the ones driver authors actually write: put_page() on a pinned page,
unpin_user_page() on a page from get_user_pages() (pin, fall back to GUP on failure,
always release with unpin), double unpins, unpinning more than was pinned, and pins
that outlive the process that owned the memory.
"""

from __future__ import annotations

import inspect

import pytest
from gup_helpers import entries, release

import gupsim
from gupsim import (
    EFAULT,
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
from gupsim.drivers.io_uring import IoRing

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def next_line() -> str:
    """The call site the sanitizer must name for a call on the caller's next line."""
    f = inspect.currentframe().f_back  # type: ignore[union-attr]
    assert f is not None
    return f"{f.f_code.co_filename}:{f.f_lineno + 1} in {f.f_code.co_name}"


def line_of(site: str) -> int:
    return int(site.rsplit(" in ", 1)[0].rsplit(":", 1)[1])


@pytest.fixture
def m() -> Kernel:
    """A machine for misuse: the wrong release corrupts counts, as in the kernel, so the
    invariant checks of debug mode are off here (the sanitizer is what is tested)."""
    return Kernel(memory="64MiB", nr_hugepages=2)


def anon(p: Process, npages: int) -> int:
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    for i in range(npages):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    return a


def thp(k: Kernel, p: Process) -> int:
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, gupsim.MADV_HUGEPAGE)
    p.write(a, b"thp")
    assert k.page(p.mm.find_vma(a).pfn[0]).folio.order == 9
    return a


# -- every pin remembers where it was taken ------------------------------------------------


@pytest.mark.parametrize("entry", entries())
def test_every_reference_remembers_its_call_site(k: Kernel, p: Process,
                                                 entry: EntryPoint) -> None:
    """Each entry point records its caller's file:line, its name and the pages it took."""
    a = anon(p, 3)
    pages: list[Page | None] = []
    where = next_line()
    n = entry.invoke(p, a, 3, FOLL_WRITE, pages)
    assert n == 3
    [held] = k.sanitizer.outstanding()
    assert held.site == where and held.call == entry.name
    assert held.how == ("FOLL_PIN" if entry.pins else "FOLL_GET")
    assert held.pages == 3 and list(held.pfns) == [pg.pfn for pg in pages]
    release(k, entry, pages)
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_memfd_pin_folios_and_drivers_name_the_callers_line(k: Kernel, p: Process) -> None:
    """Pins taken inside gupsim on the user's behalf (a driver, memfd_pin_folios) name the
    user's line, the first frame outside gupsim."""
    f = p.memfd_create("buf")
    f.truncate(2 * PAGE_SIZE)
    folios: list = []
    where = next_line()
    assert k.memfd_pin_folios(f, 0, 2 * PAGE_SIZE - 1, folios, 2, [0]) == 2
    a = anon(p, 2)
    ring = IoRing(k, p)
    ring_site = next_line()
    ring.register_buffers([(a, 2 * PAGE_SIZE)])
    sites = {o.call: o.site for o in k.sanitizer.outstanding()}
    assert sites == {"memfd_pin_folios": where, "pin_user_pages_fast": ring_site}
    k.unpin_folios(folios)
    ring.close()
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_outstanding_lists_what_is_held_now(k: Kernel, p: Process) -> None:
    """Partial releases shrink an entry; the zero page is not pin-counted, so a R/O pin of
    never-written memory holds nothing the sanitizer lists."""
    a = anon(p, 4)
    z = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.read(z, 1)
    pins: list[Page | None] = []
    refs: list[Page | None] = []
    zero: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 4, FOLL_WRITE, pins) == 4
    assert p.get_user_pages_fast(a, 2, 0, refs) == 2
    assert p.pin_user_pages_fast(z, 1, 0, zero) == 1 and zero[0].pfn == k.mem.zero_pfn
    assert sorted((o.how, o.pages) for o in k.sanitizer.outstanding()) == \
        [("FOLL_GET", 2), ("FOLL_PIN", 4)]
    k.unpin_user_page(pins[1])
    k.put_page(refs[0])
    held = {o.how: o for o in k.sanitizer.outstanding()}
    assert held["FOLL_PIN"].pages == 3 and pins[1].pfn not in held["FOLL_PIN"].pfns
    assert list(held["FOLL_GET"].pfns) == [refs[1].pfn]
    k.unpin_user_pages([pins[0], pins[2], pins[3]])
    k.put_page(refs[1])
    k.unpin_user_pages(zero)
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_folio_level_releases_are_not_misuse(k: Kernel, p: Process) -> None:
    """The kernel counts pins per folio: pins taken on subpages may be released through the
    folio (unpin_folio, unpin_user_folio) or another subpage, as io_uring's coalescing
    does. None of that is reported, and nothing stays outstanding."""
    a = thp(k, p)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + 10 * PAGE_SIZE, 3, FOLL_WRITE, pages) == 3
    folio = pages[0].folio
    k.unpin_folio(folio)
    k.unpin_user_folio(folio, 2)
    assert folio.pincount == 0
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []
    ring = IoRing(k, p)
    ring.register_buffers([(a + PAGE_SIZE, 8 * PAGE_SIZE), (a + 100 * PAGE_SIZE, PAGE_SIZE)])
    assert folio.pincount == 2, "one pin per folio and buffer after coalescing"
    ring.unregister_buffers()
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


# -- leaks -----------------------------------------------------------------------------------


def test_pins_held_at_exit_are_reported_as_leaks(k: Kernel, p: Process) -> None:
    """Only the exiting process's pins are reported, once per pinning call, both sites named."""
    a = anon(p, 3)
    pins: list[Page | None] = []
    refs: list[Page | None] = []
    taken = next_line()
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pins) == 2
    assert p.get_user_pages_fast(a + 2 * PAGE_SIZE, 1, 0, refs) == 1
    other = k.spawn("other")
    b = anon(other, 1)
    theirs: list[Page | None] = []
    assert other.pin_user_pages_fast(b, 1, FOLL_WRITE, theirs) == 1
    gone = next_line()
    p.exit()
    [leak] = k.sanitizer.reports
    assert leak.kind == "leak" and leak.taken_at == taken and leak.released_at == gone
    assert leak.pfn == pins[0].pfn and "2 page(s)" in leak.message
    assert "pin_user_pages_fast" in str(leak) and taken in str(leak) and gone in str(leak)
    assert len(k.sanitizer.outstanding()) == 3, "the leaked pins are still held"
    k.unpin_user_pages(pins)
    k.put_page(refs[0])
    other.exit()
    assert [r.kind for r in k.sanitizer.reports] == ["leak", "leak"]
    k.unpin_user_pages(theirs)
    assert k.sanitizer.outstanding() == []


def test_no_leak_is_reported_when_everything_was_released(k: Kernel, p: Process) -> None:
    """A process that released its pins exits without a report."""
    a = anon(p, 2)
    pins: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM, pins) == 2
    k.unpin_user_pages_dirty_lock(pins, True)
    p.exit()
    assert k.sanitizer.reports == []


# -- wrong release calls --------------------------------------------------------------------


def test_put_page_on_a_pinned_page(m: Kernel) -> None:
    """put_page() drops 1 where the pin added 1024: the folio looks pinned for ever."""
    p = m.spawn("app")
    a = anon(p, 1)
    pins: list[Page | None] = []
    taken = next_line()
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pins) == 1
    wrong = next_line()
    m.put_page(pins[0])
    [r] = m.sanitizer.reports
    assert r.kind == "put_page_on_pin" and r.taken_at == taken and r.released_at == wrong
    assert "unpin_user_page" in r.message and r.pfn == pins[0].pfn
    assert pins[0].refcount == GUP_PIN_COUNTING_BIAS and gupsim.page_maybe_dma_pinned(pins[0])
    assert [o.pages for o in m.sanitizer.outstanding()] == [1], "the pin is still there"


def test_unpin_of_a_page_taken_with_foll_get_the_fallback_bug(m: Kernel) -> None:
    """The driver pins long-term, falls back to get_user_pages() when that fails, and
    always releases with unpin_user_pages(): the GET reference is 'unpinned'."""
    p = m.spawn("app")
    f = m.fs("ext4").create("data", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"x")
    pages: list[Page | None] = []
    n = p.pin_user_pages_fast(a, 2, FOLL_WRITE | FOLL_LONGTERM, pages)
    assert n == -EFAULT
    taken = next_line()
    n = p.get_user_pages(a, 2, FOLL_WRITE, pages)
    assert n == 2
    released = next_line()
    m.unpin_user_pages(pages, n)
    reports = m.sanitizer.reports
    assert [r.kind for r in reports] == ["unpin_of_get", "unpin_of_get"]
    assert {r.pfn for r in reports} == {pg.pfn for pg in pages}
    assert all(r.taken_at == taken and r.released_at == released for r in reports)
    assert all("get_user_pages()" in r.message and "put_page()" in r.message for r in reports)
    assert m.sanitizer.outstanding() == [], "the references are gone (wrongly)"
    assert "gup_put_folio: refcount underflow" in m.warnings.sites()


def test_double_unpin(m: Kernel) -> None:
    """A second unpin of the same page names where it was pinned and first unpinned."""
    p = m.spawn("app")
    a = anon(p, 2)
    pins: list[Page | None] = []
    taken = next_line()
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pins) == 2
    first = next_line()
    m.unpin_user_pages(pins)
    second = next_line()
    m.unpin_user_page(pins[1])
    [r] = m.sanitizer.reports
    assert r.kind == "double_unpin" and r.pfn == pins[1].pfn
    assert r.taken_at == taken and r.released_at == second
    assert first in r.message, "the report also says where the pin was released first"


def test_double_unpin_is_caught_after_the_page_was_freed(m: Kernel) -> None:
    """The process unmapped the page, the unpin freed it: a second unpin is still a double
    unpin (a use after free in the kernel), not silently ignored."""
    p = m.spawn("app")
    a = anon(p, 1)
    pins: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pins) == 1
    p.munmap(a, PAGE_SIZE)
    m.unpin_user_page(pins[0])
    assert m.mem.kind[pins[0].pfn] == gupsim.memory.Kind.FREE
    m.unpin_user_page(pins[0])
    assert [r.kind for r in m.sanitizer.reports] == ["double_unpin"]


def test_unpinning_more_than_was_pinned(m: Kernel) -> None:
    """A range unpin over 4 pages of a THP of which 2 were pinned: the folio is unpinned
    more often than pinned, reported once, naming the pin's call site."""
    p = m.spawn("app")
    a = thp(m, p)
    pins: list[Page | None] = []
    taken = next_line()
    assert p.pin_user_pages_fast(a + 8 * PAGE_SIZE, 2, FOLL_WRITE, pins) == 2
    wrong = next_line()
    m.unpin_user_page_range_dirty_lock(pins[0], 4, False)
    [r] = m.sanitizer.reports
    assert r.kind == "over_unpin" and r.taken_at == taken and r.released_at == wrong
    assert pins[0].folio.pfn <= r.pfn < pins[0].folio.pfn + 512
    assert "gup_put_folio: pincount underflow" in m.warnings.sites()


def test_one_call_unpinning_a_page_twice_is_an_over_unpin(m: Kernel) -> None:
    """One unpin call listing a page twice unpins more than was pinned."""
    p = m.spawn("app")
    a = anon(p, 1)
    pins: list[Page | None] = []
    taken = next_line()
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pins) == 1
    vec = PageArray(2)
    vec[0] = vec[1] = pins[0]
    wrong = next_line()
    m.unpin_user_pages(vec)
    [r] = m.sanitizer.reports
    assert (r.kind, r.taken_at, r.released_at) == ("over_unpin", taken, wrong)


def test_unpin_of_a_page_never_pinned(m: Kernel) -> None:
    """An unpin with no pin behind it names no taking call site."""
    p = m.spawn("app")
    a = anon(p, 1)
    page = m.page(p.mm.find_vma(a).pfn[0])
    wrong = next_line()
    m.unpin_user_page(page)
    [r] = m.sanitizer.reports
    assert (r.kind, r.taken_at, r.released_at) == ("over_unpin", "<never pinned>", wrong)


def test_unpinning_the_zero_page_is_never_misuse(k: Kernel, p: Process) -> None:
    """The zero page is not pin-counted, so its 'unpins' are no-ops in the kernel too."""
    z = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.read(z, 1)
    pins: list[Page | None] = []
    assert p.pin_user_pages_fast(z, 1, 0, pins) == 1
    k.unpin_user_page(pins[0])
    k.unpin_user_page(pins[0])
    assert k.sanitizer.reports == [] and not k.warnings.sites()


def test_every_report_names_both_call_sites(m: Kernel) -> None:
    """Whatever went wrong, each report says where the reference was taken and where the
    wrong release happened, both as file:line of this test."""
    p = m.spawn("app")
    a = anon(p, 4)
    pins: list[Page | None] = []
    refs: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pins) == 2
    assert p.get_user_pages_fast(a + 2 * PAGE_SIZE, 1, 0, refs) == 1
    m.put_page(pins[0])
    m.unpin_user_page(refs[0])
    m.unpin_user_page(pins[1])
    m.unpin_user_page(pins[1])
    assert p.pin_user_pages_fast(a + 3 * PAGE_SIZE, 1, FOLL_WRITE, pins) == 1
    p.exit()
    kinds = [r.kind for r in m.sanitizer.reports]
    assert kinds == ["put_page_on_pin", "unpin_of_get", "double_unpin", "leak", "leak"]
    for r in m.sanitizer.reports:
        for site in (r.taken_at, r.released_at):
            assert site.startswith(__file__) and line_of(site) > 0
        assert r.taken_at in str(r) and r.released_at in str(r)


def test_pins_added_with_folio_add_pins_are_tracked(k: Kernel, p: Process) -> None:
    """Spec 4.6 step 5: memfd pins split with folio_add_pins(), released page by page."""
    f = p.memfd_create("huge", MFD_HUGETLB)
    f.truncate(PMD_SIZE)
    folios: list = []
    assert k.memfd_pin_folios(f, 0, PMD_SIZE - 1, folios, 1, [0]) == 1
    assert k.folio_add_pins(folios[0], 2) == 0
    k.unpin_user_page_range_dirty_lock(folios[0].page(0), 3, True)
    assert k.sanitizer.reports == []
    assert k.sanitizer.outstanding() == []
