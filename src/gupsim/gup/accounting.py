"""Accounting of pinned memory against RLIMIT_MEMLOCK (spec 8).

GUP itself charges nothing; long-term users charge `mm->locked_vm` through
`account_locked_vm()` (VFIO) or `mm->pinned_vm` (RDMA, io_uring; shown as VmPin).
CAP_IPC_LOCK lifts the limit; the counters are still updated.
"""

from __future__ import annotations

from ..constants import CAP_IPC_LOCK, ENOMEM
from ..mm import MM, Cred
from ..mm.mm_struct import rlimit_pages


def __account_locked_vm(mm: MM, pages: int, inc: bool, cred: Cred, bypass_rlim: bool) -> int:
    """Charge or uncharge `pages` to mm->locked_vm; the caller holds mmap_lock for write."""
    if inc:
        if not bypass_rlim and mm.locked_vm + pages > rlimit_pages(cred.rlimit_memlock):
            return -ENOMEM
        mm.locked_vm += pages
        return 0
    mm.mem.warnings.warn_on_once(pages > mm.locked_vm, "__account_locked_vm: underflow",
                                 f"uncharging {pages} pages from locked_vm={mm.locked_vm}")
    mm.locked_vm = max(0, mm.locked_vm - pages)
    return 0


def account_locked_vm(mm: MM | None, pages: int, inc: bool, cred: Cred) -> int:
    """account_locked_vm(): 0 or -ENOMEM; `cred` is current's (limit and capabilities)."""
    if pages == 0 or mm is None:
        return 0
    mm.mmap_lock.writer = True
    try:
        return __account_locked_vm(mm, pages, inc, cred, cred.capable(CAP_IPC_LOCK))
    finally:
        mm.mmap_lock.writer = False


def account_pinned_vm(mm: MM, pages: int, cred: Cred) -> int:
    """The RDMA/vhost pattern: pinned_vm += pages unless over RLIMIT_MEMLOCK (-ENOMEM)."""
    new = mm.pinned_vm + pages
    if new > rlimit_pages(cred.rlimit_memlock) and not cred.capable(CAP_IPC_LOCK):
        return -ENOMEM
    mm.pinned_vm = new
    return 0


def unaccount_pinned_vm(mm: MM, pages: int) -> None:
    """The release half of `account_pinned_vm()`; clamps at 0 rather than underflow."""
    mm.pinned_vm = max(0, mm.pinned_vm - pages)
