"""Invariants of the machine: a registry of small named checks, run after every step.

`check_invariants(k)` runs every registered check on a machine and returns the
violations (empty when all hold), each prefixed with the name of the check that found
it; debug mode (`Kernel(debug=True)`) raises `InvariantViolation` on the first step that
breaks one. `failing_invariants(k)` groups the violations by check. Every check is
vectorised over the page-state arrays and the page tables, on machines of any size.

How to add an invariant: write a function that takes the `MachineState` (the page
arrays, the address spaces, the page cache, vmstat, with the page-table walk shared by
all checks) and returns a list of one-line descriptions of what is wrong, then register
it with `@invariant("short-name")`; `check_invariants()` picks it up. Keep it to one
property, vectorised (numpy: `bincount`, masks; no Python loop per page, no skipping
large machines), and make each message name a PFN or an mm and the numbers that
disagree. Then add a test to tests/check/test_invariants.py that corrupts a healthy
machine by writing its arrays directly and asserts that `failing_invariants()` names
your check and no other: that proves the check can fail and that it is the one
responsible for that property.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..memory import GUP_PIN_COUNTING_BIAS, PG, Kind, MemMap
from ..mm.mm_struct import MM, RSS, rss_kind
from ..mm.vma import PTE

# Kind values as ints for array comparisons (numpy probes an IntEnum: ~3 us a compare,
# and the protocol fuzz checks every invariant after every step)
_FREE, _ZERO, _ANON = int(Kind.FREE), int(Kind.ZERO), int(Kind.ANON)


class InvariantViolation(AssertionError):
    """A model invariant failed: a bug in the model or a misuse the sanitizer missed."""


# -- the machine as the checks see it -----------------------------------------------------


def mapped_entries(mms: Iterable[MM]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pfns mapped by PTE, pfns mapped by PMD/PUD entries, an empty array kept for
    callers of the old three-value form) over all page tables; special entries (the
    zero page, PFN maps) are left out."""
    small, huge = [], []
    for mm in mms:
        for v in mm.vmas:
            present = ((v.pte & PTE.PRESENT) != 0) & ((v.pte & PTE.SPECIAL) == 0)
            is_huge = (v.pte & (PTE.PMD | PTE.PUD)) != 0
            small.append(v.pfn[present & ~is_huge])
            huge.append(v.pfn[present & is_huge])
    s = np.concatenate(small).astype(np.int64) if small else np.zeros(0, dtype=np.int64)
    h = np.concatenate(huge).astype(np.int64) if huge else np.zeros(0, dtype=np.int64)
    return s, h, np.zeros(0)


@dataclass
class MachineState:
    """What the invariants read: page arrays, address spaces, page cache and vmstat.

    `cache` maps each page-cache folio's head PFN to the references the cache holds on
    it; `gets` lists the head of every plain reference a driver holds (one entry per
    reference, from the sanitizer's books), so that 1024 of them are not taken for a
    pin. Derived views (the page-table walk, the folios in use) are computed once and
    shared by every check of one run.
    """

    mem: MemMap
    mms: list[MM]
    cache: dict[int, int] = field(default_factory=dict)
    gets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    spans: list[tuple[int, int]] | None = None   # PFN ranges ever handed out (None: all)

    def nonzero(self, arr: np.ndarray, test: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> np.ndarray:
        """PFNs where `arr` is nonzero (or `test(arr)` holds), ascending, looking only at
        `spans`: a check after every step then costs what the machine has used, not its
        size (frames above an allocator's high-water mark were never handed out and are
        0 in every field; a model bug that wrote there would go unseen)."""
        spans = self.spans if self.spans is not None else [(0, len(arr))]
        parts = [np.flatnonzero(arr[lo:hi] if test is None else test(arr[lo:hi])) + lo
                 for lo, hi in spans if hi > lo]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @classmethod
    def of(cls, machine: Any) -> MachineState:
        """The state of a `gupsim.Kernel` (anything with `mem`, `env.mms` and, for the
        page cache, `filesystems.page_cache_folios()`; its `sanitizer`, if any, tells
        which plain FOLL_GET / get_page() references drivers hold)."""
        fss = getattr(machine, "filesystems", None)
        cache = fss.page_cache_folios() if fss is not None else {}
        san = getattr(machine, "sanitizer", None)
        held = [r.heads[r.left != 0] for r in (san.records if san is not None else [])
                if r.how == "FOLL_GET"]
        gets = np.concatenate(held) if held else np.zeros(0, dtype=np.int64)
        alloc = getattr(machine, "alloc", None)
        spans = None if alloc is None else [
            (r.start, r.top) for r in (alloc.normal, alloc.cma, alloc.movable)]
        return cls(machine.mem, list(machine.env.mms), cache, gets.astype(np.int64), spans)

    @cached_property
    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(pfns mapped by PTEs, pfns mapped by PMD/PUD entries), special ones left out."""
        small, huge, _ = mapped_entries(self.mms)
        return small, huge

    @cached_property
    def heads_in_use(self) -> np.ndarray:
        """Head PFNs of every folio with a positive refcount, ascending."""
        used = self.nonzero(self.mem.refcount, lambda r: r > 0)
        return used[self.mem.head_off[used] == 0]

    @cached_property
    def mapping_and_cache_refs(self) -> np.ndarray:
        """For each folio of `heads_in_use`: the references its PTE and PMD/PUD mappings
        and the page cache hold (what its refcount holds besides GUP's)."""
        mem = self.mem
        heads = self.heads_in_use
        small, _ = self.entries
        refs = _counts_at(heads, mem.head_of(small).astype(np.int64))
        if self.cache:
            cached = np.fromiter(self.cache.keys(), dtype=np.int64, count=len(self.cache))
            held = np.fromiter(self.cache.values(), dtype=np.int64, count=len(self.cache))
            refs += _counts_at(heads, cached, held)
        return refs + mem.entire_mapcount[heads]


Check = Callable[[MachineState], list[str]]
INVARIANTS: dict[str, Check] = {}


def invariant(name: str) -> Callable[[Check], Check]:
    """Register a check under `name` (unique); checks run in registration order."""
    def register(fn: Check) -> Check:
        if name in INVARIANTS:
            raise ValueError(f"an invariant named {name!r} exists already: pick another name")
        INVARIANTS[name] = fn
        return fn
    return register


def failing_invariants(machine: Any, mms: list[MM] | None = None,
                       cache_refs: dict[int, int] | None = None) -> dict[str, list[str]]:
    """{check name: its violations} for every check that fails (empty when all hold).

    `machine` is a `gupsim.Kernel`, or a `MemMap` with its `mms` (and optionally the
    page-cache references by head PFN) for code that has no Kernel.
    """
    if isinstance(machine, MemMap):
        state = MachineState(machine, list(mms or []), dict(cache_refs or {}))
    else:
        state = MachineState.of(machine)
    found = {}
    for name, check in INVARIANTS.items():
        bad = check(state)
        if bad:
            found[name] = bad
    return found


def check_invariants(machine: Any, mms: list[MM] | None = None,
                     cache_refs: dict[int, int] | None = None) -> list[str]:
    """Every violation of the registered invariants, described for a human and
    prefixed with the name of the check (see `failing_invariants` for the arguments)."""
    return [f"{name}: {msg}" for name, bad in failing_invariants(machine, mms, cache_refs)
            .items() for msg in bad]


def _first(pfns: np.ndarray) -> int:
    return int(pfns[0])


def _counts_at(keys: np.ndarray, values: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
    """How often (or with what total weight) each of the sorted `keys` occurs in
    `values`; values that are not keys are ignored. Sized by the keys, not the machine."""
    if not len(keys) or not len(values):
        return np.zeros(len(keys), dtype=np.int64)
    idx = np.searchsorted(keys, values)
    idx = np.minimum(idx, len(keys) - 1)
    hit = keys[idx] == values
    w = None if weights is None else weights[hit]
    return np.bincount(idx[hit], weights=w, minlength=len(keys)).astype(np.int64)


def _compare(m: MachineState, have: np.ndarray, entries: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(pfns where `have` differs from how often `entries` lists them, that count).

    Within each of the machine's spans a bincount of the entries, compared slice by
    slice (no sort); entries outside every span, which no allocated frame has, are
    compared one by one."""
    spans = m.spans if m.spans is not None else [(0, len(have))]
    pfns, want = [], []
    outside = np.ones(len(entries), dtype=bool)
    for lo, hi in spans:
        if hi <= lo:
            continue
        inside = (entries >= lo) & (entries < hi)
        outside &= ~inside
        counts = np.bincount(entries[inside] - lo, minlength=hi - lo)
        diff = np.flatnonzero(have[lo:hi] != counts)
        pfns.append(diff + lo)
        want.append(counts[diff])
    if outside.any():
        extra, n = np.unique(entries[outside], return_counts=True)
        bad = have[extra] != n
        pfns.append(extra[bad])
        want.append(n[bad])
    if not pfns:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(pfns).astype(np.int64), np.concatenate(want).astype(np.int64)


# -- the invariants ----------------------------------------------------------------------


@invariant("counts-nonnegative")
def counts_nonnegative(m: MachineState) -> list[str]:
    """No page has a negative refcount, mapcount, entire_mapcount or pincount."""
    bad = []
    for name in ("refcount", "mapcount", "entire_mapcount", "pincount"):
        neg = m.nonzero(getattr(m.mem, name), lambda a: a < 0)
        if len(neg):
            bad.append(f"negative {name} on pfn {_first(neg):#x} ({len(neg)} pages)")
    return bad


@invariant("mapped-pages-allocated")
def mapped_pages_allocated(m: MachineState) -> list[str]:
    """Every page a page table maps belongs to an allocated folio (no use after free)."""
    small, huge = m.entries
    mapped = np.concatenate([small, huge])
    if not len(mapped):
        return []
    heads = m.mem.head_of(mapped)
    free = (m.mem.kind[heads] == _FREE) | (m.mem.refcount[heads] <= 0)
    if free.any():
        return [f"pfn {_first(mapped[free]):#x} is mapped but not allocated "
                f"({int(free.sum())} entries)"]
    return []


@invariant("mapcount-matches-ptes")
def mapcount_matches_ptes(m: MachineState) -> list[str]:
    """A page's mapcount is the number of PTEs that map it."""
    small, _ = m.entries
    mem = m.mem
    pfns, want = _compare(m, mem.mapcount, small)
    diff = np.flatnonzero(mem.mapcount[pfns] != want)
    if len(diff):
        p, n = int(pfns[diff[0]]), int(want[diff[0]])
        return [f"mapcount of pfn {p:#x} is {int(mem.mapcount[p])} but {n} PTEs map it"]
    return []


@invariant("entire-mapcount-matches-pmds")
def entire_mapcount_matches_pmds(m: MachineState) -> list[str]:
    """A folio's entire_mapcount is the number of PMD/PUD mappings of it (each huge
    mapping is recorded on all its entries, and counted once, at the head's entry)."""
    _, huge = m.entries
    mem = m.mem
    pfns, want = _compare(m, mem.entire_mapcount, huge[mem.head_off[huge] == 0])
    diff = np.flatnonzero(mem.entire_mapcount[pfns] != want)
    if len(diff):
        p, n = int(pfns[diff[0]]), int(want[diff[0]])
        return [f"entire_mapcount of folio {p:#x} is {int(mem.entire_mapcount[p])} but "
                f"{n} PMD/PUD mappings exist"]
    return []


@invariant("refcount-covers-references")
def refcount_covers_references(m: MachineState) -> list[str]:
    """A folio's refcount is at least its PTE and PMD mappings, the page cache's
    references and (large folios, which count them exactly) its pins."""
    mem = m.mem
    heads = m.heads_in_use
    if not len(heads):
        return []
    need = m.mapping_and_cache_refs.copy()
    large = mem.order[heads] > 0
    need[large] += mem.pincount[heads[large]]
    short = heads[mem.refcount[heads] < need]
    if len(short):
        h = _first(short)
        return [f"refcount of folio {h:#x} ({int(mem.refcount[h])}) does not cover its "
                f"mappings, page-cache references and pins ({int(need[heads == h][0])}); "
                f"{len(short)} folios short"]
    return []


@invariant("page-cache-folios-live")
def page_cache_folios_live(m: MachineState) -> list[str]:
    """Every page-cache entry points at the head of a live folio."""
    if not m.cache:
        return []
    mem = m.mem
    heads = np.fromiter(m.cache.keys(), dtype=np.int64, count=len(m.cache))
    dead = heads[(mem.refcount[heads] <= 0) | (mem.kind[heads] == _FREE)
                 | (mem.head_off[heads] != 0)]
    if len(dead):
        return [f"the page cache holds pfn {_first(dead):#x}, which is not a live folio "
                f"head ({len(dead)} entries)"]
    return []


@invariant("pins-balance")
def pins_balance(m: MachineState) -> list[str]:
    """nr_foll_pin_acquired - nr_foll_pin_released equals the pins the folios carry:
    the exact pincount of large folios, and for small ones what their refcount holds
    beyond mappings, page cache and drivers' plain references, in units of
    GUP_PIN_COUNTING_BIAS (fewer than 1024 untracked references do not count; the
    shared zero page is never pin-counted)."""
    mem = m.mem
    if not mem.era.has("nr-foll-pin-vmstat"):
        return []           # no counters to balance before v5.7
    heads = m.heads_in_use
    large = mem.order[heads] > 0
    small = ~large
    if mem.era.has("zero-page-not-pin-counted"):
        small &= mem.kind[heads] != _ZERO
    other = m.mapping_and_cache_refs[small] + _counts_at(heads, m.gets)[small]
    held = int(mem.pincount[heads[large]].sum()) + int(
        (np.maximum(mem.refcount[heads[small]] - other, 0) // GUP_PIN_COUNTING_BIAS).sum())
    acquired = mem.vmstat["nr_foll_pin_acquired"]
    released = mem.vmstat["nr_foll_pin_released"]
    if acquired - released != held:
        return [f"nr_foll_pin_acquired - nr_foll_pin_released = {acquired} - {released} = "
                f"{acquired - released}, but the folios carry {held} pins"]
    return []


@invariant("rss-matches-page-tables")
def rss_matches_page_tables(m: MachineState) -> list[str]:
    """Each mm's rss counters (anon, file, shmem) count what its page tables map."""
    mem = m.mem
    bad = []
    for mm in m.mms:
        got = RSS()
        counts = np.zeros(len(Kind), dtype=np.int64)
        for v in mm.vmas:
            present = ((v.pte & PTE.PRESENT) != 0) & ((v.pte & PTE.SPECIAL) == 0)
            pf = v.pfn[present]
            if len(pf):
                counts += np.bincount(mem.kind[mem.head_of(pf)].astype(np.int64),
                                      minlength=len(Kind))
        for k, c in enumerate(counts.tolist()):
            if c:
                field_ = rss_kind(k)
                setattr(got, field_, getattr(got, field_) + c)
        if got != mm.rss:
            bad.append(f"mm {mm.id}: rss counters {mm.rss} differ from page tables {got}")
    return bad


@invariant("anon-exclusive-not-shared")
def anon_exclusive_not_shared(m: MachineState) -> list[str]:
    """An anon-exclusive page is mapped once at most (spec 3.7 #1): what makes pinned
    anonymous memory safe across fork."""
    small, _ = m.entries
    if not len(small):
        return []
    mem = m.mem
    excl = (mem.flags[small] & np.uint32(PG.anon_exclusive)) != 0
    shared = excl & (mem.mapcount[small] > 1) & (mem.kind[mem.head_of(small)] == _ANON)
    if shared.any():
        return [f"anon-exclusive page {_first(small[shared]):#x} is mapped more than once"]
    return []
