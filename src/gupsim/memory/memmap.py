"""The model's `mem_map`: the state of every page frame, as numpy arrays indexed by PFN.

Structure of arrays rather than one object per page, so that bulk work on a range (the
GUP-fast walk, unpinning a 1 GiB buffer, fork of a large address space) is a handful of
vectorised numpy operations. The arrays are created with `np.zeros`, which reserves
address space without touching it: the host backs only the parts of the arrays that
the scenario touches, and the allocator hands out frames from the bottom of each zone,
so a `Kernel(memory="1TiB")` costs a few MiB until it is used (the kernel's sparse
sections, achieved through the host's demand paging).

Conventions (simplifications of `struct page` are noted where they matter):

* Folio-wide fields (`refcount`, `pincount`, `entire_mapcount`, `order`, `kind`,
  `mapping`, `index`) live on the head PFN; tails hold 0 there.
* `mapcount[pfn]` counts the PTE mappings of that page (the kernel stores it minus one).
* `head_off[pfn]` is the page's distance from its folio head (0 for heads and order-0).
* Page contents live in `content`, a dict from PFN to 4096 bytes, only for pages whose
  bytes were ever written: a frame with no entry reads as zeros.
"""

from __future__ import annotations

from collections import Counter
from enum import IntEnum
from typing import overload

import numpy as np
from numpy.typing import NDArray

from ..constants import PAGE_SIZE
from ..eras import NEWEST_ERA, VMSTAT_SWITCHES, Era
from ..heap import sparse
from ..warn import WarnLog
from .rmap import NoRmap, RmapWalker


def add_at(arr: np.ndarray, idx: np.ndarray, vals: object) -> None:
    """np.add.at(arr, idx, vals), every repeat of an index counted, with `vals` cast to
    arr's dtype first: numpy 2 takes a ~40x slower path when the two differ (an int32
    count and a Python int or an int64 array: 0.8 ms instead of 20 us per 16k entries)."""
    np.add.at(arr, idx, np.asarray(vals, dtype=arr.dtype))


class PG(IntEnum):
    """Page flag bits (names as the kernel's PG_* flags; bit numbers are ours)."""

    locked = 1 << 0
    referenced = 1 << 1
    uptodate = 1 << 2
    dirty = 1 << 3
    lru = 1 << 4
    head = 1 << 5
    active = 1 << 6
    reserved = 1 << 7
    private = 1 << 8
    writeback = 1 << 9
    swapcache = 1 << 10
    swapbacked = 1 << 11
    unevictable = 1 << 12
    mlocked = 1 << 13
    hwpoison = 1 << 14
    anon_exclusive = 1 << 15
    hugetlb = 1 << 16
    isolated = 1 << 17
    large_rmappable = 1 << 18
    reclaim = 1 << 19


class Kind(IntEnum):
    """Who owns a folio: the kernel's folio_test_anon(), shmem_mapping(), ... in one field."""

    FREE = 0
    ANON = 1
    FILE = 2          # page cache of a regular (dirty-tracking) file system
    SHMEM = 3         # tmpfs, memfd, MAP_SHARED|MAP_ANONYMOUS
    HUGETLBFS = 4     # page cache of hugetlbfs (including MFD_HUGETLB memfds)
    ZERO = 5          # the shared zero page
    HUGE_ZERO = 6     # the huge zero folio
    SECRETMEM = 7
    FSDAX = 8         # a DAX device's block, mapped without page cache
    KSM = 9
    RESERVED = 10     # kernel-owned (vsyscall gate page, page tables, ...)


class Zone(IntEnum):
    """The zones a frame can be in; CMA is a migratetype inside ZONE_NORMAL, not a zone."""

    NORMAL = 0
    MOVABLE = 1


class MigrateType(IntEnum):
    """Pageblock migratetypes (MIGRATE_*); `MemMap.is_cma()` tells CMA pageblocks by PFN."""

    MOVABLE = 0
    CMA = 1
    ISOLATE = 2


class VmStat(Counter[str]):
    """/proc/vmstat: counts from 0, but a counter the machine's era did not have yet is
    absent (KeyError saying when it appeared), as in that kernel's /proc/vmstat."""

    def __init__(self, mem: MemMap) -> None:
        super().__init__()
        self._mem = mem

    def count(self, key: str) -> int:
        """The counter's value, 0 where the era has no such counter: for code that
        compares counters on machines of any era (`vmstat[key]` raises there)."""
        return self.get(key, 0)

    def __missing__(self, key: str) -> int:
        name = VMSTAT_SWITCHES.get(key)
        why = None if name is None else self._mem.era.absent(name, f"/proc/vmstat {key}")
        if why is not None:
            raise KeyError(why)
        return 0


class MemMap:
    """Page-frame state for one machine: arrays by PFN, plus the zone layout.

    Physical layout (PFN ranges): ZONE_NORMAL is [0, movable_start), its top `cma_pages`
    form the CMA area, and ZONE_MOVABLE is [movable_start, nr_pages).
    """

    def __init__(self, nr_pages: int, movable_pages: int = 0, cma_pages: int = 0,
                 warnings: WarnLog | None = None) -> None:
        if movable_pages + cma_pages > nr_pages:
            raise ValueError("movable plus cma memory exceeds the machine's memory: lower them")
        self.nr_pages = nr_pages
        self.movable_start = nr_pages - movable_pages
        self.cma_start = self.movable_start - cma_pages
        self.cma_end = self.movable_start
        n = nr_pages

        def array(dtype: type) -> np.ndarray:     # zeros, paged in 4 KiB at a time
            return sparse(np.zeros(n, dtype=dtype))

        # refcount is the kernel's atomic_t: int32 holds 2**31 / GUP_PIN_COUNTING_BIAS
        # pins of a small folio, as the kernel's does
        self.refcount = array(np.int32)
        self.mapcount = array(np.int32)
        self.entire_mapcount = array(np.int32)
        self.pincount = array(np.int32)
        self.flags = array(np.uint32)
        self.head_off = array(np.uint32)
        self.order = array(np.int8)
        self.kind = array(np.int8)
        self.mapping = array(np.int32)
        self.index = array(np.int64)
        self.private = array(np.int64)
        self.content: dict[int, bytearray] = {}
        self.vmstat: VmStat = VmStat(self)
        self.era: Era = NEWEST_ERA   # the machine's kernel release (gupsim.eras)
        self.warnings = warnings if warnings is not None else WarnLog()
        self.rmap: RmapWalker = NoRmap()
        self._next_mapping_id = 1
        self.zero_pfn = -1          # the shared zero page, set when the machine boots
        self.huge_zero_pfn = -1

    def new_mapping_id(self) -> int:
        """A fresh identifier for an address_space or anon_vma (stored in `mapping`)."""
        self._next_mapping_id += 1
        return self._next_mapping_id

    # -- derived attributes ------------------------------------------------------------

    @overload
    def head_of(self, pfn: int) -> int: ...
    @overload
    def head_of(self, pfn: np.ndarray) -> np.ndarray: ...

    def head_of(self, pfn: int | np.ndarray) -> int | np.ndarray:
        """The folio head of a page, or of each page of an array: the kernel's page_folio()."""
        if isinstance(pfn, np.ndarray):
            return pfn - self.head_off.take(pfn)    # take(): a third faster than [pfn]
        return int(pfn) - int(self.head_off[pfn])

    @overload
    def zone_of(self, pfn: int) -> Zone: ...
    @overload
    def zone_of(self, pfn: np.ndarray) -> NDArray[np.int8]: ...

    def zone_of(self, pfn: int | np.ndarray) -> Zone | NDArray[np.int8]:
        """page_zonenum(): the zone a frame belongs to (an int8 array of Zone values for arrays)."""
        if isinstance(pfn, np.ndarray):
            return (pfn >= self.movable_start).astype(np.int8)
        return Zone.MOVABLE if pfn >= self.movable_start else Zone.NORMAL

    @overload
    def is_cma(self, pfn: int) -> bool: ...
    @overload
    def is_cma(self, pfn: np.ndarray) -> NDArray[np.bool_]: ...

    def is_cma(self, pfn: int | np.ndarray) -> bool | NDArray[np.bool_]:
        """True if the pageblock of `pfn` has migratetype MIGRATE_CMA."""
        if isinstance(pfn, np.ndarray):
            return (pfn >= self.cma_start) & (pfn < self.cma_end)
        return self.cma_start <= pfn < self.cma_end

    def test(self, pfn: int, flag: PG) -> bool:
        """The kernel's folio_test_*()/PageFoo() for one flag bit of one frame."""
        return bool(int(self.flags[pfn]) & flag)   # int & int: numpy would probe the enum

    def set_flag(self, pfn: int | np.ndarray, flag: int) -> None:
        """Set a PG bit (or an OR of several) on one frame or an array of frames."""
        if isinstance(pfn, int):     # one frame: Python ints, half the cost of numpy's
            self.flags[pfn] = int(self.flags[pfn]) | flag
        else:
            self.flags[pfn] |= np.uint32(flag)

    def clear_flag(self, pfn: int | np.ndarray, flag: int) -> None:
        """Clear a PG bit (or an OR of several) on one frame or an array of frames."""
        if isinstance(pfn, int):
            self.flags[pfn] = int(self.flags[pfn]) & ~flag
        else:
            self.flags[pfn] &= np.uint32(~flag & 0xFFFFFFFF)

    def nr_pages_of(self, head: int) -> int:
        """folio_nr_pages() of the folio whose head is `head` (1 if `head` is a tail page)."""
        return 1 << int(self.order[head])

    @overload
    def has_pincount(self, head: int) -> bool: ...
    @overload
    def has_pincount(self, head: np.ndarray) -> NDArray[np.bool_]: ...

    def has_pincount(self, head: int | np.ndarray) -> bool | NDArray[np.bool_]:
        """folio_has_pincount() on 64-bit: every large folio keeps an exact `_pincount`."""
        if isinstance(head, np.ndarray):
            return self.order[head] > 0
        return bool(self.order[head] > 0)

    # -- contents ----------------------------------------------------------------------

    def read(self, pfn: int, offset: int, n: int) -> bytes:
        """`n` bytes of a frame's contents from `offset`; a never-written frame reads as zeros."""
        data = self.content.get(pfn)
        if data is None:
            return bytes(n)
        return bytes(data[offset:offset + n])

    def write(self, pfn: int, offset: int, data: bytes) -> None:
        """Store bytes into a frame (CPU or device write); zeros into a zero frame store nothing."""
        buf = self.content.get(pfn)
        if buf is None:
            if not any(data):
                return  # writing zeros to a zero frame stores nothing
            if len(data) == PAGE_SIZE:
                self.content[pfn] = bytearray(data)     # a whole frame: no zeros first
                return
            buf = self.content[pfn] = bytearray(PAGE_SIZE)
        buf[offset:offset + len(data)] = data

    def copy_frames(self, dst: int, src: int, nr: int) -> None:
        """copy_highpage() over `nr` consecutive frames."""
        if not self.content:
            return                      # nothing written anywhere: every frame reads 0
        for i in range(nr):
            data = self.content.get(src + i)
            if data is None:
                self.content.pop(dst + i, None)
            else:
                self.content[dst + i] = bytearray(data)

    def clear_frames(self, pfn: int, nr: int) -> None:
        """clear_highpage() over `nr` consecutive frames: they read as zeros again. Only
        written frames hold contents, so the fewer of frames and stored pages is walked
        (a 2 MiB folio freed from a machine that wrote a few pages: a few lookups)."""
        content = self.content
        if not content:
            return
        if len(content) < nr:
            for key in [k for k in content if pfn <= k < pfn + nr]:
                del content[key]
            return
        for i in range(nr):
            content.pop(pfn + i, None)

    def stored_bytes(self) -> int:
        """Host memory the frame contents take (bytes): what the model costs beyond its arrays."""
        return len(self.content) * PAGE_SIZE
