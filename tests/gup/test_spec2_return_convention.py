"""Spec 2.2: the return convention of the GUP entry points.

A count that is a prefix of the range, entries beyond it untouched; the error of the
first page when nothing was obtained; how each entry point reads a negative count; the
errno table; and how GUP-fast's prefix and the slow remainder add up (read from the
record of the call, `k.gup.last_call`).
"""

from __future__ import annotations

import pytest
from gup_helpers import (
    BY_NAME,
    anon_rw,
    entries,
    has_pinned,
    mapped_pfn,
    pte_of,
    release,
    special_vma,
)

from gupsim import (
    EEXIST,
    EFAULT,
    EHWPOISON,
    ENOMEM,
    EOPNOTSUPP,
    FOLL_ANON,
    FOLL_HWPOISON,
    FOLL_LONGTERM,
    FOLL_SPLIT_PMD,
    FOLL_WRITE,
    MADV_HWPOISON,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.mm import PTE, VM

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def hole_after(p: Process, npages: int, present: int) -> int:
    """`npages` of anon memory whose first `present` pages are touched, then a hole."""
    a = anon_rw(p, npages + 1)
    for i in range(present):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    p.munmap(a + npages * PAGE_SIZE, PAGE_SIZE)
    return a


@pytest.mark.parametrize("entry", entries())
def test_2_2_prefix_and_untouched_tail(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """A walk that hits a hole returns the prefix; entries beyond it stay as they were."""
    a = hole_after(p, 3, 1)
    pages = PageArray(5)
    pages.pfns[:] = 7
    got = 1 if entry.fast_only else 3   # fast-only takes no faults
    assert entry.invoke(p, a, 5, FOLL_WRITE, pages) == got
    assert pages.pfns[:got].tolist() == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(got)]
    assert pages.pfns[got:].tolist() == [7] * (5 - got)
    release(k, entry, list(pages[:got]))


@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.count == "ulong"))
def test_2_2_negative_count_is_huge_for_the_slow_path(k: Kernel, p: Process,
                                                      entry: EntryPoint) -> None:
    """The slow-path entry points take an unsigned long: -1 asks for "everything", and the
    walk stops at the first hole with the prefix (spec 2.2, negative nr_pages)."""
    a = hole_after(p, 3, 3)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, -1, FOLL_WRITE, pages) == 3
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(3)]
    assert k.warnings.sites() == []
    release(k, entry, pages)


@pytest.mark.parametrize("entry", entries())
def test_2_2_nothing_obtained_is_the_first_pages_errno(k: Kernel, p: Process,
                                                       entry: EntryPoint) -> None:
    """With nothing obtained the call returns the error of the first page."""
    pfnmap = special_vma(k, p, VM.IO | VM.PFNMAP)
    mixed = special_vma(k, p, VM.MIXEDMAP)
    hole = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.munmap(hole, PAGE_SIZE)
    pages: list[Page | None] = []
    fast_only = entry.fast_only          # no slow path: just 0 pages
    assert entry.invoke(p, hole, 2, 0, pages) == (0 if fast_only else -EFAULT)
    assert entry.invoke(p, pfnmap, 2, 0, pages) == (0 if fast_only else -EFAULT)
    assert entry.invoke(p, mixed, 2, 0, pages) == (0 if fast_only else -EEXIST)
    assert pages == [] and k.warnings.sites() == []
    assert has_pinned(p) == entry.pins, "a pin call marks the mm even failing"


@pytest.mark.parametrize("entry", entries("get_user_pages", "pin_user_pages_fast",
                                           "pin_user_pages"))
def test_2_2_out_of_memory(entry: EntryPoint) -> None:
    """A fault that finds no memory ends the walk: the prefix, then -ENOMEM on its own."""
    k = Kernel(memory="8MiB", debug=True)
    p = k.spawn("app")
    n = 4096                                # more than the machine has
    a = anon_rw(p, n)
    pages = PageArray(n)
    got = entry.invoke(p, a, n, FOLL_WRITE, pages)
    assert 0 < got < n and k.alloc.nr_free_pages() == 0
    assert pages.pfns[got - 1] == mapped_pfn(p, a + (got - 1) * PAGE_SIZE)
    assert pte_of(p, a + got * PAGE_SIZE)[0] == 0
    assert entry.invoke(p, a + got * PAGE_SIZE, 1, FOLL_WRITE, []) == -ENOMEM
    assert k.warnings.sites() == []


@pytest.mark.parametrize("entry", entries("get_user_pages", "pin_user_pages",
                                           "pin_user_pages_remote"))
def test_2_2_errno_table(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """More first-page errors: hwpoison, fsdax long-term, FOLL_SPLIT_PMD on hugetlb,
    FOLL_ANON on a file, a read of PROT_NONE."""
    a = anon_rw(p, touch=True)
    p.madvise(a, PAGE_SIZE, MADV_HWPOISON)
    dax = k.fs("dax").create("pm", PAGE_SIZE)
    d = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=dax)
    h = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    f = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=k.fs("ext4").create("f", PAGE_SIZE))
    none = p.mmap(0, PAGE_SIZE, PROT_NONE, ANON)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, FOLL_HWPOISON, pages) == -EHWPOISON
    assert entry.invoke(p, a, 1, 0, pages) == -EFAULT
    assert entry.invoke(p, h, 1, FOLL_SPLIT_PMD, pages) == -EOPNOTSUPP
    assert entry.invoke(p, f, 1, FOLL_ANON, pages) == -EFAULT
    assert entry.invoke(p, none, 1, 0, pages) == -EFAULT
    if entry.pins:
        assert entry.invoke(p, d, 1, FOLL_LONGTERM, pages) == -EOPNOTSUPP
        assert entry.invoke(p, d, 1, FOLL_LONGTERM | FOLL_ANON, pages) == -EFAULT, \
            "check_vma_flags tests FOLL_ANON before fsdax"
    assert pages == []


@pytest.mark.parametrize(("entry", "touched"), [
    pytest.param(BY_NAME["get_user_pages"], True, id="get_user_pages"),
    pytest.param(BY_NAME["pin_user_pages"], False, id="pin_user_pages")])
def test_2_2_pfn_without_page_is_touched_then_eexist(k: Kernel, p: Process, entry: EntryPoint,
                                                     touched: bool) -> None:
    """A PTE with no struct page behind it cannot be returned (-EEXIST), but FOLL_TOUCH
    (get_user_pages, not pin_user_pages) still marks the entry young, and dirty for a
    write, first."""
    mixed = special_vma(k, p, VM.MIXEDMAP)
    vma = p.mm.find_vma(mixed)
    vma.pte[:] = PTE.PRESENT | PTE.SPECIAL | PTE.WRITE
    assert entry.invoke(p, mixed, 1, FOLL_WRITE, []) == -EEXIST
    want = PTE.YOUNG | PTE.DIRTY if touched else 0
    assert pte_of(p, mixed)[0] & (PTE.YOUNG | PTE.DIRTY) == want
    assert pte_of(p, mixed + PAGE_SIZE)[0] & (PTE.YOUNG | PTE.DIRTY) == 0
    assert entry.invoke(p, mixed, 1, 0, None if not entry.pins else []) == (
        1 if not entry.pins else -EEXIST), "without a pages array it counts"


def test_2_2_fast_partial_then_slow_remainder(k: Kernel, p: Process) -> None:
    """GUP-fast takes the present prefix; the slow path faults in the rest from there."""
    a = anon_rw(p, 4)
    p.write(a, b"a")
    p.write(a + PAGE_SIZE, b"b")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 4, FOLL_WRITE, pages) == 4
    call = k.gup.last_call
    assert (call.path, call.start, call.nr_pages) == ("fast+slow fallback", a, 4)
    assert (call.fast, call.slow) == (2, 2), "the slow path took the two the walk could not"
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    k.unpin_user_pages(pages)


@pytest.mark.parametrize(("mapped", "present", "slow_ret", "want"), [
    (2, 2, -EFAULT, 2),        # the slow part fails at once: the fast prefix is the answer
    (3, 1, 2, 3),              # the slow part faults two pages in, then stops at the hole
    (0, 0, -EFAULT, -EFAULT),  # nothing at all: the slow path's errno
])
def test_2_2_fast_prefix_survives_a_slow_error(k: Kernel, p: Process, mapped: int,
                                               present: int, slow_ret: int, want: int) -> None:
    """If the slow remainder fails, the fast prefix is still returned (the caller must
    release it); with no prefix the slow path's errno is the answer."""
    a = hole_after(p, mapped, present)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, mapped + 2, FOLL_WRITE, pages) == want
    call = k.gup.last_call
    assert (call.path, call.start, call.nr_pages) == ("fast+slow fallback", a, mapped + 2)
    assert (call.fast, call.slow, call.ret) == (present, slow_ret, want)
    assert len(pages) == max(want, 0)
    k.unpin_user_pages(pages)
