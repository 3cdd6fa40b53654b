"""io_uring fixed buffers (io_uring/rsrc.c): long-term R/W pins with per-folio coalescing.

Registration pins every page with pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM); if the
buffer is made of equally sized large folios it keeps one pin per folio and drops the
rest at once (io_coalesce_buffer); it charges pages to mm->pinned_vm (VmPin) and, for a
task without CAP_IPC_LOCK, to the user's locked_vm under RLIMIT_MEMLOCK, counting a large
folio's full size once across all buffers (io_buffer_account_pin).

The ring's own memory is two regions of one page each (the SQ/CQ rings, and the SQE
array, of a small ring), charged to the user only (io_create_region). With
IORING_SETUP_NO_MMAP the process provides that memory (cq_off.user_addr for the rings,
sq_off.user_addr for the SQEs) and io_pin_pages() pins it long-term; a provided-buffer
ring registered without IOU_PBUF_RING_MMAP (IORING_REGISTER_PBUF_RING) is pinned the
same way. Both are charged to the user's locked_vm, never to mm->pinned_vm, so VmPin
and VmLck do not show them; their pins go at unregistration or when the ring closes.

Simplification: rings of a few entries only (each region one page). `close()` is the
teardown that io_ring_exit_work does; the kernel queues it on a workqueue when the ring
file is released, so its unpins come after close(2) returns: a caller that models that
queues `ring.close` with `Kernel.schedule_work()` (the scenario back-end does).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_ints, check_iovs, check_owner
from ..constants import (
    CAP_IPC_LOCK,
    FOLL_LONGTERM,
    FOLL_WRITE,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from ..memory import PageArray
from ..mm.mm_struct import UserStruct, rlimit_pages

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

IORING_MAX_REG_BUFFERS = 1 << 14
MAX_BUFFER = 1 << 30
RING_PAGES = 2                 # the rings region and the SQE region, one page each
IORING_SETUP_NO_MMAP = 1 << 14
RINGS_HEADER = 16      # offsetof(struct io_rings, sq_ring_mask): after sq/cq head and tail
RINGS_STRUCT = 64      # offsetof(struct io_rings, cqes): the CQEs start a cache line in
IOU_PBUF_RING_MMAP = 1
IOU_PBUF_RING_INC = 2
IO_URING_BUF_SIZE = 16         # struct io_uring_buf: one entry of a provided-buffer ring


@dataclass
class MappedRegion:
    """io_mapped_region: pages charged to the user and, if the process provided the
    memory (IO_REGION_F_USER_PROVIDED), the frames pinned for it."""

    nr_pages: int
    pfns: np.ndarray | None = None


@dataclass
class MappedBuffer:
    """io_mapped_ubuf: the pinned pages (one entry per bvec) and the pages charged."""

    ubuf: int
    length: int
    pfns: np.ndarray          # one pinned page per bvec (a folio's first page if coalesced)
    acct_pages: int
    coalesced: bool = False                        # one entry per folio instead of per page
    heads: set[int] = field(default_factory=set)   # large folios this buffer charged


class IoRing:
    """One io_uring instance of a process (io_uring_setup with a few entries); with
    `user_memory=(sq_user_addr, cq_user_addr)` it is set up with IORING_SETUP_NO_MMAP
    and its rings live in (and pin) the process's memory. Raises OSError as setup does."""

    def __init__(self, kernel: Kernel, proc: Process,
                 user_memory: tuple[int, int] | None = None, entries: int = 4) -> None:
        check_owner("io_uring_setup", "proc", proc, kernel)
        self.k = kernel
        self.p = proc
        self.buffers: list[MappedBuffer] | None = None
        self.pbuf_rings: dict[int, MappedRegion] = {}    # bgid -> its region
        # the user charged for ring and buffers; None for a task with CAP_IPC_LOCK
        self.user: UserStruct | None = (None if proc.cred.capable(CAP_IPC_LOCK)
                                         else kernel.user(proc.cred.uid))
        self.closed = False
        self._last_hpage = -1
        sq_addr, cq_addr = user_memory if user_memory is not None else (None, None)
        # io_allocate_scq_urings: the rings region first, then the SQEs; a failure of
        # the second frees the first
        self.regions = [self._create_region(cq_addr, PAGE_SIZE)]
        try:
            self.regions.append(self._create_region(sq_addr, PAGE_SIZE))
        except OSError:
            self._free_region(self.regions.pop())
            raise
        self._init_rings(entries)

    def _init_rings(self, entries: int) -> None:
        """The kernel fills in the ring header (struct io_rings) when it sets the rings
        up: after the SQ and CQ head/tail words, sq_ring_mask, cq_ring_mask,
        sq_ring_entries and cq_ring_entries (the CQ twice the SQ); every other field of
        the struct (heads, tails, flags, dropped and overflow counts, up to the CQEs at
        byte 64) starts at 0, as this kernel shows over memory the process had filled
        (`gupsim fuzz --seed 7`). With NO_MMAP the header lies in the process's pinned
        page, where a CPU read sees it."""
        pfns = self.regions[0].pfns
        if pfns is None:
            return
        fields = b"".join(n.to_bytes(4, "little")
                          for n in (entries - 1, 2 * entries - 1, entries, 2 * entries))
        header = bytes(RINGS_HEADER) + fields + bytes(RINGS_STRUCT - RINGS_HEADER - len(fields))
        self.k.dma_write(self.k.page(int(pfns[0])), 0, header)

    # -- regions: ring memory, in the kernel or provided by the process ---------------------

    def _create_region(self, user_addr: int | None, size: int) -> MappedRegion:
        """io_create_region: check, charge the user, and pin user-provided memory."""
        if user_addr is not None and user_addr == 0:
            raise OSError(errno.EFAULT, "a region in user memory needs a non-NULL address")
        if (user_addr or 0) % PAGE_SIZE or size % PAGE_SIZE:
            raise OSError(errno.EINVAL, "user memory for io_uring must be page aligned "
                          f"(address {user_addr or 0:#x}, {size} bytes)")
        if (user_addr or 0) + size >= 1 << 64:
            raise OSError(errno.EOVERFLOW, "the region wraps around the address space")
        nr = size // PAGE_SIZE
        if self.user is not None:
            self._charge_user(self.user, nr)
        region = MappedRegion(nr)
        if user_addr is not None:
            try:
                region.pfns = self._io_pin_pages(user_addr, nr)
            except OSError:
                self._free_region(region)
                raise
        return region

    def _io_pin_pages(self, addr: int, nr: int) -> np.ndarray:
        """io_pin_pages: every page long-term and writable, or none (-EFAULT if short)."""
        pages = PageArray(nr)
        got = self.p.pin_user_pages_fast(addr, nr, FOLL_WRITE | FOLL_LONGTERM, pages)
        if got == nr:
            return pages.pfns[:nr].copy()
        if got > 0:
            self.k.unpin_user_pages(pages[:got])
        raise OSError(errno.EFAULT if got >= 0 else -got,
                      "io_uring: could not pin the whole region")

    def _free_region(self, region: MappedRegion) -> None:
        """io_free_region: unpin user-provided pages, give back the user's charge."""
        if region.pfns is not None:
            self._unpin(region.pfns)
            region.pfns = None
        if self.user is not None and region.nr_pages:
            self.user.locked_vm -= region.nr_pages
        region.nr_pages = 0

    def pinned_pfns(self) -> np.ndarray:
        """Every frame this ring holds pinned: ring memory, buffer rings, fixed buffers."""
        parts = [r.pfns for r in self.regions + list(self.pbuf_rings.values())
                 if r.pfns is not None]
        parts += [b.pfns for b in self.buffers or []]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # -- IORING_REGISTER_PBUF_RING ----------------------------------------------------------

    def register_pbuf_ring(self, ring_addr: int, ring_entries: int, bgid: int,
                           flags: int = 0) -> None:
        """A provided-buffer ring for group `bgid`: in the process's memory at `ring_addr`
        (pinned), or with IOU_PBUF_RING_MMAP in the kernel's; OSError as the kernel."""
        if flags & ~(IOU_PBUF_RING_MMAP | IOU_PBUF_RING_INC):
            raise OSError(errno.EINVAL, f"unknown provided-buffer ring flags {flags:#x}")
        if ring_entries <= 0 or ring_entries & (ring_entries - 1) or ring_entries >= 1 << 16:
            raise OSError(errno.EINVAL, "ring_entries must be a power of two below 65536")
        if bgid in self.pbuf_rings:
            raise OSError(errno.EEXIST, f"buffer group {bgid} already has a ring")
        size = (ring_entries * IO_URING_BUF_SIZE + PAGE_SIZE - 1) & PAGE_MASK
        user_addr = None if flags & IOU_PBUF_RING_MMAP else ring_addr
        self.pbuf_rings[bgid] = self._create_region(user_addr, size)

    def unregister_pbuf_ring(self, bgid: int) -> None:
        """IORING_UNREGISTER_PBUF_RING: unpin the ring and give back its charge."""
        if bgid not in self.pbuf_rings:
            raise OSError(errno.ENOENT, f"buffer group {bgid} has no ring")
        self._free_region(self.pbuf_rings.pop(bgid))

    def _charge_user(self, user: UserStruct, pages: int) -> None:
        limit = rlimit_pages(self.p.cred.rlimit_memlock)
        if user.locked_vm + pages > limit:
            raise OSError(errno.ENOMEM, f"io_uring: {pages} more locked pages exceed "
                          f"RLIMIT_MEMLOCK ({self.p.cred.rlimit_memlock} bytes)")
        user.locked_vm += pages

    # -- IORING_REGISTER_BUFFERS -------------------------------------------------------------

    def register_buffers(self, iovs: list[tuple[int, int]]) -> None:
        """Register (address, length) buffers; raises OSError with io_uring's errno."""
        check_iovs("io_uring_register", "iovs", iovs)
        if self.buffers is not None:
            raise OSError(errno.EBUSY, "buffers are already registered: unregister first")
        if not iovs or len(iovs) > IORING_MAX_REG_BUFFERS:
            raise OSError(errno.EINVAL, f"register 1 to {IORING_MAX_REG_BUFFERS} buffers")
        self.buffers = []
        self._last_hpage = -1        # io_sqe_buffers_register's last_hpage
        try:
            for addr, length in iovs:
                self.buffers.append(self._register_one(addr, length))
        except OSError:
            self.unregister_buffers()
            raise

    def _register_one(self, addr: int, length: int) -> MappedBuffer:
        if addr == 0 and length == 0:        # io_buffer_validate: an empty (sparse) slot
            return MappedBuffer(0, 0, np.zeros(0, dtype=np.int64), 0)
        if addr == 0 or length == 0 or length > MAX_BUFFER:
            raise OSError(errno.EFAULT, "a buffer must be non-empty, at most 1 GiB, and not "
                          "NULL (NULL with length 0 is an empty slot)")
        if addr + ((length + PAGE_SIZE - 1) & PAGE_MASK) >= 1 << 64:
            raise OSError(errno.EOVERFLOW, "buffer wraps around the address space")
        start = addr & PAGE_MASK
        nr = ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)
        pages = PageArray(nr)
        got = self.p.pin_user_pages_fast(start, nr, FOLL_WRITE | FOLL_LONGTERM, pages)
        if got != nr:
            if got > 0:
                self.k.unpin_user_pages(pages[:got])
            raise OSError(errno.EFAULT if got >= 0 else -got,
                          "io_uring: could not pin the whole buffer")
        pfns = self._coalesce(pages.pfns.copy())
        buf = MappedBuffer(addr, length, pfns, 0, coalesced=len(pfns) != nr)
        try:
            self._account(buf)
        except OSError:
            self._unpin(pfns)
            raise
        return buf

    def _coalesce(self, pfns: np.ndarray) -> np.ndarray:
        """io_check_coalesce_buffer + io_coalesce_buffer: one pin per equally sized folio."""
        mem = self.k.mem
        if len(pfns) < 2:
            return pfns
        heads = mem.head_of(pfns)
        sizes = 1 << mem.order[heads].astype(np.int64)
        if sizes[0] == 1 or (sizes != sizes[0]).any():
            return pfns
        breaks = np.nonzero(heads[1:] != heads[:-1])[0] + 1
        if ((np.diff(pfns) != 1) & (heads[1:] == heads[:-1])).any():
            return pfns
        starts = np.concatenate([[0], breaks])
        counts = np.diff(np.concatenate([starts, [len(pfns)]]))
        # the first folio may start mid-folio and end at its last page, the middle ones are
        # whole, the last may stop early
        mid = counts[1:-1]
        first_end_ok = len(starts) == 1 or mem.head_off[pfns[starts[1] - 1]] == sizes[0] - 1
        if not first_end_ok or (mid != sizes[0]).any() or (
                len(starts) > 1 and (mem.head_off[pfns[starts[1:]]] != 0).any()):
            return pfns
        for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
            if c > 1:
                self.k.unpin_user_folio(self.k.page(int(pfns[s])).folio, c - 1)
        return pfns[starts]

    def _account(self, buf: MappedBuffer) -> None:
        """io_buffer_account_pin: small pages one each, a large folio's size once per
        buffer. Across the buffers of one registration only the last large folio seen
        (`last_hpage`) is remembered: the registration's table, which
        headpage_already_acct also searches, is installed only after every buffer, so a
        folio a later buffer shares with an earlier one (not its immediate predecessor's
        last) is charged again, as the kernel does."""
        mem = self.k.mem
        heads = mem.head_of(buf.pfns)
        large = mem.order[heads] > 0
        acct = int((~large).sum())
        order = heads[large].tolist()
        for i, h in enumerate(dict.fromkeys(order)):
            if i == 0 and h == self._last_hpage:
                continue
            buf.heads.add(h)
            acct += 1 << int(mem.order[h])
        if order:
            self._last_hpage = order[-1]
        if acct:
            if self.user is not None:
                self._charge_user(self.user, acct)
            self.p.mm.pinned_vm += acct
        buf.acct_pages = acct

    def unregister_buffers(self) -> None:
        """IORING_UNREGISTER_BUFFERS: unpin every buffer and give back its charge; ENXIO if none."""
        if self.buffers is None:
            raise OSError(errno.ENXIO, "no buffers are registered")
        for buf in self.buffers:
            self._unmap(buf)
        self.buffers = None

    def _unmap(self, buf: MappedBuffer) -> None:
        if buf.acct_pages:
            if self.user is not None:
                self.user.locked_vm -= buf.acct_pages
            self.p.mm.pinned_vm -= buf.acct_pages
        self._unpin(buf.pfns)

    def _unpin(self, pfns: np.ndarray) -> None:
        """One pin per bvec entry (a page, or a coalesced folio), released in one call."""
        if len(pfns):
            self.k.unpin_user_pages(PageArray(pfns.copy(), self.k.mem))

    # -- I/O through a registered buffer -------------------------------------------------------

    def _fixed_spans(self, what: str, index: int, length: int) -> list[tuple[int, int, int]]:
        """(pfn, offset, bytes) pieces of the first `length` bytes of registered buffer
        `index`, as io_import_fixed builds its bvec iterator; EFAULT as io_uring answers."""
        check_ints(what, index=index, length=length)
        if self.buffers is None or not 0 <= index < len(self.buffers):
            raise OSError(errno.EFAULT, f"no registered buffer {index}")
        buf = self.buffers[index]
        if buf.length == 0:
            raise OSError(errno.EFAULT, f"registered buffer {index} is an empty slot")
        if length > buf.length:
            raise OSError(errno.EFAULT, "length exceeds the registered buffer")
        mem = self.k.mem
        pages: list[int] = []
        for pfn in buf.pfns.tolist():
            if buf.coalesced:
                head = int(mem.head_of(pfn))
                pages.extend(range(pfn, head + mem.nr_pages_of(head)))
            else:
                pages.append(pfn)
        spans: list[tuple[int, int, int]] = []
        done, off = 0, buf.ubuf & ~PAGE_MASK
        for pfn in pages:
            if done >= length:
                break
            n = min(PAGE_SIZE - off, length - done)
            spans.append((pfn, off, n))
            done += n
            off = 0
        return spans

    def write_fixed(self, index: int, length: int) -> bytes:
        """IORING_OP_WRITE_FIXED: what a file would receive, read from the pinned pages."""
        return b"".join(self.k.dma_read(self.k.page(pfn), off, n)
                        for pfn, off, n in self._fixed_spans("write_fixed", index, length))

    def read_fixed(self, index: int, data: bytes) -> int:
        """IORING_OP_READ_FIXED: the device writes `data` (what the file held) into the
        pinned pages, whatever the process maps there now; the byte count."""
        done = 0
        for pfn, off, n in self._fixed_spans("read_fixed", index, len(data)):
            self.k.dma_write(self.k.page(pfn), off, data[done:done + n])
            done += n
        return done

    def close(self) -> None:
        """Closing the ring unregisters its buffers and buffer rings, and frees its own
        memory (unpinning it if the process provided it)."""
        if self.closed:
            return
        if self.buffers is not None:
            self.unregister_buffers()
        for bgid in list(self.pbuf_rings):
            self.unregister_pbuf_ring(bgid)
        for region in self.regions:
            self._free_region(region)
        self.closed = True
