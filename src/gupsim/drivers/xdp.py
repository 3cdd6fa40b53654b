"""AF_XDP UMEM registration (net/xdp/xdp_umem.c): long-term pins on the slow path.

XDP_UMEM_REG charges the pages to the user's locked_vm (not to VmPin) unless the task
has CAP_IPC_LOCK (-ENOBUFS past RLIMIT_MEMLOCK), then pins them with
pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) under mmap_lock; a short pin is -ENOMEM.
Closing the socket unpins them, dirtied (the device may have written them), and
uncharges them, but not at once: the socket is freed after an RCU grace period
(SOCK_RCU_FREE) and its destructor queues the umem release on a workqueue
(xdp_put_umem with defer_cleanup), so the counters move after close() has returned.
The model queues the release with `Kernel.schedule_work()`; it happens at
`Kernel.flush_scheduled_work()` (the scenario back-end flushes while a step settles).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_ints, check_owner
from ..constants import CAP_IPC_LOCK, FOLL_LONGTERM, FOLL_WRITE, PAGE_SHIFT, PAGE_SIZE
from ..memory import PageArray
from ..mm.mm_struct import UserStruct, mmap_read_locked, rlimit_pages

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

XDP_UMEM_MIN_CHUNK_SIZE = 2048


class XdpSocket:
    """An AF_XDP socket of a process: at most one UMEM, pinned long-term until close."""

    def __init__(self, kernel: Kernel, proc: Process) -> None:
        check_owner("socket(AF_XDP)", "proc", proc, kernel)
        self.k = kernel
        self.p = proc
        self.pages: PageArray | None = None
        self.charged = 0
        self.user: UserStruct | None = None    # charged for the UMEM (no CAP_IPC_LOCK)
        self.closed = False

    def umem_reg(self, addr: int, length: int, chunk_size: int = PAGE_SIZE) -> None:
        """setsockopt(XDP_UMEM_REG): charge locked_vm (no CAP_IPC_LOCK), pin it all or undo both."""
        check_ints("umem_reg", addr=addr, length=length, chunk_size=chunk_size)
        if self.pages is not None:
            raise OSError(errno.EBUSY, "this socket already has a UMEM")
        if chunk_size < XDP_UMEM_MIN_CHUNK_SIZE or chunk_size > PAGE_SIZE or \
                chunk_size & (chunk_size - 1):
            raise OSError(errno.EINVAL, "chunk size must be a power of two, 2 KiB to 4 KiB")
        if addr % PAGE_SIZE or length <= 0 or length % chunk_size:
            raise OSError(errno.EINVAL, "the UMEM must be page aligned and whole chunks long")
        npgs = length >> PAGE_SHIFT
        if not self.p.cred.capable(CAP_IPC_LOCK):
            user = self.user = self.k.user(self.p.cred.uid)
            if user.locked_vm + npgs > rlimit_pages(self.p.cred.rlimit_memlock):
                raise OSError(errno.ENOBUFS, "UMEM exceeds RLIMIT_MEMLOCK")
            user.locked_vm += npgs
            self.charged = npgs
        pages = PageArray(npgs)
        mm = self.p.mm
        with mmap_read_locked(mm):
            got = self.p.pin_user_pages(addr, npgs, FOLL_WRITE | FOLL_LONGTERM, pages)
        if got != npgs:
            if got > 0:
                self.k.unpin_user_pages(pages[:got])
            self._uncharge()
            raise OSError(errno.ENOMEM if got >= 0 else -got, "could not pin the whole UMEM")
        self.pages = pages

    def pinned_pfns(self) -> np.ndarray:
        """The UMEM's frames, pinned until the deferred release ran (the drivers'
        invariant, drivers/pinned_frames.py); empty without a UMEM."""
        if self.pages is None:
            return np.zeros(0, dtype=np.int64)
        return self.pages.pfns[:len(self.pages)].copy()

    def _uncharge(self) -> None:
        if self.user is not None:
            self.user.locked_vm -= self.charged
        self.charged = 0

    def close(self) -> None:
        """Close the socket: the UMEM's release (unpin dirtied, uncharge) is queued as
        deferred work, as xsk_destruct() -> xdp_put_umem() queues it."""
        if self.closed:
            return
        self.closed = True
        self.k.schedule_work(self._release)

    def _release(self) -> None:
        """xdp_umem_release(): unpin the UMEM dirtied (the device may have written it)."""
        if self.pages is not None:
            self.k.unpin_user_pages_dirty_lock(self.pages, True)
            self.pages = None
        self._uncharge()
