"""The page allocator: a buddy allocator per zone, the CMA area, and the hugetlb pool.

Each region (ZONE_NORMAL without CMA, the CMA area, ZONE_MOVABLE) is a buddy allocator
whose untouched part above a high-water mark counts as free MAX_PAGE_ORDER blocks, so
a huge machine costs nothing until it is used and frames are handed out from the
bottom up. Allocation honours the request's kind as the kernel's GFP flags do:
movable allocations (user pages) may land in ZONE_MOVABLE and in CMA pageblocks,
unmovable ones (kernel memory, and every allocation made while PF_MEMALLOC_PIN is set)
only in ZONE_NORMAL outside CMA.

Simplification: the kernel only borrows CMA for movable allocations when CMA holds
more than half the free memory; the model tries ZONE_MOVABLE, then CMA, then
ZONE_NORMAL, so that a machine configured with CMA deterministically exercises it.
"""

from __future__ import annotations

import heapq
from itertools import pairwise

import numpy as np

from ..constants import MAX_PAGE_ORDER, PAGE_SIZE, PMD_ORDER, PUD_ORDER
from .memmap import PG, Kind, MemMap


def increasing(a: np.ndarray) -> bool:
    """True if `a` is strictly increasing: its entries are then distinct and sorted, so
    callers can skip np.unique() and np.*.at() (a range torn down in order always is)."""
    return len(a) < 2 or not np.count_nonzero(a[1:] <= a[:-1])


_HUGETLB = np.uint32(PG.hugetlb)


class OutOfMemory(Exception):
    """No free block could satisfy an allocation (the caller turns it into -ENOMEM/SIGBUS)."""


class BuddyRegion:
    """A buddy allocator over PFNs [start, end) with absolute (PFN-aligned) buddies."""

    def __init__(self, name: str, start: int, end: int) -> None:
        self.name = name
        self.start = start
        self.end = end
        self.top = start               # frames at and above `top` were never handed out
        self.nr_free = end - start
        self.free: list[set[int]] = [set() for _ in range(MAX_PAGE_ORDER + 1)]
        self._heap: list[list[int]] = [[] for _ in range(MAX_PAGE_ORDER + 1)]

    def _push(self, pfn: int, order: int) -> None:
        self.free[order].add(pfn)
        heapq.heappush(self._heap[order], pfn)

    def _pop_lowest(self, order: int) -> int | None:
        heap, live = self._heap[order], self.free[order]
        while heap:
            pfn = heapq.heappop(heap)
            if pfn in live:
                live.remove(pfn)
                return pfn
        return None

    def alloc(self, order: int) -> int | None:
        """Lowest free block of 2**order frames, split from a larger one if need be."""
        if self.nr_free < 1 << order:
            return None         # an empty region (no CMA, no movable zone) answers at once
        if order > MAX_PAGE_ORDER:
            pfn = self._carve(order)
        else:
            pfn, o = None, order
            for o in range(order, MAX_PAGE_ORDER + 1):
                pfn = self._pop_lowest(o)
                if pfn is not None:
                    break
            if pfn is None:
                pfn, o = self._carve(MAX_PAGE_ORDER), MAX_PAGE_ORDER
            if pfn is None:
                return None
            while o > order:
                o -= 1
                self._push(pfn + (1 << o), o)
        if pfn is not None:
            self.nr_free -= 1 << order
        return pfn

    def _carve(self, order: int) -> int | None:
        """Take a fresh aligned block of 2**order frames from above the high-water mark."""
        size = 1 << order
        pfn = -(-self.top // size) * size
        if pfn + size > self.end:
            return None
        gap = self.top
        while gap < pfn:  # frames skipped for alignment become free blocks
            o = min(MAX_PAGE_ORDER, (gap & -gap).bit_length() - 1) if gap else MAX_PAGE_ORDER
            while gap + (1 << o) > pfn:
                o -= 1
            self._push(gap, o)
            gap += 1 << o
        self.top = pfn + size
        return pfn

    def release(self, pfn: int, order: int) -> None:
        """Free a block, merging with its buddy as far as possible."""
        if order > MAX_PAGE_ORDER:
            for sub in range(pfn, pfn + (1 << order), 1 << MAX_PAGE_ORDER):
                self.release(sub, MAX_PAGE_ORDER)
            return
        self.nr_free += 1 << order
        while order < MAX_PAGE_ORDER:
            buddy = pfn ^ (1 << order)
            if buddy not in self.free[order]:
                break
            self.free[order].remove(buddy)
            pfn = min(pfn, buddy)
            order += 1
        self._push(pfn, order)


def runs(idx: np.ndarray, cut: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Ascending integers as [start, end) runs of consecutive ones (`cut`: where runs
    start after the first, if the caller has computed it)."""
    if len(idx) == 0:
        return []
    if cut is None:
        cut = (np.diff(idx) != 1).nonzero()[0] + 1
    starts = idx[np.concatenate(([0], cut))]
    ends = idx[np.concatenate((cut - 1, [len(idx) - 1]))] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


_FEW = 64           # up to this many frames, plain ints cost less than numpy's calls


def aligned_blocks(pfns: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted, distinct PFNs into the largest naturally aligned power-of-two blocks
    (start, order) they contain, up to MAX_PAGE_ORDER: what a buddy allocator may free
    as one block each. Run by run, each cut from its start into the largest aligned
    block that fits (the same blocks as taking the largest orders first: a block is
    taken exactly when it lies in the run and its parent block does not)."""
    if len(pfns) == 0:
        return []
    if len(pfns) <= _FEW:               # a few frames (most frees): runs in plain ints
        pl = pfns.tolist()
        spans, start = [], pl[0]
        for prev, pfn in pairwise(pl):
            if pfn != prev + 1:
                spans.append((start, prev + 1))
                start = pfn
        spans.append((start, pl[-1] + 1))
    else:
        cut = np.flatnonzero(np.diff(pfns) != 1) + 1
        if len(cut) == len(pfns) - 1:   # no two frames adjacent (COW copies, scattered)
            return [(pfn, 0) for pfn in pfns.tolist()]
        spans = runs(pfns, cut)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if end - start == 1:
            out.append((start, 0))
            continue
        while start < end:
            order = min(MAX_PAGE_ORDER, (end - start).bit_length() - 1,
                        (start & -start).bit_length() - 1 if start else MAX_PAGE_ORDER)
            out.append((start, order))
            start += 1 << order
    return out


class Allocator:
    """alloc_pages()/free of folios over the zones of one MemMap, with a hugetlb pool."""

    def __init__(self, mem: MemMap) -> None:
        self.mem = mem
        self.normal = BuddyRegion("Normal", 0, mem.cma_start)
        self.cma = BuddyRegion("CMA", mem.cma_start, mem.cma_end)
        self.movable = BuddyRegion("Movable", mem.movable_start, mem.nr_pages)
        self.hugetlb_free: dict[int, list[int]] = {PMD_ORDER: [], PUD_ORDER: []}
        self.hugetlb_total: dict[int, int] = {PMD_ORDER: 0, PUD_ORDER: 0}

    memalloc_pin = False     # current task is in a PF_MEMALLOC_PIN section (see regions)

    def regions(self, movable: bool) -> list[BuddyRegion]:
        """Where an allocation may land. Under PF_MEMALLOC_PIN every allocation of the
        task is unmovable (the kernel's current_gfp_context() strips __GFP_MOVABLE), page
        cache included, so what a long-term pin faults in never needs migrating."""
        if movable and not self.memalloc_pin:
            return [self.movable, self.cma, self.normal]
        return [self.normal]

    def nr_free_pages(self) -> int:
        """Free frames in all zones (the hugetlb pool excluded): /proc/meminfo's MemFree."""
        return self.normal.nr_free + self.cma.nr_free + self.movable.nr_free

    def alloc_frames(self, order: int, movable: bool) -> int:
        """Return the first PFN of 2**order free frames, or raise OutOfMemory."""
        for region in self.regions(movable):
            pfn = region.alloc(order)
            if pfn is not None:
                return pfn
        raise OutOfMemory(f"no free block of order {order} "
                          f"({'movable' if movable else 'unmovable'} allocation)")

    def region_of(self, pfn: int) -> BuddyRegion:
        """The buddy region a frame is freed back to (Movable, CMA or Normal)."""
        if pfn >= self.movable.start:
            return self.movable
        return self.cma if pfn >= self.cma.start else self.normal

    # -- folios ------------------------------------------------------------------------

    def alloc_folio(self, order: int, kind: Kind, movable: bool = True, mapping: int = 0,
                    index: int = 0) -> int:
        """folio_alloc(): a folio with refcount 1, zeroed contents; returns its head PFN."""
        pfn = self.alloc_frames(order, movable)
        self.prep_folio(pfn, order, kind, mapping, index)
        return pfn

    def prep_folio(self, pfn: int, order: int, kind: Kind, mapping: int = 0, index: int = 0,
                   extra_flags: int = 0) -> None:
        """Turn free frames into a fresh folio: head and tails, refcount 1, zeroed contents.

        Free frames hold 0 in every field and no contents (free_folio(), free_folios()
        clear them; frames above a region's high-water mark were never touched), so only
        the nonzero fields are written: the pages of the per-PFN arrays an order-0 folio
        does not use (head_off, order, pincount, ...) then stay untouched and cost no
        resident memory. A hugetlb pool page keeps its order and PG_hugetlb while free.
        """
        mem = self.mem
        n = 1 << order
        if order:
            mem.head_off[pfn:pfn + n] = np.arange(n, dtype=np.uint32)
            mem.order[pfn] = order
        mem.refcount[pfn] = 1
        mem.kind[pfn] = kind
        if mapping:
            mem.mapping[pfn] = mapping
        if index:
            mem.index[pfn] = index
        flags = (PG.head if order else 0) | extra_flags
        if flags or mem.flags[pfn]:
            mem.flags[pfn] = flags

    def free_folio(self, head: int) -> None:
        """Return a folio whose refcount reached 0 to the buddy lists or the hugetlb pool."""
        mem = self.mem
        order = int(mem.order[head])
        n = 1 << order
        mem.warnings.warn_on_once(bool(mem.mapcount[head:head + n].any())
                                  or bool(mem.entire_mapcount[head]),
                                  "free_pages_prepare: bad page state",
                                  f"freeing folio {head:#x} that is still mapped")
        hugetlb = mem.test(head, PG.hugetlb)
        sl = slice(head, head + n)
        mem.clear_frames(head, n)
        for arr in (mem.flags, mem.head_off, mem.mapping, mem.index, mem.private, mem.kind,
                    mem.order, mem.pincount, mem.entire_mapcount, mem.mapcount):
            arr[sl] = 0
        mem.refcount[sl] = 0
        mem.vmstat["pgfree"] += n
        if hugetlb:
            mem.order[head] = order
            mem.flags[head] = PG.hugetlb
            self.hugetlb_free[order].append(head)
            return
        self.region_of(head).release(head, order)

    def free_folios(self, heads: np.ndarray) -> None:
        """Free many folios whose refcount reached 0 (free_unref_folios()): order-0 ones as
        arrays, handed back to the buddy lists in whole aligned blocks, so that munmap or
        exit of a large range costs Python per block, not per page; the rest one by one.
        The buddy lists end as freeing each page would leave them (merging is canonical)."""
        if len(heads) == 0:
            return                      # most calls: every folio kept a reference
        mem = self.mem
        heads = np.asarray(heads, dtype=np.int64)
        if np.count_nonzero(mem.order[heads]):
            small = (mem.order[heads] == 0) & ((mem.flags[heads] & _HUGETLB) == 0)
            for head in heads[~small].tolist():
                self.free_folio(head)
            heads = heads[small]
        pfns = heads if increasing(heads) else np.unique(heads)
        if len(pfns) == 0:
            return
        if np.count_nonzero(mem.mapcount[pfns]) or np.count_nonzero(mem.entire_mapcount[pfns]):
            bad = (mem.mapcount[pfns] != 0) | (mem.entire_mapcount[pfns] != 0)
            for pfn in pfns[bad].tolist():  # one hit per bad folio, as free_folio() counts
                mem.warnings.warn_on_once(True, "free_pages_prepare: bad page state",
                                          f"freeing folio {pfn:#x} that is still mapped")
        self._clear_contents(pfns)
        lo, hi = int(pfns[0]), int(pfns[-1]) + 1
        where = slice(lo, hi) if hi - lo == len(pfns) else pfns   # one run: a slice is cheaper
        for arr in (mem.flags, mem.head_off, mem.mapping, mem.index, mem.private, mem.kind,
                    mem.order, mem.pincount, mem.entire_mapcount, mem.mapcount, mem.refcount):
            arr[where] = 0
        mem.vmstat["pgfree"] += len(pfns)
        for region in (self.normal, self.cma, self.movable):
            if region.start >= hi or region.end <= lo:
                continue                        # sorted: nothing of this region's
            inside = pfns if region.start <= lo and hi <= region.end else \
                pfns[(pfns >= region.start) & (pfns < region.end)]
            for start, order in aligned_blocks(inside):
                region.release(start, order)

    def _clear_contents(self, pfns: np.ndarray) -> None:
        """clear_frames() for many sorted, distinct frames: only those with stored contents
        are touched."""
        content = self.mem.content
        if not content:
            return
        if len(content) < len(pfns):       # pfns are sorted: a binary search, not isin()
            keys = np.fromiter(content.keys(), dtype=np.int64, count=len(content))
            at = np.minimum(np.searchsorted(pfns, keys), len(pfns) - 1)
            pfns = keys[pfns[at] == keys]
        for pfn in pfns.tolist():
            content.pop(pfn, None)

    # -- hugetlb pool ------------------------------------------------------------------

    def reserve_hugetlb(self, order: int, count: int) -> int:
        """Set the pool size of one huge page size (vm.nr_hugepages); returns pages reserved."""
        got = 0
        for _ in range(count):
            try:
                pfn = self.alloc_frames(order, movable=False)
            except OutOfMemory:
                break
            self.mem.order[pfn] = order
            self.mem.flags[pfn] = PG.hugetlb
            self.hugetlb_free[order].append(pfn)
            self.hugetlb_total[order] += 1
            got += 1
        return got

    def alloc_hugetlb_folio(self, order: int, kind: Kind, mapping: int = 0, index: int = 0) -> int:
        """alloc_hugetlb_folio(): the lowest free huge page of the pool; OutOfMemory if empty."""
        pool = self.hugetlb_free.get(order)
        if not pool:
            raise OutOfMemory(f"hugetlb pool of {(PAGE_SIZE << order) >> 20} MiB pages is empty: "
                              "raise nr_hugepages")
        pool.sort()
        pfn = pool.pop(0)
        self.prep_folio(pfn, order, kind, mapping, index, extra_flags=PG.hugetlb)
        return pfn

    def hugetlb_free_count(self, order: int) -> int:
        """HugePages_Free for one huge page size: what MAP_HUGETLB may still reserve."""
        return len(self.hugetlb_free.get(order, []))

    # -- bulk ----------------------------------------------------------------------------

    def alloc_bulk_order0(self, n: int, kind: Kind, movable: bool, mapping: int,
                          index: np.ndarray) -> np.ndarray:
        """Allocate up to `n` order-0 folios at once (fewer if memory runs out).

        alloc_pages_bulk(): the largest blocks that fit what is still needed are taken
        while they last (whole MAX_PAGE_ORDER blocks first), so a 1 GiB populate costs a
        few hundred allocator calls and 300 pages about ten, then prepared as arrays.
        """
        got: list[tuple[int, int]] = []
        need = n
        for region in self.regions(movable):
            if not region.nr_free:
                continue                # nothing here (no CMA, no movable zone): no probing
            order = MAX_PAGE_ORDER
            while need > 0 and order >= 0:
                order = min(order, need.bit_length() - 1)
                pfn = region.alloc(order)
                if pfn is None:         # no block this large left here: try smaller ones
                    order -= 1
                    continue
                got.append((pfn, 1 << order))
                need -= 1 << order
            if need == 0:
                break
        mem = self.mem
        if len(got) == 1:               # one block (most small requests): slices
            start, size = got[0]
            pfns = np.arange(start, start + size, dtype=np.int64)
            where: slice | np.ndarray = slice(start, start + size)
        else:
            pfns = np.concatenate([np.arange(p, p + size, dtype=np.int64) for p, size in got]) \
                if got else np.zeros(0, dtype=np.int64)
            where = pfns
        # free frames hold 0 in every field (see prep_folio): only the nonzero ones are
        # written, which keeps the pages of the other arrays untouched (not resident)
        mem.refcount[where] = 1
        mem.kind[where] = int(kind)
        mem.mapping[where] = mapping
        mem.index[where] = index[:len(pfns)]
        return pfns
