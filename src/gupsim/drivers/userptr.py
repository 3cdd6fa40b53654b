"""GPU userptr objects that pin and listen (case 3, the pinning variant): i915_gem_userptr.c.

A process wraps a range of its memory in a GPU buffer object (the I915_GEM_USERPTR
ioctl). When the GPU first needs the object's pages (`get_pages`) the driver pins them
with `pin_user_pages_fast(FOLL_WRITE unless read-only)` (short of FOLL_LONGTERM, as
i915 did), inside the collision-retry protocol of an interval notifier registered at
creation; when an invalidation overlaps the object, the callback stores the seq, drops
the GPU's mapping and unpins the pages (dirtying them unless read-only), so the next
GPU access pins the pages the process maps then.

Era: this is i915 from v5.6 to v5.12 (pin_user_pages since the FOLL_PIN conversion of
v5.6; then a classic mmu_notifier with i915's own interval tree of objects, whose
invalidate_range_start unbound the object and put its pages; the model subscribes an
interval notifier, which delivers the same calls). From v5.13 i915 rewrote userptr on
mmu_interval_notifier: the callback stores the seq under the driver's notifier lock and
waits for the GPU to go idle, but the pages stay pinned until the next execbuf, which
sees the seq moved, unbinds and pins again (-EAGAIN to retry);
I915_USERPTR_UNSYNCHRONIZED is rejected from then on.

The wrong twin is that flag: `I915_USERPTR_UNSYNCHRONIZED` (CAP_SYS_ADMIN only) pinned
without any notifier, so after munmap (or mremap, or a new mapping at the same place)
the GPU keeps reading and writing frames the process no longer maps.

Simplifications: no GEM handles or GTT binding (`gpu_read`/`gpu_write` address the
object by offset), one object per call, the pin is taken on first GPU use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..constants import EINVAL, EPERM, PAGE_SHIFT, PAGE_SIZE
from ..gup import FOLL_WRITE
from ..memory import PageArray
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

if TYPE_CHECKING:
    from ..kernel import Kernel, Process
    from ..mm import MM

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)

I915_USERPTR_READ_ONLY = 0x1
I915_USERPTR_UNSYNCHRONIZED = 0x80000000
_MAX_RETRIES = 100
CAP_SYS_ADMIN = 21                  # include/uapi/linux/capability.h


class UserptrObject:
    """A userptr GEM object: [addr, addr + size) of a process, pinned while the GPU uses it."""

    def __init__(self, kernel: Kernel, proc: Process, addr: int, size: int, flags: int) -> None:
        self.k = kernel
        self.proc = proc
        self.addr = addr
        self.size = size
        self.flags = flags
        self.readonly = bool(flags & I915_USERPTR_READ_ONLY)
        self.pages: PageArray | None = None      # pinned pages while the GPU may use them
        self.lock_held = False
        self.pins = 0                            # get_pages() calls that pinned
        self.unpins_by_notifier = 0
        self.notifier: MmuIntervalNotifier | None = None
        self.closed = False

    @property
    def mm(self) -> MM:
        """The address space the object wraps."""
        return self.proc.mm

    @property
    def npages(self) -> int:
        """Pages of the object."""
        return self.size >> PAGE_SHIFT

    def __repr__(self) -> str:
        state = "pinned" if self.pages is not None else "unpinned"
        return f"<userptr {self.addr:#x}+{self.size:#x} {state}>"

    # -- the notifier ---------------------------------------------------------------------

    def invalidate(self, sub: MmuIntervalNotifier, range: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """Store the seq; unbind from the GPU and unpin (the 5.6 - 5.12 behaviour)."""
        if self.lock_held and not mmu_notifier_range_blockable(range):
            return False
        mmu_interval_set_seq(sub, cur_seq)
        if self.pages is not None:
            self._put_pages()
            self.unpins_by_notifier += 1
        return True

    # -- pages ------------------------------------------------------------------------------

    def _put_pages(self) -> None:
        pages, self.pages = self.pages, None
        if pages is not None:
            self.k.unpin_user_pages_dirty_lock(pages, self.npages, not self.readonly)

    def get_pages(self) -> int:
        """Pin the pages for the GPU (retrying if an invalidation ran meanwhile): 0 or -errno."""
        if self.pages is not None:
            return 0
        gup_flags = 0 if self.readonly else FOLL_WRITE
        for _ in range(_MAX_RETRIES):
            seq = mmu_interval_read_begin(self.notifier) if self.notifier is not None else 0
            pages = PageArray(self.npages)
            got = self.proc.pin_user_pages_fast(self.addr, self.npages, gup_flags, pages)
            if got != self.npages:
                if got > 0:
                    self.k.unpin_user_pages(pages, got)
                return got if got < 0 else -EINVAL
            self.lock_held = True
            try:
                if self.notifier is not None and mmu_interval_read_retry(self.notifier, seq):
                    self.k.unpin_user_pages(pages, got)
                    continue
                self.pages = pages
                self.pins += 1
                return 0
            finally:
                self.lock_held = False
        return -EINVAL

    def _spans(self, off: int, n: int) -> list[tuple[int, int, int, int]]:
        assert self.pages is not None
        out = []
        done = 0
        while done < n:
            i, poff = divmod(off + done, PAGE_SIZE)
            take = min(PAGE_SIZE - poff, n - done)
            out.append((int(self.pages.pfns[i]), poff, done, done + take))
            done += take
        return out

    def gpu_read(self, off: int, n: int) -> bytes | int:
        """The GPU reads the object (pinning first if it has no pages): bytes or -errno."""
        if off < 0 or off + n > self.size:
            return -EINVAL
        ret = self.get_pages()
        if ret:
            return ret
        return b"".join(self.k.dma_read(self.k.page(pfn), poff, hi - lo)
                        for pfn, poff, lo, hi in self._spans(off, n))

    def gpu_write(self, off: int, data: bytes) -> int:
        """The GPU writes the object: 0, or -EPERM for a read-only object, or -errno."""
        if self.readonly:
            return -EPERM
        if off < 0 or off + len(data) > self.size:
            return -EINVAL
        ret = self.get_pages()
        if ret:
            return ret
        for pfn, poff, lo, hi in self._spans(off, len(data)):
            self.k.dma_write(self.k.page(pfn), poff, data[lo:hi])
        return 0

    def close(self) -> None:
        """GEM close: unsubscribe, then unpin what is still pinned."""
        if self.closed:
            return
        if self.notifier is not None:
            mmu_interval_notifier_remove(self.notifier)
        self._put_pages()
        self.closed = True

    # -- for the invariants (mirror_frames.py, pinned_frames.py) ----------------------------

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(virtual addresses, frames, writable) the GPU reaches now."""
        if self.pages is None:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0, dtype=bool)
        va = self.addr + (np.arange(self.npages, dtype=np.int64) << PAGE_SHIFT)
        return va, self.pages.pfns[:self.npages].copy(), np.full(self.npages, not self.readonly)

    def pinned_pfns(self) -> np.ndarray:
        """The frames pinned now (empty while unpinned)."""
        if self.pages is None:
            return np.zeros(0, dtype=np.int64)
        return self.pages.pfns[:self.npages]


def i915_gem_userptr_ioctl(kernel: Kernel, proc: Process, user_ptr: int, user_size: int,
                           flags: int = 0) -> UserptrObject:
    """I915_GEM_USERPTR: wrap [user_ptr, user_ptr + user_size); raises OSError as the ioctl.

    EINVAL: not page aligned, empty, or unknown flags; EPERM: UNSYNCHRONIZED without
    CAP_SYS_ADMIN; a notifier's registration error.
    """
    if flags & ~(I915_USERPTR_READ_ONLY | I915_USERPTR_UNSYNCHRONIZED):
        raise OSError(EINVAL, "I915_GEM_USERPTR: unknown flags")
    if (user_ptr | user_size) & (PAGE_SIZE - 1) or user_size == 0:
        raise OSError(EINVAL, "I915_GEM_USERPTR: the range must be page aligned and not empty")
    obj = UserptrObject(kernel, proc, user_ptr, user_size, flags)
    if flags & I915_USERPTR_UNSYNCHRONIZED:
        if proc.cred.uid != 0 and not proc.cred.capable(CAP_SYS_ADMIN):
            raise OSError(EPERM, "I915_USERPTR_UNSYNCHRONIZED needs CAP_SYS_ADMIN")
        return obj                      # no notifier: the bug the flag allowed
    obj.notifier = MmuIntervalNotifier()
    ret = mmu_interval_notifier_insert(obj.notifier, proc.mm, user_ptr, user_size, obj)
    if ret:
        raise OSError(-ret, "I915_GEM_USERPTR: could not register the MMU notifier")
    return obj


__all__ = ["I915_USERPTR_READ_ONLY", "I915_USERPTR_UNSYNCHRONIZED", "UserptrObject",
           "i915_gem_userptr_ioctl"]
