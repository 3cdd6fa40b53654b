"""The pin sanitizer: who took each GUP reference or pin, and misuse when it is released.

Every successful `get_user_pages*()` / `pin_user_pages*()` call is recorded once, with
the PFNs it returned as one numpy array, the flags, and the caller's call site (the
first frame outside gupsim). Releases are matched against the records vectorised.
Reports, each naming where the reference was taken and where it was released:

* `put_page` on a FOLL_PIN page (drops 1, leaves the folio looking pinned forever);
* `unpin_*` on a FOLL_GET page;
* double unpin (the page's pin from that call was already released);
* unpin of more than was pinned (no pin recorded for the page at all);
* pins still held when the process that owned the memory exits (a leak).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..memory import Kind, MemMap
from ..memory.pagearray import NULL
from ..warn import user_call_site

FOLL_GET = 1 << 1
FOLL_PIN = 1 << 19      # values of gup/flags.py (check/ does not import gup/)


@dataclass(eq=False)
class PinRecord:
    id: int
    how: str                 # "FOLL_PIN" or "FOLL_GET"
    flags: int
    call: str
    site: str
    mm_id: int | None
    pfns: np.ndarray
    left: np.ndarray         # 1 while the entry's reference is held
    released_at: np.ndarray  # index into the sanitizer's site table, -1 if held

    @property
    def held(self) -> int:
        return int(self.left.sum())


@dataclass(frozen=True)
class SanitizerReport:
    kind: str               # put_page_on_pin, unpin_of_get, double_unpin, over_unpin, leak
    message: str
    pfn: int
    taken_at: str
    released_at: str

    def __str__(self) -> str:
        return (f"{self.kind}: {self.message} (pfn {self.pfn:#x}; taken at {self.taken_at}; "
                f"released at {self.released_at})")


@dataclass(frozen=True)
class OutstandingPin:
    how: str
    call: str
    site: str
    flags: int
    pages: int
    pfns: np.ndarray


class PinSanitizer:
    """Bookkeeping of GUP references per call; see the module docstring."""

    def __init__(self, mem: MemMap, history: int = 64) -> None:
        self.mem = mem
        self.records: list[PinRecord] = []
        self.released: deque[PinRecord] = deque(maxlen=history)
        self.reports: list[SanitizerReport] = []
        self._sites: list[str] = []
        self._ids = itertools.count(1)

    # -- acquisition ---------------------------------------------------------------------

    def on_acquire(self, pfns: np.ndarray, flags: int, call: str, mm) -> None:
        pfns = pfns[pfns != NULL]
        how = "FOLL_PIN" if flags & FOLL_PIN else "FOLL_GET"
        if how == "FOLL_PIN":
            pfns = pfns[self.mem.kind[self.mem.head_of(pfns)] != Kind.ZERO]
        if len(pfns) == 0:
            return
        n = len(pfns)
        self.records.append(PinRecord(next(self._ids), how, flags, call, user_call_site(),
                                      getattr(mm, "id", None), pfns.astype(np.int64),
                                      np.ones(n, dtype=np.int8), np.full(n, -1, np.int32)))

    # -- release -------------------------------------------------------------------------

    def _site(self, site: str) -> int:
        self._sites.append(site)
        return len(self._sites) - 1

    @staticmethod
    def _consume(rec: PinRecord, uniq: np.ndarray, need: np.ndarray, site_idx: int) -> None:
        """Release up to need[j] held entries of pfn uniq[j] in this record."""
        pos = np.flatnonzero((rec.left > 0) & np.isin(rec.pfns, uniq[need > 0]))
        if len(pos) == 0:
            return
        p = rec.pfns[pos]
        order = np.argsort(p, kind="stable")
        ps, poss = p[order], pos[order]
        gstart = np.r_[0, np.flatnonzero(ps[1:] != ps[:-1]) + 1]
        ranks = np.arange(len(ps)) - np.repeat(gstart, np.diff(np.r_[gstart, len(ps)]))
        slot = np.searchsorted(uniq, ps)
        take = ranks < need[slot]
        rec.left[poss[take]] = 0
        rec.released_at[poss[take]] = site_idx
        tu, tc = np.unique(ps[take], return_counts=True)
        need[np.searchsorted(uniq, tu)] -= tc

    def _holding(self, recs, how: str, pfn: int, held: bool) -> PinRecord | None:
        for rec in recs:
            if rec.how != how:
                continue
            m = rec.pfns == pfn
            if held and (m & (rec.left > 0)).any():
                return rec
            if not held and (m & (rec.left == 0)).any():
                return rec
        return None

    def on_release(self, pfns: np.ndarray, flags: int, call: str) -> None:
        mem = self.mem
        pfns = pfns[pfns != NULL]
        how = "FOLL_PIN" if flags & FOLL_PIN else "FOLL_GET"
        if how == "FOLL_PIN":
            pfns = pfns[mem.kind[mem.head_of(pfns)] != Kind.ZERO]
        if len(pfns) == 0:
            return
        site = user_call_site()
        sidx = self._site(site)
        if self._release_whole_record(how, pfns, sidx):
            return
        uniq, cnt = np.unique(pfns, return_counts=True)
        need = cnt.astype(np.int64)
        for rec in self.records:
            if rec.how == how:
                self._consume(rec, uniq, need, sidx)
                if not need.any():
                    break
        if need.any():
            self._misuse(how, call, site, sidx, uniq, need)
        self._retire()

    def _release_whole_record(self, how: str, pfns: np.ndarray, sidx: int) -> bool:
        """The common case in O(n): the release is exactly what one call still holds."""
        for rec in reversed(self.records):
            if rec.how == how and len(rec.pfns) == len(pfns) and rec.held == len(pfns) \
                    and np.array_equal(rec.pfns, pfns):
                rec.left[:] = 0
                rec.released_at[:] = sidx
                self._retire()
                return True
        return False

    def _misuse(self, how: str, call: str, site: str, sidx: int, uniq: np.ndarray,
                need: np.ndarray) -> None:
        other = "FOLL_GET" if how == "FOLL_PIN" else "FOLL_PIN"
        for pfn in uniq[need > 0][:16].tolist():     # one report per page, bounded
            rec = self._holding(self.records, other, pfn, held=True)
            if how == "FOLL_GET":
                if rec is not None:
                    self.reports.append(SanitizerReport(
                        "put_page_on_pin", f"put_page() on a page pinned by {rec.call}(): "
                        "release pins with unpin_user_page()", pfn, rec.site, site))
                continue                # other GET references are not tracked
            if rec is not None:
                j = np.searchsorted(uniq, pfn)
                self._consume(rec, uniq, need, sidx)
                self.reports.append(SanitizerReport(
                    "unpin_of_get", f"{call}() on a page taken with FOLL_GET by {rec.call}(): "
                    "release it with put_page()", pfn, rec.site, site))
                if need[j] <= 0:
                    continue
            old = self._holding(list(self.records) + list(self.released), "FOLL_PIN", pfn,
                                held=False)
            if old is not None:
                first = old.released_at[(old.pfns == pfn) & (old.left == 0)]
                first_site = self._sites[int(first[0])] if len(first) else "?"
                self.reports.append(SanitizerReport(
                    "double_unpin", f"{call}() of a page whose pin from {old.call}() was "
                    f"already released at {first_site}", pfn, old.site, site))
            else:
                self.reports.append(SanitizerReport(
                    "over_unpin", f"{call}() of a page with no pin outstanding "
                    "(more unpins than pins)", pfn, "<never pinned>", site))

    def _retire(self) -> None:
        live = []
        for rec in self.records:
            (live if rec.held else self.released).append(rec)
        self.records = live

    # -- queries -------------------------------------------------------------------------

    def outstanding(self) -> list[OutstandingPin]:
        """References and pins held now, one entry per call that took them."""
        return [OutstandingPin(r.how, r.call, r.site, r.flags, r.held, r.pfns[r.left > 0])
                for r in self.records if r.held]

    def report_leaks(self, mm=None, why: str = "process exit") -> list[SanitizerReport]:
        """Report pins (not GET references) still held on `mm`'s memory (all if None)."""
        site = user_call_site()
        new = []
        for r in self.records:
            if r.how != "FOLL_PIN" or not r.held:
                continue
            if mm is not None and r.mm_id != getattr(mm, "id", None):
                continue
            pfn = int(r.pfns[r.left > 0][0])
            new.append(SanitizerReport("leak", f"{r.held} page(s) pinned by {r.call}() still "
                                       f"held at {why}", pfn, r.site, site))
        self.reports.extend(new)
        return new
