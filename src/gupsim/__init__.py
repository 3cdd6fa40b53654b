"""gupsim: an executable model of Linux page pinning, checked against the host kernel.

Start with `gupsim.Kernel`, spawn a process, map memory, and pin it; see DESIGN.md for
the public contract and README.md for a tour. The GUP entry points are built from one
table, `gupsim.ENTRY_POINTS` (see `gupsim.gup.entry`), and `k.gup.last_call` says which
path the last one took.
"""

from .constants import *  # noqa: F403 - the kernel's constants are part of the public API
from .eras import KERNEL_VERSIONS, SWITCHES, Era
from .gup import *  # noqa: F403 - FOLL_* flags and the GUP/PUP entry points
from .kernel import Kernel, Process
from .memory import (
    GUP_PIN_COUNTING_BIAS,
    Folio,
    Page,
    PageArray,
    folio_maybe_dma_pinned,
    page_maybe_dma_pinned,
)
from .mm import BusError, OOMKilled, SegmentationFault
from .mm.hmm import (
    HMM_PFN_DMA_MAPPED,
    HMM_PFN_ERROR,
    HMM_PFN_FLAGS,
    HMM_PFN_ORDER_SHIFT,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HmmRange,
    hmm_pfn_to_map_order,
    hmm_pfn_to_pfn,
    hmm_range_fault,
)
from .mm.mmu_notifier import (
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_EXCLUSIVE,
    MMU_NOTIFY_MIGRATE,
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFY_SOFT_DIRTY,
    MMU_NOTIFY_UNMAP,
    MmuIntervalNotifier,
    MmuNotifier,
    MmuNotifierEvent,
    MmuNotifierOps,
    MmuNotifierRange,
    mmu_interval_check_retry,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_insert_locked,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
    mmu_notifier_clear_flush_young,
    mmu_notifier_clear_young,
    mmu_notifier_get,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
    mmu_notifier_invalidate_range_start_nonblock,
    mmu_notifier_put,
    mmu_notifier_range_blockable,
    mmu_notifier_range_init,
    mmu_notifier_range_init_owner,
    mmu_notifier_register,
    mmu_notifier_test_young,
    mmu_notifier_unregister,
)
from .mm.oom_kill import oom_reap_task_mm

__version__ = "0.1.0"
