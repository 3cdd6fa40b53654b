"""The OOM reaper's unmap (__oom_reap_task_mm() in mm/oom_kill.c): the model's one
non-blockable invalidation.

After the OOM killer has chosen a victim, the reaper frees its private memory without
waiting for the task to exit. It may not sleep, so it begins each VMA's invalidation
with `mmu_notifier_invalidate_range_start_nonblock()`; a subscriber that would have to
sleep refuses (an interval notifier's `invalidate` returns False, a classic one's
`invalidate_range_start` returns -EAGAIN), that VMA is left mapped, and the reaper
reports that it should try again later.
"""

from __future__ import annotations

from .env import MMEnv
from .mm_struct import MM, zap_range
from .mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MmuNotifierRange,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start_nonblock,
)
from .vma import VM


def oom_reap_task_mm(env: MMEnv, mm: MM) -> bool:
    """Zap every private (anonymous or private file) VMA of `mm`, hugetlb and PFN maps
    excepted; True if all were reaped, False if a notifier refused one (retry later)."""
    ret = True
    for vma in list(mm.vmas):
        if vma.flags & (VM.HUGETLB | VM.PFNMAP):
            continue
        if not (vma.is_anonymous or not vma.flags & VM.SHARED):
            continue
        rng = MmuNotifierRange(mm, vma.start, vma.end, 0, MMU_NOTIFY_CLEAR)
        if mmu_notifier_invalidate_range_start_nonblock(rng):
            ret = False
            continue
        zap_range(mm, vma, 0, vma.nr_pages, env.swap)
        mmu_notifier_invalidate_range_end(rng)
    return ret
