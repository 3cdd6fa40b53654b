"""The exported GUP/PUP entry points against gup-spec.md sections 1.4, 2.2, 3, 5 and 7.

Argument validation (every refusal, each entry point's own answer, one WARN per site),
the return convention, reference counting, how GUP faults pages in, GUP-fast (its
refusals, the fork race, the re-check after the grab, the slow remainder), the seed-era
aliases, and that pinning 1 GiB is vectorised.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
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
    EEXIST,
    EFAULT,
    EHWPOISON,
    EINVAL,
    ENOMEM,
    EOPNOTSUPP,
    EOVERFLOW,
    FOLL_ANON,
    FOLL_DUMP,
    FOLL_FAST_ONLY,
    FOLL_FORCE,
    FOLL_GET,
    FOLL_HONOR_NUMA_FAULT,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_LONGTERM,
    FOLL_MADV_POPULATE,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_PCI_P2PDMA,
    FOLL_PIN,
    FOLL_REMOTE,
    FOLL_SPLIT_PMD,
    FOLL_TOUCH,
    FOLL_TRIED,
    FOLL_UNLOCKABLE,
    FOLL_WRITE,
    GUP_PIN_COUNTING_BIAS,
    MADV_HUGEPAGE,
    MADV_HWPOISON,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    TASK_SIZE,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.gup import fast as fast_mod
from gupsim.gup.flags import foll_flags_str
from gupsim.memory import PG, Kind, Zone
from gupsim.mm import PTE, VM

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
ACQ = "nr_foll_pin_acquired"
REL = "nr_foll_pin_released"
TASK_SIZE_MAX = TASK_SIZE - PAGE_SIZE

EINVAL_ON_INVALID = ("get_user_pages", "get_user_pages_remote", "get_user_pages_unlocked",
                     "get_user_pages_fast", "get_user_pages_fast_only", "pin_user_pages_fast")
ZERO_ON_INVALID = ("pin_user_pages", "pin_user_pages_remote", "pin_user_pages_unlocked")
ENTRIES = EINVAL_ON_INVALID + ZERO_ON_INVALID
GET_ENTRIES = tuple(e for e in ENTRIES if e.startswith("get_"))
PIN_ENTRIES = tuple(e for e in ENTRIES if e.startswith("pin_"))
FAST_ENTRIES = ("get_user_pages_fast", "get_user_pages_fast_only", "pin_user_pages_fast")
INTERNAL = (FOLL_TOUCH, FOLL_TRIED, FOLL_REMOTE, FOLL_PIN, FOLL_FAST_ONLY, FOLL_UNLOCKABLE,
            FOLL_MADV_POPULATE)
NOT_FAST = (FOLL_DUMP, FOLL_NOWAIT, FOLL_HWPOISON, FOLL_ANON, FOLL_SPLIT_PMD,
            FOLL_INTERRUPTIBLE)

SITE_INTERNAL = "is_valid_gup_args: internal FOLL flag"
SITE_LOCKED = "is_valid_gup_args: *locked != 1"
SITE_GET_PIN = "is_valid_gup_args: FOLL_GET with FOLL_PIN"
SITE_LONGTERM = "is_valid_gup_args: FOLL_LONGTERM without FOLL_PIN"
SITE_NO_PAGES = "is_valid_gup_args: no pages array"
SITE_P2PDMA = "is_valid_gup_args: FOLL_LONGTERM with FOLL_PCI_P2PDMA"
SITE_FAST = "gup_fast_fallback: flag not allowed"


# -- helpers -----------------------------------------------------------------------------


def gup(k: Kernel, p: Process, entry: str, start: int, n: int, flags: int, pages: Any,
        locked: list[int] | None = None) -> int:
    """Call any entry point with the kernel's argument order for that entry point."""
    if entry.endswith("_remote"):
        return getattr(k, entry)(p.mm, start, n, flags, pages, locked)
    if entry.endswith("_unlocked"):
        return getattr(p, entry)(start, n, pages, flags)
    return getattr(p, entry)(start, n, flags, pages)


def invalid_answer(entry: str) -> int:
    """What an entry point returns for invalid arguments (spec 1.4: a real asymmetry)."""
    return 0 if entry in ZERO_ON_INVALID else -EINVAL


def release(k: Kernel, entry: str, pages: list[Page | None]) -> None:
    """Give back what a successful call took, with the matching release call."""
    if entry.startswith("pin_"):
        k.unpin_user_pages(pages)
    else:
        for pg in pages:
            if pg is not None:
                k.put_page(pg)


class Spy:
    """Record the calls to (and results of) a function of the gup package, and pass through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.calls: list[tuple[tuple[Any, ...], Any]] = []
        real: Callable[..., Any] = getattr(module, name)

        def spy(*args: Any) -> Any:
            result = real(*args)
            self.calls.append((args, result))
            return result

        monkeypatch.setattr(module, name, spy)


def fast_and_slow(monkeypatch: pytest.MonkeyPatch) -> tuple[Spy, Spy]:
    """Spies on the lockless walk and on the slow path that GUP-fast falls back to."""
    return (Spy(monkeypatch, fast_mod, "gup_fast"),
            Spy(monkeypatch, fast_mod, "__gup_longterm_locked"))


# == 1.4 argument validation =======================================================================


@pytest.mark.parametrize("flag", INTERNAL, ids=foll_flags_str)
@pytest.mark.parametrize("entry", ENTRIES)
def test_1_4_internal_flags_are_refused(k: Kernel, p: Process, entry: str, flag: int) -> None:
    """Step 1: any internal flag is a caller bug, refused before anything else happens."""
    a = anon_rw(p)
    before = counters(k)
    pages: list[Page | None] = []
    for _ in range(2):
        assert gup(k, p, entry, a, 1, flag | FOLL_WRITE, pages) == invalid_answer(entry)
    assert pages == []
    assert k.warnings.sites() == [SITE_INTERNAL]
    assert k.warnings.hits[SITE_INTERNAL] == 2, "WARN_ON_ONCE prints once, fires each time"
    assert pte_of(p, a)[0] == 0, "no fault was taken"
    assert delta(k, before) == (0, 0) and not has_pinned(p)


@pytest.mark.parametrize("entry", PIN_ENTRIES)
def test_1_4_get_with_pin_is_refused(k: Kernel, p: Process, entry: str) -> None:
    """Step 4: FOLL_GET passed to a pin_* entry point (which sets FOLL_PIN) is refused."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert gup(k, p, entry, a, 1, FOLL_GET, pages) == invalid_answer(entry)
    assert pages == [] and k.warnings.sites() == [SITE_GET_PIN]
    assert k.page(mapped_pfn(p, a)).refcount == 1 and not has_pinned(p)


@pytest.mark.parametrize("entry", GET_ENTRIES)
def test_1_4_longterm_without_pin_is_refused(k: Kernel, p: Process, entry: str) -> None:
    """Step 5: every get_user_pages*() refuses FOLL_LONGTERM with -EINVAL."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert gup(k, p, entry, a, 1, FOLL_LONGTERM, pages) == -EINVAL
    assert pages == [] and k.warnings.sites() == [SITE_LONGTERM]
    assert k.page(mapped_pfn(p, a)).refcount == 1


@pytest.mark.parametrize("entry", PIN_ENTRIES + ("get_user_pages_fast",
                                                 "get_user_pages_fast_only"))
def test_1_4_reference_without_pages_array_is_refused(k: Kernel, p: Process,
                                                      entry: str) -> None:
    """Step 6: the entry points that take references need somewhere to return the pages."""
    a = anon_rw(p)
    assert gup(k, p, entry, a, 1, FOLL_WRITE, None) == invalid_answer(entry)
    assert k.warnings.sites() == [SITE_NO_PAGES]
    assert pte_of(p, a)[0] == 0


@pytest.mark.parametrize("entry", ("get_user_pages", "get_user_pages_remote",
                                   "get_user_pages_unlocked"))
def test_1_4_slow_get_without_pages_faults_in_only(k: Kernel, p: Process, entry: str) -> None:
    """pages == NULL without FOLL_GET is a valid fault-in request; with FOLL_GET it is not."""
    a = anon_rw(p, 3)
    assert gup(k, p, entry, a, 3, FOLL_WRITE, None) == 3
    assert k.warnings.sites() == []
    for i in range(3):
        assert k.page(mapped_pfn(p, a + i * PAGE_SIZE)).refcount == 1, "no reference kept"
    assert gup(k, p, entry, a, 1, FOLL_GET, None) == -EINVAL
    assert k.warnings.sites() == [SITE_NO_PAGES]


@pytest.mark.parametrize("entry", PIN_ENTRIES)
def test_1_4_longterm_p2pdma_is_refused(k: Kernel, p: Process, entry: str) -> None:
    """Step 7: P2PDMA memory may not be pinned long-term."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    flags = FOLL_WRITE | FOLL_LONGTERM | FOLL_PCI_P2PDMA
    assert gup(k, p, entry, a, 1, flags, pages) == invalid_answer(entry)
    assert pages == [] and k.warnings.sites() == [SITE_P2PDMA]
    assert not has_pinned(p)


@pytest.mark.parametrize("value", [0, 2, -1])
@pytest.mark.parametrize("entry", ("get_user_pages_remote", "pin_user_pages_remote"))
def test_1_4_locked_must_be_one(k: Kernel, p: Process, entry: str, value: int) -> None:
    """Step 3: a `locked` pointer must say the caller holds mmap_lock (*locked == 1)."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    locked = [value]
    assert gup(k, p, entry, a, 1, 0, pages, locked) == invalid_answer(entry)
    assert locked == [value] and pages == []
    assert k.warnings.sites() == [SITE_LOCKED]
    assert not p.mm.mmap_lock.held()


@pytest.mark.parametrize("entry", ("get_user_pages_remote", "pin_user_pages_remote"))
def test_1_4_locked_one_is_valid_and_stays_held(k: Kernel, p: Process, entry: str) -> None:
    """*locked == 1 is the valid form; no fault dropped the lock, so it still says 1."""
    a = anon_rw(p, 2)
    pages: list[Page | None] = []
    locked = [1]
    assert gup(k, p, entry, a, 2, FOLL_WRITE, pages, locked) == 2
    assert locked == [1] and k.warnings.sites() == []
    release(k, entry, pages)


@pytest.mark.parametrize(("entry", "flags", "pages", "locked", "site"), [
    ("pin_user_pages_remote", FOLL_TOUCH | FOLL_GET, [], [0], SITE_INTERNAL),
    ("pin_user_pages_remote", FOLL_GET, [], [0], SITE_LOCKED),
    ("pin_user_pages", FOLL_GET | FOLL_LONGTERM | FOLL_PCI_P2PDMA, None, None, SITE_GET_PIN),
    ("get_user_pages", FOLL_LONGTERM | FOLL_GET, None, None, SITE_LONGTERM),
    ("get_user_pages_fast", FOLL_LONGTERM | FOLL_NOWAIT, [], None, SITE_LONGTERM),
    ("pin_user_pages", FOLL_LONGTERM | FOLL_PCI_P2PDMA, None, None, SITE_NO_PAGES),
    ("pin_user_pages_fast", FOLL_NOWAIT | FOLL_DUMP, [], None, SITE_FAST),
], ids=lambda v: v if isinstance(v, str) else None)
def test_1_4_first_failing_step_decides(k: Kernel, p: Process, entry: str, flags: int,
                                        pages: Any, locked: list[int] | None,
                                        site: str) -> None:
    """The checks run in the kernel's order and only the first failure warns."""
    a = anon_rw(p, touch=True)
    assert gup(k, p, entry, a, 1, flags, pages, locked) == invalid_answer(entry)
    assert k.warnings.sites() == [site]


def test_1_4_one_warning_per_site_across_entry_points(k: Kernel, p: Process) -> None:
    """Each WARN_ON_ONCE site prints once per boot, whichever entry point reaches it."""
    a = anon_rw(p, touch=True)
    for entry in ENTRIES:
        assert gup(k, p, entry, a, 1, FOLL_TRIED, []) == invalid_answer(entry)
    for entry in PIN_ENTRIES:
        assert gup(k, p, entry, a, 1, FOLL_GET, []) == invalid_answer(entry)
    assert k.warnings.sites() == [SITE_INTERNAL, SITE_GET_PIN]
    assert k.warnings.hits == {SITE_INTERNAL: len(ENTRIES), SITE_GET_PIN: len(PIN_ENTRIES)}


@pytest.mark.parametrize("flag", NOT_FAST, ids=foll_flags_str)
@pytest.mark.parametrize("entry", FAST_ENTRIES)
def test_1_4_fast_entry_points_whitelist(k: Kernel, p: Process, entry: str, flag: int) -> None:
    """GUP-fast accepts only a few public flags; the rest is -EINVAL with a WARN, before
    MMF_HAS_PINNED is set. The slow entry points accept the same flags."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert gup(k, p, entry, a, 1, flag, pages) == -EINVAL
    assert pages == [] and k.warnings.sites() == [SITE_FAST]
    assert not has_pinned(p)
    slow = "pin_user_pages" if entry.startswith("pin_") else "get_user_pages"
    assert gup(k, p, slow, a, 1, flag, pages) == 1
    assert k.warnings.sites() == [SITE_FAST]
    release(k, slow, pages)


@pytest.mark.parametrize("flag", (FOLL_WRITE, FOLL_FORCE, FOLL_NOFAULT, FOLL_HONOR_NUMA_FAULT,
                                  FOLL_PCI_P2PDMA, FOLL_LONGTERM), ids=foll_flags_str)
def test_1_4_fast_accepted_flags(k: Kernel, p: Process, flag: int) -> None:
    """The whitelisted flags pass GUP-fast's own check (FOLL_LONGTERM only when pinning)."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, flag, pages) == 1
    assert k.warnings.sites() == []
    k.unpin_user_pages(pages)


def test_1_4_fast_range_checks(k: Kernel, p: Process) -> None:
    """start is rounded down; a wrapping range is -EOVERFLOW, one past TASK_SIZE_MAX -EFAULT;
    nr_pages is an int, so -1 wraps the length."""
    a = anon_rw(p, 2, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a + PAGE_SIZE + 123, 1, FOLL_WRITE, pages) == 1
    assert pages[0].pfn == mapped_pfn(p, a + PAGE_SIZE)
    k.unpin_user_pages(pages)
    for entry in FAST_ENTRIES:
        assert gup(k, p, entry, a, -1, 0, []) == -EOVERFLOW
        assert gup(k, p, entry, 0, -1, 0, []) == -EFAULT
        assert gup(k, p, entry, TASK_SIZE_MAX, 1, 0, []) == -EFAULT
        assert gup(k, p, entry, (1 << 64) - PAGE_SIZE, 1, 0, []) == -EOVERFLOW
    assert p.get_user_pages_fast_only(TASK_SIZE_MAX - PAGE_SIZE, 1, 0, []) == 0
    assert p.get_user_pages_fast_only(a, (1 << 32) + 1, 0, pages) == 1, "an int: 2**32 + 1 is 1"
    k.put_page(pages[0])
    assert k.warnings.sites() == []


@pytest.mark.parametrize("entry", ENTRIES)
def test_1_4_zero_pages(k: Kernel, p: Process, entry: str) -> None:
    """nr_pages == 0 is 0 everywhere; only GUP-fast marks the mm before looking at it."""
    a = anon_rw(p)
    assert gup(k, p, entry, a, 0, 0, []) == 0
    assert k.warnings.sites() == []
    assert has_pinned(p) == (entry == "pin_user_pages_fast")


# == 2.2 return convention =========================================================================


def hole_after(p: Process, npages: int, present: int) -> int:
    """`npages` of anon memory whose first `present` pages are touched, then a hole."""
    a = anon_rw(p, npages + 1)
    for i in range(present):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    p.munmap(a + npages * PAGE_SIZE, PAGE_SIZE)
    return a


@pytest.mark.parametrize("entry", ENTRIES)
def test_2_2_prefix_and_untouched_tail(k: Kernel, p: Process, entry: str) -> None:
    """A walk that hits a hole returns the prefix; entries beyond it stay as they were."""
    a = hole_after(p, 3, 1)
    pages = PageArray(5)
    pages.pfns[:] = 7
    got = 1 if entry == "get_user_pages_fast_only" else 3   # fast-only takes no faults
    assert gup(k, p, entry, a, 5, FOLL_WRITE, pages) == got
    assert pages.pfns[:got].tolist() == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(got)]
    assert pages.pfns[got:].tolist() == [7] * (5 - got)
    release(k, entry, list(pages[:got]))


@pytest.mark.parametrize("entry", ("get_user_pages", "get_user_pages_remote",
                                   "get_user_pages_unlocked", "pin_user_pages",
                                   "pin_user_pages_remote", "pin_user_pages_unlocked"))
def test_2_2_negative_count_is_huge_for_the_slow_path(k: Kernel, p: Process,
                                                      entry: str) -> None:
    """The slow-path entry points take an unsigned long: -1 asks for "everything", and the
    walk stops at the first hole with the prefix (spec 2.2, negative nr_pages)."""
    a = hole_after(p, 3, 3)
    pages: list[Page | None] = []
    assert gup(k, p, entry, a, -1, FOLL_WRITE, pages) == 3
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(3)]
    assert k.warnings.sites() == []
    release(k, entry, pages)


@pytest.mark.parametrize("entry", ENTRIES)
def test_2_2_nothing_obtained_is_the_first_pages_errno(k: Kernel, p: Process,
                                                       entry: str) -> None:
    """With nothing obtained the call returns the error of the first page."""
    pfnmap = special_vma(k, p, VM.IO | VM.PFNMAP)
    mixed = special_vma(k, p, VM.MIXEDMAP)
    hole = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.munmap(hole, PAGE_SIZE)
    pages: list[Page | None] = []
    fast_only = entry == "get_user_pages_fast_only"          # no slow path: just 0 pages
    assert gup(k, p, entry, hole, 2, 0, pages) == (0 if fast_only else -EFAULT)
    assert gup(k, p, entry, pfnmap, 2, 0, pages) == (0 if fast_only else -EFAULT)
    assert gup(k, p, entry, mixed, 2, 0, pages) == (0 if fast_only else -EEXIST)
    assert pages == [] and k.warnings.sites() == []
    assert has_pinned(p) == entry.startswith("pin_"), "a pin call marks the mm even failing"


@pytest.mark.parametrize("entry", ("get_user_pages", "pin_user_pages_fast", "pin_user_pages"))
def test_2_2_out_of_memory(entry: str) -> None:
    """A fault that finds no memory ends the walk: the prefix, then -ENOMEM on its own."""
    k = Kernel(memory="8MiB", debug=True)
    p = k.spawn("app")
    n = 4096                                # more than the machine has
    a = anon_rw(p, n)
    pages = PageArray(n)
    got = gup(k, p, entry, a, n, FOLL_WRITE, pages)
    assert 0 < got < n and k.alloc.nr_free_pages() == 0
    assert pages.pfns[got - 1] == mapped_pfn(p, a + (got - 1) * PAGE_SIZE)
    assert pte_of(p, a + got * PAGE_SIZE)[0] == 0
    assert gup(k, p, entry, a + got * PAGE_SIZE, 1, FOLL_WRITE, []) == -ENOMEM
    assert k.warnings.sites() == []


@pytest.mark.parametrize("entry", ("get_user_pages", "pin_user_pages", "pin_user_pages_remote"))
def test_2_2_errno_table(k: Kernel, p: Process, entry: str) -> None:
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
    assert gup(k, p, entry, a, 1, FOLL_HWPOISON, pages) == -EHWPOISON
    assert gup(k, p, entry, a, 1, 0, pages) == -EFAULT
    assert gup(k, p, entry, h, 1, FOLL_SPLIT_PMD, pages) == -EOPNOTSUPP
    assert gup(k, p, entry, f, 1, FOLL_ANON, pages) == -EFAULT
    assert gup(k, p, entry, none, 1, 0, pages) == -EFAULT
    if entry.startswith("pin_"):
        assert gup(k, p, entry, d, 1, FOLL_LONGTERM, pages) == -EOPNOTSUPP
        assert gup(k, p, entry, d, 1, FOLL_LONGTERM | FOLL_ANON, pages) == -EFAULT, \
            "check_vma_flags tests FOLL_ANON before fsdax"
    assert pages == []


@pytest.mark.parametrize(("entry", "touched"), [("get_user_pages", True),
                                               ("pin_user_pages", False)])
def test_2_2_pfn_without_page_is_touched_then_eexist(k: Kernel, p: Process, entry: str,
                                                     touched: bool) -> None:
    """A PTE with no struct page behind it cannot be returned (-EEXIST), but FOLL_TOUCH
    (get_user_pages, not pin_user_pages) still marks the entry young, and dirty for a
    write, first."""
    mixed = special_vma(k, p, VM.MIXEDMAP)
    vma = p.mm.find_vma(mixed)
    vma.pte[:] = PTE.PRESENT | PTE.SPECIAL | PTE.WRITE
    assert gup(k, p, entry, mixed, 1, FOLL_WRITE, []) == -EEXIST
    want = PTE.YOUNG | PTE.DIRTY if touched else 0
    assert pte_of(p, mixed)[0] & (PTE.YOUNG | PTE.DIRTY) == want
    assert pte_of(p, mixed + PAGE_SIZE)[0] & (PTE.YOUNG | PTE.DIRTY) == 0
    assert gup(k, p, entry, mixed, 1, 0, None if entry.startswith("get_") else []) == (
        1 if entry.startswith("get_") else -EEXIST), "without a pages array it counts"


def test_2_2_fast_partial_then_slow_remainder(k: Kernel, p: Process,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """GUP-fast takes the present prefix; the slow path faults in the rest from there."""
    walk, slow = fast_and_slow(monkeypatch)
    a = anon_rw(p, 4)
    p.write(a, b"a")
    p.write(a + PAGE_SIZE, b"b")
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 4, FOLL_WRITE, pages) == 4
    assert [r for _, r in walk.calls] == [2]
    ((args, ret),) = slow.calls
    assert args[2:4] == (a + 2 * PAGE_SIZE, 2) and ret == 2
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    k.unpin_user_pages(pages)


@pytest.mark.parametrize(("mapped", "present", "slow_ret", "want"), [
    (2, 2, -EFAULT, 2),        # the slow part fails at once: the fast prefix is the answer
    (3, 1, 2, 3),              # the slow part faults two pages in, then stops at the hole
    (0, 0, -EFAULT, -EFAULT),  # nothing at all: the slow path's errno
])
def test_2_2_fast_prefix_survives_a_slow_error(k: Kernel, p: Process,
                                               monkeypatch: pytest.MonkeyPatch, mapped: int,
                                               present: int, slow_ret: int, want: int) -> None:
    """If the slow remainder fails, the fast prefix is still returned (the caller must
    release it); with no prefix the slow path's errno is the answer."""
    walk, slow = fast_and_slow(monkeypatch)
    a = hole_after(p, mapped, present)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, mapped + 2, FOLL_WRITE, pages) == want
    assert [r for _, r in walk.calls] == [present]
    ((args, ret),) = slow.calls
    assert args[2:4] == (a + present * PAGE_SIZE, mapped + 2 - present) and ret == slow_ret
    assert len(pages) == max(want, 0)
    k.unpin_user_pages(pages)


# == 3 reference counting ==========================================================================


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


@pytest.mark.parametrize("entry", ("pin_user_pages", "pin_user_pages_fast"))
def test_3_refcount_overflow_is_refused(entry: str) -> None:
    """No pre-check: the pin that wraps the refcount succeeds; the next one sees a negative
    refcount and is refused with -ENOMEM (GUP-fast warns in try_get_folio first)."""
    k = Kernel(memory="64MiB")               # no debug: a wrapped refcount breaks invariants
    p = k.spawn("app")
    a = anon_rw(p, touch=True)
    head = mapped_pfn(p, a)
    k.mem.refcount[head] += (1 << 31) - GUP_PIN_COUNTING_BIAS - 1   # ~2M earlier pins' worth
    pages: list[Page | None] = []
    assert gup(k, p, entry, a, 1, 0, pages) == 1
    assert k.page(head).refcount < 0, "wrapped, like an atomic_t"
    assert gupsim.page_maybe_dma_pinned(pages[0]), "unsigned compare: still maybe pinned"
    before = counters(k)
    assert gup(k, p, entry, a, 1, 0, pages) == -ENOMEM
    assert len(pages) == 1 and delta(k, before) == (0, 0)
    want = ["try_grab_folio: refcount <= 0"]
    if entry == "pin_user_pages_fast":
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


# == 5 how GUP faults pages in =====================================================================


def test_5_force_write_to_readonly_private_file_mapping(k: Kernel, p: Process) -> None:
    """A ptrace-style poke COWs into an anon page mapped read-only; the file is untouched
    and the copy is reused by the next poke. Shared mappings refuse FOLL_FORCE writes."""
    f = k.fs("ext4").create("text", PAGE_SIZE)
    f.pwrite(0, b"original")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    assert p.read(m, 8) == b"original"
    cache_pfn = mapped_pfn(p, m)
    pages: list[Page | None] = []
    assert p.get_user_pages(m, 1, FOLL_WRITE, pages) == -EFAULT
    assert k.get_user_pages_remote(p.mm, m, 1, FOLL_WRITE | FOLL_FORCE, pages, None) == 1
    copy = pages[0]
    assert copy.pfn != cache_pfn and copy.folio.kind == Kind.ANON and copy.anon_exclusive
    bits, pfn = pte_of(p, m)
    assert pfn == copy.pfn and not bits & PTE.WRITE, "COWed, but not made writable"
    k.dma_write(copy, 0, b"breakpt!")
    assert p.read(m, 8) == b"breakpt!" and f.pread(0, 8) == b"original"
    again: list[Page | None] = []
    assert k.get_user_pages_remote(p.mm, m, 1, FOLL_WRITE | FOLL_FORCE, again, None) == 1
    assert again[0] == copy, "the exclusive copy is written in place the second time"
    assert copy.refcount == 3
    k.put_page(copy)
    k.put_page(copy)
    shared = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    assert p.get_user_pages(shared, 1, FOLL_WRITE | FOLL_FORCE, []) == -EFAULT


def test_5_force_read_of_prot_none(k: Kernel, p: Process) -> None:
    """PROT_NONE refuses GUP, except a FOLL_FORCE read (VM_MAYREAD), as ptrace does."""
    a = anon_rw(p, touch=True)
    p.mprotect(a, PAGE_SIZE, PROT_NONE)
    pages: list[Page | None] = []
    assert p.get_user_pages(a, 1, 0, pages) == -EFAULT
    assert p.pin_user_pages_fast(a, 1, 0, pages) == -EFAULT
    assert p.get_user_pages(a, 1, FOLL_FORCE, pages) == 1
    assert pages[0].read(0, 1) == b"\x01"
    k.put_page(pages[0])


def test_5_nofault(k: Kernel, p: Process) -> None:
    """FOLL_NOFAULT returns what is present (a prefix) and never faults."""
    a = anon_rw(p, 3)
    p.write(a, b"x")
    faults = k.vmstat["pgfault"]
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 3, FOLL_NOFAULT, pages) == 1
    assert p.pin_user_pages(a + PAGE_SIZE, 2, FOLL_NOFAULT, pages) == -EFAULT
    assert k.vmstat["pgfault"] == faults and pte_of(p, a + PAGE_SIZE)[0] == 0
    k.unpin_user_pages(pages)


@pytest.mark.parametrize("entry", ("get_user_pages", "get_user_pages_unlocked",
                                   "pin_user_pages", "pin_user_pages_unlocked"))
def test_5_nowait_returns_zero_while_io_runs(k: Kernel, p: Process, entry: str) -> None:
    """FOLL_NOWAIT: a page that needs I/O ends the walk; with nothing done that is 0 (the
    one legitimate 0, and no WARN). The I/O was started, so a later call finds the page."""
    a = anon_rw(p, 3, touch=True)
    p.madvise(a + PAGE_SIZE, 2 * PAGE_SIZE, MADV_PAGEOUT)
    assert pte_of(p, a + PAGE_SIZE)[0] & PTE.SWAP and pte_of(p, a + 2 * PAGE_SIZE)[0] & PTE.SWAP
    first: list[Page | None] = []
    assert gup(k, p, entry, a + 2 * PAGE_SIZE, 1, FOLL_NOWAIT, first) == 0
    assert first == [] and k.warnings.sites() == []
    prefix: list[Page | None] = []
    assert gup(k, p, entry, a, 3, FOLL_NOWAIT, prefix) == 1
    assert prefix[0].pfn == mapped_pfn(p, a)
    later: list[Page | None] = []
    assert gup(k, p, entry, a + PAGE_SIZE, 2, FOLL_NOWAIT, later) == 2
    assert [pg.read(0, 1) for pg in later] == [b"\x02", b"\x03"]
    release(k, entry, prefix + later)


def test_5_anon_only(k: Kernel, p: Process) -> None:
    """FOLL_ANON refuses every VMA that is not private anonymous memory, shmem included."""
    a = anon_rw(p)
    shm = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    f = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=k.fs("ext4").create("f", PAGE_SIZE))
    pages: list[Page | None] = []
    assert p.pin_user_pages(shm, 1, FOLL_ANON, pages) == -EFAULT
    assert p.pin_user_pages(f, 1, FOLL_ANON, pages) == -EFAULT
    assert p.pin_user_pages(a, 1, FOLL_ANON | FOLL_WRITE, pages) == 1
    k.unpin_user_pages(pages)


def test_5_hwpoison_after_a_good_page(k: Kernel, p: Process) -> None:
    """A poisoned page after good ones ends the walk: the prefix is returned either way."""
    a = anon_rw(p, 2, touch=True)
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_HWPOISON)
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_HWPOISON, pages) == 1
    assert p.pin_user_pages(a + PAGE_SIZE, 1, FOLL_HWPOISON, pages) == -EHWPOISON
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, 0, pages) == -EFAULT
    k.unpin_user_pages(pages)


def test_5_split_pmd(k: Kernel, p: Process) -> None:
    """FOLL_SPLIT_PMD maps a THP with PTEs before returning its pages; the folio stays whole."""
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    pages: list[Page | None] = []
    assert p.pin_user_pages(t + PAGE_SIZE, 2, FOLL_SPLIT_PMD | FOLL_WRITE, pages) == 2
    bits, _ = pte_of(p, t + PAGE_SIZE)
    assert not bits & PTE.PMD and bits & PTE.PRESENT
    assert folio.order == 9 and folio.entire_mapcount == 0 and folio.mapcount == 512
    assert (folio.pincount, folio.refcount) == (2, 514)
    assert [pg.pfn for pg in pages] == [folio.pfn + 1, folio.pfn + 2]
    k.unpin_user_pages(pages)


def test_5_dump(k: Kernel, p: Process) -> None:
    """FOLL_DUMP (core dumps) skips holes that would read as zeros and the zero page, but
    faults in swapped-out and file-backed pages."""
    a = anon_rw(p, 4)
    p.write(a, b"present")
    p.write(a + PAGE_SIZE, b"swapped")
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_PAGEOUT)
    assert p.read(a + 2 * PAGE_SIZE, 1) == b"\0"          # the zero page
    f = k.fs("ext4").create("core", PAGE_SIZE)
    f.pwrite(0, b"file")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    h = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    dump = FOLL_DUMP | FOLL_FORCE
    pages: list[Page | None] = []
    faults = k.vmstat["pgfault"]
    assert p.get_user_pages(a + 3 * PAGE_SIZE, 1, dump, pages) == -EFAULT
    assert p.get_user_pages(a + 2 * PAGE_SIZE, 1, dump, pages) == -EFAULT
    assert p.get_user_pages(h, 1, dump, pages) == -EFAULT
    assert k.vmstat["pgfault"] == faults and pte_of(p, a + 3 * PAGE_SIZE)[0] == 0
    assert pages == []
    for addr, want in ((a, b"present"), (a + PAGE_SIZE, b"swapped"), (m, b"file")):
        got: list[Page | None] = []
        assert p.get_user_pages(addr, 1, dump, got) == 1
        assert got[0].read(0, len(want)) == want
        k.put_page(got[0])


def test_5_ro_pin_of_thp_shared_with_a_child_splits_the_pmd(k: Kernel, p: Process) -> None:
    """Unsharing one page of a COW-shared PMD-mapped THP splits the parent's PMD and copies
    that page alone (mapped R/O, not dirty); the child keeps the whole PMD mapping."""
    t = thp_region(k, p)
    p.write(t + 3 * PAGE_SIZE, b"three")
    child = p.fork()
    folio = k.page(mapped_pfn(p, t)).folio
    assert pte_of(child, t)[0] & PTE.PMD and folio.refcount == 2
    pages: list[Page | None] = []
    assert p.pin_user_pages(t + 3 * PAGE_SIZE, 1, 0, pages) == 1
    copy = pages[0]
    assert copy.folio.order == 0 and copy.folio.kind == Kind.ANON and copy.anon_exclusive
    assert copy.read(0, 5) == b"three"
    bits, pfn = pte_of(p, t + 3 * PAGE_SIZE)
    assert pfn == copy.pfn and not bits & (PTE.PMD | PTE.WRITE | PTE.DIRTY)
    assert pte_of(p, t + 4 * PAGE_SIZE) == (PTE.PRESENT | PTE.DIRTY | PTE.YOUNG,
                                           folio.pfn + 4), "the rest is PTE-mapped"
    assert pte_of(child, t)[0] & PTE.PMD and mapped_pfn(child, t + 3 * PAGE_SIZE) == folio.pfn + 3
    assert folio.pincount == 0 and folio.refcount == 511 + 1
    k.unpin_user_pages(pages)


def test_5_shared_mappings(k: Kernel, p: Process) -> None:
    """shmem has no zero page: a R/O pin of an untouched page allocates it. A short-term
    RW pin of an ext4 shared mapping write-faults through page_mkwrite (dirty, writable)."""
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(s, 1, 0, pages) == 1
    assert pages[0].folio.kind == Kind.SHMEM and pages[0].pfn == mapped_pfn(p, s)
    f = k.fs("ext4").create("wal", PAGE_SIZE)
    f.pwrite(0, b"abc")
    f.fsync()
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.read(m, 3) == b"abc"
    cache = k.page(mapped_pfn(p, m))
    assert not cache.folio.dirty and not pte_of(p, m)[0] & PTE.WRITE
    rw: list[Page | None] = []
    assert p.pin_user_pages_fast(m, 1, FOLL_WRITE, rw) == 1
    assert rw[0] == cache and cache.folio.dirty and pte_of(p, m)[0] & PTE.WRITE
    k.unpin_user_pages(pages)
    k.unpin_user_pages(rw)


def test_5_ro_pins_of_a_private_file_mapping(k: Kernel, p: Process) -> None:
    """Short-term R/O pins return the page-cache page itself; long-term ones unshare it
    into an anon copy first, so later writes by the process stay visible (spec 5 #10/#11)."""
    f = k.fs("ext4").create("lib", PAGE_SIZE)
    f.pwrite(0, b"code")
    m = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd=f)
    short: list[Page | None] = []
    assert p.pin_user_pages(m, 1, 0, short) == 1
    assert short[0].pfn == f.page_cache[0] == mapped_pfn(p, m)
    long: list[Page | None] = []
    assert p.pin_user_pages(m, 1, FOLL_LONGTERM, long) == 1
    assert long[0].folio.kind == Kind.ANON and long[0].read(0, 4) == b"code"
    assert long[0].pfn == mapped_pfn(p, m) != f.page_cache[0]
    assert not pte_of(p, m)[0] & PTE.WRITE
    k.unpin_user_pages(short)
    k.unpin_user_pages(long)


def test_5_no_stack_expansion_and_swapped_pages(k: Kernel, p: Process) -> None:
    """GUP never grows a stack: just below a MAP_GROWSDOWN VMA is a hole (spec 5 #22). A
    swapped-out page is swapped in and pinned (#24)."""
    g = p.mmap(0, 4 * PAGE_SIZE, RW, ANON | 0x0100)       # MAP_GROWSDOWN
    assert p.pin_user_pages(g - PAGE_SIZE, 1, FOLL_WRITE, []) == -EFAULT
    assert p.mm.find_vma(g - PAGE_SIZE) is None and p.mm.find_vma(g).start == g
    a = anon_rw(p, touch=True)
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert pte_of(p, a)[0] & PTE.SWAP
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert pages[0].pfn == mapped_pfn(p, a) and pages[0].read(0, 1) == b"\x01"
    assert pages[0].anon_exclusive and pages[0].refcount == 1 + GUP_PIN_COUNTING_BIAS
    k.unpin_user_pages(pages)


def _state(k: Kernel, p: Process, addr: int) -> tuple[int, str, int, bool, bool]:
    """What a fault leaves behind: PTE kind bits, and the folio's kind, order, exclusivity
    and dirtiness."""
    bits, pfn = pte_of(p, addr)
    page = k.page(pfn)
    folio = page.folio
    mask = PTE.PRESENT | PTE.WRITE | PTE.SPECIAL | PTE.PMD | PTE.PUD | PTE.DIRTY
    return (bits & mask, folio.kind.name, folio.order,
            bool(k.mem.flags[pfn] & PG.anon_exclusive) or page.anon_exclusive, folio.dirty)


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
@pytest.mark.parametrize("kind", ["anon", "thp", "shmem", "ext4-shared", "ext4-private",
                                  "tmpfs-shared", "hugetlb"])
def test_5_gup_faults_like_the_cpu(k: Kernel, p: Process, kind: str, write: bool) -> None:
    """A fault taken by GUP leaves the same state as the same access by the CPU would."""

    def region() -> int:
        size = PMD_SIZE if kind in ("thp", "hugetlb") else PAGE_SIZE
        if kind in ("anon", "thp"):
            m = p.mmap(0, size, RW, ANON)
            if kind == "thp":
                p.madvise(m, size, MADV_HUGEPAGE)
            return m
        if kind == "shmem":
            return p.mmap(0, size, RW, MAP_SHARED | MAP_ANONYMOUS)
        if kind == "hugetlb":
            return p.mmap(0, size, RW, ANON | MAP_HUGETLB)
        fs = "tmpfs" if kind.startswith("tmpfs") else "ext4"
        f = k.fs(fs).create(f"{kind}-{len(p.mm.vmas)}", size)
        return p.mmap(0, size, RW, MAP_SHARED if kind.endswith("shared") else MAP_PRIVATE,
                      fd=f)

    cpu, dev = region(), region()
    if write:
        p.write(cpu, b"\0")
    else:
        p.read(cpu, 1)
    pages: list[Page | None] = []
    assert p.get_user_pages(dev, 1, FOLL_WRITE if write else 0, pages) == 1
    k.put_page(pages[0])
    assert _state(k, p, dev) == _state(k, p, cpu)


# == 7 GUP-fast ====================================================================================


@pytest.mark.parametrize(("case", "fast_delta"), [
    ("absent", (0, 0)), ("readonly-pte", (0, 0)), ("zero-page", (0, 0)),
    ("movable-longterm", (0, 0)),
    ("shared-anon-ro-pin", (1, 1)), ("file-ro-longterm", (1, 1)),
])
def test_7_fast_refusals(monkeypatch: pytest.MonkeyPatch, case: str,
                         fast_delta: tuple[int, int]) -> None:
    """GUP-fast stops at what it cannot handle and leaves it to the slow path. Refusals
    before the grab cost nothing; those after it (folio checks, unshare) show as one pin
    acquired and released, as in the kernel."""
    movable = "32MiB" if case == "movable-longterm" else 0
    k = Kernel(memory="256MiB", movable=movable, debug=True)
    p = k.spawn("app")
    walk, slow = fast_and_slow(monkeypatch)
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
    assert [r for _, r in walk.calls] == [0]
    assert len(slow.calls) == 1 and slow.calls[0][1] == 1
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


def test_7_fork_in_progress_skips_the_fast_walk_for_pins_only(
        k: Kernel, p: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    """While fork write-protects (odd write_protect_seq) pinning GUP-fast takes nothing;
    FOLL_GET does not look at the sequence."""
    walk, _ = fast_and_slow(monkeypatch)
    a = anon_rw(p, touch=True)
    p.mm.write_protect_seq += 1
    try:
        pins: list[Page | None] = []
        gets: list[Page | None] = []
        assert p.pin_user_pages_fast(a, 1, FOLL_WRITE, pins) == 1
        assert p.get_user_pages_fast(a, 1, FOLL_WRITE, gets) == 1
    finally:
        p.mm.write_protect_seq -= 1
    assert [r for _, r in walk.calls] == [0, 1]
    assert counters(k) == (1, 0), "the slow path pinned once; the fast walk never grabbed"
    k.unpin_user_pages(pins)
    k.put_page(gets[0])


def test_7_fork_race_discards_pins_already_taken(k: Kernel, p: Process,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork that lands while GUP-fast is in its second VMA: the pins already taken are
    all given back (write_protect_seq moved) and the fast part reports 0. Fork saw the
    first page pinned at that moment, so it copied it for the child and left the parent's
    page in place; the second page was shared, so the slow path COWs it for the write."""
    walk, slow = fast_and_slow(monkeypatch)
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
    assert [r for _, r in walk.calls] == [0] and slow.calls[0][0][2:4] == (a, 2)
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


def test_7_fork_race_with_get(k: Kernel, p: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork racing a FOLL_GET walk write-protects the PTE: the re-check after the grab
    sees it changed, drops the reference and the slow path COWs for the write."""
    walk, slow = fast_and_slow(monkeypatch)
    a = anon_rw(p, touch=True)
    original = mapped_pfn(p, a)
    children: list[Process] = []
    k.gup.on_race("gup_fast:after_pte_read", lambda **_: children.append(p.fork()))
    pages: list[Page | None] = []
    assert p.get_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert [r for _, r in walk.calls] == [0] and len(slow.calls) == 1
    assert pages[0].pfn == mapped_pfn(p, a) != original
    assert mapped_pfn(children[0], a) == original
    assert k.page(original).refcount == 1, "the fast walk's reference was given back"
    k.put_page(pages[0])


@pytest.mark.parametrize(("race", "want", "fast_delta"), [
    ("mprotect", -EFAULT, (1, 1)),        # grabbed, the PTE changed: dropped again
    ("munmap", -EFAULT, (0, 0)),          # the folio was freed first: nothing to grab
])
def test_7_recheck_after_the_grab(k: Kernel, p: Process, monkeypatch: pytest.MonkeyPatch,
                                  race: str, want: int,
                                  fast_delta: tuple[int, int]) -> None:
    """Between reading a PTE and grabbing its folio anything may happen: GUP-fast re-reads
    the entry after the grab and gives the pin back if it changed; a folio freed meanwhile
    (refcount 0) is not grabbed at all. Either way the slow path has the last word."""
    walk, slow = fast_and_slow(monkeypatch)
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
    assert [r for _, r in walk.calls] == [0] and slow.calls[0][1] == want
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


@pytest.mark.parametrize(("entry", "touches"), [
    ("get_user_pages", True), ("get_user_pages_remote", True),
    ("pin_user_pages", False), ("pin_user_pages_remote", True),
    ("pin_user_pages_unlocked", True), ("pin_user_pages_fast", False),
])
def test_1_5_foll_touch_by_entry_point(k: Kernel, p: Process, entry: str,
                                       touches: bool) -> None:
    """FOLL_TOUCH (added by most entry points, not pin_user_pages(), not GUP-fast's own
    walk) marks the folio accessed, and dirty for a write through a clean PTE."""
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.read(s, 1)                           # shmem: writable PTE, clean page
    folio = k.page(mapped_pfn(p, s)).folio
    assert pte_of(p, s)[0] & PTE.WRITE and not pte_of(p, s)[0] & PTE.DIRTY
    k.mem.clear_flag(folio.pfn, PG.referenced)
    pages: list[Page | None] = []
    assert gup(k, p, entry, s, 1, FOLL_WRITE, pages) == 1
    assert folio.dirty == touches
    assert k.mem.test(folio.pfn, PG.referenced) == (touches or entry.endswith("_fast"))
    release(k, entry, pages)


def test_7_fast_only_never_falls_back(k: Kernel, p: Process,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """get_user_pages_fast_only() returns what the lockless walk got, possibly 0."""
    walk, slow = fast_and_slow(monkeypatch)
    a = anon_rw(p, 4)
    p.write(a, b"a")
    p.write(a + PAGE_SIZE, b"b")
    faults = k.vmstat["pgfault"]
    pages: list[Page | None] = []
    assert p.get_user_pages_fast_only(a, 4, FOLL_WRITE, pages) == 2
    assert p.get_user_pages_fast_only(a + 2 * PAGE_SIZE, 2, 0, pages) == 0
    assert slow.calls == [] and len(walk.calls) == 2
    assert k.vmstat["pgfault"] == faults and len(pages) == 2
    for pg in pages:
        k.put_page(pg)


def test_7_get_user_page_fast_only(k: Kernel, p: Process) -> None:
    """The one-page inline wrapper answers True only when GUP-fast took that page."""
    a = anon_rw(p, 2)
    p.write(a, b"x")
    page: list[Page | None] = [None]
    assert p.get_user_page_fast_only(a, FOLL_WRITE, page) is True
    assert page[0] is not None and page[0].pfn == mapped_pfn(p, a) and page[0].refcount == 2
    k.put_page(page[0])
    other: list[Page | None] = [None]
    assert p.get_user_page_fast_only(a + PAGE_SIZE, 0, other) is False
    assert other == [None] and pte_of(p, a + PAGE_SIZE)[0] == 0
    assert p.get_user_page_fast_only(a, FOLL_LONGTERM, other) is False
    assert k.warnings.sites() == [SITE_LONGTERM]


def test_7_fast_walk_spans_vmas_and_leaves(k: Kernel, p: Process,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The lockless walk crosses VMA boundaries and PMD leaves, grabbing each leaf's part
    of the range at once."""
    walk, slow = fast_and_slow(monkeypatch)
    t = thp_region(k, p)
    folio = k.page(mapped_pfn(p, t)).folio
    nxt = p.mmap(t + PMD_SIZE, PAGE_SIZE, PROT_READ, ANON | 0x100000)   # MAP_FIXED_NOREPLACE
    p.read(nxt, 1)
    p.write(t + PMD_SIZE - PAGE_SIZE, b"z")
    pages = PageArray(4)
    n = p.get_user_pages_fast(t + PMD_SIZE - 3 * PAGE_SIZE, 4, 0, pages)
    assert n == 4 and [r for _, r in walk.calls] == [3] and len(slow.calls) == 1
    assert pages.pfns[:3].tolist() == list(range(folio.pfn + 509, folio.pfn + 512))
    assert pages[3].folio.is_zero
    assert folio.refcount == 1 + 3
    for pg in pages:
        k.put_page(pg)


# == seed-era aliases ==============================================================================


def test_aliases_put_user_pages(k: Kernel, p: Process) -> None:
    """put_user_page(s) and put_user_pages_dirty_lock are the v5.2 - v5.6 unpin names."""
    a = anon_rw(p, 3, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 3, FOLL_WRITE, pages) == 3
    k.put_user_page(pages[0])
    assert counters(k) == (3, 1) and pages[0].refcount == 1
    k.mem.clear_flag(pages[1].folio.pfn, PG.dirty)
    k.put_user_pages_dirty_lock(pages[1:2], 1, True)
    assert pages[1].folio.dirty and pages[1].refcount == 1
    k.put_user_pages(pages[2:])
    assert counters(k) == (3, 3) and pages[2].refcount == 1
    assert gupsim.put_user_page is not gupsim.unpin_user_page
    assert k.sanitizer.reports == []


def test_aliases_pin_longterm_pages() -> None:
    """The v2 - v4 pin_longterm_pages*() wrappers are pin_user_pages*() | FOLL_LONGTERM:
    they migrate out of ZONE_MOVABLE and answer invalid arguments like their base."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = anon_rw(p, 3, touch=True)
    assert all(k.page(mapped_pfn(p, a + i * PAGE_SIZE)).folio.zone == Zone.MOVABLE
               for i in range(3))
    pages = PageArray(3, k.mem)
    assert p.pin_longterm_pages(a, 1, FOLL_WRITE, pages[0:1]) == 1
    assert p.pin_longterm_pages_fast(a + PAGE_SIZE, 1, FOLL_WRITE, pages[1:2]) == 1
    assert k.pin_longterm_pages_remote(p.mm, a + 2 * PAGE_SIZE, 1, FOLL_WRITE, pages[2:3],
                                       None) == 1
    assert all(pg.folio.zone == Zone.NORMAL for pg in pages)
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(3)]
    k.unpin_user_pages(pages)
    assert p.pin_longterm_pages(a, 1, FOLL_GET, []) == 0
    assert p.pin_longterm_pages_fast(a, 1, FOLL_GET, []) == -EINVAL
    f = k.fs("ext4").create("db", PAGE_SIZE)
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.pin_longterm_pages(m, 1, FOLL_WRITE, []) == -EFAULT


# == vectorisation =================================================================================


def _python_calls(fn: Callable[[], Any]) -> tuple[int, float, Any]:
    """(Python-level function calls, seconds, result) of running fn()."""
    calls = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    t0 = time.perf_counter()
    sys.setprofile(prof)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return calls, time.perf_counter() - t0, result


@pytest.mark.parametrize("entry", ("pin_user_pages_fast", "pin_user_pages",
                                   "pin_user_pages_remote"))
def test_vectorised_1gib_pin_and_unpin(entry: str) -> None:
    """Pinning a prefaulted 1 GiB range into a PageArray runs the same Python code as
    pinning 1024 pages, through GUP-fast and through the slow path alike: no per-page
    work (numpy does the pages). Unpinning likewise."""
    k = Kernel(memory="2GiB")
    p = k.spawn("app")
    n = 262144
    big = p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    small = p.mmap(0, 1024 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    flags = FOLL_WRITE | FOLL_LONGTERM
    vec, few = PageArray(n), PageArray(1024)
    assert gup(k, p, entry, small, 1024, flags, few) == 1024    # warm-up: first-call
    k.unpin_user_pages(few)                                     # imports and caches
    calls_small, _, got_small = _python_calls(lambda: gup(k, p, entry, small, 1024, flags,
                                                          few))
    calls_big, secs, got = _python_calls(lambda: gup(k, p, entry, big, n, flags, vec))
    assert (got_small, got) == (1024, n)
    assert calls_big <= calls_small + 50 and calls_big < 2000, (calls_small, calls_big)
    assert secs < 2.0
    assert np.array_equal(vec.pfns, p.mm.find_vma(big).pfn)
    assert counters(k) == (n + 2048, 1024)
    un_small, _, _ = _python_calls(lambda: k.unpin_user_pages(few))
    un_big, secs, _ = _python_calls(lambda: k.unpin_user_pages(vec))
    assert un_big <= un_small + 50 and un_big < 2000, (un_small, un_big)
    assert secs < 2.0
    assert counters(k) == (n + 2048, n + 2048)
    assert int(k.mem.refcount[vec.pfns].max()) == 1


def test_pagearray_filled_through_a_slice(k: Kernel, p: Process) -> None:
    """`vec[n:]` is the kernel's `pages + n`: filling it must fill `vec`, machine included."""
    a = anon_rw(p, 2, touch=True)
    vec = PageArray(2)
    assert p.pin_user_pages_fast(a, 1, 0, vec[0:1]) == 1
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, 0, vec[1:2]) == 1
    assert [pg.pfn for pg in vec] == [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    k.unpin_user_pages(vec)
