"""hmm_range_fault() (mm/hmm.c): snapshot, and fault in, a range of CPU page tables.

A driver that mirrors a process's address space in a device page table (a GPU's SVM,
RDMA on-demand paging, lib/test_hmm.c's dmirror) does not pin: it subscribes an
interval notifier (mm/mmu_notifier.py) and asks `hmm_range_fault(range)` for the pfn
of every page of [range.start, range.end), faulting in what the flags request. It takes
no page references, so the answer is only good until the next invalidation: the caller
must run the kernel's collision-retry loop and program the device under its own lock,
where its invalidate callback clears device entries::

    while True:
        range.notifier_seq = mmu_interval_read_begin(range.notifier)
        mmap_read_lock(mm); ret = hmm_range_fault(range); mmap_read_unlock(mm)
        if ret == -EBUSY: continue
        if ret: return ret
        with driver_lock:                      # the lock its invalidate() takes
            if mmu_interval_read_retry(range.notifier, range.notifier_seq): continue
            program the device from range.hmm_pfns
        return 0

Input, per page of `hmm_pfns` (masked by `pfn_flags_mask`, or-ed with `default_flags`):
0 reports the current state without faulting; HMM_PFN_REQ_FAULT requires a valid
(readable) entry; with HMM_PFN_REQ_WRITE also a writable one. Output: the pfn in the low
bits with HMM_PFN_VALID, HMM_PFN_WRITE, the CPU mapping's order in the HMM_PFN_ORDER
field (9 for a PMD mapping, hugetlb's page order), HMM_PFN_ERROR for a page that can
never be mapped (no VMA, VM_IO/VM_PFNMAP/VM_MIXEDMAP, a VMA without read permission, a
special PTE) and 0 for a page that could be faulted in later. The sticky flags
(HMM_PFN_DMA_MAPPED, HMM_PFN_P2PDMA, HMM_PFN_P2PDMA_BUS) pass from input to output.

Returns 0, -EBUSY (an invalidation of the notifier happened since `notifier_seq`:
retry; a fault that changed PTEs in the range, such as a COW break, causes one too),
-EFAULT (a required page has no VMA, lies in a VM_IO/PFNMAP/MIXEDMAP or unreadable VMA,
is a special or hwpoisoned entry, or its fault failed), -EPERM (a required write to a
VMA without VM_WRITE), -EINVAL (an empty range). The zero page is reported as a valid
read-only page, as the kernel does. Bit positions are those of Linux 6.16 - 6.18 (the
DMA-API rework put DMA_MAPPED at bit 60 and the order field at bit 53).

Model notes: the kernel asserts that the caller holds mmap_lock (mmap_assert_locked());
the model records that assertion as a warning and then takes the lock for read itself,
so a caller without it still gets a consistent walk. Faults go through mm/'s own
handle_mm_fault() (never through gup/), with FAULT_FLAG_REMOTE, from the first page that
needs one to the end of its 2 MiB page-table block, as the kernel's walk does. Device
private memory (ZONE_DEVICE, dev_private_owner), migration entries and the DMA-mapping
helpers (hmm_dma_map_*) are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..constants import EBUSY, EFAULT, EINVAL, EPERM, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER
from ..memory import Kind
from .fault import FaultFlag, VMFault, handle_mm_fault
from .mm_struct import mmap_read_lock, mmap_read_unlock
from .mmu_notifier import MmuIntervalNotifier, mmu_interval_check_retry
from .rmap import MMRmap
from .vma import PTE, VM, VMA

if TYPE_CHECKING:
    from .env import MMEnv
    from .mm_struct import MM

BITS_PER_LONG = 64

# enum hmm_pfn_flags (include/linux/hmm.h, 6.16 - 6.18)
HMM_PFN_VALID = 1 << (BITS_PER_LONG - 1)
HMM_PFN_WRITE = 1 << (BITS_PER_LONG - 2)
HMM_PFN_ERROR = 1 << (BITS_PER_LONG - 3)
HMM_PFN_DMA_MAPPED = 1 << (BITS_PER_LONG - 4)
HMM_PFN_P2PDMA = 1 << (BITS_PER_LONG - 5)
HMM_PFN_P2PDMA_BUS = 1 << (BITS_PER_LONG - 6)
HMM_PFN_ORDER_SHIFT = BITS_PER_LONG - 11
HMM_PFN_REQ_FAULT = HMM_PFN_VALID
HMM_PFN_REQ_WRITE = HMM_PFN_WRITE
HMM_PFN_FLAGS = ((1 << BITS_PER_LONG) - 1) & ~((1 << HMM_PFN_ORDER_SHIFT) - 1)
HMM_PFN_INOUT_FLAGS = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS

HMM_NEED_FAULT = 1 << 0
HMM_NEED_WRITE_FAULT = 1 << 1

_U = np.uint64
_PTES_PER_PMD = 1 << PMD_ORDER


def hmm_pfn_to_pfn(hmm_pfn: int) -> int:
    """The frame number of an output entry (hmm_pfn_to_page() without struct page)."""
    return int(hmm_pfn) & ~HMM_PFN_FLAGS


def hmm_pfn_to_map_order(hmm_pfn: int) -> int:
    """The order of the CPU mapping the entry came from (0 for a PTE, 9 for a PMD)."""
    return (int(hmm_pfn) >> HMM_PFN_ORDER_SHIFT) & 0x1F


def hmm_pfn_flags_order(order: int) -> int:
    """The HMM_PFN_ORDER field for a mapping of that order."""
    return order << HMM_PFN_ORDER_SHIFT


@dataclass(eq=False)
class HmmRange:
    """struct hmm_range: the notifier, [start, end), the seq from read_begin, the pfns.

    `hmm_pfns` holds one unsigned 64-bit integer per page, input flags on entry, the
    answer on return (see the module docstring); a fresh range gets a zeroed array.
    """

    notifier: MmuIntervalNotifier
    start: int
    end: int
    default_flags: int = 0
    pfn_flags_mask: int = 0
    notifier_seq: int = 0
    hmm_pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=_U))
    dev_private_owner: object = None

    def __post_init__(self) -> None:
        if self.start % PAGE_SIZE or self.end % PAGE_SIZE:
            raise ValueError(f"HmmRange [{self.start:#x}, {self.end:#x}) must be page aligned: "
                             "round start down and end up to PAGE_SIZE")
        if len(self.hmm_pfns) == 0 and self.end > self.start:
            self.hmm_pfns = np.zeros((self.end - self.start) >> PAGE_SHIFT, dtype=_U)
        else:
            self.hmm_pfns = np.asarray(self.hmm_pfns, dtype=_U)

    @property
    def npages(self) -> int:
        """Pages in [start, end): the entries of hmm_pfns the walk reads and writes."""
        return max(0, (self.end - self.start) >> PAGE_SHIFT)


def _env_of(mm: MM) -> MMEnv:
    rmap = mm.mem.rmap
    if not isinstance(rmap, MMRmap):
        raise RuntimeError("hmm_range_fault() needs the machine's fault handling: build the "
                           "machine with gupsim.Kernel()")
    return rmap.env


def _need_fault(rng: HmmRange, req: np.ndarray, cpu: np.ndarray) -> np.ndarray:
    """hmm_pte_need_fault() per entry: HMM_NEED_* bits (uint8)."""
    req = (req & _U(rng.pfn_flags_mask)) | _U(rng.default_flags)
    fault = (req & _U(HMM_PFN_REQ_FAULT)) != 0
    write = fault & ((req & _U(HMM_PFN_REQ_WRITE)) != 0) & ((cpu & _U(HMM_PFN_WRITE)) == 0)
    invalid = fault & ((cpu & _U(HMM_PFN_VALID)) == 0)
    out = np.zeros(len(req), dtype=np.uint8)
    out[invalid | write] = HMM_NEED_FAULT
    out[write] |= HMM_NEED_WRITE_FAULT
    return out


def _range_needs_fault(rng: HmmRange, req: np.ndarray) -> bool:
    """hmm_range_need_fault() with no CPU mapping (cpu flags 0)."""
    if not (rng.default_flags | rng.pfn_flags_mask) & HMM_PFN_REQ_FAULT:
        return False
    return bool(_need_fault(rng, req, np.zeros(len(req), dtype=_U)).any())


def _fill(rng: HmmRange, i0: int, i1: int, value: int) -> None:
    """hmm_pfns_fill(): entries [i0, i1) become `value`, keeping their sticky flags."""
    p = rng.hmm_pfns
    p[i0:i1] = (p[i0:i1] & _U(HMM_PFN_INOUT_FLAGS)) | _U(value)


def _hmm_vma_fault(env: MMEnv, mm: MM, vma: VMA, addr: int, end: int, required: int) -> int:
    """hmm_vma_fault(): fault [addr, end) of `vma`; -EBUSY (re-walk), -EFAULT or -EPERM."""
    flags = FaultFlag.REMOTE
    if required & HMM_NEED_WRITE_FAULT:
        if not vma.flags & VM.WRITE:
            return -EPERM
        flags |= FaultFlag.WRITE
    for a in range(addr, end, PAGE_SIZE):
        if mm.find_vma(a) is not vma:
            break                       # a fault cannot change VMAs; be safe all the same
        if handle_mm_fault(env, mm, vma, a, flags) & VMFault.ERROR:
            return -EFAULT
    return -EBUSY


def _walk_vma(env: MMEnv, mm: MM, rng: HmmRange, vma: VMA, a0: int, a1: int) -> tuple[int, int]:
    """One VMA's part [a0, a1) of the walk: (0 or -errno, the address to resume from)."""
    i0 = (a0 - rng.start) >> PAGE_SHIFT
    i1 = (a1 - rng.start) >> PAGE_SHIFT
    req = rng.hmm_pfns[i0:i1].copy()
    if vma.flags & (VM.IO | VM.PFNMAP | VM.MIXEDMAP) or not vma.flags & VM.READ:
        # hmm_vma_walk_test(): no struct pages, or no read access: a hard failure if a
        # fault is required, else every page is reported as an error
        if _range_needs_fault(rng, req):
            return -EFAULT, a0
        _fill(rng, i0, i1, HMM_PFN_ERROR)
        return 0, a1
    v0, v1 = vma.idx(a0), vma.idx(a1)
    pte = vma.pte[v0:v1].astype(np.int64)
    pfn = vma.pfn[v0:v1]
    present = (pte & PTE.PRESENT) != 0
    writable = present & ((pte & PTE.WRITE) != 0)
    cpu = np.where(present, _U(HMM_PFN_VALID), _U(0)) | np.where(writable, _U(HMM_PFN_WRITE),
                                                                 _U(0))
    need = _need_fault(rng, req, cpu)
    mem = env.mem
    special = present & ((pte & PTE.SPECIAL) != 0)
    if special.any():                   # the zero pages are ordinary pages to HMM
        kinds = mem.kind[pfn[special]]
        special[np.nonzero(special)[0][(kinds == Kind.ZERO) | (kinds == Kind.HUGE_ZERO)]] = False
    # non-present entries that are not swap entries (hwpoison, guard markers) cannot be
    # faulted in: a required one fails the walk
    bad = ~present & ((pte & (PTE.HWPOISON | PTE.MARKER)) != 0)
    stop = np.nonzero((need != 0) | ((special | bad) & (_need_fault(
        rng, req, np.zeros(len(req), dtype=_U)) != 0)))[0]
    n = int(stop[0]) if len(stop) else len(req)
    # output for the prefix that needs nothing
    order = np.zeros(n, dtype=_U)
    order[(pte[:n] & PTE.PMD) != 0] = _U(hmm_pfn_flags_order(PMD_ORDER))
    order[(pte[:n] & PTE.PUD) != 0] = _U(hmm_pfn_flags_order(PUD_ORDER))
    out = np.where(present[:n], pfn[:n].astype(_U) | cpu[:n] | order, _U(0))
    out[special[:n]] = _U(HMM_PFN_ERROR)
    p = rng.hmm_pfns
    p[i0:i0 + n] = (p[i0:i0 + n] & _U(HMM_PFN_INOUT_FLAGS)) | out
    if n == len(req):
        return 0, a1
    if special[n] or bad[n]:
        return -EFAULT, a0 + n * PAGE_SIZE
    addr = a0 + n * PAGE_SIZE
    block_end = (addr | (PAGE_SIZE * _PTES_PER_PMD - 1)) + 1
    return _hmm_vma_fault(env, mm, vma, addr, min(block_end, a1), int(need[n])), addr


def _walk(env: MMEnv, mm: MM, rng: HmmRange, start: int) -> tuple[int, int]:
    """walk_page_range() with hmm's ops over [start, rng.end): (ret, where to resume)."""
    addr = start
    for vma in mm.vmas_in(start, rng.end):
        if vma.start > addr:            # a hole before this VMA: no VMA at all
            i0 = (addr - rng.start) >> PAGE_SHIFT
            i1 = (vma.start - rng.start) >> PAGE_SHIFT
            if _range_needs_fault(rng, rng.hmm_pfns[i0:i1]):
                return -EFAULT, addr
            _fill(rng, i0, i1, HMM_PFN_ERROR)
            addr = vma.start
        ret, addr = _walk_vma(env, mm, rng, vma, addr, min(vma.end, rng.end))
        if ret:
            return ret, addr
    if addr < rng.end:
        i0 = (addr - rng.start) >> PAGE_SHIFT
        if _range_needs_fault(rng, rng.hmm_pfns[i0:]):
            return -EFAULT, addr
        _fill(rng, i0, rng.npages, HMM_PFN_ERROR)
    return 0, rng.end


def hmm_range_fault(range: HmmRange) -> int:
    """Fill range.hmm_pfns for [start, end), faulting what the flags require: 0 or -errno.

    -EBUSY: the notifier's sequence moved since range.notifier_seq (call
    mmu_interval_read_begin() again and retry); -EFAULT, -EPERM, -EINVAL: see the module
    docstring. Takes no page references. The caller holds mmap_lock for read.
    """
    rng = range
    mm = rng.notifier.mm
    if mm is None:
        return -EINVAL
    if len(rng.hmm_pfns) < rng.npages:
        raise ValueError(f"hmm_pfns has {len(rng.hmm_pfns)} entries for a range of "
                         f"{rng.npages} pages: give it one entry per page")
    if rng.start >= rng.end:
        return -EINVAL
    env = _env_of(mm)
    took = False
    if not mm.mmap_lock.held():
        mm.mem.warnings.warn_on_once(True, "hmm_range_fault: mmap_lock not held",
                                     "mmap_assert_locked(): take mmap_read_lock(mm) around "
                                     "hmm_range_fault(); the model took it for you")
        mmap_read_lock(mm)
        took = True
    try:
        last = rng.start
        while True:
            if mmu_interval_check_retry(rng.notifier, rng.notifier_seq):
                return -EBUSY
            ret, last = _walk(env, mm, rng, last)
            if ret != -EBUSY:
                return ret
    finally:
        if took:
            mmap_read_unlock(mm)


__all__ = [
    "HMM_PFN_VALID", "HMM_PFN_WRITE", "HMM_PFN_ERROR", "HMM_PFN_DMA_MAPPED", "HMM_PFN_P2PDMA",
    "HMM_PFN_P2PDMA_BUS", "HMM_PFN_ORDER_SHIFT", "HMM_PFN_REQ_FAULT", "HMM_PFN_REQ_WRITE",
    "HMM_PFN_FLAGS", "HMM_PFN_INOUT_FLAGS", "HmmRange", "hmm_range_fault", "hmm_pfn_to_pfn",
    "hmm_pfn_to_map_order", "hmm_pfn_flags_order",
]
