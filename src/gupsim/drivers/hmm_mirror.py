"""A mirror device (case 3 of pin_user_pages.rst): lib/test_hmm.c's dmirror.

Opening the device (`DmirrorDevice.open(proc)`, dmirror_fops_open) subscribes an
interval notifier over the whole address space. The device has its own page table
(`Dmirror.pt`: virtual page -> frame, writable), empty at first. A device access
(`read`, `write`, the HMM_DMIRROR_READ / HMM_DMIRROR_WRITE commands) looks each page up
there; on a miss it takes a device fault (`cmd.faults += 1`) that runs the retry loop of
mm/hmm.py in chunks of 64 pages (mmu_interval_read_begin, mmap_read_lock,
hmm_range_fault with HMM_PFN_REQ_FAULT (| REQ_WRITE), then under the mirror's mutex
mmu_interval_read_retry, and only then the device entries), and replays the access.
Nothing is pinned and no page reference is held: the invalidate callback takes the
mutex (or fails a non-blockable range it cannot take it for), stores the seq and erases
the device entries of the range, so the device never uses a frame the process no
longer maps.

`DmirrorIgnoringInvalidation` is the wrong twin: its callback stores the seq (so its
own retry loop still ends) but keeps the entries, so after munmap, COW or migration the
device reads and writes frames the process no longer maps (or that were freed).

`snapshot()` is HMM_DMIRROR_SNAPSHOT: the CPU page table's state per page as
HMM_DMIRROR_PROT_* bytes, without faulting.

Simplifications: one mirror per open, no device-private memory (no
HMM_DMIRROR_MIGRATE_TO_DEV / _TO_SYS, no exclusive access); commands return the kernel helper's
0 / -errno in `DmirrorCmd.ret`; a command on an exited mm answers -EFAULT (the kernel's
dmirror_fault() returns 0 there and its loop would spin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constants import (
    EBUSY,
    EFAULT,
    EINVAL,
    ENOENT,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_ORDER,
    PUD_ORDER,
)
from ..mm.hmm import (
    HMM_PFN_ERROR,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HmmRange,
    hmm_pfn_to_map_order,
    hmm_pfn_to_pfn,
    hmm_range_fault,
)
from ..mm.mm_struct import mmap_read_locked
from ..mm.mmu_notifier import (
    ULONG_MAX,
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

__gupsim_call_site__ = True

DMIRROR_FAULT_CHUNK = 64            # pages per hmm_range_fault() call (its pfns[64])

# what HMM_DMIRROR_SNAPSHOT reports per page (lib/test_hmm_uapi.h)
HMM_DMIRROR_PROT_ERROR = 0xFF
HMM_DMIRROR_PROT_NONE = 0x00
HMM_DMIRROR_PROT_READ = 0x01
HMM_DMIRROR_PROT_WRITE = 0x02
HMM_DMIRROR_PROT_PMD = 0x04
HMM_DMIRROR_PROT_PUD = 0x08
HMM_DMIRROR_PROT_ZERO = 0x10
_MAX_RETRIES = 1000                 # the kernel's 1 s HMM_RANGE_DEFAULT_TIMEOUT, in tries


@dataclass
class DmirrorCmd:
    """struct hmm_dmirror_cmd: the request and what the device did (cpages, faults)."""

    addr: int
    npages: int
    ret: int = 0
    cpages: int = 0
    faults: int = 0
    data: bytes = b""


class DmirrorDevice:
    """/dev/hmm_dmirror0: each open() mirrors the opening process's address space."""

    def __init__(self, kernel: Kernel, name: str = "hmm_dmirror0") -> None:
        self.k = kernel
        self.name = name

    def open(self, proc: Process) -> Dmirror:
        """dmirror_fops_open(): a mirror of `proc`'s mm; raises OSError if it cannot subscribe."""
        return Dmirror(self, proc)


class Dmirror:
    """struct dmirror: the device page table of one open file and its notifier."""

    honours_invalidation = True

    def __init__(self, device: DmirrorDevice, proc: Process) -> None:
        self.device = device
        self.k = device.k
        self.proc = proc
        self.pt: dict[int, tuple[int, bool]] = {}    # virtual page -> (pfn, writable)
        self.mutex_held = False
        self.invalidations = 0
        self.notifier = MmuIntervalNotifier()
        ret = mmu_interval_notifier_insert(self.notifier, proc.mm, 0, ULONG_MAX & PAGE_MASK,
                                           self)
        if ret:
            raise OSError(-ret, "open /dev/hmm_dmirror: mmu_interval_notifier_insert failed")
        self.closed = False

    @property
    def mm(self) -> MM:
        """The mirrored address space."""
        return self.proc.mm

    def __repr__(self) -> str:
        return f"<Dmirror of pid {self.proc.pid}: {len(self.pt)} device entries>"

    # -- the notifier ---------------------------------------------------------------------

    def invalidate(self, sub: MmuIntervalNotifier, range: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """dmirror_interval_invalidate(): under the mutex, store the seq, erase entries."""
        if self.mutex_held and not mmu_notifier_range_blockable(range):
            return False                # mutex_trylock() failed on a non-blockable range
        mmu_interval_set_seq(sub, cur_seq)
        self.invalidations += 1
        self._do_update(range.start, range.end)
        return True

    def _do_update(self, start: int, end: int) -> None:
        """dmirror_do_update(): erase the device entries of [start, end)."""
        lo, hi = start >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT
        if hi - lo > len(self.pt):
            gone = [v for v in self.pt if lo <= v < hi]
        else:
            gone = [v for v in range(lo, hi) if v in self.pt]
        for v in gone:
            del self.pt[v]

    # -- device faults ----------------------------------------------------------------------

    def _range_fault(self, rng: HmmRange) -> int:
        """dmirror_range_fault(): the collision-retry loop, then the device entries."""
        mm = self.mm
        for _ in range(_MAX_RETRIES):
            rng.notifier_seq = mmu_interval_read_begin(rng.notifier)
            with mmap_read_locked(mm):
                ret = hmm_range_fault(rng)
            if ret == -EBUSY:
                continue
            if ret:
                return ret
            self.mutex_held = True
            try:
                if mmu_interval_read_retry(rng.notifier, rng.notifier_seq):
                    continue
                return self._do_fault(rng)
            finally:
                self.mutex_held = False
        return -EBUSY

    def _do_fault(self, rng: HmmRange) -> int:
        """dmirror_do_fault(): one device entry per page, writable if the CPU's is."""
        first = rng.start >> PAGE_SHIFT
        for i, e in enumerate(rng.hmm_pfns[:rng.npages].tolist()):
            bad = self.k.warnings.warn_on_once(bool(e & HMM_PFN_ERROR) or not e & HMM_PFN_VALID,
                                               "dmirror_do_fault: invalid entry",
                                               "hmm_range_fault succeeded with REQ_FAULT "
                                               "but returned an invalid pfn")
            if bad:
                return -EFAULT
            writable = bool(e & HMM_PFN_WRITE)
            if not writable and rng.default_flags & HMM_PFN_REQ_WRITE:
                return -EFAULT
            self.pt[first + i] = (hmm_pfn_to_pfn(e), writable)
        return 0

    def _fault(self, start: int, end: int, write: bool) -> int:
        """dmirror_fault(): fault [start, end) into the device page table, 64 pages a time."""
        if self.mm.dead or not self.proc.alive:
            return -EFAULT
        addr = start
        while addr < end:
            rng = HmmRange(self.notifier, addr, min(addr + DMIRROR_FAULT_CHUNK * PAGE_SIZE, end),
                           default_flags=HMM_PFN_REQ_FAULT | (HMM_PFN_REQ_WRITE if write else 0))
            ret = self._range_fault(rng)
            if ret:
                return ret
            addr = rng.end
        return 0

    # -- device access ----------------------------------------------------------------------

    def _access(self, addr: int, npages: int, write: bool, data: bytes) -> DmirrorCmd:
        cmd = DmirrorCmd(addr, npages)
        start = addr
        end = addr + (npages << PAGE_SHIFT)
        if addr % PAGE_SIZE or npages < 0 or end > ULONG_MAX:
            cmd.ret = -EINVAL
            return cmd
        out = bytearray()
        while True:
            ret = 0
            self.mutex_held = True
            try:
                for v in range(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
                    ent = self.pt.get(v)
                    if ent is None or (write and not ent[1]):
                        ret = -ENOENT
                        break
                    page = self.k.page(ent[0])
                    if write:
                        off = cmd.cpages << PAGE_SHIFT
                        self.k.dma_write(page, 0, data[off:off + PAGE_SIZE])
                    else:
                        out += self.k.dma_read(page, 0, PAGE_SIZE)
                    cmd.cpages += 1
            finally:
                self.mutex_held = False
            if ret != -ENOENT:
                break
            start = addr + (cmd.cpages << PAGE_SHIFT)
            ret = self._fault(start, end, write)
            if ret:
                break
            cmd.faults += 1
        cmd.ret = ret
        cmd.data = bytes(out)
        return cmd

    def read(self, addr: int, npages: int) -> DmirrorCmd:
        """HMM_DMIRROR_READ: the device reads npages from addr, faulting what it lacks."""
        return self._access(addr, npages, False, b"")

    def write(self, addr: int, data: bytes) -> DmirrorCmd:
        """HMM_DMIRROR_WRITE: the device writes `data` (whole pages) at addr."""
        if len(data) % PAGE_SIZE:
            raise ValueError(f"the device writes whole pages: {len(data)} bytes is not a "
                             f"multiple of {PAGE_SIZE}; pad the data")
        return self._access(addr, len(data) >> PAGE_SHIFT, True, bytes(data))

    def _mkentry(self, entry: int) -> int:
        """dmirror_mkentry(): one HMM_DMIRROR_PROT_* byte for an hmm_range_fault() entry."""
        if entry & HMM_PFN_ERROR:
            return HMM_DMIRROR_PROT_ERROR
        if not entry & HMM_PFN_VALID:
            return HMM_DMIRROR_PROT_NONE
        pfn = hmm_pfn_to_pfn(entry)
        perm = HMM_DMIRROR_PROT_ZERO if pfn == self.k.mem.zero_pfn else HMM_DMIRROR_PROT_NONE
        perm |= HMM_DMIRROR_PROT_WRITE if entry & HMM_PFN_WRITE else HMM_DMIRROR_PROT_READ
        order = hmm_pfn_to_map_order(entry)
        if order == PMD_ORDER:
            perm |= HMM_DMIRROR_PROT_PMD
        elif order == PUD_ORDER:
            perm |= HMM_DMIRROR_PROT_PUD
        return perm

    def snapshot(self, addr: int, npages: int) -> DmirrorCmd:
        """HMM_DMIRROR_SNAPSHOT: the CPU page table's state per page, faulting nothing.

        As dmirror_snapshot(): a temporary interval notifier over the range that only
        stores the seq, hmm_range_fault() without REQ_FAULT in chunks of 64 pages, one
        HMM_DMIRROR_PROT_* byte per page in `cmd.data`.
        """
        cmd = DmirrorCmd(addr, npages)
        end = addr + (npages << PAGE_SHIFT)
        if addr % PAGE_SIZE or npages <= 0 or end > ULONG_MAX:
            cmd.ret = -EINVAL
            return cmd
        out = bytearray()
        start = addr
        while start < end and not cmd.ret:
            stop = min(start + DMIRROR_FAULT_CHUNK * PAGE_SIZE, end)
            notifier = MmuIntervalNotifier()
            ret = mmu_interval_notifier_insert(notifier, self.mm, start, stop - start,
                                               _SnapshotOps(self))
            if ret:
                cmd.ret = ret
                break
            try:
                cmd.ret = self._snapshot_range(HmmRange(notifier, start, stop), out)
            finally:
                mmu_interval_notifier_remove(notifier)
            start = stop
        if not cmd.ret:
            cmd.cpages = npages
        cmd.data = bytes(out)
        return cmd

    def _snapshot_range(self, rng: HmmRange, out: bytearray) -> int:
        mm = self.mm
        for _ in range(_MAX_RETRIES):
            rng.hmm_pfns[:] = 0
            rng.notifier_seq = mmu_interval_read_begin(rng.notifier)
            with mmap_read_locked(mm):
                ret = hmm_range_fault(rng)
            if ret == -EBUSY:
                continue
            if ret:
                return ret
            if mmu_interval_read_retry(rng.notifier, rng.notifier_seq):
                continue
            out += bytes(self._mkentry(int(e)) for e in rng.hmm_pfns.tolist())
            return 0
        return -EBUSY

    def close(self) -> None:
        """dmirror_fops_release(): unsubscribe and drop the device page table."""
        if not self.closed:
            mmu_interval_notifier_remove(self.notifier)
            self.pt.clear()
            self.closed = True

    # -- for the invariant (drivers/mirror_frames.py) ------------------------------------

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(virtual addresses, frames, writable) of every device entry."""
        if not self.pt:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0, dtype=bool)
        v = np.fromiter(self.pt.keys(), dtype=np.int64, count=len(self.pt))
        vals = list(self.pt.values())
        pfns = np.fromiter((p for p, _ in vals), dtype=np.int64, count=len(vals))
        w = np.fromiter((x for _, x in vals), dtype=bool, count=len(vals))
        return v << PAGE_SHIFT, pfns, w


class _SnapshotOps:
    """dmirror_snapshot_invalidate(): only the seq (the snapshot programs nothing)."""

    def __init__(self, dmirror: Dmirror) -> None:
        self.dmirror = dmirror

    def invalidate(self, sub: MmuIntervalNotifier, range: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """Store the seq, under the mirror's mutex (trylock when not blockable)."""
        if self.dmirror.mutex_held and not mmu_notifier_range_blockable(range):
            return False
        mmu_interval_set_seq(sub, cur_seq)
        return True


class DmirrorIgnoringInvalidation(Dmirror):
    """The wrong twin: mirrors with hmm_range_fault() but keeps entries on invalidation."""

    honours_invalidation = False

    def _do_update(self, start: int, end: int) -> None:
        """Keeps every device entry: the bug this driver teaches."""


def dmirror_open(device: DmirrorDevice, proc: Process, *, ignore_invalidation: bool = False
                 ) -> Dmirror:
    """Open a mirror of `proc`: the right driver, or the twin that ignores invalidations."""
    cls = DmirrorIgnoringInvalidation if ignore_invalidation else Dmirror
    return cls(device, proc)


__all__ = ["DMIRROR_FAULT_CHUNK", "HMM_DMIRROR_PROT_ERROR", "HMM_DMIRROR_PROT_NONE",
           "HMM_DMIRROR_PROT_PMD", "HMM_DMIRROR_PROT_PUD", "HMM_DMIRROR_PROT_READ",
           "HMM_DMIRROR_PROT_WRITE", "HMM_DMIRROR_PROT_ZERO", "Dmirror", "DmirrorCmd",
           "DmirrorDevice", "DmirrorIgnoringInvalidation", "dmirror_open"]
