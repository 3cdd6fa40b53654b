"""The pin sanitizer: who took each GUP reference or pin, and misuse when it is released.

Every successful `get_user_pages*()` / `pin_user_pages*()` call is recorded once, with
the PFNs it returned as one numpy array, the flags, and the caller's call site (the
first frame outside gupsim). Releases are matched against the records vectorised.
Reports, each naming where the reference was taken and where it was released:

* `put_page` on a FOLL_PIN page (drops 1, leaves the folio looking pinned forever);
* `unpin_*` on a FOLL_GET page;
* double unpin (the page's pin from that call was already released);
* unpin of more than was pinned (more unpins of a folio than pins recorded for it);
* pins still held when the process that owned the memory exits (a leak).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constants import FOLL_PIN
from ..lean import SHORT, amax, lo_hi, same
from ..memory import Kind, MemMap
from ..memory.pagearray import NULL
from ..warn import Site, site_text, source_line, user_call_frame, user_call_site
from .runs import FolioRuns, Runs

if TYPE_CHECKING:
    from ..mm import MM

SMALL_RECORD = 64          # records up to this many entries are indexed by page and folio
_ZERO = int(Kind.ZERO)      # a plain int: numpy compares an IntEnum ~2 us slower (grab.py)
_FREE = int(Kind.FREE)
# what a new short record starts from: every entry held, none released (copied per record)
_ONES = np.ones(SHORT, dtype=np.int8)
_UNRELEASED = np.full(SHORT, -1, dtype=np.int32)


@dataclass(eq=False, slots=True)
class PinRecord:
    """One successful GUP call: its pages, who made it, and which entries are still held.

    The per-entry state (`heads`, `left`, `released_at`) is built only when something
    reads it: a record taken by GUP-fast knows its folios as runs (`folio_runs`), and one
    held or released all at once (the usual life of a pin) is uniform, so a 1 GiB pin
    and its unpin never cost the sanitizer a pass per page for that state.
    """

    id: int
    how: str                 # "FOLL_PIN" or "FOLL_GET"
    flags: int
    call: str
    _site: Site              # where the user took it (`site` formats it when first read)
    mm_id: int | None
    _pfns: np.ndarray | None  # None: `pfn_runs` says them (built when read)
    nheld: int = 0           # entries still held (left.sum(), kept as a count)
    lo: int = 0              # lowest head and highest pfn: releases elsewhere skip the record
    hi: int = -1
    folio_runs: FolioRuns | None = None    # the folios as GUP grabbed them, if it said
    folio_orders: np.ndarray | None = None  # the order of each of those folios then
    pfn_runs: Runs | None = None            # `pfns` as runs, when GUP knew them (leaves)
    released_by: int = -1    # the release call that dropped every entry at once
    key: tuple[str, int, int] = ("", 0, 0)   # (how, first PFN, entries): its `_whole` key
    _heads: np.ndarray | None = None        # the folio of each entry when it was taken
    _left: np.ndarray | None = None         # 1 while the entry's reference is held
    _released_at: np.ndarray | None = None  # id of the release call that dropped it, -1

    @property
    def site(self) -> str:
        """The user's call site, "file:line in function"."""
        if not isinstance(self._site, str):
            self._site = site_text(self._site)
        return self._site

    @property
    def pfns(self) -> np.ndarray:
        """The PFN of each entry (NULL and uncounted entries left out)."""
        if self._pfns is None:
            assert self.pfn_runs is not None
            self._pfns = self.pfn_runs.expand()
        return self._pfns

    @property
    def entries(self) -> int:
        """How many entries the record has."""
        if self._pfns is not None:
            return len(self._pfns)
        assert self.pfn_runs is not None
        return self.pfn_runs.n

    def expand(self) -> PinRecord:
        """The record with its per-entry arrays: itself (it builds them when read), as a
        `PackedRecord` of the history gives its record back."""
        return self

    @property
    def held(self) -> int:
        """Entries of this call whose reference or pin is still held."""
        return self.nheld

    @property
    def heads(self) -> np.ndarray:
        """The folio of each entry when it was taken."""
        if self._heads is None:
            if self.folio_runs is None:             # one page: its folio is `lo`
                self._heads = np.array([self.lo], dtype=np.int64)
            else:
                _, heads, lengths = self.folio_runs
                self._heads = np.repeat(heads, lengths)
        return self._heads

    @property
    def uniform(self) -> bool:
        """Whether every entry is in the same state (all held, or all released by one
        call): the per-entry arrays are then not built."""
        return self._left is None

    @property
    def left(self) -> np.ndarray:
        """Per entry: 1 while its reference or pin is held, else 0 (built on first read;
        callers may update it in place)."""
        if self._left is None:
            self._build_state()
        assert self._left is not None
        return self._left

    def _build_state(self) -> None:
        """The per-entry arrays of a uniform record, as the record stands."""
        n = self.entries
        if n <= SHORT:              # copies of a template: np.ones() costs about 1 us
            self._left = (_ONES[:n] if self.nheld else _NONE_LEFT[:n]).copy()
        else:
            self._left = np.full(n, 1 if self.nheld else 0, dtype=np.int8)
        self._released_at = _UNRELEASED[:n].copy() if n <= SHORT and self.nheld \
            else np.full(n, self.released_by, dtype=np.int32)

    @property
    def released_at(self) -> np.ndarray:
        """Per entry: the release call that dropped it, -1 while held."""
        if self._released_at is None:
            self._build_state()
        assert self._released_at is not None
        return self._released_at

    def release_all(self, sidx: int) -> None:
        """Release call `sidx` drops every entry (all were held): uniform again."""
        self._left = self._released_at = None
        self.released_by = sidx
        self.nheld = 0


_NO_ENTRIES = np.zeros(0, dtype=np.int64)
_NONE_LEFT = np.zeros(SHORT, dtype=np.int8)


_FIRST = np.zeros(1, dtype=np.int64)
_FIRST.flags.writeable = False


_HELD = {v: np.array([v], dtype=np.int8) for v in (0, 1)}
for _v in _HELD.values():
    _v.flags.writeable = False


def _one_run(n: int, value: int, dtype: type) -> Runs:
    """The run form of an array of `n` equal values."""
    values = _HELD[value] if dtype is np.int8 else np.array([value], dtype=dtype)
    return Runs(_FIRST, values, n, 0, np.dtype(dtype))


def _compact(heads: np.ndarray) -> Runs:
    """The folio of each entry as runs: equal values (entries of one folio), or counting
    up (order-0 pages side by side), whichever is shorter."""
    same = Runs.of(heads, 0)
    if len(same) <= len(heads) // 8:
        return same
    rising = Runs.of(heads, 1)
    return rising if len(rising) < len(same) else same


@dataclass(eq=False)
class PackedRecord:
    """A released large record in the history, its per-entry arrays as runs (runs.py):
    `meta` is the record without them; `expand()` gives the whole record back."""

    meta: PinRecord
    pfns: Runs
    heads: Runs
    left: Runs
    released_at: Runs

    @classmethod
    def pack(cls, rec: PinRecord) -> PinRecord | PackedRecord:
        """`rec` in run form, or `rec` itself where runs would not be much smaller, or
        where it holds no per-entry array (a huge pin released whole: its runs say all)."""
        n = rec.entries
        if n <= SMALL_RECORD or rec._pfns is None and rec._heads is None and rec.uniform:
            return rec
        pfns = rec.pfn_runs if rec.pfn_runs is not None else Runs.of(rec.pfns, 1)
        if len(pfns) > n // 8:                     # scattered pages: keep the arrays
            return rec
        runs, orders = rec.folio_runs, rec.folio_orders
        if rec._heads is None and runs is not None and len(runs[1]) <= n // 8:
            head_runs = Runs(runs[0], runs[1], n, 0, runs[1].dtype)   # a few folios
        elif rec._heads is None and orders is not None and not orders.any():
            head_runs = pfns        # order-0 folios only: each entry's folio is its page
        else:
            head_runs = _compact(rec.heads)
        if rec.uniform:
            left = _one_run(n, 1 if rec.nheld else 0, np.int8)
            released_at = _one_run(n, rec.released_by, np.int32)
        else:
            left, released_at = Runs.of(rec.left, 0), Runs.of(rec.released_at, 0)
        # the record without its arrays (dataclasses.replace() costs some 10 us here)
        meta = PinRecord(rec.id, rec.how, rec.flags, rec.call, rec._site, rec.mm_id,
                         _NO_ENTRIES, rec.nheld, rec.lo, rec.hi, released_by=rec.released_by,
                         _heads=_NO_ENTRIES)
        return cls(meta, pfns, head_runs, left, released_at)

    def expand(self) -> PinRecord:
        """The record with its per-entry arrays, as it was when it was released."""
        return dataclasses.replace(self.meta, _pfns=self.pfns.expand(),
                                   _heads=self.heads.expand(), _left=self.left.expand(),
                                   _released_at=self.released_at.expand())


@dataclass(frozen=True)
class SanitizerReport:
    """One misuse found: what kind, a message saying how to fix it, where taken and released."""

    kind: str               # put_page_on_pin, unpin_of_get, double_unpin, over_unpin, leak
    message: str
    pfn: int
    taken_at: str
    released_at: str

    def __str__(self) -> str:
        return (f"{self.kind}: {self.message} (pfn {self.pfn:#x}; taken at {self.taken_at}; "
                f"released at {self.released_at})")

    def explain(self) -> str:
        """The report with the source line of each call site under it, for printing (the
        only place the sanitizer reads source files: recording a pin never does)."""
        lines = [f"{self.kind}: {self.message} (pfn {self.pfn:#x})"]
        for label, site in (("taken at", self.taken_at), ("released at", self.released_at)):
            lines.append(f"  {label} {site}")
            text = source_line(site)
            if text:
                lines.append(f"      {text}")
        return "\n".join(lines)


@dataclass(frozen=True)
class OutstandingPin:
    """References or pins one call took and still holds (`k.sanitizer.outstanding()`)."""

    how: str
    call: str
    site: str
    flags: int
    pages: int
    pfns: np.ndarray


class PinSanitizer:
    """Bookkeeping of GUP references per call; see the module docstring.

    A release is matched to the entries of the same page first, then to entries of
    other pages of the same folio: the kernel counts pins per folio, so unpinning a
    folio (unpin_folio(), unpin_user_folio(), a range unpin) through any of its pages
    is correct use.
    """

    def __init__(self, mem: MemMap, history: int = 64) -> None:
        self.mem = mem
        self._live: dict[int, PinRecord] = {}                       # id -> record, in order
        self._whole: dict[tuple[str, int, int], list[PinRecord]] = {}  # (how, pfn0, n)
        # where a release looks for its records: small records by page and by folio, the
        # few large ones scanned (a batch of many one-page pins then costs per page, not
        # per page times the number of live records)
        self._large: dict[int, PinRecord] = {}
        # small records join the two indexes only when a partial release needs them: most
        # are released whole (found by `_whole`), so most are never indexed at all
        self._unindexed: dict[int, PinRecord] = {}
        self._by_pfn: dict[int, dict[int, PinRecord]] = {}
        self._by_head: dict[int, dict[int, PinRecord]] = {}
        self._emptied: list[PinRecord] = []
        # the history a misuse report looks back into; large records kept as runs
        self.released: deque[PinRecord | PackedRecord] = deque(maxlen=history)
        self.reports: list[SanitizerReport] = []
        self._sites: list[str] = []
        self._site_ids: dict[str, int] = {}
        self._release_sites: list[int] = []      # release call id -> index in _sites
        self._ids = itertools.count(1)

    @property
    def records(self) -> list[PinRecord]:
        """The records with references still held, oldest first."""
        return list(self._live.values())

    # -- acquisition ---------------------------------------------------------------------

    def _pins_only(self, pfns: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
        """(PFNs, their folios) without NULL entries, and without the shared zero page for
        pins (it is never pin-counted); folios are looked up once, here."""
        pfns, _, _ = self._counted(pfns, how)
        return pfns, self.mem.head_of(pfns)

    def _counted(self, pfns: np.ndarray, how: str) -> tuple[np.ndarray, int, int]:
        """(the PFNs whose references count: no NULL entries and, for pins, no shared
        zero page; their lowest and highest PFN). One min and one max over the array:
        the zero page is the one frame of Kind.ZERO (allocated at boot, order 0), so it
        needs a look only when it lies between the two."""
        pfns = pfns.astype(np.int64, copy=False)
        if len(pfns) == 0:
            return pfns, 0, -1
        lo, hi = lo_hi(pfns)
        if lo == NULL:
            pfns = pfns[pfns != NULL]
            if len(pfns) == 0:
                return pfns, 0, -1
            lo, hi = lo_hi(pfns)
        mem = self.mem
        zero = mem.zero_pfn
        if how == "FOLL_PIN" and (zero < 0 or lo <= zero <= hi) \
                and mem.era.has("zero-page-not-pin-counted"):
            keep = pfns != zero if zero >= 0 else mem.kind.take(mem.head_of(pfns)) != _ZERO
            if False in keep.tolist() if len(keep) <= SHORT else not keep.all():
                pfns = pfns[keep]
                lo, hi = lo_hi(pfns) if len(pfns) else (0, -1)
        return pfns, lo, hi

    def on_acquire(self, pfns: np.ndarray | None, flags: int, call: str, mm: MM | None,
                   runs: FolioRuns | None = None, pfn_runs: Runs | None = None, *,
                   orders: np.ndarray | None = None, bounds: tuple[int, int] | None = None,
                   callers: int = 0) -> PinRecord | None:
        """Record a successful GUP call (the record; None when no entry counts): its
        pages, flags, caller's site and the mm (or None); `runs`: the folio runs GUP
        grabbed them as (start index, head, length), so that neither this record nor the
        unpin of the same array looks pages up again;
        `pfn_runs`: `pfns` as runs of consecutive frames, when GUP knows them (a huge
        leaf maps consecutive frames), kept for the history instead of working them out;
        with them `pfns` may be None: the record then builds them only when read (a huge
        pin's unpin through the same array never reads them). `orders` (of the runs'
        folios) and `bounds` (as `_run_bounds()` gives them) from a caller that has them
        already: GUP-fast's huge leaves, which it checked hold no zero page. `callers`:
        how many frames from the caller's outward are gupsim's own for sure (an express
        path's fixed chain): the walk for the user's call site starts beyond them."""
        how = "FOLL_PIN" if flags & FOLL_PIN else "FOLL_GET"
        n = len(pfns) if pfns is not None else pfn_runs.n  # type: ignore[union-attr]
        # a few large folios: the bounds come from the folios; else from the pages
        if runs is not None and orders is None:
            orders = self.mem.order[runs[1]]
        if bounds is None and runs is not None and orders is not None \
                and len(runs[1]) <= n // 64:
            bounds = self._run_bounds(runs, orders, how)
        if bounds is not None:
            lo_head, hi = bounds
        else:
            if pfns is None:
                pfns = pfn_runs.expand()  # type: ignore[union-attr]
            pfns, lo, hi = self._counted(pfns, how)
            if len(pfns) == 0:
                return None
            if len(pfns) != n:
                runs = None                     # entries were left out: runs do not fit
            lo_head = self.mem.head_of(lo)    # the lowest head is that of the lowest frame
        rec = PinRecord(next(self._ids), how, flags, call, user_call_frame(inside=1 + callers),
                        getattr(mm, "id", None), pfns, n if pfns is None else len(pfns),
                        lo_head, hi)
        if runs is None:
            rec._heads = self.mem.head_of(rec.pfns)
        else:
            rec.folio_runs, rec.folio_orders = runs, orders
            rec.pfn_runs = pfn_runs
        self._add(rec)
        return rec

    def _run_bounds(self, runs: FolioRuns, orders: np.ndarray, how: str
                    ) -> tuple[int, int] | None:
        """(lowest head, a bound on the highest PFN) of the few folios GUP took as `runs`
        (it stored every entry: no NULL), from the folios alone: no entry lies beyond the
        highest head plus the largest folio. None when the shared zero page may be among
        them (its entries are left out of a pin record)."""
        mem = self.mem
        heads = runs[1]
        zero = mem.zero_pfn
        if how == "FOLL_PIN" and (zero < 0 or zero in heads.tolist()) \
                and mem.era.has("zero-page-not-pin-counted"):
            return None
        lo, hi = lo_hi(heads)
        return lo, hi + (1 << amax(orders)) - 1

    def on_acquire_one(self, pfn: int, head: int, flags: int, call: str, mm: MM | None,
                       callers: int = 0) -> PinRecord:
        """`on_acquire()` of one page of folio `head`, which the caller checked is not
        the shared zero page (GUP-fast's one-page call, express.py). The record's heads
        come from `lo` when read; `callers` as for `on_acquire()`."""
        how = "FOLL_PIN" if flags & FOLL_PIN else "FOLL_GET"
        rec = PinRecord(next(self._ids), how, flags, call, user_call_frame(inside=1 + callers),
                        getattr(mm, "id", None), np.array([pfn], dtype=np.int64), 1, head, pfn)
        self._add(rec)
        return rec

    def _add(self, rec: PinRecord) -> None:
        """A new record joins the live set and the lookups of a release."""
        self._live[rec.id] = rec
        pfns = rec._pfns                # the key is read at every release: kept, not derived
        if pfns is not None:
            rec.key = (rec.how, pfns.item(0), len(pfns))
        else:                           # frames as runs: the first run starts the record
            assert rec.pfn_runs is not None
            rec.key = (rec.how, rec.pfn_runs.values.item(0), rec.pfn_runs.n)
        n = rec.key[2]
        self._whole.setdefault(rec.key, []).append(rec)
        (self._large if n > SMALL_RECORD else self._unindexed)[rec.id] = rec

    def _index_pending(self) -> None:
        """Put the small records not indexed yet into the by-page and by-folio indexes."""
        for rec in self._unindexed.values():
            for index, keys in ((self._by_pfn, rec.pfns), (self._by_head, rec.heads)):
                for key in keys.tolist():
                    index.setdefault(key, {})[rec.id] = rec
        self._unindexed.clear()

    def _unindex(self, rec: PinRecord) -> None:
        if self._large.pop(rec.id, None) is not None:
            return
        if self._unindexed.pop(rec.id, None) is not None:
            return
        for index, keys in ((self._by_pfn, rec.pfns), (self._by_head, rec.heads)):
            for key in keys.tolist():
                recs = index.get(key)
                if recs is not None:
                    recs.pop(rec.id, None)
                    if not recs:
                        del index[key]

    # -- release -------------------------------------------------------------------------

    def _new_release(self, site: Site) -> int:
        """A new release call id, remembering the call site it came from (its text:
        `site_text()` makes it once per site)."""
        text = site_text(site)
        idx = self._site_ids.get(text)
        if idx is None:
            idx = self._site_ids[text] = len(self._sites)
            self._sites.append(text)
        self._release_sites.append(idx)
        return len(self._release_sites) - 1

    @property
    def release_calls(self) -> int:
        """How many release calls (unpin_*, put_page of a GUP reference) were recorded."""
        return len(self._release_sites)

    def release_sites(self, since: int = 0) -> list[str]:
        """The call site of every release call from number `since` on, in order."""
        return [self._sites[i] for i in self._release_sites[since:]]

    def _released_site(self, cid: int) -> str:
        return self._sites[self._release_sites[cid]]

    def _consume(self, rec: PinRecord, keys: np.ndarray, uniq: np.ndarray, need: np.ndarray,
                 site_idx: int) -> None:
        """Release up to need[j] held entries whose key (pfn or head) is uniq[j]."""
        pos = np.flatnonzero((rec.left > 0) & np.isin(keys, uniq[need > 0]))
        if len(pos) == 0:
            return
        p = keys[pos]
        order = np.argsort(p, kind="stable")
        ps, poss = p[order], pos[order]
        gstart = np.r_[0, np.flatnonzero(ps[1:] != ps[:-1]) + 1]
        ranks = np.arange(len(ps)) - np.repeat(gstart, np.diff(np.r_[gstart, len(ps)]))
        slot = np.searchsorted(uniq, ps)
        take = ranks < need[slot]
        rec.left[poss[take]] = 0
        rec.released_at[poss[take]] = site_idx
        rec.nheld -= int(take.sum())
        if rec.nheld == 0:
            self._emptied.append(rec)
        tu, tc = np.unique(ps[take], return_counts=True)
        need[np.searchsorted(uniq, tu)] -= tc

    def _consume_small(self, rec: PinRecord, keys: np.ndarray, slot: dict[int, int],
                       need: np.ndarray, site_idx: int) -> None:
        """`_consume()` for a record of a few entries: a plain loop beats numpy's set-up."""
        left = rec.left
        for i, key in enumerate(keys.tolist()):
            j = slot.get(key)
            if j is None or not left[i] or need[j] <= 0:
                continue
            need[j] -= 1
            left[i] = 0
            rec.released_at[i] = site_idx
            rec.nheld -= 1
        if rec.nheld == 0:
            self._emptied.append(rec)

    def _candidates(self, uniq: np.ndarray, by_folio: bool) -> list[PinRecord]:
        """The live records that may hold an entry keyed (pfn or head) in `uniq`, oldest
        first: through the index when the release is smaller than the live set."""
        if len(uniq) >= len(self._live):
            return list(self._live.values())
        self._index_pending()
        index = self._by_head if by_folio else self._by_pfn
        found: dict[int, PinRecord] = dict(self._large)
        for key in uniq.tolist():
            recs = index.get(key)
            if recs:
                found.update(recs)
        return [found[i] for i in sorted(found)]

    def _match(self, how: str, uniq: np.ndarray, need: np.ndarray, sidx: int,
               by_folio: bool) -> None:
        lo, hi = int(uniq[0]), int(uniq[-1])          # uniq is sorted
        slot: dict[int, int] | None = None
        for rec in self._candidates(uniq, by_folio):
            if rec.how != how or not rec.nheld or rec.hi < lo or rec.lo > hi:
                continue
            keys = rec.heads if by_folio else rec.pfns
            if len(keys) <= SMALL_RECORD:
                if slot is None:
                    slot = {k: j for j, k in enumerate(uniq.tolist())}
                self._consume_small(rec, keys, slot, need, sidx)
            else:
                self._consume(rec, keys, uniq, need, sidx)
            if not need.any():
                return

    def on_release(self, pfns: np.ndarray, flags: int, call: str) -> FolioRuns | None:
        """Match a release against the records; report what does not match (misuse).
        Returns the folio runs of the array when it is, entry for entry, one held record
        GUP-fast took and its folios are still as they were (the caller may then release
        by folio without looking the pages up); else None."""
        mem = self.mem
        how = "FOLL_PIN" if flags & FOLL_PIN else "FOLL_GET"
        pfns = pfns.astype(np.int64, copy=False)
        # the common case first, on the array as passed: a record's pages hold no NULL
        # and no zero page, and stay pinned while held, so filtering would change nothing
        whole = self.held_whole(how, pfns)
        as_passed = whole is not None
        if whole is None:
            pfns, _ = self._pins_only(pfns, how)
            if len(pfns) == 0:
                return None
            whole = self.held_whole(how, pfns)
        if whole is not None:
            runs = whole.folio_runs if as_passed and self.folios_unchanged(whole) else None
            self.release_whole(whole)
            return runs
        site = user_call_site()
        sidx = self._new_release(site)
        uniq, cnt = np.unique(pfns, return_counts=True)
        need = cnt.astype(np.int64)
        self._match(how, uniq, need, sidx, by_folio=False)       # the same pages first
        if need.any():
            left = uniq[need > 0]
            heads = np.asarray(mem.head_of(left), dtype=np.int64)
            huniq, inv = np.unique(heads, return_inverse=True)
            hneed = np.bincount(inv, weights=need[need > 0]).astype(np.int64)
            self._match(how, huniq, hneed, sidx, by_folio=True)  # then their folios
            if hneed.any():
                first = {int(h): int(left[np.flatnonzero(heads == h)[0]])
                         for h in huniq[hneed > 0].tolist()}
                self._misuse(how, call, site, sidx, huniq, hneed, first)
        self._retire()
        return None

    def release_whole(self, rec: PinRecord, callers: int = 0) -> None:
        """A release call drops every entry of `rec` (from `held_whole()`) at once;
        `callers` as for `on_acquire()`."""
        rec.release_all(self._new_release(user_call_frame(inside=1 + callers)))
        self._retire_one(rec)

    def folios_unchanged(self, rec: PinRecord) -> bool:
        """Whether each folio of `rec`'s runs is still a folio head of the same order: its
        entries then still belong to it (a folio covers the frames from its head on), so
        the runs are what looking every page up again would give. A frame that is not a
        live folio's head (free, or a tail: tails hold 0 in the folio-wide fields) has
        kind FREE, so the kind and the order tell it."""
        if rec.folio_runs is None or rec.folio_orders is None:
            return False
        mem = self.mem
        heads = rec.folio_runs[1]
        if len(heads) <= SHORT:                 # plain ints: numpy's reductions cost more
            return (_FREE not in mem.kind.take(heads).tolist()
                    and mem.order.take(heads).tolist() == rec.folio_orders.tolist())
        return bool(np.minimum.reduce(mem.kind[heads]) != _FREE
                    and np.array_equal(mem.order[heads], rec.folio_orders))

    def held_fill(self, how: str, n: int, filled: object) -> PinRecord | None:
        """`filled` (a PageArray's stamp: the record whose fill wrote all its `n` entries,
        none written since) when it is a live record of kind `how` that holds all `n`:
        what `held_whole()` would find, without reading an entry. Else None."""
        if type(filled) is PinRecord and filled.how == how and filled.nheld == n \
                and self._live.get(filled.id) is filled:
            return filled
        return None

    def held_whole(self, how: str, pfns: np.ndarray) -> PinRecord | None:
        """The common case in O(n): the record of one call that still holds exactly
        these pages (found by its first page and length, whatever the number of
        records); None if there is none. Changes nothing: `release_whole()` releases."""
        if len(pfns) == 0:
            return None
        for rec in reversed(self._whole.get((how, pfns.item(0), len(pfns)), ())):
            if rec.nheld == len(pfns) and same(rec.pfns, pfns):
                return rec
        return None

    def _find(self, how: str, head: int, held: bool,
              recs: Iterable[PinRecord] | None = None) -> PinRecord | None:
        """A record of kind `how` with an entry in folio `head`, held now or released."""
        for rec in (self._live.values() if recs is None else recs):
            if rec.how != how:
                continue
            m = rec.heads == head
            if (m & ((rec.left > 0) if held else (rec.left == 0))).any():
                return rec
        return None

    def _misuse(self, how: str, call: str, site: str, sidx: int, huniq: np.ndarray,
                hneed: np.ndarray, first: dict[int, int]) -> None:
        """One report per folio released more than its records allow (bounded to 16)."""
        history = list(self._live.values()) + [r.expand() for r in self.released]
        for head in huniq[hneed > 0][:16].tolist():
            pfn = first[head]
            j = int(np.searchsorted(huniq, head))
            if how == "FOLL_GET":
                rec = self._find("FOLL_PIN", head, held=True)
                if rec is not None:
                    self.reports.append(SanitizerReport(
                        "put_page_on_pin", f"put_page() on a page pinned by {rec.call}(): "
                        "release pins with unpin_user_page()", pfn, rec.site, site))
                continue                # other GET references are not tracked
            rec = self._find("FOLL_GET", head, held=True)
            while rec is not None and hneed[j] > 0:
                self._consume(rec, rec.heads, huniq[j:j + 1], hneed[j:j + 1], sidx)
                self.reports.append(SanitizerReport(
                    "unpin_of_get", f"{call}() on a page taken with FOLL_GET by {rec.call}(): "
                    "release it with put_page()", pfn, rec.site, site))
                rec = self._find("FOLL_GET", head, held=True)
            if hneed[j] <= 0:
                continue
            self._report_extra_unpin(call, site, sidx, head, pfn, history)

    def _report_extra_unpin(self, call: str, site: str, sidx: int, head: int, pfn: int,
                            history: list[PinRecord]) -> None:
        """double_unpin if an earlier call released this page's pin, else over_unpin (this
        call unpins the folio more times than it was pinned)."""
        for rec in history:
            if rec.how != "FOLL_PIN":
                continue
            gone = (rec.pfns == pfn) & (rec.left == 0) & (rec.released_at != sidx)
            if gone.any():
                first_site = self._released_site(int(rec.released_at[gone][0]))
                self.reports.append(SanitizerReport(
                    "double_unpin", f"{call}() of a page whose pin from {rec.call}() was "
                    f"already released at {first_site}", pfn, rec.site, site))
                return
        owner = self._find("FOLL_PIN", head, held=False, recs=history) \
            or self._find("FOLL_PIN", head, held=True)
        self.reports.append(SanitizerReport(
            "over_unpin", f"{call}() of a page with no pin outstanding on its folio "
            "(more unpins than pins)", pfn,
            owner.site if owner is not None else "<never pinned>", site))

    def _retire(self) -> None:
        """Records with nothing left held move to the (bounded) history."""
        for rec in self._emptied:
            self._retire_one(rec)
        self._emptied.clear()

    def _retire_one(self, rec: PinRecord) -> None:
        """`rec` (nothing left held) leaves the live set for the history."""
        if self._live.pop(rec.id, None) is None:
            return
        self._unindex(rec)
        key = rec.key
        same = self._whole[key]
        same.remove(rec)
        if not same:
            del self._whole[key]
        self.released.append(PackedRecord.pack(rec))

    # -- queries -------------------------------------------------------------------------

    def outstanding(self) -> list[OutstandingPin]:
        """References and pins held now, one entry per call that took them."""
        return [OutstandingPin(r.how, r.call, r.site, r.flags, r.held, r.pfns[r.left > 0])
                for r in self._live.values() if r.held]

    def report_leaks(self, mm: MM | None = None,
                     why: str = "process exit") -> list[SanitizerReport]:
        """Report pins (not GET references) still held on `mm`'s memory (all if None)."""
        site = user_call_site()
        new = []
        for r in self._live.values():
            if r.how != "FOLL_PIN" or not r.held:
                continue
            if mm is not None and r.mm_id != getattr(mm, "id", None):
                continue
            pfn = int(r.pfns[r.left > 0][0])
            new.append(SanitizerReport("leak", f"{r.held} page(s) pinned by {r.call}() still "
                                       f"held at {why}", pfn, r.site, site))
        self.reports.extend(new)
        return new
