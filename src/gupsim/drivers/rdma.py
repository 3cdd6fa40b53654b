"""RDMA memory registration (case 2 of pin_user_pages.rst): drivers/infiniband/core/umem.c.

`ib_umem_get()` charges the pages spanned by [addr, addr+size) to `mm->pinned_vm`
(VmPin) under RLIMIT_MEMLOCK unless the task has CAP_IPC_LOCK, pins them with
`pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE if writable)` in chunks of one page
worth of page pointers (512), and keeps them as a scatterlist whose segments merge
physically contiguous pages. `ib_umem_release()` unpins each segment with
`unpin_user_page_range_dirty_lock(make_dirty = writable)` and uncharges `pinned_vm`.
The process side, `ibv_reg_mr()` / `ibv_dereg_mr()` (the uverbs REG_MR / DEREG_MR
commands), raises OSError like a system call; the device reads and writes the pinned
frames through the memory region's keys.

Conventions: `ib_umem_get()` returns the umem or a negative errno (the kernel's
`ERR_PTR()`; test with `IS_ERR()`), and takes the calling process as the keyword
`current` after the kernel's arguments, since the model has no implicit task here.

Simplifications: no DMA mapping (the device addresses the frames directly, no IOMMU),
no ODP (IB_ACCESS_ON_DEMAND answers -EOPNOTSUPP, as the plain getter does), no dma-buf
or peer memory; one protection domain per context; keys are small counters; a region
fragmented into many segments is released in one vectorised call (drivers/runs.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_bytes, check_count, check_ints, check_owner
from ..constants import (
    CAP_IPC_LOCK,
    EACCES,
    EFAULT,
    EINVAL,
    ENOMEM,
    EOPNOTSUPP,
    EPERM,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from ..gup import FOLL_LONGTERM, FOLL_WRITE
from ..memory import PageArray
from ..mm.mm_struct import rlimit_pages
from .runs import contiguous_runs, unpin_runs

if TYPE_CHECKING:
    from ..kernel import Kernel, Process
    from ..mm import MM, Cred

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)

# enum ib_access_flags (include/rdma/ib_verbs.h, the uverbs ABI values)
IB_ACCESS_LOCAL_WRITE = 1 << 0
IB_ACCESS_REMOTE_WRITE = 1 << 1
IB_ACCESS_REMOTE_READ = 1 << 2
IB_ACCESS_REMOTE_ATOMIC = 1 << 3
IB_ACCESS_MW_BIND = 1 << 4
IB_ZERO_BASED = 1 << 5
IB_ACCESS_ON_DEMAND = 1 << 6
IB_ACCESS_HUGETLB = 1 << 7
IB_ACCESS_RELAXED_ORDERING = 1 << 20

UMEM_CHUNK = PAGE_SIZE // 8          # PAGE_SIZE / sizeof(struct page *): pages per pin call
UINT_MAX = (1 << 32) - 1
U64 = 1 << 64


def IS_ERR(x: object) -> bool:  # noqa: N802 - the kernel's name
    """True if a pointer-returning call answered a negative errno instead of an object."""
    return isinstance(x, int)


def can_do_mlock(cred: Cred) -> bool:
    """can_do_mlock(): a non-zero RLIMIT_MEMLOCK, or CAP_IPC_LOCK."""
    return cred.rlimit_memlock != 0 or cred.capable(CAP_IPC_LOCK)


def ib_access_writable(access: int) -> bool:
    """ib_access_writable(): the device may modify memory (write, atomics, MW binding)."""
    return bool(access & (IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE
                          | IB_ACCESS_REMOTE_ATOMIC | IB_ACCESS_MW_BIND))


class IbDevice:
    """An RDMA adapter: the kernel it is plugged into and its largest DMA segment."""

    def __init__(self, kernel: Kernel, name: str = "mlx5_0", max_seg_size: int = 1 << 31) -> None:
        self.k = kernel
        self.name = name
        self.max_seg_size = max_seg_size
        self.mrs: dict[int, IbMr] = {}
        self._keys = itertools.count(0x100)

    def __repr__(self) -> str:
        return f"<IbDevice {self.name}: {len(self.mrs)} MRs>"

    # -- the device using registered memory ---------------------------------------------

    def _translate(self, key: int, iova: int, n: int, need: int) -> tuple[IbMr, int] | int:
        mr = self.mrs.get(key)
        if mr is None:
            return -EINVAL
        if need and not mr.access & need:
            return -EACCES
        if iova < mr.iova or iova + n > mr.iova + mr.length:
            return -EFAULT
        return mr, iova - mr.iova + (mr.umem.address & ~PAGE_MASK)

    def dma_write(self, key: int, iova: int, data: bytes,
                  need: int = IB_ACCESS_REMOTE_WRITE) -> int:
        """An RDMA WRITE (or a receive, need=LOCAL_WRITE) into the region: 0 or -errno
        (-EACCES: the MR lacks the access right, -EFAULT: outside it, -EINVAL: no such key),
        the completion status a work request would report."""
        check_ints("dma_write", key=key, iova=iova, need=need)
        data = check_bytes("dma_write", "data", data)
        t = self._translate(key, iova, len(data), need)
        if isinstance(t, int):
            return t
        mr, off = t
        for pfn, poff, lo, hi in mr.umem.spans(off, len(data)):
            self.k.dma_write(self.k.page(pfn), poff, data[lo:hi])
        return 0

    def dma_read(self, key: int, iova: int, n: int,
                 need: int = IB_ACCESS_REMOTE_READ) -> bytes | int:
        """An RDMA READ (or a send, need=0) from the region: the bytes, or -errno."""
        check_ints("dma_read", key=key, iova=iova, need=need)
        check_count("dma_read", "n", n)
        t = self._translate(key, iova, n, need)
        if isinstance(t, int):
            return t
        mr, off = t
        return b"".join(self.k.dma_read(self.k.page(pfn), poff, hi - lo)
                        for pfn, poff, lo, hi in mr.umem.spans(off, n))


@dataclass(eq=False)
class IbUmem:
    """struct ib_umem: the pinned pages of one registration, as a scatterlist."""

    device: IbDevice
    mm: MM
    address: int
    length: int
    writable: bool
    pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seg_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    released: bool = False

    @property
    def nsegs(self) -> int:
        """Scatterlist entries (sg_nents): runs of physically contiguous pages."""
        return len(self.seg_starts)

    def pinned_pfns(self) -> np.ndarray:
        """The frames this registration holds pinned (empty once released)."""
        return self.pfns[:0] if self.released else self.pfns

    def spans(self, off: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(pfn, offset in page, lo, hi) pieces of bytes [off, off+n) of the page list."""
        done = 0
        while done < n:
            i, poff = divmod(off + done, PAGE_SIZE)
            take = min(PAGE_SIZE - poff, n - done)
            yield int(self.pfns[i]), poff, done, done + take
            done += take


def ib_umem_num_pages(umem: IbUmem) -> int:
    """Pages spanned by the registration (ib_umem_num_dma_blocks with PAGE_SIZE blocks)."""
    start = umem.address & PAGE_MASK
    end = (umem.address + umem.length + PAGE_SIZE - 1) & PAGE_MASK
    return (end - start) >> PAGE_SHIFT


def ib_umem_get(device: IbDevice, addr: int, size: int, access: int, *,
                current: Process) -> IbUmem | int:
    """Pin and account a user buffer for a memory region: the umem, or -errno (ERR_PTR).

    -EINVAL: addr + size wraps or spans no page; -EPERM: !can_do_mlock();
    -EOPNOTSUPP: IB_ACCESS_ON_DEMAND (the ODP getter's job); -ENOMEM: pinned_vm would
    pass RLIMIT_MEMLOCK without CAP_IPC_LOCK; a failed pin's own errno.
    """
    check_ints("ib_umem_get", addr=addr, size=size, access=access)
    check_owner("ib_umem_get", "current", current, device.k)
    end = addr + size
    if end >= U64 or ((end + PAGE_SIZE - 1) & PAGE_MASK) >= U64:
        return -EINVAL
    cred = current.cred
    if not can_do_mlock(cred):
        return -EPERM
    if access & IB_ACCESS_ON_DEMAND:
        return -EOPNOTSUPP
    mm = current.mm
    umem = IbUmem(device, mm, addr, size, ib_access_writable(access))
    npages = ib_umem_num_pages(umem)
    if npages == 0 or npages > UINT_MAX:
        return -EINVAL
    mm.pinned_vm += npages
    if mm.pinned_vm > rlimit_pages(cred.rlimit_memlock) and not cred.capable(CAP_IPC_LOCK):
        mm.pinned_vm -= npages
        return -ENOMEM
    gup_flags = FOLL_LONGTERM | (FOLL_WRITE if umem.writable else 0)
    page_list = PageArray(UMEM_CHUNK)
    got: list[np.ndarray] = []
    cur_base = addr & PAGE_MASK
    left = npages
    ret = 0
    while left:
        pinned = current.pin_user_pages_fast(cur_base, min(left, UMEM_CHUNK), gup_flags,
                                             page_list)
        if pinned <= 0:
            # the kernel tests < 0; a 0 would loop forever there, so it is an error here
            ret = pinned or -EFAULT
            break
        got.append(page_list.pfns[:pinned].copy())
        cur_base += pinned * PAGE_SIZE
        left -= pinned
    umem.pfns = np.concatenate(got) if got else np.zeros(0, dtype=np.int64)
    umem.seg_starts = contiguous_runs(umem.pfns, max(1, device.max_seg_size >> PAGE_SHIFT))
    if ret:
        __ib_umem_release(device, umem, False)
        mm.pinned_vm -= npages
        return ret
    return umem


def __ib_umem_release(device: IbDevice, umem: IbUmem, dirty: bool) -> None:
    """Unpin every sg segment with one range call, dirtying if the region was writable
    (many short segments: one vectorised call, see drivers/runs.py)."""
    umem.released = True
    unpin_runs(device.k, umem.pfns, umem.seg_starts, dirty and umem.writable)


def ib_umem_release(umem: IbUmem | int | None) -> None:
    """Unpin (dirtying writable regions) and uncharge pinned_vm; NULL and ERR_PTR are ignored."""
    if umem is None or IS_ERR(umem):
        return
    assert isinstance(umem, IbUmem)
    if umem.released:
        umem.device.k.warnings.warn_on_once(True, "ib_umem_release: released twice",
                                            "the umem was already released (use after free)")
        return
    __ib_umem_release(umem.device, umem, True)
    umem.mm.pinned_vm -= ib_umem_num_pages(umem)


# -- the process side: ibv_reg_mr() / ibv_dereg_mr() -----------------------------------------


@dataclass(eq=False)
class IbMr:
    """A registered memory region: the keys a device uses, the umem behind them."""

    context: IbContext
    lkey: int
    rkey: int
    iova: int
    length: int
    access: int
    umem: IbUmem


class IbContext:
    """A process's open uverbs device (ibv_open_device), with one protection domain."""

    def __init__(self, device: IbDevice, proc: Process) -> None:
        check_owner("ibv_open_device", "proc", proc, device.k)
        self.device = device
        self.proc = proc
        self.mrs: list[IbMr] = []

    def close(self) -> None:
        """Closing the device file deregisters every region left (uverbs cleanup)."""
        for mr in list(self.mrs):
            ibv_dereg_mr(mr)


def ibv_open_device(device: IbDevice, proc: Process) -> IbContext:
    """Open the device for a process (the uverbs character device)."""
    return IbContext(device, proc)


def ibv_reg_mr(ctx: IbContext, addr: int, length: int, access: int) -> IbMr:
    """Register [addr, addr+length) for device access; raises OSError with the errno.

    uverbs checks the access flags first (ib_check_mr_access: remote write or atomics
    need local write, -EINVAL; ON_DEMAND needs an ODP-capable device, -EOPNOTSUPP), then
    the driver's reg_user_mr calls ib_umem_get().
    """
    check_ints("ibv_reg_mr", addr=addr, length=length, access=access)
    if access & (IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_ATOMIC) and \
            not access & IB_ACCESS_LOCAL_WRITE:
        raise OSError(EINVAL, "ibv_reg_mr: remote write and atomic access need "
                      "IBV_ACCESS_LOCAL_WRITE too")
    if access & IB_ACCESS_ON_DEMAND:
        raise OSError(EOPNOTSUPP, f"ibv_reg_mr: {ctx.device.name} has no on-demand paging "
                      "in this model: register without IBV_ACCESS_ON_DEMAND")
    umem = ib_umem_get(ctx.device, addr, length, access, current=ctx.proc)
    if IS_ERR(umem):
        rc = int(umem)  # type: ignore[arg-type]
        why = {-ENOMEM: "VmPin would exceed RLIMIT_MEMLOCK: raise the limit (ulimit -l) or "
                        "grant CAP_IPC_LOCK",
               -EPERM: "RLIMIT_MEMLOCK is 0 and the process lacks CAP_IPC_LOCK"}
        raise OSError(-rc, f"ibv_reg_mr: {why.get(rc, 'the buffer could not be pinned')}")
    assert isinstance(umem, IbUmem)
    key = next(ctx.device._keys)
    mr = IbMr(ctx, key, key, addr, length, access, umem)
    ctx.device.mrs[key] = mr
    ctx.mrs.append(mr)
    return mr


def ibv_dereg_mr(mr: IbMr) -> None:
    """Deregister a region: the device loses the keys, the pages are unpinned and uncharged."""
    if mr not in mr.context.mrs:
        raise OSError(EINVAL, "ibv_dereg_mr: the region is not registered (deregistered twice?)")
    mr.context.mrs.remove(mr)
    del mr.context.device.mrs[mr.lkey]
    ib_umem_release(mr.umem)
