"""VFIO type1 IOMMU: guest/user memory mapped for a device (drivers/vfio/vfio_iommu_type1.c).

VFIO_IOMMU_MAP_DMA (`vfio_dma_do_map`) pins the user range long-term and maps it into
the device's IOMMU page table run by run: `vfio_pin_pages_remote()` refills a batch of
up to 512 pages with `vaddr_get_pfns()` (`pin_user_pages_remote(mm, ..., FOLL_LONGTERM
| FOLL_WRITE if the device may write)` under `mmap_read_lock`), takes pages while they
are physically contiguous, checks each against RLIMIT_MEMLOCK (unless the mapping task
had CAP_IPC_LOCK: `dma->lock_cap`) and charges the run to `mm->locked_vm` (VmLck, not
VmPin) with `vfio_lock_acct()` -> `__account_locked_vm()` under `mmap_write_lock`.
Pages left in the batch after a discontiguity start the next run. VFIO_IOMMU_UNMAP_DMA
unpins each contiguous run with `unpin_user_page_range_dirty_lock(make_dirty = device
writable)` and uncharges locked_vm.

Kernel side (`vfio_pin_pages_remote()`, `vfio_lock_acct()`, ...) returns counts or
-errno; the process side (`VfioContainer.map_dma()` / `unmap_dma()`, the ioctls) raises
OSError. The facade's `k.pin_user_pages_remote(mm, ..., None)` takes mmap_lock for read
around the call, which is the lock vaddr_get_pfns() holds.

Simplifications: one IOMMU domain with 4 KiB pages and an IOVA space without reserved
holes; no VM_PFNMAP (MMIO) fallback, so a range that cannot be pinned fails with the
pin's errno; no mdev/external pins (`vfio_find_vpfn` never finds one); no
VFIO_DMA_MAP_FLAG_VADDR updates; asynchronous accounting runs at once; a mapping
fragmented into many runs is unpinned in one vectorised call (drivers/runs.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from errno import ESRCH
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_bytes, check_count, check_ints, check_owner
from ..constants import (
    CAP_IPC_LOCK,
    EEXIST,
    EFAULT,
    EINVAL,
    ENODEV,
    ENOMEM,
    ENOSPC,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from ..gup import FOLL_LONGTERM, FOLL_WRITE
from ..gup.accounting import __account_locked_vm
from ..memory import PageArray
from ..mm.mm_struct import rlimit_pages
from .runs import BULK_RELEASE_RUNS, contiguous_runs, unpin_runs

if TYPE_CHECKING:
    from ..kernel import Kernel, Process
    from ..mm import MM

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)

VFIO_DMA_MAP_FLAG_READ = 1 << 0     # from the device's point of view
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
VFIO_PIN_BATCH = PAGE_SIZE // 8     # struct vfio_batch: one page of page pointers
DMA_ENTRY_LIMIT = 65535             # module parameter dma_entry_limit (U16_MAX)
U64 = 1 << 64


@dataclass
class VfioBatch:
    """struct vfio_batch: pinned pages not yet consumed (`size` of them, from `offset`)."""

    pages: PageArray = field(default_factory=lambda: PageArray(VFIO_PIN_BATCH))
    size: int = 0
    offset: int = 0

    def left(self) -> np.ndarray:
        """The PFNs of the batch not yet consumed."""
        return self.pages.pfns[self.offset:self.offset + self.size]


@dataclass(eq=False)
class VfioDma:
    """struct vfio_dma: one mapping; `pfns[i]` backs IOVA page i (the IOMMU page table)."""

    k: Kernel                    # the machine (the model's link to the facade)
    iova: int
    vaddr: int
    prot: int
    lock_cap: bool
    task: Process                # the mapping process (dma->task), for its rlimit
    mm: MM
    size: int = 0                # bytes pinned and mapped so far
    pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def vfio_lock_acct(dma: VfioDma, npage: int, async_: bool) -> int:
    """Charge (npage > 0) or uncharge locked_vm of the mapping's mm: 0, -ENOMEM, -ESRCH."""
    if not npage:
        return 0
    mm = dma.mm
    if async_ and getattr(mm, "dead", False):
        return -ESRCH               # the process exited (mmget_not_zero failed)
    mm.mmap_lock.writer = True      # mmap_write_lock_killable()
    try:
        return __account_locked_vm(mm, abs(npage), npage > 0, dma.task.cred, dma.lock_cap)
    finally:
        mm.mmap_lock.writer = False


def put_pfn_range(k: Kernel, pfn: int, npage: int, prot: int) -> int:
    """put_pfn() over a physically contiguous run, as one range unpin; returns npage
    (`k`, the machine, comes first: the model's stand-in for the global struct pages)."""
    if npage > 0:
        k.unpin_user_page_range_dirty_lock(k.page(pfn), npage, bool(prot & IOMMU_WRITE))
    return max(npage, 0)


def vfio_batch_unpin(batch: VfioBatch, dma: VfioDma) -> None:
    """Unpin what is left in the batch (not mapped, not accounted)."""
    k = dma.k
    if batch.size:
        left = batch.left()
        k.unpin_user_pages_dirty_lock(PageArray(left.copy(), k.mem), len(left),
                                      bool(dma.prot & IOMMU_WRITE))
    batch.size = batch.offset = 0


def vaddr_get_pfns(mm: MM, vaddr: int, npages: int, prot: int, pfn: list[int],
                   batch: VfioBatch, *, k: Kernel) -> int:
    """Refill the batch from vaddr: pages pinned (> 0, first one in pfn[0]) or -errno.
    `k` is the machine whose facade takes mmap_lock around pin_user_pages_remote()."""
    flags = FOLL_LONGTERM | (FOLL_WRITE if prot & IOMMU_WRITE else 0)
    ret = k.pin_user_pages_remote(mm, vaddr, min(npages, VFIO_PIN_BATCH), flags,
                                  batch.pages, None)
    if ret > 0:
        pfn[0] = int(batch.pages.pfns[0])
        batch.size, batch.offset = ret, 0
        return ret
    return ret or -EFAULT


def vfio_pin_pages_remote(dma: VfioDma, vaddr: int, npage: int, pfn_base: list[int],
                          limit: int, batch: VfioBatch, log: list[str] | None = None) -> int:
    """Pin the physically contiguous run starting at vaddr (at most npage pages) and
    charge it to locked_vm: the run's length (first PFN in pfn_base[0]) or -errno.
    Messages the kernel prints with pr_warn() go to `log` (the container's `dmesg`)."""
    k = dma.k
    mm = dma.mm
    if mm is None:
        return -ENODEV
    pinned = lock_acct = 0
    pfn_base[0] = int(batch.left()[0]) if batch.size else -1
    ret = 0
    while npage:
        if not batch.size:
            first = [0]
            ret = vaddr_get_pfns(mm, vaddr, npage, dma.prot, first, batch, k=k)
            if ret < 0:
                break
            ret = 0
            if pfn_base[0] < 0:
                pfn_base[0] = first[0]
        left = batch.left()[:npage]
        want = pfn_base[0] + pinned + np.arange(len(left), dtype=np.int64)
        run = len(left) if (left == want).all() else int(np.argmin(left == want))
        if not dma.lock_cap and mm.locked_vm + lock_acct + run > limit:
            take = max(0, limit - mm.locked_vm - lock_acct)
            if log is not None:         # pr_warn(), not a WARN: the limit is the user's
                log.append(f"vfio_pin_pages_remote: RLIMIT_MEMLOCK ({limit << PAGE_SHIFT}) "
                           "exceeded")
            pinned += take
            batch.offset += take
            batch.size -= take
            ret = -ENOMEM
            break
        lock_acct += run
        pinned += run
        npage -= run
        vaddr += run * PAGE_SIZE
        batch.offset += run
        batch.size -= run
        if batch.size:              # a discontiguity: the rest waits for the next run
            break
    if ret == 0:
        ret = vfio_lock_acct(dma, lock_acct, False)
    if ret < 0:
        if pinned:
            put_pfn_range(k, pfn_base[0], pinned, dma.prot)
        vfio_batch_unpin(batch, dma)
        return ret
    return pinned


def vfio_unpin_pages_remote(dma: VfioDma, iova: int, pfn: int, npage: int,
                            do_accounting: bool) -> int:
    """Unpin the contiguous run backing `iova` and (if asked) uncharge it; returns the
    pages unpinned (no external pins in the model, so every page was accounted)."""
    unlocked = put_pfn_range(dma.k, pfn, npage, dma.prot)
    if do_accounting:
        vfio_lock_acct(dma, -unlocked, True)
    return unlocked


class VfioContainer:
    """A VFIO container with the type1 (v2) IOMMU and one device attached, opened by `proc`.

    Process side: `map_dma()` / `unmap_dma()` are the VFIO_IOMMU_MAP_DMA / UNMAP_DMA
    ioctls (OSError with the errno); `close()` releases every mapping. Device side:
    `dma_write()` / `dma_read()` go through the IOMMU page table.
    """

    def __init__(self, kernel: Kernel, proc: Process) -> None:
        check_owner("vfio", "proc", proc, kernel)
        self.k = kernel
        self.proc = proc
        self.dmas: list[VfioDma] = []            # sorted by iova
        self.dma_avail = DMA_ENTRY_LIMIT
        self.faults: list[str] = []              # IOMMU faults the device caused
        self.dmesg: list[str] = []               # what the driver printed (pr_warn)

    # -- kernel side -------------------------------------------------------------------

    def vfio_find_dma(self, start: int, size: int) -> VfioDma | None:
        """The mapping overlapping [start, start+size), if any."""
        for dma in self.dmas:
            if start < dma.iova + dma.size and dma.iova < start + size:
                return dma
        return None

    def vfio_pin_map_dma(self, dma: VfioDma, size: int) -> int:
        """Pin and map the whole range run by run; on failure the mapping is removed."""
        k = self.k
        limit = rlimit_pages(self.proc.cred.rlimit_memlock)
        batch = VfioBatch()
        runs: list[np.ndarray] = [dma.pfns]
        ret = 0
        while size:
            pfn = [-1]
            npage = vfio_pin_pages_remote(dma, dma.vaddr + dma.size, size >> PAGE_SHIFT,
                                          pfn, limit, batch, self.dmesg)
            if npage <= 0:
                k.warnings.warn_on_once(npage == 0, "vfio_pin_map_dma: no page pinned",
                                        "vfio_pin_pages_remote() returned 0")
                ret = npage or -EFAULT
                break
            runs.append(pfn[0] + np.arange(npage, dtype=np.int64))   # vfio_iommu_map()
            size -= npage << PAGE_SHIFT
            dma.size += npage << PAGE_SHIFT
        dma.pfns = np.concatenate(runs)
        vfio_batch_unpin(batch, dma)           # vfio_batch_fini(): nothing should be left
        if ret:
            self.vfio_remove_dma(dma)
        return ret

    def vfio_dma_do_map(self, vaddr: int, iova: int, size: int, flags: int) -> int:
        """VFIO_IOMMU_MAP_DMA in the kernel: 0 or -errno."""
        check_ints("vfio_dma_do_map", vaddr=vaddr, iova=iova, size=size, flags=flags)
        if flags & ~(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE):
            return -EINVAL
        prot = (IOMMU_WRITE if flags & VFIO_DMA_MAP_FLAG_WRITE else 0) | \
            (IOMMU_READ if flags & VFIO_DMA_MAP_FLAG_READ else 0)
        if not prot:
            return -EINVAL
        if not size or (size | iova | vaddr) & (PAGE_SIZE - 1):
            return -EINVAL
        if iova + size - 1 >= U64 or vaddr + size - 1 >= U64:
            return -EINVAL
        if self.vfio_find_dma(iova, size) is not None:
            return -EEXIST
        if not self.dma_avail:
            return -ENOSPC
        p = self.proc
        dma = VfioDma(self.k, iova, vaddr, prot, p.cred.capable(CAP_IPC_LOCK), p, p.mm)
        self.dma_avail -= 1
        bisect.insort(self.dmas, dma, key=lambda d: d.iova)
        return self.vfio_pin_map_dma(dma, size)

    def vfio_unmap_unpin(self, dma: VfioDma, do_accounting: bool = True) -> int:
        """Unmap from the IOMMU and unpin run by run, then uncharge: pages unlocked.
        Many short runs are released in one vectorised call (drivers/runs.py)."""
        starts = contiguous_runs(dma.pfns)
        if len(starts) > BULK_RELEASE_RUNS:
            unlocked = unpin_runs(self.k, dma.pfns, starts, bool(dma.prot & IOMMU_WRITE))
        else:
            unlocked = 0
            ends = np.append(starts[1:], len(dma.pfns)) if len(starts) else starts
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                unlocked += vfio_unpin_pages_remote(dma, dma.iova + s * PAGE_SIZE,
                                                    int(dma.pfns[s]), e - s, False)
        dma.pfns = dma.pfns[:0]
        if do_accounting:
            vfio_lock_acct(dma, -unlocked, True)
        return unlocked

    def vfio_remove_dma(self, dma: VfioDma) -> None:
        """vfio_remove_dma(): unpin and unaccount a mapping, then forget it."""
        self.vfio_unmap_unpin(dma)
        self.dmas.remove(dma)
        self.dma_avail += 1

    def vfio_dma_do_unmap(self, iova: int, size: int) -> tuple[int, int]:
        """VFIO_IOMMU_UNMAP_DMA in the kernel: (0 or -errno, bytes unmapped).

        Type1 v2 refuses to split a mapping: the range must start and end on mapping
        boundaries (-EINVAL); mappings wholly inside it are removed.
        """
        check_ints("vfio_dma_do_unmap", iova=iova, size=size)
        if iova & (PAGE_SIZE - 1) or not size or size & (PAGE_SIZE - 1) or \
                iova + size - 1 >= U64:
            return -EINVAL, 0
        first = self.vfio_find_dma(iova, 1)
        if first is not None and first.iova != iova:
            return -EINVAL, 0
        last = self.vfio_find_dma(iova + size - 1, 1)
        if last is not None and last.iova + last.size != iova + size:
            return -EINVAL, 0
        unmapped = 0
        for dma in [d for d in self.dmas if iova <= d.iova and d.iova + d.size <= iova + size]:
            unmapped += dma.size
            self.vfio_remove_dma(dma)
        return 0, unmapped

    def pinned_pfns(self) -> np.ndarray:
        """The frames the container holds pinned (mapped for the device)."""
        parts = [d.pfns for d in self.dmas]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # -- process side (ioctls) -----------------------------------------------------------

    def map_dma(self, vaddr: int, iova: int, size: int,
                flags: int = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) -> None:
        """ioctl(VFIO_IOMMU_MAP_DMA); raises OSError with the kernel's errno."""
        rc = self.vfio_dma_do_map(vaddr, iova, size, flags)
        if rc:
            why = {-ENOMEM: "locked memory (VmLck) would exceed RLIMIT_MEMLOCK: raise the "
                            "limit (ulimit -l) or grant CAP_IPC_LOCK",
                   -EEXIST: "the IOVA range overlaps an existing mapping",
                   -EINVAL: "size, iova and vaddr must be page aligned, non-zero, not wrap, "
                            "and flags must include READ or WRITE"}
            raise OSError(-rc, f"VFIO_IOMMU_MAP_DMA: {why.get(rc, 'could not pin the range')}")

    def unmap_dma(self, iova: int, size: int) -> int:
        """ioctl(VFIO_IOMMU_UNMAP_DMA): the bytes unmapped; raises OSError with the errno."""
        rc, unmapped = self.vfio_dma_do_unmap(iova, size)
        if rc:
            raise OSError(-rc, "VFIO_IOMMU_UNMAP_DMA: the range must be page aligned and "
                               "start and end on mapping boundaries")
        return unmapped

    def close(self) -> None:
        """Closing the container (vfio_iommu_type1_release) removes every mapping."""
        for dma in list(self.dmas):
            self.vfio_remove_dma(dma)

    # -- the device, through the IOMMU -------------------------------------------------

    def _walk(self, iova: int, n: int, need: int) -> Iterator[tuple[int, int, int, int]]:
        done = 0
        while done < n:
            dma = self.vfio_find_dma(iova + done, 1)
            if dma is None or not dma.prot & need:
                what = "write" if need & IOMMU_WRITE else "read"
                self.faults.append(f"DMA {what} fault at iova {iova + done:#x}")
                return
            i, off = divmod(iova + done - dma.iova, PAGE_SIZE)
            take = min(PAGE_SIZE - off, n - done)
            yield int(dma.pfns[i]), off, done, done + take
            done += take

    def dma_write(self, iova: int, data: bytes) -> int:
        """The device writes at an IOVA: 0, or -EFAULT for an IOMMU fault (unmapped, or
        mapped without write permission), recorded in `faults`; nothing is written then."""
        check_ints("dma_write", iova=iova)
        data = check_bytes("dma_write", "data", data)
        pieces = list(self._walk(iova, len(data), IOMMU_WRITE))
        if sum(hi - lo for _, _, lo, hi in pieces) != len(data):
            return -EFAULT
        for pfn, off, lo, hi in pieces:
            self.k.dma_write(self.k.page(pfn), off, data[lo:hi])
        return 0

    def dma_read(self, iova: int, n: int) -> bytes | int:
        """The device reads at an IOVA: the bytes, or -EFAULT for an IOMMU fault."""
        check_ints("dma_read", iova=iova)
        check_count("dma_read", "n", n)
        pieces = list(self._walk(iova, n, IOMMU_READ))
        if sum(hi - lo for _, _, lo, hi in pieces) != n:
            return -EFAULT
        return b"".join(self.k.dma_read(self.k.page(pfn), off, hi - lo)
                        for pfn, off, lo, hi in pieces)
