"""fork() and exit(): copying an address space copy-on-write, and tearing one down.

The copy decision for each anonymous page is the kernel's: a page is shared with the
child (its anon-exclusive bit cleared, both PTEs write-protected) unless its folio may
be pinned by DMA and the page is exclusive; such a page is copied for the child at once,
and the parent's mapping stays as it was, so a pin keeps seeing what the parent sees.

Eras (`gupsim.eras`): before 5.9 (`fork-copies-pinned-anon`) fork never asks whether a
page may be pinned and shares every anonymous page copy-on-write, pinned or not; the
parent's next write then copies (mapcount 2), so the device keeps writing into the page
the child now owns. Pinned hugetlb pages are shared the same way before 5.12
(`fork-copies-pinned-hugetlb`).
"""

from __future__ import annotations

import errno

import numpy as np
from numpy.typing import NDArray

from .. import lean
from ..memory import PG, Kind, OutOfMemory
from ..memory.memmap import add_at
from ..memory.page import maybe_dma_pinned_pfns
from .env import MMEnv
from .mm_struct import (
    MM,
    MMF,
    ZapGather,
    add_rss,
    map_new_anon_pages,
    split_huge_mapping,
    zap_vma,
)
from .mmu_notifier import (
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_UNMAP,
    ULONG_MAX,
    invalidate_end,
    invalidate_start,
    mmu_notifier_release,
)
from .vma import PTE, VM, VMA, vma_close


class ForkFailed(OSError):
    """fork() could not copy the address space (ENOMEM): the child was torn down again."""


def folio_needs_cow_for_dma(env: MMEnv, mm: MM, heads: np.ndarray,
                            era_switch: str = "fork-copies-pinned-anon") -> NDArray[np.bool_]:
    """Vectorised folio_needs_cow_for_dma(): the mm ever pinned and the folio may be pinned.
    All false in an era before `era_switch` (fork did not copy pinned pages yet)."""
    if not _may_cow_for_dma(env, mm, era_switch):
        return np.zeros(len(heads), dtype=bool)
    return maybe_dma_pinned_pfns(env.mem, heads)


def _may_cow_for_dma(env: MMEnv, mm: MM, era_switch: str = "fork-copies-pinned-anon") -> bool:
    """False when folio_needs_cow_for_dma() is false for every folio of `mm`: it never
    pinned, or the era's fork does not copy pinned pages."""
    return bool(mm.flags & MMF.HAS_PINNED) and env.era.has(era_switch)


def vma_needs_copy(env: MMEnv, vma: VMA) -> bool:
    """What a page fault cannot refill is copied: PFN maps, and a VMA with an anon_vma
    (anonymous folios; a private file or hugetlb mapping that holds anonymous copies).
    Shared mappings, and private mappings that only map the page cache or the zero page
    (read faults prepare no anon_vma), are refilled by the child's faults: their pages
    stay mapped once.

    Simplifications: the model has no anon_vma, so a private mapping counts as having
    one while an entry of it maps an anonymous folio or holds a swap, guard or poison
    entry (the kernel keeps the anon_vma after they are gone); hugetlb follows the rule
    of 6.0+ ("hugetlb: lazy page table copies in fork()") in every era."""
    flags = vma.flags
    if flags & VM.WIPEONFORK:
        return False
    if flags & (VM.PFNMAP | VM.MIXEDMAP):
        return True
    if flags & VM.SHARED:
        return False
    bits = _entry_bits(vma)
    if bits & (PTE.SWAP | PTE.MARKER | PTE.HWPOISON):
        return True
    if not bits & PTE.PRESENT:
        return False
    pte = vma.pte
    real = (pte & (PTE.PRESENT | PTE.SPECIAL)) == PTE.PRESENT
    mem = env.mem
    return bool(np.count_nonzero(_ANON_KINDS[mem.kind[mem.head_of(vma.pfn[real])]]))


def _entry_bits(vma: VMA) -> int:
    """The OR of all the VMA's entries: which kinds of entry it holds at all, so that a
    VMA with no huge, special, swap or marker entries (most) skips those passes."""
    return int(np.bitwise_or.reduce(vma.pte)) if len(vma.pte) else 0


# Kind values as plain ints and a lookup table: comparing a numpy array with an IntEnum
# member costs ~3 us (numpy probes the enum class for __array_ufunc__), with an int 0.6 us
_ANON = int(Kind.ANON)
_ANON_KINDS = np.zeros(len(Kind), dtype=bool)
_ANON_KINDS[[Kind.ANON, Kind.KSM]] = True
_ANON_EXCLUSIVE = np.uint32(PG.anon_exclusive)
_NOT_WRITE = np.uint16(~PTE.WRITE & 0xFFFF)


def dup_mm(env: MMEnv, parent: MM) -> MM:
    """copy_mm(): the child's address space; raises OSError(ENOMEM) if a copy fails."""
    child = MM(env.mem, env.alloc)
    child.flags = 0        # mmf_init_flags(): MMF_HAS_PINNED is not inherited
    # dup_mmap() holds the parent's mmap_lock for write; write_protect_seq odd: GUP-fast
    # pins back off (from 5.11) and fall back to the slow path, which waits for the lock
    held, parent.mmap_lock.writer = parent.mmap_lock.writer, True
    parent.write_protect_seq += 1
    # plain small-page VMAs are copied in batches (no notifier or race hook to call per VMA)
    batch: list[tuple[VMA, VMA]] | None = None if not lean.ENABLED \
        or parent.notifier_subscriptions is not None \
        or env.race_pending is not None and env.race_pending("fork:before_wrprotect") else []
    try:
        for vma in parent.vmas:
            if vma.flags & VM.DONTCOPY:
                continue
            cvma = VMA(vma.start, vma.end, vma.flags & ~VM.LOCKED, vma.file, vma.pgoff,
                       vma.anon_name)
            cvma.huge_order = vma.huge_order
            cvma.anon_id = vma.anon_id
            if vma.file is not None:
                vma.file.get_file()
            child.insert_vma(cvma)
            bits = _entry_bits(vma)
            if bits and not bits & _NOT_SMALL and not vma.flags & _NOT_PLAIN:
                if batch is not None:
                    batch.append((vma, cvma))
                else:
                    _copy_small_pages(env, parent, child, vma, cvma)
            elif vma_needs_copy(env, vma):
                if batch:
                    _copy_small_batch(env, parent, child, batch)
                    batch.clear()
                copy_page_range(env, parent, child, vma, cvma)
        if batch:
            _copy_small_batch(env, parent, child, batch)
    except OutOfMemory as e:
        for vma in child.vmas:
            zap_vma(child, vma, env.swap)
            vma_close(vma)
        raise ForkFailed(errno.ENOMEM, f"fork: no memory to copy a pinned page ({e})") from e
    finally:
        parent.write_protect_seq += 1
        parent.mmap_lock.writer = held
    env.mms.append(child)
    return child


# VMAs whose entries dup_mm() copies on the short path (_copy_small_pages): every entry
# is none or a present small page (no PTE.NOT_SMALL bit), and the VMA a plain private one
# (a name of this module's, so that a test can send every VMA down the general path)
_NOT_SMALL = PTE.NOT_SMALL
_NOT_PLAIN = VM.WIPEONFORK | VM.PFNMAP | VM.MIXEDMAP | VM.SHARED


def copy_page_range(env: MMEnv, src_mm: MM, dst_mm: MM, src: VMA, dst: VMA,
                    small: SmallPages | None = None) -> None:
    """copy_page_range(): fill the child's VMA, sharing pages copy-on-write, copying pinned
    ones; a COW mapping of the parent is write-protected under an
    MMU_NOTIFY_PROTECTION_PAGE invalidation of the whole VMA, as the kernel does.
    `small`: the VMA holds only small present pages, already looked up (dup_mm).

    Raises OutOfMemory when a maybe-pinned exclusive page cannot be copied.
    """
    rng = invalidate_start(src_mm, MMU_NOTIFY_PROTECTION_PAGE, src.start, src.end) \
        if src.is_cow else None
    try:
        if small is not None:
            _share_or_copy(env, src_mm, dst_mm, src, dst, *small)
        else:
            _copy_page_range(env, src_mm, dst_mm, src, dst)
    finally:
        invalidate_end(rng)


# (entries, their pages, the pages' folio heads, the folios' kinds)
SmallPages = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _copy_small_pages(env: MMEnv, src_mm: MM, dst_mm: MM, src: VMA, dst: VMA) -> None:
    """vma_needs_copy() and copy_page_range() at once for a plain private VMA whose
    entries are all none or small present pages (most): the pages' folios are looked up
    once for both, and a VMA without anonymous folios is left to the child's faults."""
    mem = env.mem
    idx = src.pte.nonzero()[0]
    pfns = src.pfn[idx]
    heads = mem.head_of(pfns)
    kinds = mem.kind[heads]
    if np.count_nonzero(_ANON_KINDS[kinds]):      # else vma_needs_copy(): faults refill it
        copy_page_range(env, src_mm, dst_mm, src, dst, (idx, pfns, heads, kinds))


def _copy_small_batch(env: MMEnv, src_mm: MM, dst_mm: MM,
                      batch: list[tuple[VMA, VMA]]) -> None:
    """_copy_small_pages() for consecutive plain small-page VMAs (parent, child), in order,
    with the folio lookups, the copy decisions and the reference, mapcount and RSS updates
    of the pages they share done once for many VMAs.

    The same result as one VMA after the other: a VMA's decisions read only its own
    pages' kinds, exclusive bits and pin state, which copying other VMAs leaves alone (an
    exclusive page is mapped once). Sharing and copying touch different pages and
    entries, so the copies need not wait for the sharing before them; a fork that runs out
    of memory for a copy first shares what the VMAs up to that one share, and so leaves
    the parent as the per-VMA path does (those VMAs write-protected, the rest untouched).
    """
    mem = env.mem
    idxs = [src.pte.nonzero()[0] for src, _ in batch]
    ends = np.cumsum([len(idx) for idx in idxs]).tolist()
    starts = [0] + ends[:-1]
    pfns = np.concatenate([src.pfn[idx] for (src, _), idx in zip(batch, idxs, strict=True)])
    heads = mem.head_of(pfns)
    kinds = mem.kind[heads]
    has_anon = np.add.reduceat(_ANON_KINDS[kinds], starts).tolist()   # each VMA has entries
    copy = None
    if _may_cow_for_dma(env, src_mm):
        copy = (kinds == _ANON) & ((mem.flags[pfns] & _ANON_EXCLUSIVE) != 0)
        if np.count_nonzero(copy):
            copy &= folio_needs_cow_for_dma(env, src_mm, heads)
        if not np.count_nonzero(copy):
            copy = None
    share = _ShareGroup(env, dst_mm, pfns, heads, kinds)
    for v, (src, dst) in enumerate(batch):
        if not has_anon[v]:
            continue                # vma_needs_copy(): the child's faults refill it
        lo, hi = starts[v], ends[v]
        mine = copy[lo:hi] if copy is not None else None
        if mine is None or not np.count_nonzero(mine):
            share.add(src, dst, idxs[v], slice(lo, hi))
            continue
        keep = ~mine
        share.add(src, dst, idxs[v][keep], np.flatnonzero(keep) + lo)
        try:
            copy_present_pages(env, dst_mm, src, dst, idxs[v][mine])
        except OutOfMemory:
            share.flush()       # what was shared up to here stays shared, as per VMA
            raise
    share.flush()


class _ShareGroup:
    """The sharing half of copy_present_ptes() for the pages of one VMA or of several
    (entries `idx` of each, their positions in the arrays given): the anon-exclusive
    bits, mapcounts, references and RSS once per flush, then the entries VMA by VMA."""

    def __init__(self, env: MMEnv, dst_mm: MM, pfns: np.ndarray, heads: np.ndarray,
                 kinds: np.ndarray) -> None:
        self.env, self.dst_mm = env, dst_mm
        self.pfns, self.heads, self.kinds = pfns, heads, kinds
        self.vmas: list[tuple[VMA, VMA, np.ndarray, np.ndarray]] = []
        self.where: list[np.ndarray | slice] = []

    def add(self, src: VMA, dst: VMA, idx: np.ndarray, where: slice | np.ndarray) -> None:
        """Share entries `idx` of src with dst (`where`: their positions in the batch)."""
        if len(idx):
            self.vmas.append((src, dst, idx, self.pfns[where]))
            self.where.append(where)

    def flush(self) -> None:
        """Apply what was added: flags, mapcounts, references, RSS, then the entries."""
        if not self.vmas:
            return
        mem = self.env.mem
        if len(self.where) == 1 and isinstance(self.where[0], slice):
            sel: np.ndarray | slice = self.where[0]
        else:
            sel = np.concatenate([np.arange(w.start, w.stop) if isinstance(w, slice) else w
                                  for w in self.where])
        sp, sh, sk = self.pfns[sel], self.heads[sel], self.kinds[sel]
        anon = sk == _ANON
        if np.count_nonzero(anon):
            mem.flags[sp[anon]] &= ~_ANON_EXCLUSIVE
        add_at(mem.mapcount, sp, 1)
        add_at(mem.refcount, sh, 1)
        add_rss(self.dst_mm, sk, +1)
        for src, dst, idx, pfns in self.vmas:
            if src.is_cow:
                src.pte[idx] &= _NOT_WRITE
            dst.pfn[idx] = pfns
            dst.pte[idx] = src.pte[idx]
        self.vmas, self.where = [], []


def _copy_page_range(env: MMEnv, src_mm: MM, dst_mm: MM, src: VMA, dst: VMA) -> None:
    """The copy itself, inside the parent's invalidation.

    The OR of all entries says which kinds of entry the VMA holds at all, so a VMA with
    no huge, special, swap or marker entries (most of them) skips those passes.
    """
    mem = env.mem
    present_bits = _entry_bits(src)
    if not present_bits:
        return                                  # nothing mapped, swapped or marked
    if present_bits & (PTE.PMD | PTE.PUD):
        # huge mappings first: pinned exclusive anon THPs are split, the rest shared whole
        huge = np.nonzero((src.pte & (PTE.PMD | PTE.PUD)) != 0)[0]
        for i in huge.tolist():
            if not src.pte[i] & (PTE.PMD | PTE.PUD) or mem.head_off[int(src.pfn[i])] != 0:
                continue
            _copy_huge(env, src_mm, dst_mm, src, dst, i)
        present_bits = int(np.bitwise_or.reduce(src.pte))   # splits turned some into PTEs
    pte = src.pte
    if present_bits & PTE.NOT_SMALL:
        small = (pte & PTE.PRESENT) != 0
    else:
        small = None            # every entry is empty or a present small page
    if present_bits & (PTE.PMD | PTE.PUD):
        small &= (pte & (PTE.PMD | PTE.PUD)) == 0
    if present_bits & PTE.SPECIAL:
        special = small & ((pte & PTE.SPECIAL) != 0)
        dst.pfn[special] = src.pfn[special]
        dst.pte[special] = src.pte[special]
        small &= ~special
    if present_bits & PTE.SWAP:
        swapped = (pte & PTE.SWAP) != 0
        src.pte[swapped] &= np.uint16(~PTE.SWP_EXCLUSIVE & 0xFFFF)
        dst.pte[swapped] = src.pte[swapped]
        dst.pfn[swapped] = src.pfn[swapped]
        assert env.swap is not None, "a PTE holds a swap entry on a machine without swap"
        env.swap.dup(src.pfn[swapped])
    if present_bits & (PTE.HWPOISON | PTE.MARKER):
        poison = (pte & (PTE.HWPOISON | PTE.MARKER)) != 0
        dst.pte[poison] = src.pte[poison]
        dst.pfn[poison] = src.pfn[poison]
    idx = (pte if small is None else small).nonzero()[0]
    if len(idx) == 0:
        return
    pfns = src.pfn[idx]
    heads = mem.head_of(pfns)
    _share_or_copy(env, src_mm, dst_mm, src, dst, idx, pfns, heads, mem.kind[heads])


def _share_or_copy(env: MMEnv, src_mm: MM, dst_mm: MM, src: VMA, dst: VMA, idx: np.ndarray,
                   pfns: np.ndarray, heads: np.ndarray, kinds: np.ndarray) -> None:
    """copy_present_ptes() for the present small entries `idx` (their pages `pfns`, folios
    `heads` of `kinds`): maybe-pinned exclusive anon pages are copied for the child, the
    rest shared, write-protected in the parent if it is a COW mapping."""
    mem = env.mem
    copy = None                 # None: folio_needs_cow_for_dma() is false for every page
    if _may_cow_for_dma(env, src_mm):
        copy = (kinds == _ANON) & ((mem.flags[pfns] & _ANON_EXCLUSIVE) != 0)
        if np.count_nonzero(copy):  # only exclusive anon pages are ever copied: ask those
            copy &= folio_needs_cow_for_dma(env, src_mm, heads)
    if env.race_hook is not None:
        # GUP-fast may pin here, after the check: before 5.11 nothing stops it
        env.race_hook("fork:before_wrprotect", mm=src_mm, vma=src)
    if copy is not None and not np.count_nonzero(copy):
        copy = None             # no page to copy after all
    share = _ShareGroup(env, dst_mm, pfns, heads, kinds)
    if copy is None:
        share.add(src, dst, idx, slice(0, len(idx)))
    else:
        keep = ~copy
        share.add(src, dst, idx[keep], np.flatnonzero(keep))
    share.flush()
    if copy is not None:
        copy_present_pages(env, dst_mm, src, dst, idx[copy])


def copy_present_pages(env: MMEnv, dst_mm: MM, src: VMA, dst: VMA, idx: np.ndarray) -> None:
    """copy_present_page() for every entry in `idx` at once: the child gets its own copy
    of each maybe-pinned exclusive page (writable if the VMA is, dirty, exclusive); the
    parent's entries are left as they are. Raises OutOfMemory (fork fails, ENOMEM)."""
    if len(idx) == 0:
        return
    mem = env.mem
    new = env.alloc.alloc_bulk_order0(len(idx), Kind.ANON, True, dst.anon_id, dst.pgoff + idx)
    if len(new) < len(idx):
        mem.refcount[new] = 0
        for pfn in new.tolist():
            env.alloc.free_folio(pfn)
        raise OutOfMemory(f"fork: {len(idx)} pages of maybe-pinned memory to copy, "
                          f"{len(new)} free")
    for d, s in zip(new.tolist(), src.pfn[idx].tolist(), strict=True):
        if s in mem.content:                  # frames never written read as zeros
            mem.copy_frames(d, s, 1)
    bits = PTE.DIRTY | PTE.YOUNG | (PTE.WRITE if dst.flags & VM.WRITE else 0)
    map_new_anon_pages(dst_mm, dst, idx, new, bits)
    mem.vmstat["fork_copy_pinned"] += len(new)


def _copy_huge(env: MMEnv, src_mm: MM, dst_mm: MM, src: VMA, dst: VMA, i: int) -> None:
    mem = env.mem
    pfn = int(src.pfn[i])
    n = mem.nr_pages_of(pfn) if not src.pte[i] & PTE.SPECIAL else (
        1 << 9 if src.pte[i] & PTE.PMD else 1 << 18)
    sl = slice(i, i + n)
    if src.pte[i] & PTE.SPECIAL:            # huge zero page
        dst.pfn[sl], dst.pte[sl] = src.pfn[sl], src.pte[sl]
        return
    head = pfn
    anon = int(mem.kind[head]) == Kind.ANON
    excl = mem.test(head, PG.anon_exclusive)
    which = "fork-copies-pinned-hugetlb" if src.is_hugetlb else "fork-copies-pinned-anon"
    pinned = bool(folio_needs_cow_for_dma(env, src_mm, np.array([head]), which)[0])
    if anon and excl and pinned:
        if src.is_hugetlb:
            new = env.alloc.alloc_hugetlb_folio(src.huge_order, Kind.ANON, dst.anon_id,
                                                dst.pgoff + i)
            mem.copy_frames(new, head, n)
            dst.pfn[sl] = np.arange(new, new + n)
            dst.pte[sl] = src.pte[sl] | PTE.MKDIRTY
            mem.entire_mapcount[new] += 1
            mem.set_flag(new, PG.anon_exclusive)
            dst_mm.rss.anon += n
            return
        split_huge_mapping(src_mm, src, i)    # then copied page by page as PTEs
        return
    if anon:
        mem.clear_flag(head, PG.anon_exclusive)
    if src.is_cow:
        src.pte[sl] &= np.uint16(~PTE.WRITE & 0xFFFF)
    dst.pfn[sl], dst.pte[sl] = src.pfn[sl], src.pte[sl]
    mem.entire_mapcount[head] += 1
    mem.refcount[head] += 1
    add_rss(dst_mm, np.full(n, mem.kind[head], dtype=np.int8), +1)


def _zap_all(env: MMEnv, mm: MM, gather: ZapGather) -> None:
    """zap_vma() of every VMA into `gather`, the VMAs that hold only small present pages
    (most) read as one array: their entries are gathered and cleared at once, the others
    zapped one by one."""
    vmas = list(mm.vmas)
    pte = np.concatenate([vma.pte for vma in vmas])
    ends = np.cumsum([vma.nr_pages for vma in vmas]).tolist()
    starts = [0] + ends[:-1]
    bits = np.bitwise_or.reduceat(pte, starts).tolist()        # a VMA is never empty
    small = pte != 0
    for vma, lo, hi, b in zip(vmas, starts, ends, bits, strict=True):
        if b & _NOT_SMALL:
            zap_vma(mm, vma, env.swap, gather)
            small[lo:hi] = False
        elif b:
            vma.pte[:] = 0
    if np.count_nonzero(small):
        gather.pfns.append(np.concatenate([vma.pfn for vma in vmas])[small])
        gather.dirty.append((pte[small] & PTE.DIRTY) != 0)
    for vma, b in zip(vmas, bits, strict=True):
        if b and not b & _NOT_SMALL:
            vma.pfn[:] = 0


def exit_mmap(env: MMEnv, mm: MM) -> None:
    """Tear down an address space: every mapping is zapped; pinned pages stay allocated.

    MMU notifiers hear mmu_notifier_release() first, then one MMU_NOTIFY_UNMAP of
    [0, ULONG_MAX) around the zap (interval subscriptions still inserted receive it).
    The mapcounts and folio references of all VMAs are dropped in one batch after the
    zap, as the kernel's mmu_gather frees in tlb_finish_mmu() (one free_folios for the mm).
    """
    mmu_notifier_release(mm)
    rng = invalidate_start(mm, MMU_NOTIFY_UNMAP, 0, ULONG_MAX) if mm.vmas else None
    gather = ZapGather()
    if lean.ENABLED and len(mm.vmas) > 1:
        _zap_all(env, mm, gather)
    else:
        for vma in list(mm.vmas):
            zap_vma(mm, vma, env.swap, gather)
    invalidate_end(rng)
    gather.finish(mm)
    vmas, mm.vmas = mm.vmas, []
    for vma in vmas:
        vma_close(vma)
    mm.locked_vm = 0
    mm.dead = True
    if mm in env.mms:
        env.mms.remove(mm)
