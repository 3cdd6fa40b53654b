"""Each invariant fires on the corruption it exists for, and no other invariant does.

A healthy machine has a bit of everything the checks look at: exclusive and shared
(forked) anonymous pages, page cache mapped and unmapped, a PMD-mapped hugetlb folio,
pins on a small and on a large folio. Each test writes the page-state arrays (or a
counter) directly, as a model bug would, and asserts the set of failing checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import gupsim
from gupsim import (
    FOLL_WRITE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.check.invariants import (
    INVARIANTS,
    InvariantViolation,
    MachineState,
    check_invariants,
    failing_invariants,
    invariant,
)
from gupsim.constants import MAP_HUGETLB, MAP_POPULATE, PMD_SIZE
from gupsim.memory import GUP_PIN_COUNTING_BIAS, PG

ANON = MAP_PRIVATE | MAP_ANONYMOUS
RW = PROT_READ | PROT_WRITE


@dataclass
class Machine:
    k: gupsim.Kernel
    p: gupsim.Process
    child: gupsim.Process
    anon: int          # 8 exclusive anonymous pages of p (page 0 pinned)
    shared: int        # 4 anonymous pages shared by p and child since fork
    mapped_file: int   # 4 page-cache pages mapped shared by p
    unmapped_head: int  # a page-cache folio nobody maps
    huge: int          # a PMD-mapped 2 MiB hugetlb folio (pinned once)

    def pfn(self, addr: int, proc: gupsim.Process | None = None) -> int:
        v = (proc or self.p).mm.find_vma(addr)
        return int(v.pfn[v.idx(addr)])


def healthy() -> Machine:
    k = gupsim.Kernel(memory="256MiB", nr_hugepages=2)
    p = k.spawn("app")
    shared = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.write(shared, b"s" * 4 * PAGE_SIZE)
    child = p.fork()
    anon = p.mmap(0, 8 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    f = k.fs("ext4").create("mapped", 4 * PAGE_SIZE)
    f.pwrite(0, b"f" * 4 * PAGE_SIZE)
    mapped_file = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    assert p.read(mapped_file, 4 * PAGE_SIZE) == b"f" * 4 * PAGE_SIZE
    g = k.fs("ext4").create("cached", PAGE_SIZE)
    g.pwrite(0, b"g")
    huge = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    p.write(huge, b"h")
    small_pin: list = []
    huge_pin: list = []
    assert p.pin_user_pages_fast(anon, 1, FOLL_WRITE, small_pin) == 1
    assert p.pin_user_pages_fast(huge, 1, FOLL_WRITE, huge_pin) == 1
    m = Machine(k, p, child, anon, shared, mapped_file, int(g.page_cache[0]), huge)
    assert failing_invariants(k) == {}
    return m


def _negative_pincount(m: Machine) -> None:
    m.k.mem.pincount[m.pfn(m.anon + 2 * PAGE_SIZE)] = -1       # small folio: no pincount


def _mapped_but_freed(m: Machine) -> None:
    m.k.mem.refcount[m.pfn(m.anon + 3 * PAGE_SIZE)] = 0


def _mapcount_lost(m: Machine) -> None:
    m.k.mem.mapcount[m.pfn(m.anon + 4 * PAGE_SIZE)] = 0


def _entire_mapcount_lost(m: Machine) -> None:
    head = int(m.k.mem.head_of(m.pfn(m.huge)))
    m.k.mem.entire_mapcount[head] -= 1


def _mapped_cache_page_short_of_a_reference(m: Machine) -> None:
    """1 cache reference + 1 mapping = 2; counting the mapping alone would miss this."""
    head = m.pfn(m.mapped_file + PAGE_SIZE)
    assert m.k.mem.refcount[head] == 2
    m.k.mem.refcount[head] = 1


def _cached_folio_freed(m: Machine) -> None:
    m.k.mem.refcount[m.unmapped_head] = 0


def _acquired_counter_off(m: Machine) -> None:
    m.k.vmstat["nr_foll_pin_acquired"] += 1


def _a_pin_nobody_counted(m: Machine) -> None:
    m.k.mem.refcount[m.pfn(m.anon + 5 * PAGE_SIZE)] += GUP_PIN_COUNTING_BIAS


def _large_folio_pin_nobody_counted(m: Machine) -> None:
    head = int(m.k.mem.head_of(m.pfn(m.huge)))
    m.k.mem.pincount[head] += 1
    m.k.mem.refcount[head] += 1


def _rss_off(m: Machine) -> None:
    m.child.mm.rss.anon += 1


def _shared_page_marked_exclusive(m: Machine) -> None:
    pfn = m.pfn(m.shared + PAGE_SIZE)
    assert m.k.mem.mapcount[pfn] == 2
    m.k.mem.flags[pfn] |= np.uint32(PG.anon_exclusive)


CORRUPTIONS: dict[str, list[Callable[[Machine], None]]] = {
    "counts-nonnegative": [_negative_pincount],
    "mapped-pages-allocated": [_mapped_but_freed],
    "mapcount-matches-ptes": [_mapcount_lost],
    "entire-mapcount-matches-pmds": [_entire_mapcount_lost],
    "refcount-covers-references": [_mapped_cache_page_short_of_a_reference],
    "page-cache-folios-live": [_cached_folio_freed],
    "pins-balance": [_acquired_counter_off, _a_pin_nobody_counted,
                     _large_folio_pin_nobody_counted],
    "rss-matches-page-tables": [_rss_off],
    "anon-exclusive-not-shared": [_shared_page_marked_exclusive],
}


def test_every_registered_invariant_has_a_corruption_test() -> None:
    assert set(CORRUPTIONS) == set(INVARIANTS)


@pytest.mark.parametrize(("name", "corrupt"), [
    (name, fn) for name, fns in CORRUPTIONS.items() for fn in fns],
    ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_the_corruption_fires_that_invariant_only(name: str,
                                                  corrupt: Callable[[Machine], None]) -> None:
    m = healthy()
    corrupt(m)
    found = failing_invariants(m.k)
    assert set(found) == {name}, found
    assert all(msg and isinstance(msg, str) for msg in found[name])
    assert any(line.startswith(f"{name}: ") for line in check_invariants(m.k))


def test_no_check_is_skipped_on_a_large_machine() -> None:
    """Over 200k folios in use (the old coverage check stopped there): still checked."""
    k = gupsim.Kernel(memory="2GiB")
    p = k.spawn("app")
    p.mmap(0, 1 << 30, RW, ANON | MAP_POPULATE)                   # 262144 folios
    f = k.fs("ext4").create("f", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED | MAP_POPULATE, fd=f)
    assert len(MachineState.of(k).heads_in_use) > 262144
    assert failing_invariants(k) == {}
    v = p.mm.find_vma(a)
    k.mem.refcount[int(v.pfn[0])] -= 1
    assert set(failing_invariants(k)) == {"refcount-covers-references"}


def test_plain_references_past_1024_are_not_a_pin() -> None:
    """get_page() 1024 times makes a small folio look pinned (a false positive the
    kernel lives with); the pin balance knows them from the sanitizer's books."""
    m = healthy()
    page = m.k.page(m.pfn(m.anon + 6 * PAGE_SIZE))
    for _ in range(GUP_PIN_COUNTING_BIAS + 1):
        m.k.get_page(page)
    assert gupsim.page_maybe_dma_pinned(page)
    assert failing_invariants(m.k) == {}


def test_debug_mode_names_the_check_that_failed() -> None:
    m = healthy()
    m.k.debug = True
    _rss_off(m)
    with pytest.raises(InvariantViolation, match="rss-matches-page-tables"):
        m.p.mmap(0, PAGE_SIZE, RW, ANON)


def test_memmap_form_still_works() -> None:
    """check_invariants(mem, mms): the pre-registry call, for code without a Kernel."""
    m = healthy()
    assert check_invariants(m.k.mem, m.k.env.mms) == []
    _mapcount_lost(m)
    assert [s.split(":")[0] for s in check_invariants(m.k.mem, m.k.env.mms)] == [
        "mapcount-matches-ptes"]


def test_a_new_invariant_registers_and_runs() -> None:
    @invariant("test-no-process-named-bad")
    def no_bad(state: MachineState) -> list[str]:
        return [f"mm {mm.id} is bad" for mm in state.mms if mm.id < 0]

    try:
        m = healthy()
        m.p.mm.id = -1
        assert set(failing_invariants(m.k)) == {"test-no-process-named-bad"}
        with pytest.raises(ValueError, match="exists already"):
            invariant("test-no-process-named-bad")(no_bad)
    finally:
        del INVARIANTS["test-no-process-named-bad"]


def test_the_checks_scan_what_the_allocators_handed_out_and_still_see_a_freed_frame() -> None:
    """Per-step checks look at the PFN ranges below each allocator's high-water mark
    (frames above it were never handed out): a frame used and freed again is inside
    them, so a count left on it is still found; the ranges are those of the machine."""
    m = healthy()
    a = m.p.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    freed = m.pfn(a + PAGE_SIZE)
    m.p.munmap(a, 4 * PAGE_SIZE)
    state = MachineState.of(m.k)
    assert state.spans is not None
    assert any(lo <= freed < hi for lo, hi in state.spans)
    assert sum(hi - lo for lo, hi in state.spans) < m.k.mem.nr_pages
    m.k.mem.mapcount[freed] = 1
    assert set(failing_invariants(m.k)) == {"mapcount-matches-ptes"}
