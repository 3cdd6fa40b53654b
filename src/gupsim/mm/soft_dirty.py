"""Soft-dirty tracking: writing "4" to /proc/PID/clear_refs (fs/proc/task_mmu.c).

A page reads soft-dirty in /proc/PID/pagemap (bit 55) while its VMA has VM_SOFTDIRTY
(every VMA mmap makes has it) or its page-table entry has the soft-dirty bit, which
x86's pte_mkdirty() sets with the dirty bit (`PTE.MKDIRTY`), which mremap sets on every
entry it moves, and which a swap entry keeps. Clearing, as the CRIU-style tracker and
cow.c do:

- every VMA loses VM_SOFTDIRTY;
- one MMU_NOTIFY_SOFT_DIRTY invalidation spans the whole address space;
- every present PTE is write-protected and loses its soft-dirty bit, so that the next
  write faults and sets it again -- except a writable PTE of a maybe-DMA-pinned folio in
  a COW mapping of an mm that ever pinned (pte_is_pinned: write-protecting it could make
  the write fault copy the page away from the pin); a swap entry loses its bit;
- a PMD mapping is write-protected and cleared without that exception
  (clear_soft_dirty_pmd);
- hugetlb and VM_PFNMAP VMAs keep their entries as they are (the walk has no hugetlb
  callback; clear_refs_test_walk skips PFN maps).

Simplification: the model has no TLB, so "flush" is implicit.
"""

from __future__ import annotations

import numpy as np

from ..constants import TASK_SIZE
from ..memory.page import maybe_dma_pinned_pfns
from .env import MMEnv
from .mm_struct import MM, MMF
from .mmu_notifier import MMU_NOTIFY_SOFT_DIRTY, invalidate_end, invalidate_start
from .vma import PTE, VM

CLEAR_REFS_SOFT_DIRTY = 4

_KEEP = np.uint16(~(PTE.WRITE | PTE.SOFT_DIRTY) & 0xFFFF)
_KEEP_SWAP = np.uint16(~PTE.SOFT_DIRTY & 0xFFFF)


def clear_refs_soft_dirty(env: MMEnv, mm: MM) -> None:
    """clear_refs_write(CLEAR_REFS_SOFT_DIRTY) on `mm` (see the module doc)."""
    for vma in mm.vmas:
        vma.flags &= ~VM.SOFTDIRTY
    rng = invalidate_start(mm, MMU_NOTIFY_SOFT_DIRTY, 0, TASK_SIZE)
    try:
        for vma in mm.vmas:
            if vma.is_hugetlb or vma.flags & VM.PFNMAP:
                continue
            pte = vma.pte
            swap = (pte & PTE.SWAP) != 0
            pte[swap] &= _KEEP_SWAP
            present = (pte & PTE.PRESENT) != 0
            if vma.is_cow and mm.flags & MMF.HAS_PINNED:
                small = present & ((pte & (PTE.PMD | PTE.PUD | PTE.SPECIAL)) == 0) \
                    & ((pte & PTE.WRITE) != 0)
                idx = np.nonzero(small)[0]
                if len(idx):
                    pinned = maybe_dma_pinned_pfns(env.mem, env.mem.head_of(vma.pfn[idx]))
                    present[idx[pinned]] = False
            pte[present] &= _KEEP
    finally:
        invalidate_end(rng)
