"""Invariants of the machine, written as code, checkable after every step.

`check_invariants()` returns a list of violations (empty when all hold); debug mode
(`Kernel(debug=True)`) raises `InvariantViolation` on the first step that breaks one.
All checks are vectorised over the page-state arrays and the page tables.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..memory import PG, Kind, MemMap
from ..mm.mm_struct import MM, RSS, rss_kind
from ..mm.vma import PTE


class InvariantViolation(AssertionError):
    """A model invariant failed: a bug in the model or a misuse the sanitizer missed."""


def _used_range(mem: MemMap) -> np.ndarray:
    """PFNs that were ever handed out (the rest of the arrays is untouched zeros)."""
    return np.nonzero(mem.kind != Kind.FREE)[0] if mem.nr_pages <= (1 << 22) else \
        np.nonzero(mem.refcount != 0)[0]


def mapped_entries(mms: Iterable[MM]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pfns mapped by PTE, heads mapped by PMD/PUD, kinds) over all page tables."""
    small, huge = [], []
    for mm in mms:
        for v in mm.vmas:
            present = ((v.pte & PTE.PRESENT) != 0) & ((v.pte & PTE.SPECIAL) == 0)
            is_huge = (v.pte & (PTE.PMD | PTE.PUD)) != 0
            small.append(v.pfn[present & ~is_huge])
            hp = v.pfn[present & is_huge]
            huge.append(hp)
    s = np.concatenate(small) if small else np.zeros(0, dtype=np.int64)
    h = np.concatenate(huge) if huge else np.zeros(0, dtype=np.int64)
    return s, h, np.zeros(0)


def check_invariants(mem: MemMap, mms: list[MM], cache_refs: dict[int, int] | None = None
                     ) -> list[str]:
    """Every violation of the model's invariants, described for a human."""
    bad: list[str] = []
    for name in ("refcount", "mapcount", "entire_mapcount", "pincount"):
        arr = getattr(mem, name)
        neg = np.nonzero(arr < 0)[0]
        if len(neg):
            bad.append(f"negative {name} on pfn {int(neg[0]):#x} ({len(neg)} pages)")
    small, huge, _ = mapped_entries(mms)
    # every mapped page is allocated
    mapped = np.concatenate([small, huge])
    if len(mapped):
        heads = mem.head_of(mapped)
        free = (mem.kind[heads] == Kind.FREE) | (mem.refcount[heads] <= 0)
        if free.any():
            bad.append(f"pfn {int(mapped[free][0]):#x} is mapped but not allocated")
    # mapcounts agree with the page tables
    want_map = np.bincount(small, minlength=mem.nr_pages) if len(small) else None
    pfns_with_map = np.nonzero(mem.mapcount)[0]
    if want_map is not None:
        check_pfns = np.union1d(pfns_with_map, np.nonzero(want_map)[0])
        diff = mem.mapcount[check_pfns] != want_map[check_pfns]
    else:
        check_pfns, diff = pfns_with_map, np.ones(len(pfns_with_map), dtype=bool)
    if diff.any():
        p = int(check_pfns[diff][0])
        bad.append(f"mapcount of pfn {p:#x} is {int(mem.mapcount[p])} but "
                   f"{0 if want_map is None else int(want_map[p])} PTEs map it")
    # PMD mappings: each is recorded on all its entries; one per head-aligned entry
    if len(huge):
        starts = huge[mem.head_off[huge] == 0]
        want_entire = np.bincount(starts, minlength=mem.nr_pages)
        with_entire = np.union1d(np.nonzero(mem.entire_mapcount)[0], np.nonzero(want_entire)[0])
        d = mem.entire_mapcount[with_entire] != want_entire[with_entire]
        if d.any():
            p = int(with_entire[d][0])
            bad.append(f"entire_mapcount of folio {p:#x} is {int(mem.entire_mapcount[p])} but "
                       f"{int(want_entire[p])} PMD/PUD mappings exist")
    elif mem.entire_mapcount.any():
        p = int(np.nonzero(mem.entire_mapcount)[0][0])
        bad.append(f"folio {p:#x} has entire_mapcount but no PMD maps it")
    # refcount covers mappings, page-cache references and pins
    used = np.nonzero(mem.refcount > 0)[0]
    heads = used[mem.head_off[used] == 0]
    if len(heads):
        need = np.zeros(len(heads), dtype=np.int64)
        pos = {int(h): k for k, h in enumerate(heads.tolist())} if len(heads) < 200000 else None
        if pos is not None:
            if len(small):
                sh = mem.head_of(small)
                idx = np.searchsorted(heads, sh)
                ok = (idx < len(heads)) & (heads[np.minimum(idx, len(heads) - 1)] == sh)
                np.add.at(need, idx[ok], 1)
            need += mem.entire_mapcount[heads]
            if cache_refs:
                for h, n in cache_refs.items():
                    k = pos.get(h)
                    if k is not None:
                        need[k] += n
            large = mem.order[heads] > 0
            need[large] += mem.pincount[heads[large]]
            short = heads[mem.refcount[heads] < need]
            if len(short):
                h = int(short[0])
                bad.append(f"refcount of folio {h:#x} ({int(mem.refcount[h])}) does not cover "
                           f"its mappings, cache references and pins")
        pin_over = heads[(mem.order[heads] > 0) & (mem.pincount[heads] > mem.refcount[heads])]
        if len(pin_over):
            bad.append(f"folio {int(pin_over[0]):#x} has pincount above refcount")
    # rss matches the page tables
    for mm in mms:
        got = RSS()
        for v in mm.vmas:
            present = ((v.pte & PTE.PRESENT) != 0) & ((v.pte & PTE.SPECIAL) == 0)
            pf = v.pfn[present]
            if len(pf):
                kinds = np.bincount(mem.kind[mem.head_of(pf)].astype(np.int64),
                                    minlength=len(Kind))
                for k, c in enumerate(kinds.tolist()):
                    if c:
                        field = rss_kind(k)
                        setattr(got, field, getattr(got, field) + c)
        if got != mm.rss:
            bad.append(f"mm {mm.id}: rss counters {mm.rss} differ from page tables {got}")
    # anon-exclusive pages of pinned folios are never shared (spec 3.7 #1)
    if len(mapped):
        pf = small
        if len(pf):
            hd = mem.head_of(pf)
            excl = (mem.flags[pf] & np.uint32(PG.anon_exclusive)) != 0
            multi = mem.mapcount[pf] > 1
            if (excl & multi & (mem.kind[hd] == Kind.ANON)).any():
                p = int(pf[excl & multi][0])
                bad.append(f"anon-exclusive page {p:#x} is mapped more than once")
    return bad
