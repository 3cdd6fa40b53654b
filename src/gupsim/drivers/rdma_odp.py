"""RDMA on-demand paging (case 2, ODP part): drivers/infiniband/core/umem_odp.c.

A memory region registered with IB_ACCESS_ON_DEMAND pins nothing and charges nothing
to VmPin: `ib_umem_odp_get()` subscribes an interval notifier over the region and keeps
a pfn list, empty at first. When the adapter touches a page it has no translation for,
it raises a page fault that the driver (mlx5's pagefault_mr) resolves with
`ib_umem_odp_map_dma_and_lock()`: the collision-retry loop around `hmm_range_fault()`
(HMM_PFN_REQ_FAULT, | REQ_WRITE for a writable region), then, under `umem_mutex`, the
device's translations; the work request is then replayed. The invalidate callback
(mlx5_ib_invalidate_range) takes `umem_mutex` (trylock for a non-blockable range),
stores the seq, and unmaps the pages of the range (`ib_umem_odp_unmap_dma_pages()`), so
after munmap, fork's write-protection, COW or migration the adapter faults again and
finds the pages the process maps then.

`OdpIbDevice` is an `IbDevice` (drivers/rdma.py) that also serves ODP regions:
`reg_mr_odp()` is the uverbs REG_MR path with IB_ACCESS_ON_DEMAND (process side:
raises OSError), `dma_write()`/`dma_read()` take the page faults and replay.

Simplifications: no DMA mapping (the pfn list is what the adapter uses), no implicit
(whole address space) ODP, no prefetch advice, no huge-page ODP; a fault maps the pages
the access spans (the driver maps a little more, up to its prefetch size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..constants import EACCES, EBUSY, EFAULT, EINVAL, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..mm.hmm import (
    HMM_PFN_FLAGS,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HmmRange,
    hmm_range_fault,
)
from ..mm.mm_struct import mmap_read_locked
from ..mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
    mmu_notifier_range_blockable,
)
from .rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_ON_DEMAND,
    IB_ACCESS_REMOTE_ATOMIC,
    IB_ACCESS_REMOTE_READ,
    IB_ACCESS_REMOTE_WRITE,
    IbDevice,
    ib_access_writable,
)

if TYPE_CHECKING:
    from ..kernel import Kernel, Process
    from ..mm import MM

_MAX_RETRIES = 1000                  # HMM_RANGE_DEFAULT_TIMEOUT (1 s) as a number of tries


@dataclass(eq=False)
class IbUmemOdp:
    """struct ib_umem_odp: the region, its notifier, and the pages the adapter may use."""

    device: IbDevice
    proc: Process
    address: int
    length: int
    writable: bool
    notifier: MmuIntervalNotifier = field(default_factory=MmuIntervalNotifier)
    pfn_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    writable_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    umem_mutex_held: bool = False
    npages_mapped: int = 0
    invalidations: int = 0
    released: bool = False

    @property
    def mm(self) -> MM:
        """umem->owning_mm."""
        return self.proc.mm

    @property
    def start(self) -> int:
        """ib_umem_start(): the page-aligned start of the region."""
        return self.address & PAGE_MASK

    @property
    def end(self) -> int:
        """ib_umem_end(): the page-aligned end of the region."""
        return (self.address + self.length + PAGE_SIZE - 1) & PAGE_MASK

    # -- the notifier (the mlx5 driver's callback) --------------------------------------

    def invalidate(self, sub: MmuIntervalNotifier, range: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """mlx5_ib_invalidate_range(): lock, store the seq, unmap the pages of the range."""
        if self.umem_mutex_held and not mmu_notifier_range_blockable(range):
            return False
        mmu_interval_set_seq(sub, cur_seq)
        self.invalidations += 1
        ib_umem_odp_unmap_dma_pages(self, max(range.start, self.start), min(range.end, self.end))
        return True

    # -- for the invariant (drivers/mirror_frames.py) -------------------------------------

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(virtual addresses, frames, writable) the adapter translates now."""
        idx = np.nonzero(self.pfn_list >= 0)[0]
        return (self.start + (idx.astype(np.int64) << PAGE_SHIFT), self.pfn_list[idx].copy(),
                self.writable_list[idx].copy())


def ib_umem_odp_get(device: IbDevice, addr: int, size: int, access: int, *,
                    current: Process) -> IbUmemOdp | int:
    """Create an ODP umem: nothing pinned, nothing charged; the umem or -errno (ERR_PTR).

    -EINVAL: no IB_ACCESS_ON_DEMAND (with a warning), an empty or wrapping range;
    the notifier insertion's errno.
    """
    if device.k.warnings.warn_on_once(not access & IB_ACCESS_ON_DEMAND,
                                      "ib_umem_odp_get: no IB_ACCESS_ON_DEMAND",
                                      "use ib_umem_get() for a pinned region"):
        return -EINVAL
    if size <= 0 or addr + size >= 1 << 64:
        return -EINVAL
    umem = IbUmemOdp(device, current, addr, size, ib_access_writable(access))
    n = (umem.end - umem.start) >> PAGE_SHIFT
    umem.pfn_list = np.full(n, -1, dtype=np.int64)
    umem.writable_list = np.zeros(n, dtype=bool)
    ret = mmu_interval_notifier_insert(umem.notifier, current.mm, umem.start,
                                       umem.end - umem.start, umem)
    if ret:
        return ret
    return umem


def ib_umem_odp_map_dma_and_lock(umem: IbUmemOdp, user_virt: int, bcnt: int, access_mask: int,
                                 fault: bool) -> int:
    """Fault in and map [user_virt, user_virt + bcnt): pages mapped, or -errno.

    On success it returns with `umem_mutex` held (the caller programs the adapter, then
    unlocks: `umem.umem_mutex_held = False`). -EFAULT: outside the region, the mm has
    exited, or hmm_range_fault()'s -EFAULT; -EPERM: a write to a read-only mapping;
    -EBUSY: invalidations kept colliding for the whole timeout.
    """
    if user_virt < umem.start or user_virt + bcnt > umem.end or bcnt <= 0:
        return -EFAULT
    if umem.mm.dead or not umem.proc.alive:
        return -EFAULT                  # mmget_not_zero() failed
    start = user_virt & PAGE_MASK
    end = (user_virt + bcnt + PAGE_SIZE - 1) & PAGE_MASK
    write = bool(access_mask & HMM_PFN_WRITE)
    rng = HmmRange(umem.notifier, start, end,
                   default_flags=(HMM_PFN_REQ_FAULT | (HMM_PFN_REQ_WRITE if write else 0))
                   if fault else 0)
    mm = umem.mm
    for _ in range(_MAX_RETRIES):
        rng.hmm_pfns[:] = 0
        rng.notifier_seq = mmu_interval_read_begin(umem.notifier)
        with mmap_read_locked(mm):
            ret = hmm_range_fault(rng)
        if ret == -EBUSY:
            continue
        if ret:
            return ret
        umem.umem_mutex_held = True
        if mmu_interval_read_retry(umem.notifier, rng.notifier_seq):
            umem.umem_mutex_held = False
            continue
        first = (start - umem.start) >> PAGE_SHIFT
        pfns = rng.hmm_pfns
        valid = (pfns & np.uint64(HMM_PFN_VALID)) != 0
        if fault and not valid.all():
            valid[int(np.argmin(valid)):] = False   # stop at the first page not made valid
        idx = np.nonzero(valid)[0]
        slot = first + idx
        umem.npages_mapped += int((umem.pfn_list[slot] < 0).sum())
        umem.pfn_list[slot] = (pfns[idx] & np.uint64(~HMM_PFN_FLAGS & ((1 << 64) - 1))
                               ).astype(np.int64)
        umem.writable_list[slot] = (pfns[idx] & np.uint64(HMM_PFN_WRITE)) != 0
        mapped = len(idx)
        return mapped
    return -EBUSY


def ib_umem_odp_unmap_dma_pages(umem: IbUmemOdp, virt: int, bound: int) -> None:
    """Forget the adapter's translations of [virt, bound) (called under umem_mutex)."""
    if bound <= virt:
        return
    lo = (virt - umem.start) >> PAGE_SHIFT
    hi = (bound - umem.start + PAGE_SIZE - 1) >> PAGE_SHIFT
    sl = umem.pfn_list[lo:hi]
    umem.npages_mapped -= int((sl >= 0).sum())
    umem.pfn_list[lo:hi] = -1
    umem.writable_list[lo:hi] = False


def ib_umem_odp_release(umem: IbUmemOdp) -> None:
    """Unsubscribe and forget every translation (nothing to unpin, nothing to uncharge)."""
    if umem.released:
        return
    mmu_interval_notifier_remove(umem.notifier)
    ib_umem_odp_unmap_dma_pages(umem, umem.start, umem.end)
    umem.released = True


@dataclass(eq=False)
class OdpMr:
    """A memory region registered with IB_ACCESS_ON_DEMAND: keys and the ODP umem."""

    device: OdpIbDevice
    lkey: int
    rkey: int
    iova: int
    length: int
    access: int
    umem: IbUmemOdp

    @property
    def mm(self) -> MM:
        """The registering process's address space."""
        return self.umem.mm

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The adapter's translations (see IbUmemOdp.device_mappings)."""
        return self.umem.device_mappings()


class OdpIbDevice(IbDevice):
    """An ODP-capable adapter: pinned regions as IbDevice, plus on-demand ones."""

    def __init__(self, kernel: Kernel, name: str = "mlx5_0", max_seg_size: int = 1 << 31) -> None:
        super().__init__(kernel, name, max_seg_size)
        self.odp_mrs: dict[int, OdpMr] = {}
        self.page_faults = 0

    def reg_mr_odp(self, proc: Process, addr: int, length: int, access: int) -> OdpMr:
        """ibv_reg_mr(IBV_ACCESS_ON_DEMAND): raises OSError with the errno."""
        if not access & IB_ACCESS_ON_DEMAND:
            raise OSError(EINVAL, "reg_mr_odp: pass IB_ACCESS_ON_DEMAND (or use ibv_reg_mr)")
        if access & (IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_ATOMIC) and \
                not access & IB_ACCESS_LOCAL_WRITE:
            raise OSError(EINVAL, "ibv_reg_mr: remote write and atomic access need "
                          "IBV_ACCESS_LOCAL_WRITE too")
        umem = ib_umem_odp_get(self, addr, length, access, current=proc)
        if isinstance(umem, int):
            raise OSError(-umem, "ibv_reg_mr: the on-demand region could not be created")
        key = next(self._keys)
        mr = OdpMr(self, key, key, addr, length, access, umem)
        self.odp_mrs[key] = mr
        return mr

    def dereg_mr_odp(self, mr: OdpMr) -> None:
        """ibv_dereg_mr() of an ODP region."""
        if self.odp_mrs.pop(mr.lkey, None) is None:
            raise OSError(EINVAL, "ibv_dereg_mr: the region is not registered")
        ib_umem_odp_release(mr.umem)

    def _odp_access(self, mr: OdpMr, iova: int, n: int, need: int,
                    write: bool) -> list[tuple[int, int, int, int]] | int:
        if need and not mr.access & need:
            return -EACCES
        if iova < mr.iova or iova + n > mr.iova + mr.length:
            return -EFAULT
        umem = mr.umem
        for _ in range(_MAX_RETRIES):
            i0 = (iova - umem.start) >> PAGE_SHIFT
            i1 = (iova + n - 1 - umem.start) >> PAGE_SHIFT
            have = umem.pfn_list[i0:i1 + 1] >= 0
            if write:
                have &= umem.writable_list[i0:i1 + 1]
            if have.all():
                break
            # the adapter's page fault: resolve, program the translations, replay
            self.page_faults += 1
            ret = ib_umem_odp_map_dma_and_lock(umem, iova, n, HMM_PFN_WRITE if (
                write or umem.writable) else 0, True)
            if ret < 0:
                return ret
            umem.umem_mutex_held = False
        else:
            return -EBUSY
        out = []
        done = 0
        off = iova - umem.start
        while done < n:
            i, poff = divmod(off + done, PAGE_SIZE)
            take = min(PAGE_SIZE - poff, n - done)
            out.append((int(umem.pfn_list[i]), poff, done, done + take))
            done += take
        return out

    def dma_write(self, key: int, iova: int, data: bytes,
                  need: int = IB_ACCESS_REMOTE_WRITE) -> int:
        """RDMA WRITE into a region (ODP regions fault and replay): 0 or -errno."""
        mr = self.odp_mrs.get(key)
        if mr is None:
            return super().dma_write(key, iova, data, need)
        spans = self._odp_access(mr, iova, len(data), need, True)
        if isinstance(spans, int):
            return spans
        for pfn, poff, lo, hi in spans:
            self.k.dma_write(self.k.page(pfn), poff, data[lo:hi])
        return 0

    def dma_read(self, key: int, iova: int, n: int,
                 need: int = IB_ACCESS_REMOTE_READ) -> bytes | int:
        """RDMA READ from a region (ODP regions fault and replay): the bytes or -errno."""
        mr = self.odp_mrs.get(key)
        if mr is None:
            return super().dma_read(key, iova, n, need)
        spans = self._odp_access(mr, iova, n, need, False)
        if isinstance(spans, int):
            return spans
        return b"".join(self.k.dma_read(self.k.page(pfn), poff, hi - lo)
                        for pfn, poff, lo, hi in spans)


__all__ = ["IbUmemOdp", "OdpIbDevice", "OdpMr", "ib_umem_odp_get",
           "ib_umem_odp_map_dma_and_lock", "ib_umem_odp_release", "ib_umem_odp_unmap_dma_pages"]
