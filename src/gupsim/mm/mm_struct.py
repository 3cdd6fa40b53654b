"""`mm_struct` and the page-table primitives every operation goes through.

All changes to page tables (mapping pages, zapping ranges, splitting a PMD mapping)
are made by the functions here, so that mapcounts, refcounts and the rss counters stay
consistent in one place.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from ..constants import PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER, RLIM_INFINITY
from ..memory import PG, Allocator, Kind, MemMap
from ..memory.memmap import add_at
from ..memory.refs import folio_put_many
from .env import SwapDevice
from .mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MmuNotifierSubscriptions,
    invalidate_end,
    invalidate_start,
)
from .vma import PTE, VM, VMA, vma_close


class MMF:
    """mm->flags bits that the pinning code sets or reads (plain ints, as `VM`'s)."""

    HAS_PINNED = 1 << 0     # MMF_HAS_PINNED: some page of this mm was ever pinned


@dataclass
class MMapLock:
    """mmap_lock state, for assertions about what held it (the model runs one step at a time)."""

    readers: int = 0
    writer: bool = False

    def held(self) -> bool:
        """mmap_assert_locked(): held for read or for write."""
        return self.writer or self.readers > 0


class MmapLockBusy(OSError):
    """Code run inside a race window (`racing()`) asked for mmap_lock while the operation
    it interrupted holds it for write: in the kernel that thread sleeps until the lock is
    released. The model cannot suspend it, so the racing code is abandoned here (an
    OSError, so drivers undo what they did, as on any error) and whoever ran it runs it
    again once the interrupted operation is over (scenarios/race.py)."""


_racing: ContextVar[bool] = ContextVar("gupsim_racing", default=False)


@contextlib.contextmanager
def racing() -> Iterator[None]:
    """Mark a block as another thread's, run at a race point inside an operation."""
    token = _racing.set(True)
    try:
        yield
    finally:
        _racing.reset(token)


def mmap_read_lock(mm: MM) -> None:
    """Take mmap_lock for read (a count: the model never blocks, except that racing code
    meeting a writer raises MmapLockBusy, see `racing()`)."""
    if mm.mmap_lock.writer and _racing.get():
        raise MmapLockBusy(errno.EAGAIN, "mmap_lock is held for write by the operation "
                           "this racing step interrupted")
    mm.mmap_lock.readers += 1


def mmap_read_unlock(mm: MM) -> None:
    """Drop a read hold of mmap_lock (never below zero)."""
    mm.mmap_lock.readers = max(0, mm.mmap_lock.readers - 1)


@contextlib.contextmanager
def mmap_read_locked(mm: MM) -> Iterator[None]:
    """mmap_read_lock() ... mmap_read_unlock() around a block, also when it raises."""
    mmap_read_lock(mm)
    try:
        yield
    finally:
        mmap_read_unlock(mm)


_mm_ids = iter(range(1, 1 << 62))


@dataclass
class RSS:
    """The mm's resident pages by counter (MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES)."""

    anon: int = 0
    file: int = 0
    shmem: int = 0

    def total(self) -> int:
        """get_mm_rss(): VmRSS in pages."""
        return self.anon + self.file + self.shmem


@dataclass(eq=False)
class MM:
    """An address space: sorted VMAs, counters, and the locks GUP cares about."""

    mem: MemMap
    alloc: Allocator
    vmas: list[VMA] = field(default_factory=list)
    id: int = field(default_factory=lambda: next(_mm_ids))
    flags: int = 0
    rss: RSS = field(default_factory=RSS)
    pinned_vm: int = 0          # pages, charged by long-term pinning users (io_uring, RDMA)
    locked_vm: int = 0          # pages, mlock() and VM_LOCKED
    write_protect_seq: int = 0  # odd while fork() write-protects anonymous pages
    mmap_lock: MMapLock = field(default_factory=MMapLock)
    users: int = 1
    dead: bool = False
    notifier_subscriptions: MmuNotifierSubscriptions | None = None   # mm/mmu_notifier.py

    # -- VMA lookup ----------------------------------------------------------------------

    def find_vma(self, addr: int) -> VMA | None:
        """The VMA containing `addr`, or None (unlike the kernel's find_vma, no 'next one')."""
        vmas = self.vmas
        if len(vmas) <= 8:                  # a short list: a scan beats building the keys
            for v in vmas:
                if v.end > addr:
                    return v if v.start <= addr else None
            return None
        i = bisect.bisect_right([v.start for v in vmas], addr) - 1
        if i >= 0 and self.vmas[i].contains(addr):
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[VMA]:
        """The VMAs overlapping [start, end), in address order (holes are simply absent)."""
        return [v for v in self.vmas if v.start < end and v.end > start]

    def insert_vma(self, vma: VMA) -> None:
        """Link a VMA into the sorted list; the caller made sure that nothing overlaps it."""
        bisect.insort(self.vmas, vma, key=lambda v: v.start)

    def split_at(self, addr: int) -> None:
        """Make `addr` a VMA boundary (splitting PMD mappings that straddle it). A hugetlb
        VMA splits only at a huge page boundary: EINVAL elsewhere (hugetlb_vm_op_split,
        the may_split hook every __split_vma() asks)."""
        vma = self.find_vma(addr)
        if vma is None or vma.start == addr:
            return
        if vma.is_hugetlb and addr % (PAGE_SIZE << vma.huge_order):
            raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: a hugetlb mapping "
                          f"splits only at a huge page boundary, not at {addr:#x}")
        split_pmds_across(self, vma, vma.idx(addr))
        tail = vma.split(addr)
        self.insert_vma(tail)

    def merge_vmas(self, start: int, end: int) -> None:
        """vma_merge(): join neighbours in [start, end] that became compatible again."""
        out: list[VMA] = []
        for v in self.vmas:
            prev = out[-1] if out else None
            if (prev is not None and prev.end == v.start and start <= v.start <= end
                    and not (prev.flags ^ v.flags) & ~VM.SOFTDIRTY and prev.file is v.file
                    and prev.anon_id == v.anon_id and prev.huge_order == v.huge_order
                    and v.pgoff == prev.pgoff + prev.nr_pages):
                prev.pfn = np.concatenate([prev.pfn, v.pfn])
                prev.pte = np.concatenate([prev.pte, v.pte])
                prev.end = v.end
                prev.flags |= v.flags & VM.SOFTDIRTY
                vma_close(v)
                continue
            out.append(v)
        self.vmas = out

    def total_vm(self) -> int:
        """mm->total_vm: mapped pages, /proc/<pid>/status VmSize in pages."""
        return sum(v.nr_pages for v in self.vmas)


# -- mapping and unmapping ---------------------------------------------------------------


def rss_kind(kind: int) -> str:
    """The RSS counter ("anon", "file", "shmem") a folio of `kind` is charged to."""
    if kind in (Kind.ANON, Kind.KSM):
        return "anon"
    if kind in (Kind.SHMEM, Kind.HUGETLBFS):
        return "shmem"
    return "file"


def add_rss(mm: MM, kinds: np.ndarray, sign: int) -> None:
    """add_mm_counter() for one page per entry of `kinds` (sign +1 to map, -1 to unmap)."""
    if len(kinds) == 0:
        return
    counts = np.bincount(kinds, minlength=_NR_KINDS).tolist()    # ints: no enum indexing
    mm.rss.anon += sign * (counts[_ANON] + counts[_KSM])
    mm.rss.shmem += sign * (counts[_SHMEM] + counts[_HUGETLBFS])
    mm.rss.file += sign * (counts[_FILE] + counts[_FSDAX] + counts[_SECRETMEM])


_NR_KINDS = len(Kind)
_ANON, _KSM, _SHMEM, _HUGETLBFS = int(Kind.ANON), int(Kind.KSM), int(Kind.SHMEM), \
    int(Kind.HUGETLBFS)
_FILE, _FSDAX, _SECRETMEM = int(Kind.FILE), int(Kind.FSDAX), int(Kind.SECRETMEM)


def map_pte_range(mm: MM, vma: VMA, i0: int, pfns: np.ndarray, bits: int) -> None:
    """Install PTEs for consecutive entries from `i0`: +1 mapcount per page, +1 ref per PTE.

    The caller has already taken care that the entries are none (or zapped them).
    """
    n = len(pfns)
    mem = mm.mem
    if bits & PTE.DIRTY:
        bits |= PTE.SOFT_DIRTY        # pte_mkdirty
    vma.pfn[i0:i0 + n] = pfns
    vma.pte[i0:i0 + n] = bits | PTE.PRESENT
    if bits & PTE.SPECIAL:
        return
    add_at(mem.mapcount, pfns, 1)
    heads = mem.head_of(pfns)
    add_at(mem.refcount, heads, 1)
    add_rss(mm, mem.kind[heads], +1)


def map_new_anon_pages(mm: MM, vma: VMA, where: slice | np.ndarray, pfns: np.ndarray,
                       bits: int) -> None:
    """Map fresh order-0 anonymous folios (distinct, just allocated: refcount 1, which
    becomes the mapping's reference) at entries `where`, exclusive, swap-backed and on the
    LRU with entry bits `bits`: what do_anonymous_page() or a COW copy leaves for each
    page, as arrays (map_pte_range() for pages that may repeat or be mapped already)."""
    mem = mm.mem
    if bits & PTE.DIRTY:
        bits |= PTE.SOFT_DIRTY        # pte_mkdirty
    vma.pfn[where] = pfns
    vma.pte[where] = bits | PTE.PRESENT
    mem.mapcount[pfns] += 1                     # fresh, distinct frames: no repeats
    mem.flags[pfns] |= _NEW_ANON_FLAGS
    mm.rss.anon += len(pfns)


_NEW_ANON_FLAGS = np.uint32(PG.anon_exclusive | PG.swapbacked | PG.lru)


def map_huge(mm: MM, vma: VMA, i0: int, head: int, order: int, bits: int) -> None:
    """Install one PMD (order 9) or PUD (order 18) mapping of the folio at `head`."""
    n = 1 << order
    mem = mm.mem
    level = PTE.PMD if order == PMD_ORDER else PTE.PUD
    if bits & PTE.DIRTY:
        bits |= PTE.SOFT_DIRTY        # pmd_mkdirty
    vma.pfn[i0:i0 + n] = np.arange(head, head + n, dtype=np.int64)
    vma.pte[i0:i0 + n] = bits | PTE.PRESENT | level
    if bits & PTE.SPECIAL:
        return
    mem.entire_mapcount[head] += 1
    mem.refcount[head] += 1
    kind = int(mem.kind[head])
    setattr(mm.rss, rss_kind(kind), getattr(mm.rss, rss_kind(kind)) + n)


def split_huge_mapping(mm: MM, vma: VMA, i: int) -> None:
    """Turn the PMD/PUD mapping covering entry `i` into PTE mappings (the folio stays whole).

    The kernel's __split_huge_pmd(): the mapping's one reference and entire mapcount
    become one reference and one mapcount per page, and a PMD-mapped anon folio's
    exclusive bit (kept on the head) is copied to every page.
    """
    bits = int(vma.pte[i])
    if not bits & (PTE.PMD | PTE.PUD):
        return
    order = PMD_ORDER if bits & PTE.PMD else PUD_ORDER
    n = 1 << order
    i0 = i - ((vma.start >> PAGE_SHIFT) + i) % n
    i0 = max(i0, 0)
    sl = slice(i0, i0 + n)
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(i0), vma.addr_of(i0 + n))
    vma.pte[sl] &= np.uint16(~(PTE.PMD | PTE.PUD) & 0xFFFF)
    if bits & PTE.SPECIAL:
        if int(mm.mem.kind[int(vma.pfn[i0])]) == Kind.HUGE_ZERO:
            vma.pfn[sl] = mm.mem.zero_pfn   # the huge zero page becomes small zero-page PTEs
        invalidate_end(rng)
        return
    mem = mm.mem
    head = int(mem.head_of(int(vma.pfn[i0])))
    mem.entire_mapcount[head] -= 1
    mem.mapcount[head:head + n] += 1
    mem.refcount[head] += n - 1
    if mem.test(head, PG.anon_exclusive) and int(mem.kind[head]) in (Kind.ANON, Kind.KSM):
        mem.set_flag(np.arange(head, head + n), PG.anon_exclusive)
    invalidate_end(rng)


def split_pmds_across(mm: MM, vma: VMA, i: int) -> None:
    """Split a huge mapping that entry `i` starts inside of (a boundary falls in it)."""
    if 0 <= i < vma.nr_pages and vma.pte[i] & (PTE.PMD | PTE.PUD):
        head_entry = i - ((vma.start >> PAGE_SHIFT) + i) % (
            1 << (PMD_ORDER if vma.pte[i] & PTE.PMD else PUD_ORDER))
        if head_entry != i:
            split_huge_mapping(mm, vma, i)
    if 0 < i <= vma.nr_pages and vma.pte[i - 1] & (PTE.PMD | PTE.PUD):
        order = PMD_ORDER if vma.pte[i - 1] & PTE.PMD else PUD_ORDER
        if ((vma.start >> PAGE_SHIFT) + i) % (1 << order):
            split_huge_mapping(mm, vma, i - 1)


def zap_range(mm: MM, vma: VMA, i0: int, i1: int, swap: SwapDevice | None = None,
              gather: ZapGather | None = None) -> None:
    """Unmap entries [i0, i1) of a VMA: drop mapcounts and references, free what is unused.

    Huge mappings that the range only partly covers are split first, as zap_pmd_range()
    does. Swap entries give back their swap slot reference. With `gather` (the mmu_gather
    of a caller zapping many VMAs, as exit_mmap() is) the small pages' mapcounts, RSS and
    dirty bits and all folio references are left to ZapGather.finish(), in one batch.
    """
    if i0 >= i1:
        return
    kinds_of_entry = int(np.bitwise_or.reduce(vma.pte[i0:i1]))
    if not kinds_of_entry:
        return                  # nothing mapped, nothing swapped: nothing to undo
    if kinds_of_entry & (PTE.PMD | PTE.PUD):   # one a boundary cuts has an entry inside
        split_pmds_across(mm, vma, i0)
        split_pmds_across(mm, vma, i1)
    mem = mm.mem
    pte = vma.pte[i0:i1]
    pfn = vma.pfn[i0:i1]
    if kinds_of_entry & PTE.NOT_SMALL:
        present = (pte & PTE.PRESENT) != 0
        huge = (pte & (PTE.PMD | PTE.PUD)) != 0 if kinds_of_entry & (PTE.PMD | PTE.PUD) \
            else _NO_ENTRIES
        small = present
        if kinds_of_entry & PTE.SPECIAL:
            small = small & ((pte & PTE.SPECIAL) == 0)
        if len(huge):
            small = small & ~huge
    else:                       # every entry is empty or maps a small page
        present = small = pte != 0
        huge = _NO_ENTRIES
    small_pfns = pfn[small]
    heads_to_put: list[np.ndarray] = []
    if gather is not None and len(small_pfns):
        gather.pfns.append(small_pfns)   # mapcounts, RSS, dirty bits: in the batch
        gather.dirty.append((pte[small] & PTE.DIRTY) != 0)
    elif len(small_pfns):
        add_at(mem.mapcount, small_pfns, -1)
        heads = mem.head_of(small_pfns)
        add_rss(mm, mem.kind[heads], -1)
        dirty = pte[small] & PTE.DIRTY
        if np.count_nonzero(dirty):
            mem.flags[heads[dirty != 0]] |= _PG_DIRTY     # repeats are harmless: no unique
        heads_to_put.append(heads)
    huge_entries = np.nonzero(present & ((pte & PTE.SPECIAL) == 0) & huge)[0] \
        if len(huge) else huge
    if len(huge_entries):
        starts = huge_entries[mem.head_off[pfn[huge_entries]] == 0]
        for j in starts.tolist():
            head = int(pfn[j])
            n = mem.nr_pages_of(head)
            mem.entire_mapcount[head] -= 1
            kind = rss_kind(int(mem.kind[head]))
            setattr(mm.rss, kind, getattr(mm.rss, kind) - n)
            if pte[j:j + n].any() and (pte[j:j + n] & PTE.DIRTY).any():
                mem.set_flag(head, PG.dirty)
            heads_to_put.append(np.array([head], dtype=np.int64))
    if kinds_of_entry & PTE.SWAP and swap is not None:
        swap.free_entries(pfn[(pte & PTE.SWAP) != 0])
    vma.pte[i0:i1] = 0
    vma.pfn[i0:i1] = 0
    if gather is not None:
        gather.heads.extend(heads_to_put)
    elif heads_to_put:
        folio_put_many(mm.alloc, heads_to_put[0] if len(heads_to_put) == 1
                       else np.concatenate(heads_to_put))


_NO_ENTRIES = np.zeros(0, dtype=bool)
_PG_DIRTY = np.uint32(PG.dirty)


@dataclass
class ZapGather:
    """What zap_range() leaves for one batch at the end of exit_mmap() (the kernel's
    mmu_gather): the small pages unmapped with their dirty bits, the huge heads."""

    pfns: list[np.ndarray] = field(default_factory=list)
    dirty: list[np.ndarray] = field(default_factory=list)
    heads: list[np.ndarray] = field(default_factory=list)

    def finish(self, mm: MM) -> None:
        """tlb_finish_mmu(): drop the gathered mapcounts, RSS and references at once."""
        mem = mm.mem
        heads_to_put = list(self.heads)
        if self.pfns:
            pfns = np.concatenate(self.pfns)
            add_at(mem.mapcount, pfns, -1)
            heads = mem.head_of(pfns)
            add_rss(mm, mem.kind[heads], -1)
            dirty = np.concatenate(self.dirty)
            if np.count_nonzero(dirty):
                mem.set_flag(heads[dirty], PG.dirty)
            heads_to_put.append(heads)
        if heads_to_put:
            folio_put_many(mm.alloc, np.concatenate(heads_to_put))


def zap_vma(mm: MM, vma: VMA, swap: SwapDevice | None = None,
            gather: ZapGather | None = None) -> None:
    """unmap_vmas() for one whole VMA (exit, and the teardown of a child whose fork failed)."""
    zap_range(mm, vma, 0, vma.nr_pages, swap, gather)


RLIMIT_DEFAULT_MEMLOCK = 8 << 20   # 8 MiB, the default since 5.16


@dataclass
class Cred:
    """The parts of a task's credentials and limits that pinning cares about."""

    uid: int = 0
    caps: set[int] = field(default_factory=set)
    rlimit_memlock: int = RLIMIT_DEFAULT_MEMLOCK

    def capable(self, cap: int) -> bool:
        """capable(): does the task hold `cap` (CAP_IPC_LOCK lifts RLIMIT_MEMLOCK)."""
        return cap in self.caps


@dataclass(eq=False)
class UserStruct:
    """struct user_struct: per-user totals (io_uring and RDMA charge locked_vm here)."""

    uid: int
    locked_vm: int = 0


def rlimit_pages(limit: int) -> int:
    """An rlimit in bytes as pages, RLIM_INFINITY as a number no count reaches."""
    return limit >> PAGE_SHIFT if limit != RLIM_INFINITY else 1 << 62
