"""Spec 1.4 and 1.5: what every GUP entry point accepts, refuses, and adds to gup_flags.

Argument validation (`is_valid_gup_args()`: every refusal, each entry point's own answer,
one WARN per site, the order of the checks), the GUP-fast entry points' own flag
whitelist and range checks, and the FOLL_* bits each entry point adds. Tests about every
entry point are parametrised over the table of entry points (`gupsim.ENTRY_POINTS`).
"""

from __future__ import annotations

from typing import Any

import pytest
from gup_helpers import (
    BY_NAME,
    COUNTED,
    anon_rw,
    counters,
    delta,
    entries,
    has_pinned,
    mapped_pfn,
    pte_of,
    release,
)

from gupsim import (
    EFAULT,
    EINVAL,
    ENTRY_POINTS,
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
    MAP_ANONYMOUS,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    TASK_SIZE,
    EntryPoint,
    Kernel,
    Page,
    Process,
)
from gupsim.gup.flags import foll_flags_str
from gupsim.memory import PG
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE
TASK_SIZE_MAX = TASK_SIZE - PAGE_SIZE
INTERNAL = (FOLL_TOUCH, FOLL_TRIED, FOLL_REMOTE, FOLL_PIN, FOLL_FAST_ONLY, FOLL_UNLOCKABLE,
            FOLL_MADV_POPULATE)
NOT_FAST = (FOLL_DUMP, FOLL_NOWAIT, FOLL_HWPOISON, FOLL_ANON, FOLL_SPLIT_PMD,
            FOLL_INTERRUPTIBLE)
PINS = [ep for ep in COUNTED if ep.pins]
FAST = [ep for ep in COUNTED if ep.fast]

# Spec 1.5, as written there: the FOLL_* bits each entry point adds to the caller's flags
# (the pin_longterm_pages*() wrappers of the seed era add FOLL_LONGTERM to their base's).
SPEC_1_5 = {
    "get_user_pages": FOLL_TOUCH,
    "get_user_pages_remote": FOLL_TOUCH | FOLL_REMOTE,
    "get_user_pages_unlocked": FOLL_TOUCH | FOLL_UNLOCKABLE,
    "get_user_pages_fast": FOLL_GET,
    "get_user_pages_fast_only": FOLL_GET | FOLL_FAST_ONLY,
    "get_user_page_fast_only": FOLL_GET | FOLL_FAST_ONLY,
    "pin_user_pages": FOLL_PIN,
    "pin_user_pages_remote": FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE,
    "pin_user_pages_unlocked": FOLL_PIN | FOLL_TOUCH | FOLL_UNLOCKABLE,
    "pin_user_pages_fast": FOLL_PIN,
    "pin_longterm_pages": FOLL_PIN | FOLL_LONGTERM,
    "pin_longterm_pages_fast": FOLL_PIN | FOLL_LONGTERM,
    "pin_longterm_pages_remote": FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE | FOLL_LONGTERM,
}

SITE_INTERNAL = "is_valid_gup_args: internal FOLL flag"
SITE_LOCKED = "is_valid_gup_args: *locked != 1"
SITE_GET_PIN = "is_valid_gup_args: FOLL_GET with FOLL_PIN"
SITE_LONGTERM = "is_valid_gup_args: FOLL_LONGTERM without FOLL_PIN"
SITE_NO_PAGES = "is_valid_gup_args: no pages array"
SITE_P2PDMA = "is_valid_gup_args: FOLL_LONGTERM with FOLL_PCI_P2PDMA"
SITE_FAST = "gup_fast_fallback: flag not allowed"


# == 1.4 argument validation =======================================================================


@pytest.mark.parametrize("flag", INTERNAL, ids=foll_flags_str)
@pytest.mark.parametrize("entry", entries())
def test_1_4_internal_flags_are_refused(k: Kernel, p: Process, entry: EntryPoint,
                                        flag: int) -> None:
    """Step 1: any internal flag is a caller bug, refused before anything else happens."""
    a = anon_rw(p)
    before = counters(k)
    pages: list[Page | None] = []
    for _ in range(2):
        assert entry.invoke(p, a, 1, flag | FOLL_WRITE, pages) == entry.invalid
    assert pages == []
    assert k.warnings.sites() == [SITE_INTERNAL]
    assert k.warnings.hits[SITE_INTERNAL] == 2, "WARN_ON_ONCE prints once, fires each time"
    assert pte_of(p, a)[0] == 0, "no fault was taken"
    assert delta(k, before) == (0, 0) and not has_pinned(p)
    assert [(c.entry, c.path) for c in k.gup.calls] == [(entry.name, "invalid")] * 2


@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.pins))
def test_1_4_get_with_pin_is_refused(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """Step 4: FOLL_GET passed to a pin_* entry point (which sets FOLL_PIN) is refused."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, FOLL_GET, pages) == entry.invalid
    assert pages == [] and k.warnings.sites() == [SITE_GET_PIN]
    assert k.page(mapped_pfn(p, a)).refcount == 1 and not has_pinned(p)


@pytest.mark.parametrize("entry", entries(where=lambda ep: not ep.pins))
def test_1_4_longterm_without_pin_is_refused(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """Step 5: every get_user_pages*() refuses FOLL_LONGTERM with -EINVAL."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, FOLL_LONGTERM, pages) == -EINVAL
    assert pages == [] and k.warnings.sites() == [SITE_LONGTERM]
    assert k.page(mapped_pfn(p, a)).refcount == 1


@pytest.mark.parametrize("entry", entries(where=lambda ep: bool(ep.adds & (FOLL_GET | FOLL_PIN))))
def test_1_4_reference_without_pages_array_is_refused(k: Kernel, p: Process,
                                                      entry: EntryPoint) -> None:
    """Step 6: the entry points that take references need somewhere to return the pages."""
    a = anon_rw(p)
    assert entry.invoke(p, a, 1, FOLL_WRITE, None) == entry.invalid
    assert k.warnings.sites() == [SITE_NO_PAGES]
    assert pte_of(p, a)[0] == 0


@pytest.mark.parametrize("entry", entries(where=lambda ep: not ep.adds & (FOLL_GET | FOLL_PIN)))
def test_1_4_slow_get_without_pages_faults_in_only(k: Kernel, p: Process,
                                                   entry: EntryPoint) -> None:
    """pages == NULL without FOLL_GET is a valid fault-in request; with FOLL_GET it is not."""
    a = anon_rw(p, 3)
    assert entry.invoke(p, a, 3, FOLL_WRITE, None) == 3
    assert k.warnings.sites() == []
    for i in range(3):
        assert k.page(mapped_pfn(p, a + i * PAGE_SIZE)).refcount == 1, "no reference kept"
    assert entry.invoke(p, a, 1, FOLL_GET, None) == -EINVAL
    assert k.warnings.sites() == [SITE_NO_PAGES]


@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.pins))
def test_1_4_longterm_p2pdma_is_refused(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """Step 7: P2PDMA memory may not be pinned long-term."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    flags = FOLL_WRITE | FOLL_LONGTERM | FOLL_PCI_P2PDMA
    assert entry.invoke(p, a, 1, flags, pages) == entry.invalid
    assert pages == [] and k.warnings.sites() == [SITE_P2PDMA]
    assert not has_pinned(p)


@pytest.mark.parametrize("value", [0, 2, -1])
@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.takes_locked))
def test_1_4_locked_must_be_one(k: Kernel, p: Process, entry: EntryPoint, value: int) -> None:
    """Step 3: a `locked` pointer must say the caller holds mmap_lock (*locked == 1)."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    locked = [value]
    assert entry.invoke(p, a, 1, 0, pages, locked) == entry.invalid
    assert locked == [value] and pages == []
    assert k.warnings.sites() == [SITE_LOCKED]
    assert not p.mm.mmap_lock.held()


@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.takes_locked))
def test_1_4_locked_one_is_valid_and_stays_held(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """*locked == 1 is the valid form; no fault dropped the lock, so it still says 1."""
    a = anon_rw(p, 2)
    pages: list[Page | None] = []
    locked = [1]
    assert entry.invoke(p, a, 2, FOLL_WRITE, pages, locked) == 2
    assert locked == [1] and k.warnings.sites() == []
    release(k, entry, pages)


@pytest.mark.parametrize(("entry", "flags", "pages", "locked", "site"), [
    (BY_NAME["pin_user_pages_remote"], FOLL_TOUCH | FOLL_GET, [], [0], SITE_INTERNAL),
    (BY_NAME["pin_user_pages_remote"], FOLL_GET, [], [0], SITE_LOCKED),
    (BY_NAME["pin_user_pages"], FOLL_GET | FOLL_LONGTERM | FOLL_PCI_P2PDMA, None, None,
     SITE_GET_PIN),
    (BY_NAME["get_user_pages"], FOLL_LONGTERM | FOLL_GET, None, None, SITE_LONGTERM),
    (BY_NAME["get_user_pages_fast"], FOLL_LONGTERM | FOLL_NOWAIT, [], None, SITE_LONGTERM),
    (BY_NAME["pin_user_pages"], FOLL_LONGTERM | FOLL_PCI_P2PDMA, None, None, SITE_NO_PAGES),
    (BY_NAME["pin_user_pages_fast"], FOLL_NOWAIT | FOLL_DUMP, [], None, SITE_FAST),
], ids=lambda v: v.name if isinstance(v, EntryPoint) else v if isinstance(v, str) else None)
def test_1_4_first_failing_step_decides(k: Kernel, p: Process, entry: EntryPoint, flags: int,
                                        pages: Any, locked: list[int] | None,
                                        site: str) -> None:
    """The checks run in the kernel's order and only the first failure warns."""
    a = anon_rw(p, touch=True)
    assert entry.invoke(p, a, 1, flags, pages, locked) == entry.invalid
    assert k.warnings.sites() == [site]


def test_1_4_one_warning_per_site_across_entry_points(k: Kernel, p: Process) -> None:
    """Each WARN_ON_ONCE site prints once per boot, whichever entry point reaches it."""
    a = anon_rw(p, touch=True)
    for entry in COUNTED:
        assert entry.invoke(p, a, 1, FOLL_TRIED, []) == entry.invalid
    for entry in PINS:
        assert entry.invoke(p, a, 1, FOLL_GET, []) == entry.invalid
    assert k.warnings.sites() == [SITE_INTERNAL, SITE_GET_PIN]
    assert k.warnings.hits == {SITE_INTERNAL: len(COUNTED), SITE_GET_PIN: len(PINS)}


@pytest.mark.parametrize("flag", NOT_FAST, ids=foll_flags_str)
@pytest.mark.parametrize("entry", entries(where=lambda ep: ep.fast))
def test_1_4_fast_entry_points_whitelist(k: Kernel, p: Process, entry: EntryPoint,
                                         flag: int) -> None:
    """GUP-fast accepts only a few public flags; the rest is -EINVAL with a WARN, before
    MMF_HAS_PINNED is set. The slow entry points accept the same flags."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = []
    assert entry.invoke(p, a, 1, flag, pages) == -EINVAL
    assert pages == [] and k.warnings.sites() == [SITE_FAST]
    assert not has_pinned(p)
    assert k.gup.last_call.path == "invalid"
    slow = BY_NAME["pin_user_pages" if entry.pins else "get_user_pages"]
    assert slow.invoke(p, a, 1, flag, pages) == 1
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
    for entry in FAST:
        assert entry.invoke(p, a, -1, 0, []) == -EOVERFLOW
        assert entry.invoke(p, 0, -1, 0, []) == -EFAULT
        assert entry.invoke(p, TASK_SIZE_MAX, 1, 0, []) == -EFAULT
        assert entry.invoke(p, (1 << 64) - PAGE_SIZE, 1, 0, []) == -EOVERFLOW
        assert [c.path for c in list(k.gup.calls)[-4:]] == ["invalid"] * 4, "the walk never ran"
    assert p.get_user_pages_fast_only(TASK_SIZE_MAX - PAGE_SIZE, 1, 0, []) == 0
    assert p.get_user_pages_fast_only(a, (1 << 32) + 1, 0, pages) == 1, "an int: 2**32 + 1 is 1"
    k.put_page(pages[0])
    assert k.warnings.sites() == []


@pytest.mark.parametrize("entry", entries())
def test_1_4_zero_pages(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """nr_pages == 0 is 0 everywhere; only GUP-fast marks the mm before looking at it."""
    a = anon_rw(p)
    assert entry.invoke(p, a, 0, 0, []) == 0
    assert k.warnings.sites() == []
    assert has_pinned(p) == (entry.fast and entry.pins)


# == 1.5 flags each entry point adds ==============================================================


@pytest.mark.parametrize("entry", entries())
def test_1_5_foll_touch_by_entry_point(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """FOLL_TOUCH (added by most entry points, not pin_user_pages(), not GUP-fast's own
    walk) marks the folio accessed, and dirty for a write through a clean PTE."""
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.read(s, 1)                           # shmem: writable PTE, clean page
    folio = k.page(mapped_pfn(p, s)).folio
    assert pte_of(p, s)[0] & PTE.WRITE and not pte_of(p, s)[0] & PTE.DIRTY
    k.mem.clear_flag(folio.pfn, PG.referenced)
    touches = bool(SPEC_1_5[entry.name] & FOLL_TOUCH)
    pages: list[Page | None] = []
    assert entry.invoke(p, s, 1, FOLL_WRITE, pages) == 1
    assert folio.dirty == touches
    assert k.mem.test(folio.pfn, PG.referenced) == (touches or entry.fast)
    release(k, entry, pages)


def test_1_5_the_table_adds_what_the_spec_says() -> None:
    """Every row of the table of entry points adds exactly the bits of spec 1.5, and every
    entry point listed there has a row."""
    assert {ep.name: ep.adds | ep.implies for ep in ENTRY_POINTS} == SPEC_1_5


@pytest.mark.parametrize(("entry", "locked"), [
    *[pytest.param(ep, None, id=ep.name) for ep in ENTRY_POINTS],
    *[pytest.param(ep, [1], id=f"{ep.name}-locked") for ep in ENTRY_POINTS if ep.takes_locked],
])
def test_1_5_flags_passed_on(k: Kernel, p: Process, entry: EntryPoint,
                             locked: list[int] | None) -> None:
    """What the path receives is the caller's flags plus those of spec 1.5, plus
    FOLL_UNLOCKABLE when the caller passes `locked` (spec 1.4 step 3): the call's record
    says so."""
    a = anon_rw(p, touch=True)
    pages: list[Page | None] = [None] if entry.one_page else []
    assert entry.invoke(p, a, 1, FOLL_WRITE, pages, locked) == (True if entry.one_page else 1)
    call = k.gup.last_call
    extra = FOLL_UNLOCKABLE if locked else 0
    assert (call.entry, call.flags) == (entry.name, FOLL_WRITE | SPEC_1_5[entry.name] | extra)
    assert call.ret == 1 and k.warnings.sites() == []
    release(k, entry, pages)
