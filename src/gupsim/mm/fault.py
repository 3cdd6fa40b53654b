"""Page faults: `handle_mm_fault()` and the kernel's per-case handlers in mm/memory.c.

Every fault the CPU or GUP takes comes here and returns 0 or VM_FAULT_* bits, as the
kernel's handler does; the caller turns those into a signal (CPU) or an errno (GUP).
"""

from __future__ import annotations

from enum import IntFlag
from typing import Any

import numpy as np

from ..constants import EAGAIN, EFAULT, ENOMEM, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER
from ..memory import PG, Kind, OutOfMemory
from ..memory.refs import folio_put
from .env import MMEnv
from .mm_struct import (
    MM,
    map_huge,
    map_new_anon_pages,
    map_pte_range,
    split_huge_mapping,
    zap_range,
)
from .mmu_notifier import MMU_NOTIFY_CLEAR, invalidate_end, invalidate_start
from .rmap import entries_mapping, mappings_of
from .vma import PTE, VM, VMA


class FaultFlag(IntFlag):
    """FAULT_FLAG_* (kernel bit values)."""

    WRITE = 1 << 0
    MKWRITE = 1 << 1
    ALLOW_RETRY = 1 << 2
    RETRY_NOWAIT = 1 << 3
    KILLABLE = 1 << 4
    TRIED = 1 << 5
    USER = 1 << 6
    REMOTE = 1 << 7
    INSTRUCTION = 1 << 8
    INTERRUPTIBLE = 1 << 9
    UNSHARE = 1 << 10


class VMFault(IntFlag):
    """VM_FAULT_* result bits (kernel values)."""

    OK = 0
    OOM = 0x000001
    SIGBUS = 0x000002
    MAJOR = 0x000004
    HWPOISON = 0x000010
    SIGSEGV = 0x000040
    RETRY = 0x000400
    ERROR = OOM | SIGBUS | SIGSEGV | HWPOISON


_FAULT_WRITE, _FAULT_UNSHARE = int(FaultFlag.WRITE), int(FaultFlag.UNSHARE)


def handle_mm_fault(env: MMEnv, mm: MM, vma: VMA, addr: int, flags: FaultFlag) -> VMFault:
    """Resolve one fault at `addr` in `vma`; the caller re-walks the page table afterwards."""
    env.mem.vmstat["pgfault"] += 1
    i = vma.idx(addr)
    pte = int(vma.pte[i])
    write = bool(int(flags) & _FAULT_WRITE)        # int &: IntFlag's & costs ~0.7 us
    unshare = bool(int(flags) & _FAULT_UNSHARE)
    if vma.flags & (VM.PFNMAP | VM.IO):
        return VMFault.SIGBUS
    if pte & PTE.MARKER:
        return VMFault.SIGSEGV
    if pte & PTE.HWPOISON:
        return VMFault.HWPOISON
    if pte & PTE.SWAP:
        rc = do_swap_page(env, mm, vma, i)
        if rc or not (write or unshare):
            return rc
        pte = int(vma.pte[i])
    if not pte & PTE.PRESENT:
        if vma.is_hugetlb:
            return hugetlb_no_page(env, mm, vma, i, write)
        if vma.file is None and not vma.is_shared:
            return do_anonymous_page(env, mm, vma, i, write)
        return do_fault(env, mm, vma, i, write)
    if write or unshare:
        if write and pte & PTE.WRITE:
            vma.pte[i] |= PTE.MKDIRTY | PTE.YOUNG
            return VMFault.OK
        return do_wp_page(env, mm, vma, i, unshare)
    vma.pte[i] |= PTE.YOUNG
    return VMFault.OK


# -- anonymous memory ---------------------------------------------------------------------


def anon_orders(env: MMEnv, vma: VMA) -> list[int]:
    """THP orders allowed for anonymous faults in this VMA (hugepage_vma_check())."""
    if vma.file is not None or vma.is_shared or vma.is_hugetlb:
        return []
    return env.thp.orders_for(bool(vma.flags & VM.HUGEPAGE), bool(vma.flags & VM.NOHUGEPAGE))


def _huge_slot(vma: VMA, i: int, order: int) -> int | None:
    """First entry of the naturally aligned 2**order range around entry `i`, if it fits."""
    n = 1 << order
    vpfn = (vma.start >> PAGE_SHIFT) + i
    first = vpfn - vpfn % n - (vma.start >> PAGE_SHIFT)
    if first < 0 or first + n > vma.nr_pages:
        return None
    if vma.pte[first:first + n].any():
        return None
    return first


def new_anon_folio(env: MMEnv, vma: VMA, order: int, first: int) -> int:
    """Allocate an anon folio for entries [first, first + 2**order); raises OutOfMemory."""
    return env.alloc.alloc_folio(order, Kind.ANON, movable=env.movable_alloc,
                                 mapping=vma.anon_id, index=vma.pgoff + first)


def map_new_anon(env: MMEnv, mm: MM, vma: VMA, first: int, head: int, order: int,
                 writable: bool, huge: bool) -> None:
    """Map a fresh anon folio exclusive, then hand the allocation reference to the mapping."""
    mem = env.mem
    bits = PTE.YOUNG | (PTE.WRITE | PTE.DIRTY if writable else 0)
    n = 1 << order
    if order == 0:
        map_new_anon_pages(mm, vma, slice(first, first + 1), np.array([head], dtype=np.int64),
                           bits)
        mem.vmstat["pgalloc_anon"] += 1
        return
    if huge:
        map_huge(mm, vma, first, head, order, bits)
        mem.set_flag(head, PG.anon_exclusive)
    else:
        map_pte_range(mm, vma, first, np.arange(head, head + n, dtype=np.int64), bits)
        mem.set_flag(np.arange(head, head + n), PG.anon_exclusive)
    mem.set_flag(head, PG.swapbacked | PG.lru)
    mem.refcount[head] -= 1
    mem.vmstat["thp_fault_alloc" if order == PMD_ORDER else "pgalloc_anon"] += 1


def do_anonymous_page(env: MMEnv, mm: MM, vma: VMA, i: int, write: bool) -> VMFault:
    """First touch of anonymous memory: a read maps the (huge) zero page, a write a new
    exclusive folio of the largest allowed THP order that fits, else order 0."""
    mem = env.mem
    orders = anon_orders(env, vma)
    if not write:
        if PMD_ORDER in orders and env.thp.use_zero_page and mem.huge_zero_pfn >= 0:
            first = _huge_slot(vma, i, PMD_ORDER)
            if first is not None:
                map_huge(mm, vma, first, mem.huge_zero_pfn, PMD_ORDER, PTE.SPECIAL | PTE.YOUNG)
                return VMFault.OK
        map_pte_range(mm, vma, i, np.array([mem.zero_pfn]), PTE.SPECIAL | PTE.YOUNG)
        return VMFault.OK
    writable = bool(vma.flags & VM.WRITE)
    for order in orders:
        first = _huge_slot(vma, i, order)
        if first is None:
            continue
        try:
            head = new_anon_folio(env, vma, order, first)
        except OutOfMemory:
            mem.vmstat["thp_fault_fallback"] += 1
            continue
        map_new_anon(env, mm, vma, first, head, order, writable, huge=(order == PMD_ORDER))
        return VMFault.OK
    try:
        head = new_anon_folio(env, vma, 0, i)
    except OutOfMemory:
        return VMFault.OOM
    map_new_anon(env, mm, vma, i, head, 0, writable, huge=False)
    return VMFault.OK


def populate_anon_bulk(env: MMEnv, mm: MM, vma: VMA, i0: int, i1: int) -> None:
    """Write-fault every empty entry of [i0, i1) of a private anonymous VMA in bulk.

    The model's MAP_POPULATE / MADV_POPULATE_WRITE fast path: the same result as one
    do_anonymous_page() per page, with order-0 folios prepared and mapped as arrays.
    THP-eligible VMAs go through the per-fault path, which is cheap per 2 MiB.
    """
    if anon_orders(env, vma):
        for i in range(i0, i1):
            if not vma.pte[i] & PTE.PRESENT:
                env.mem.vmstat["pgfault"] += 1     # each is a fault, as handle_mm_fault()'s
                rc = do_anonymous_page(env, mm, vma, i, True)
                if rc:
                    return
        return
    empty = (vma.pte[i0:i1] == 0).nonzero()[0] + i0
    if len(empty) == 0:
        return
    heads = env.alloc.alloc_bulk_order0(len(empty), Kind.ANON, env.movable_alloc,
                                        vma.anon_id, vma.pgoff + empty)
    writable = bool(vma.flags & VM.WRITE)
    bits = PTE.YOUNG | (PTE.WRITE | PTE.DIRTY if writable else 0)
    mem = env.mem
    got = len(heads)
    map_new_anon_pages(mm, vma, empty[:got], heads, bits)
    mem.vmstat["pgalloc_anon"] += got
    mem.vmstat["pgfault"] += got


# -- write-protect faults: COW, reuse and unshare ---------------------------------------


def do_wp_page(env: MMEnv, mm: MM, vma: VMA, i: int, unshare: bool) -> VMFault:
    """A write to a present read-only PTE, or an unshare request (FAULT_FLAG_UNSHARE)."""
    mem = env.mem
    pte = int(vma.pte[i])
    pfn = int(vma.pfn[i])
    if unshare and not vma.is_cow:
        return VMFault.OK            # unsharing only applies to COW mappings
    if pte & (PTE.PMD | PTE.PUD):
        head = int(mem.head_of(pfn))
        if (not pte & PTE.SPECIAL and int(mem.kind[head]) == Kind.ANON
                and not vma.is_hugetlb and _anon_reusable_huge(env, head)):
            first = i - int(mem.head_off[pfn])
            n = mem.nr_pages_of(head)
            mem.set_flag(head, PG.anon_exclusive)
            if not unshare:
                vma.pte[first:first + n] |= _mkwrite(vma) | PTE.MKDIRTY
            return VMFault.OK
        if vma.is_hugetlb:
            return hugetlb_wp(env, mm, vma, i, unshare)
        if pte & PTE.SPECIAL and not unshare and _huge_zero_wp_thp(env, mm, vma, i):
            return VMFault.OK
        split_huge_mapping(mm, vma, i)
        pte = int(vma.pte[i])
    if vma.is_shared:
        return wp_page_shared(env, mm, vma, i)
    head = int(mem.head_of(pfn))
    kind = int(mem.kind[head]) if not pte & PTE.SPECIAL else int(mem.kind[pfn])
    if kind == Kind.ANON and not pte & PTE.SPECIAL:
        if _wp_can_reuse_anon(env, mm, pfn, head, vma):
            mem.set_flag(pfn, PG.anon_exclusive)
            if not unshare:
                vma.pte[i] |= _mkwrite(vma) | PTE.MKDIRTY | PTE.YOUNG
            mem.vmstat["pgreuse"] += 1
            return VMFault.OK
    return wp_page_copy(env, mm, vma, i, unshare)


def _huge_zero_wp_thp(env: MMEnv, mm: MM, vma: VMA, i: int) -> bool:
    """A write to the huge zero page from 6.13 (`huge-zero-wp-thp`): replace the whole PMD
    with a fresh zeroed THP (do_huge_zero_wp_pmd()). False, so the caller splits the PMD
    and copies one small page as before 6.13, on an older era or when no THP is free."""
    if not env.era.has("huge-zero-wp-thp") or not int(vma.pte[i]) & PTE.PMD:
        return False
    n = 1 << PMD_ORDER
    first = i - ((vma.start >> PAGE_SHIFT) + i) % n
    try:
        head = new_anon_folio(env, vma, PMD_ORDER, first)
    except OutOfMemory:
        env.mem.vmstat["thp_fault_fallback"] += 1
        return False
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(first), vma.addr_of(first + n))
    zap_range(mm, vma, first, first + n, env.swap)
    map_new_anon(env, mm, vma, first, head, PMD_ORDER, bool(vma.flags & VM.WRITE), huge=True)
    invalidate_end(rng)
    return True


def _mkwrite(vma: VMA) -> int:
    """maybe_mkwrite(): the PTE becomes writable only if the VMA is (not under FOLL_FORCE)."""
    return PTE.WRITE if vma.flags & VM.WRITE else 0


def _wp_can_reuse_anon(env: MMEnv, mm: MM, pfn: int, head: int, vma: VMA | None = None
                       ) -> bool:
    """May a write fault reuse this anonymous page rather than copy it? The rule of the
    machine's era (`gupsim.eras`):

    - from 5.19 (`anon-exclusive-unshare`): the page is PG_anon_exclusive, or we hold
      the only reference;
    - 5.9 - 5.18 (`cow-reuse-page-count`): page_count() == 1, so any extra reference,
      a pin included, forces a copy (the pin keeps the old page);
    - before 5.9: reuse_swap_page(), i.e. the page is mapped once, whatever its
      refcount, so a page a R/O GUP reference still holds is reused and written.
    """
    mem = env.mem
    if env.era.has("anon-exclusive-unshare"):
        return (mem.test(pfn, PG.anon_exclusive) or _anon_reusable(env, head)
                or _anon_reusable_large(env, mm, head, vma))
    if env.era.has("cow-reuse-page-count"):
        return _anon_reusable(env, head)
    return _mapped_once(env, pfn, head)


def _mapped_once(env: MMEnv, pfn: int, head: int) -> bool:
    """reuse_swap_page() before 5.9 (swap count ignored): one mapping of the page."""
    mem = env.mem
    return int(mem.mapcount[pfn]) + int(mem.entire_mapcount[head]) == 1 \
        and not mem.test(head, PG.swapcache)


def _anon_reusable(env: MMEnv, head: int) -> bool:
    """wp_can_reuse_anon_folio() for small folios: we hold the only reference."""
    mem = env.mem
    return (mem.order[head] == 0 and int(mem.refcount[head]) == 1
            and not mem.test(head, PG.swapcache))


def _anon_reusable_large(env: MMEnv, mm: MM, head: int, vma: VMA | None = None) -> bool:
    """wp_can_reuse_anon_folio() for a PTE-mapped large folio (6.15+): every reference
    is a mapping (no pin, no swap cache) and every mapping belongs to this mm; but a
    folio with a single page still mapped is not reused (copying that page lets the
    rest of the folio be freed). `vma`: the faulting VMA; when nothing maps the folio
    whole (a PMD) and its PTEs account for every mapping, no page tables of other mms
    need to be walked."""
    mem = env.mem
    if mem.order[head] == 0 or mem.test(head, PG.swapcache):
        return False
    n = mem.nr_pages_of(head)
    whole = int(mem.entire_mapcount[head])
    maps = int(mem.mapcount[head:head + n].sum()) + whole
    if maps <= 1 or int(mem.refcount[head]) != maps:
        return False
    if vma is not None and not whole and len(entries_mapping(vma, head, n)) == maps:
        return True
    return next(mappings_of(env, head, skip=mm), None) is None   # no other mm maps it


def _anon_reusable_huge(env: MMEnv, head: int) -> bool:
    """do_huge_pmd_wp_page() reuse: the PMD-mapped THP is ours alone. From 5.19 it is
    marked exclusive already, or our PMD holds its only reference (a fork child that
    shared it has gone) and it is not in the swap cache; before 5.19 there is no
    PG_anon_exclusive to ask (5.9 - 5.18: the refcount alone; before 5.9: the mapcount
    alone, a pinned THP mapped once is reused)."""
    mem = env.mem
    once = int(mem.entire_mapcount[head]) == 1
    if env.era.has("anon-exclusive-unshare"):
        return mem.test(head, PG.anon_exclusive) or (
            int(mem.refcount[head]) == 1 and once and not mem.test(head, PG.swapcache))
    if env.era.has("cow-reuse-page-count"):
        return int(mem.refcount[head]) == 1 and once
    return once


def wp_page_copy(env: MMEnv, mm: MM, vma: VMA, i: int, unshare: bool) -> VMFault:
    """Copy the page into a new exclusive anon page (mapped R/O for an unshare)."""
    mem = env.mem
    old = int(vma.pfn[i])
    try:
        new = new_anon_folio(env, vma, 0, i)
    except OutOfMemory:
        return VMFault.OOM
    if int(mem.kind[old]) not in (Kind.ZERO, Kind.HUGE_ZERO):
        mem.copy_frames(new, old, 1)
    soft = int(vma.pte[i]) & PTE.SOFT_DIRTY
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(i), vma.addr_of(i + 1))
    zap_range(mm, vma, i, i + 1, env.swap)
    writable = not unshare and bool(vma.flags & VM.WRITE)
    bits = PTE.YOUNG | soft | (PTE.WRITE if writable else 0) | (0 if unshare else PTE.MKDIRTY)
    map_new_anon_pages(mm, vma, slice(i, i + 1), np.array([new], dtype=np.int64), bits)
    invalidate_end(rng)
    mem.vmstat["cow_fault"] += 1
    return VMFault.OK


def wp_copy_run(env: MMEnv, mm: MM, vma: VMA, i0: int, i1: int, unshare: bool) -> int:
    """Write (or unshare) faults on the present read-only entries [i0, i1) of a private
    anonymous VMA at once, for the leading entries that do_wp_page() would each copy:
    the zero page, and order-0 anonymous pages the era's reuse rule does not reuse (a
    fork's shared pages). Returns how many entries it did; 0 when the first one needs
    the per-page path (reuse, a large folio, a PMD, mmu notifiers to call per fault).

    A model shortcut with the kernel's result: the same copies, mappings, references
    and counters as one wp_page_copy() per page, as arrays. The pages are distinct
    order-0 folios, so copying one changes nothing another's decision reads; the new
    frames may differ from the per-page path's (the allocator hands out blocks).
    """
    mem = env.mem
    if (vma.is_shared or vma.is_hugetlb or vma.file is not None or i1 <= i0
            or mm.notifier_subscriptions is not None or (unshare and not vma.is_cow)):
        return 0
    pte = vma.pte[i0:i1]
    old = vma.pfn[i0:i1].astype(np.int64)
    ok = (pte & (PTE.PRESENT | PTE.PMD | PTE.PUD | PTE.WRITE)) == PTE.PRESENT
    special = (pte & PTE.SPECIAL) != 0
    heads = mem.head_of(old)
    kinds = mem.kind[heads]          # the zero page is order 0: its own head
    zero = special & (kinds == _ZERO)
    ok &= zero | (~special & (kinds == _ANON))
    n = int(np.argmin(ok)) if np.count_nonzero(ok) < len(ok) else len(ok)
    if n == 0:
        return 0
    copy = zero[:n] | _anon_must_copy(env, mm, old[:n], heads[:n], vma)
    if not copy[0]:
        return _wp_reuse_run(env, vma, i0, old[:int(np.argmax(copy)) or n], unshare)
    n = int(np.argmin(copy)) or n
    old = old[:n]
    try:
        new = env.alloc.alloc_bulk_order0(n, Kind.ANON, env.movable_alloc, vma.anon_id,
                                          vma.pgoff + i0 + np.arange(n))
    except OutOfMemory:
        return 0
    n = len(new)
    if n == 0:
        return 0
    old = old[:n]
    if mem.content:       # copy_frames() of the written frames; the new ones hold nothing
        content, zero_pfn = mem.content, mem.zero_pfn      # the zero page is never copied
        for src, dst in [(s, d) for s, d in zip(old.tolist(), new.tolist(), strict=True)
                         if s in content and s != zero_pfn]:
            content[dst] = bytearray(content[src])
    soft = vma.pte[i0:i0 + n] & PTE.SOFT_DIRTY
    zap_range(mm, vma, i0, i0 + n, env.swap)
    writable = not unshare and bool(vma.flags & VM.WRITE)
    bits = PTE.YOUNG | (PTE.WRITE if writable else 0) | (0 if unshare else PTE.MKDIRTY)
    map_new_anon_pages(mm, vma, slice(i0, i0 + n), new, bits)   # as wp_page_copy() maps
    vma.pte[i0:i0 + n] |= soft
    mem.vmstat["pgfault"] += n
    mem.vmstat["cow_fault"] += n
    return n


def _wp_reuse_run(env: MMEnv, vma: VMA, i0: int, pfns: np.ndarray, unshare: bool) -> int:
    """The reuse half of do_wp_page() for a run of pages it would each reuse: they become
    anon-exclusive and (a write, not an unshare) writable and dirty in place."""
    mem = env.mem
    n = len(pfns)
    mem.set_flag(pfns, PG.anon_exclusive)
    if not unshare:
        vma.pte[i0:i0 + n] |= _mkwrite(vma) | PTE.MKDIRTY | PTE.YOUNG
    mem.vmstat["pgreuse"] += n
    mem.vmstat["pgfault"] += n
    return n


def _anon_must_copy(env: MMEnv, mm: MM, pfns: np.ndarray, heads: np.ndarray,
                    vma: VMA | None = None) -> np.ndarray:
    """For anonymous pages mapped by PTEs: would _wp_can_reuse_anon() refuse to reuse
    each (so do_wp_page() copies it)? Only where copying the earlier ones of the run
    cannot change the answer: a page's own flag and mapcount, and for a large folio the
    folio-wide verdict, which copying its pages cannot turn from "copy" to "reuse" (the
    other mm's mappings stay, and refcount and mapcount drop together); an entry whose
    folio would be reused ends the run there."""
    mem = env.mem
    flags = mem.flags[heads]
    cached = (flags & _SWAPCACHE) != 0
    small = mem.order[heads] == 0
    if env.era.has("anon-exclusive-unshare") or env.era.has("cow-reuse-page-count"):
        reuse = small & (mem.refcount[heads] == 1) & ~cached
        if env.era.has("anon-exclusive-unshare"):
            reuse |= (mem.flags[pfns] & _ANON_EXCLUSIVE) != 0
            large = np.unique(heads[~small]).tolist() if np.count_nonzero(small) < len(small) \
                else []
            for head in large:
                if _anon_reusable_large(env, mm, head, vma):
                    reuse |= heads == head
    else:
        reuse = (mem.mapcount[pfns] + mem.entire_mapcount[heads] == 1) & ~cached
    return ~reuse


# Values as plain ints and numpy scalars for the array paths: numpy probes an IntEnum
# operand for __array_ufunc__ (~3 us a comparison, against 0.6 us with an int)
_ANON, _ZERO = int(Kind.ANON), int(Kind.ZERO)
_ANON_EXCLUSIVE = np.uint32(PG.anon_exclusive)
_SWAPCACHE = np.uint32(PG.swapcache)


def wp_page_shared(env: MMEnv, mm: MM, vma: VMA, i: int) -> VMFault:
    """Write to a write-protected page of a shared file mapping: notify the fs, then write."""
    mem = env.mem
    head = int(mem.head_of(int(vma.pfn[i])))
    if vma.file is not None and vma.file.needs_writenotify:
        rc = vma.file.page_mkwrite(head)
        if rc == -EAGAIN:
            return VMFault.OK          # truncated meanwhile: the caller retries the fault
        if rc:
            return VMFault.SIGBUS
    mem.set_flag(head, PG.dirty)
    if vma.pte[i] & (PTE.PMD | PTE.PUD):
        first = i - int(mem.head_off[int(vma.pfn[i])])
        vma.pte[first:first + mem.nr_pages_of(head)] |= PTE.WRITE | PTE.MKDIRTY | PTE.YOUNG
    else:
        vma.pte[i] |= PTE.WRITE | PTE.MKDIRTY | PTE.YOUNG
    return VMFault.OK


# -- file-backed faults -------------------------------------------------------------------


FAULT_AROUND_PAGES = 16          # fault_around_bytes (64 KiB) / PAGE_SIZE
PTRS_PER_PTE = 512
MAP_PAGES_FS = ("ext4", "tmpfs", "generic")   # vm_ops->map_pages = filemap_map_pages


def _read_pte_bits(vma: VMA, f: Any) -> int:
    """The entry a read fault maps a page-cache page with: writable at once in a shared
    writable mapping of a file that needs no write notification."""
    if vma.is_shared and vma.flags & VM.WRITE and not f.needs_writenotify:
        return PTE.YOUNG | PTE.WRITE
    return PTE.YOUNG


def do_fault_around(mm: MM, vma: VMA, i: int) -> bool:
    """do_fault_around() of a read fault: map every page already in the page cache in
    the 16-entry aligned window around entry `i` (inside the VMA and one page table)
    whose entry is empty, as filemap_map_pages() does; True if entry `i` got mapped
    (the fault is done). Nothing is allocated or read here.

    Simplifications: no large-folio PMD mapping, no mmap_miss accounting; the model's
    fallocate puts every page in the cache, where the host's leaves shmem folios not
    uptodate and ext4 extents unwritten (no page at all) until first touched, so a
    neighbour counts as uptodate here only once something maps it or dirtied it."""
    f = vma.file
    if f is None or getattr(f, "fs_name", "") not in MAP_PAGES_FS:
        return False
    mem = mm.mem
    pte_off = (vma.start >> PAGE_SHIFT) + i
    pte_off %= PTRS_PER_PTE
    first = max(pte_off - pte_off % FAULT_AROUND_PAGES, pte_off - min(pte_off, i))
    last = min(first + FAULT_AROUND_PAGES, PTRS_PER_PTE, pte_off + vma.nr_pages - i)
    bits = _read_pte_bits(vma, f)
    size_pages = (f.size + PAGE_SIZE - 1) >> PAGE_SHIFT
    for j in range(first - pte_off + i, last - pte_off + i):
        index = vma.pgoff + j
        if vma.pte[j] or index >= size_pages or not f.has_folio(index):
            continue
        head = f.get_folio(index)
        if head < 0 or not mem.test(head, PG.uptodate):
            continue
        pfn = head + (index - int(mem.index[head]))
        if not (mem.mapcount[pfn] or mem.entire_mapcount[head] or mem.test(head, PG.dirty)):
            continue        # fallocated, never touched: not uptodate on the host
        map_pte_range(mm, vma, j, np.array([pfn], dtype=np.int64), bits)
    return bool(vma.pte[i] & PTE.PRESENT)


def do_fault(env: MMEnv, mm: MM, vma: VMA, i: int, write: bool) -> VMFault:
    """A fault on an empty entry of a file (or shmem) mapping: read, COW or shared fault;
    a read fault maps the cached pages around it first (do_fault_around)."""
    mem = env.mem
    f = vma.file
    if f is None:
        return VMFault.SIGBUS
    if not write and do_fault_around(mm, vma, i):
        return VMFault.OK
    index = vma.pgoff + i
    head = f.get_folio(index)
    if head < 0:
        return VMFault.OOM if head == -ENOMEM else VMFault.SIGBUS
    pfn = head + (index - int(mem.index[head]))
    if write and not vma.is_shared:
        try:
            new = new_anon_folio(env, vma, 0, i)
        except OutOfMemory:
            return VMFault.OOM
        mem.copy_frames(new, pfn, 1)
        map_pte_range(mm, vma, i, np.array([new], dtype=np.int64),
                      PTE.YOUNG | PTE.DIRTY | _mkwrite(vma))
        mem.set_flag(new, PG.anon_exclusive | PG.swapbacked | PG.lru)
        mem.refcount[new] -= 1
        mem.vmstat["cow_fault"] += 1
        return VMFault.OK
    bits = PTE.YOUNG
    if vma.is_shared and vma.flags & VM.WRITE:
        if write:
            rc = f.page_mkwrite(head) if f.needs_writenotify else 0
            if rc == -EAGAIN:
                return VMFault.OK
            if rc:
                return VMFault.SIGBUS
            mem.set_flag(head, PG.dirty)
            bits |= PTE.WRITE | PTE.DIRTY
        elif not f.needs_writenotify:
            bits |= PTE.WRITE
    map_pte_range(mm, vma, i, np.array([pfn], dtype=np.int64), bits)
    return VMFault.OK


# -- hugetlb ------------------------------------------------------------------------------


def hugetlb_no_page(env: MMEnv, mm: MM, vma: VMA, i: int, write: bool) -> VMFault:
    """First touch of a hugetlb page: the file's page (shared) or a private anon huge page."""
    mem = env.mem
    order = vma.huge_order
    n = 1 << order
    first = i - i % n
    f = vma.file
    if vma.is_shared:
        head = f.get_folio(vma.pgoff + first) if f is not None else -EFAULT
        if head < 0:
            return VMFault.SIGBUS
        bits = PTE.YOUNG | (PTE.WRITE | PTE.DIRTY if vma.flags & VM.WRITE else 0)
        map_huge(mm, vma, first, head, order, bits)
        if write:
            mem.set_flag(head, PG.dirty)
        return VMFault.OK
    src = -1
    if f is not None and getattr(f, "has_folio", None) and f.has_folio(vma.pgoff + first):
        src = f.get_folio(vma.pgoff + first)
    try:
        head = env.alloc.alloc_hugetlb_folio(order, Kind.ANON, vma.anon_id, vma.pgoff + first)
    except OutOfMemory:
        return VMFault.SIGBUS
    if src >= 0:
        mem.copy_frames(head, src, n)
        if not write:   # a read of a private hugetlb file page maps the page cache copy
            env.alloc.free_folio(head)
            map_huge(mm, vma, first, src, order, PTE.YOUNG)
            return VMFault.OK
    map_huge(mm, vma, first, head, order, PTE.YOUNG | PTE.DIRTY | _mkwrite(vma))
    mem.set_flag(head, PG.anon_exclusive)
    mem.refcount[head] -= 1
    return VMFault.OK


def hugetlb_wp(env: MMEnv, mm: MM, vma: VMA, i: int, unshare: bool) -> VMFault:
    """COW or unshare of a private hugetlb page: the whole huge page is copied."""
    mem = env.mem
    order = vma.huge_order
    n = 1 << order
    first = i - i % n
    old = int(mem.head_of(int(vma.pfn[first])))
    # reuse decided on the mapcount alone, not the refcount: an extra FOLL_GET reference
    # (vmsplice) does not force a copy, which is the leak cow.c marks xfail for hugetlb
    mapcount = int(mem.mapcount[old:old + n].sum()) + int(mem.entire_mapcount[old])
    if int(mem.kind[old]) == Kind.ANON and mapcount == 1:
        mem.set_flag(old, PG.anon_exclusive)
        if not unshare:
            vma.pte[first:first + n] |= _mkwrite(vma) | PTE.MKDIRTY
        return VMFault.OK
    try:
        head = env.alloc.alloc_hugetlb_folio(order, Kind.ANON, vma.anon_id, vma.pgoff + first)
    except OutOfMemory:
        return VMFault.SIGBUS
    mem.copy_frames(head, old, n)
    rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(first), vma.addr_of(first + n))
    zap_range(mm, vma, first, first + n, env.swap)
    bits = PTE.YOUNG | (0 if unshare else PTE.DIRTY | _mkwrite(vma))
    map_huge(mm, vma, first, head, order, bits)
    invalidate_end(rng)
    mem.set_flag(head, PG.anon_exclusive)
    mem.refcount[head] -= 1
    return VMFault.OK


# -- swap ---------------------------------------------------------------------------------


def do_swap_page(env: MMEnv, mm: MM, vma: VMA, i: int) -> VMFault:
    """Swap a page back in (order 0); it stays exclusive if it was when swapped out."""
    mem = env.mem
    swap = env.swap
    slot = int(vma.pfn[i])
    exclusive = bool(vma.pte[i] & PTE.SWP_EXCLUSIVE)
    if swap is None or slot not in swap.slots:
        return VMFault.SIGBUS
    try:
        head = new_anon_folio(env, vma, 0, i)
    except OutOfMemory:
        return VMFault.OOM
    data = swap.slots[slot]
    if data is not None:
        mem.write(head, 0, data)
    swap.free_entries(np.array([slot]))
    soft = int(vma.pte[i]) & PTE.SOFT_DIRTY     # pte_swp_soft_dirty
    vma.pte[i] = 0
    vma.pfn[i] = 0
    map_pte_range(mm, vma, i, np.array([head], dtype=np.int64), PTE.YOUNG | soft)
    mem.set_flag(head, PG.swapbacked | PG.lru)
    if exclusive:
        mem.set_flag(head, PG.anon_exclusive)
    mem.refcount[head] -= 1
    mem.vmstat["pswpin"] += 1
    return VMFault.MAJOR


def release_folio_ref(env: MMEnv, head: int) -> None:
    """Drop one reference the fault path took, freeing the folio if it was the last."""
    folio_put(env.alloc, head)
