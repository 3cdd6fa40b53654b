"""Reverse mapping: find every PTE that maps a folio, across all address spaces.

Simplification: the kernel follows anon_vma chains and the file's i_mmap tree; the
model searches the page-table arrays of every live mm (vectorised per VMA), which
finds the same PTEs. File folios are found through VMAs of the same file only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..memory import PG, Kind
from ..memory.page import maybe_dma_pinned_pfns
from .env import MMEnv
from .mm_struct import MM, add_rss, map_pte_range, split_huge_mapping
from .mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_PAGE,
    MmuNotifierEvent,
    MmuNotifierRange,
    invalidate_end,
    invalidate_start,
)
from .vma import PTE, VMA


def mappings_of(env: MMEnv, head: int, skip: MM | None = None
                ) -> Iterator[tuple[MM, VMA, np.ndarray]]:
    """(mm, vma, entry indices) for every PTE that maps a page of the folio at `head`
    (in the page tables of every mm but `skip`)."""
    mem = env.mem
    n = mem.nr_pages_of(head)
    kind = int(mem.kind[head])
    mapping = int(mem.mapping[head])
    for mm in list(env.mms):
        if mm is skip:
            continue
        for vma in mm.vmas:
            if kind not in (Kind.ANON, Kind.KSM):
                if vma.file is None or vma.file.inode_id != mapping:
                    continue
                lo = int(mem.index[head]) - vma.pgoff
                lo, hi = max(lo, 0), min(lo + n, vma.nr_pages)
                if lo >= hi:
                    continue
                sl = np.arange(lo, hi)
            else:
                sl = None
            idx = entries_mapping(vma, head, n, sl)
            if len(idx):
                yield mm, vma, idx


def entries_mapping(vma: VMA, head: int, n: int, sl: np.ndarray | None = None) -> np.ndarray:
    """Indices of the entries of `vma` (of `sl` only, if given) whose PTE maps one of the
    `n` pages from `head`."""
    pfn = vma.pfn if sl is None else vma.pfn[sl]
    # head <= pfn < head + n as one unsigned compare; most VMAs end here
    idx = ((pfn - head).astype(np.uint32) < n).nonzero()[0]
    if len(idx):
        pte = vma.pte[idx] if sl is None else vma.pte[sl[idx]]
        idx = idx[(pte & (PTE.PRESENT | PTE.SPECIAL)) == PTE.PRESENT]
    return idx if sl is None else sl[idx]


def _entries_range(vma: VMA, idx: np.ndarray) -> tuple[int, int]:
    """The page-aligned [start, end) that entries `idx` of `vma` span."""
    return vma.addr_of(int(idx.min())), vma.addr_of(int(idx.max()) + 1)


def invalidate_folio_start(env: MMEnv, head: int,
                           event: MmuNotifierEvent) -> list[MmuNotifierRange]:
    """Begin one invalidation per mapping of the folio (rmap_walk with notifiers), over
    the PTEs that map it; nothing to walk when no mm has notifiers."""
    if all(m.notifier_subscriptions is None for m in env.mms):
        return []
    out = []
    for mm, vma, idx in list(mappings_of(env, head)):
        rng = invalidate_start(mm, event, *_entries_range(vma, idx))
        if rng is not None:
            out.append(rng)
    return out


def invalidate_folio_end(rngs: list[MmuNotifierRange]) -> None:
    """End what invalidate_folio_start() began."""
    for rng in rngs:
        invalidate_end(rng)


class MMRmap:
    """The RmapWalker that mm/ installs on the MemMap (see memory/rmap.py)."""

    def __init__(self, env: MMEnv) -> None:
        self.env = env

    def mkclean(self, head: int) -> int:
        """page_mkclean(): write-protect and clean shared mappings of a file folio."""
        count = 0
        for _mm, vma, idx in mappings_of(self.env, head):
            if not vma.is_shared:
                continue
            rng = invalidate_start(_mm, MMU_NOTIFY_PROTECTION_PAGE, *_entries_range(vma, idx))
            vma.pte[idx] &= np.uint16(~(PTE.WRITE | PTE.DIRTY) & 0xFFFF)
            invalidate_end(rng)
            count += len(idx)
        return count

    def try_to_unmap(self, head: int) -> bool:
        """Replace every mapping of an anon folio with a swap entry (it must be order 0).

        Pin check as the kernel orders it: an exclusive page of a maybe-pinned folio
        cannot be made shareable, so the unmap is refused and nothing changes.
        """
        env = self.env
        mem = env.mem
        if mem.test(head, PG.anon_exclusive) and maybe_dma_pinned_pfns(
                mem, np.array([head]))[0]:
            return False
        maps = list(mappings_of(env, head))
        if env.swap is None:
            return False
        slot = env.swap.alloc(mem.read(head, 0, 4096) if head in mem.content else None)
        if slot is None:
            return False
        excl = PTE.SWP_EXCLUSIVE if mem.test(head, PG.anon_exclusive) else 0
        total = sum(len(idx) for _, _, idx in maps)
        if total > 1:
            env.swap.counts[slot] = total
        for mm, vma, idx in maps:
            rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, *_entries_range(vma, idx))
            vma.pte[idx] = PTE.SWAP | excl | (vma.pte[idx] & PTE.SOFT_DIRTY)
            vma.pfn[idx] = slot
            mem.mapcount[head] -= len(idx)
            mem.refcount[head] -= len(idx)
            add_rss(mm, np.full(len(idx), Kind.ANON, dtype=np.int8), -1)
            invalidate_end(rng)
        return True

    def try_to_migrate(self, head: int) -> None:
        """The MMU-notifier half of try_to_migrate(): every mapping of the folio is
        invalidated (MMU_NOTIFY_CLEAR) before migration tests the refcount; the model
        keeps the PTEs in place until remap() points them at the new folio."""
        invalidate_folio_end(invalidate_folio_start(self.env, head, MMU_NOTIFY_CLEAR))

    def remap(self, old_heads: np.ndarray, new_heads: np.ndarray) -> None:
        """remove_migration_ptes(): each old folio's PTEs now map the new folio."""
        env = self.env
        mem = env.mem
        for old, new in zip(old_heads.tolist(), new_heads.tolist(), strict=True):
            for _mm, vma, idx in mappings_of(env, old):
                vma.pfn[idx] = vma.pfn[idx] - old + new
            n = mem.nr_pages_of(old)
            mem.mapcount[new:new + n] = mem.mapcount[old:old + n]
            mem.entire_mapcount[new] = mem.entire_mapcount[old]
            mem.mapcount[old:old + n] = 0
            mem.entire_mapcount[old] = 0

    def mapcount_expected_refs(self, head: int) -> int:
        """One reference per PTE and per PMD/PUD mapping: what migration may expect."""
        mem = self.env.mem
        n = mem.nr_pages_of(head)
        return int(mem.mapcount[head:head + n].sum()) + int(mem.entire_mapcount[head])

    def unmap_mapping_range(self, mapping: int, first_index: int, last_index: int) -> None:
        """Zap the PTEs that map file pages [first_index, last_index] (truncation)."""
        from .mm_struct import zap_range
        for mm in list(self.env.mms):
            for vma in mm.vmas:
                if vma.file is None or vma.file.inode_id != mapping:
                    continue
                lo = max(first_index - vma.pgoff, 0)
                hi = min(last_index + 1 - vma.pgoff, vma.nr_pages)
                if lo >= hi:
                    continue
                # private COW copies are anon pages and survive truncation
                pte, pfn = vma.pte[lo:hi], vma.pfn[lo:hi]
                present = (pte & PTE.PRESENT) != 0
                heads = self.env.mem.head_of(pfn)
                filepages = present & (self.env.mem.kind[heads] != Kind.ANON)
                rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, vma.addr_of(lo), vma.addr_of(hi)) \
                    if filepages.any() else None
                for j in np.nonzero(filepages)[0].tolist():
                    zap_range(mm, vma, lo + j, lo + j + 1, self.env.swap)
                invalidate_end(rng)


def split_all_huge_mappings(env: MMEnv, head: int) -> None:
    """Split every PMD/PUD mapping of a folio into PTE mappings, everywhere."""
    for mm, vma, idx in list(mappings_of(env, head)):
        huge = idx[(vma.pte[idx] & (PTE.PMD | PTE.PUD)) != 0]
        if len(huge):
            split_huge_mapping(mm, vma, int(huge[0]))


__all__ = ["MMRmap", "mappings_of", "split_all_huge_mappings", "map_pte_range",
           "invalidate_folio_start", "invalidate_folio_end"]
