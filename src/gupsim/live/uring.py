"""A minimal io_uring, by raw system calls, for fixed (registered) buffers.

`IORING_REGISTER_BUFFERS` pins every page of each buffer with
`pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)` and charges them to VmPin (and, for
a process without CAP_IPC_LOCK, to RLIMIT_MEMLOCK); unregistering or closing the ring
releases them. `read_fixed()` / `write_fixed()` then do I/O from those pinned pages,
which is how a test checks *which* frame the kernel holds.

`IoUring(user_memory=(sq_addr, cq_addr))` sets the ring up with IORING_SETUP_NO_MMAP
(6.5+): the rings live at `cq_addr` and the SQE array at `sq_addr`, in the caller's
page-aligned memory, which the kernel pins long-term (io_pin_pages) until the ring is
closed. `register_pbuf_ring()` registers a provided-buffer ring in the caller's memory
(IOU_PBUF_RING_MMAP unset), pinned the same way until it is unregistered or the ring
closes. Neither shows in VmPin or VmLck: io_uring charges them to the user's locked_vm.

As liburing does, the ring's masks are read once at setup and the indices the user owns
(the SQ tail, the CQ head) are kept here and stored into the ring at each submission:
what else the process writes into its NO_MMAP ring memory cannot steer our accesses
out of the ring, nor (see `submit_and_wait`) the kernel's wait. A process that moves
that memory (mremap) says so with `moved()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import weakref

from . import libc

IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
IORING_REGISTER_PBUF_RING = 22
IORING_UNREGISTER_PBUF_RING = 23
IORING_SETUP_NO_MMAP = 1 << 14
IOU_PBUF_RING_MMAP = 1
IORING_OP_READ_FIXED = 4
IORING_OP_WRITE_FIXED = 5
IORING_ENTER_GETEVENTS = 1
IORING_FEAT_SINGLE_MMAP = 1
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
SQE_SIZE = 64
CQE_SIZE = 16

u32 = ctypes.c_uint32


class io_sqring_offsets(ctypes.Structure):  # noqa: N801 - the kernel's name
    """Where head, tail, mask and the index array sit in the mapped submission ring."""

    _fields_ = [("head", u32), ("tail", u32), ("ring_mask", u32), ("ring_entries", u32),
                ("flags", u32), ("dropped", u32), ("array", u32), ("resv1", u32),
                ("user_addr", ctypes.c_uint64)]


class io_cqring_offsets(ctypes.Structure):  # noqa: N801
    """Where head, tail, mask and the CQE array sit in the mapped completion ring."""

    _fields_ = [("head", u32), ("tail", u32), ("ring_mask", u32), ("ring_entries", u32),
                ("overflow", u32), ("cqes", u32), ("flags", u32), ("resv1", u32),
                ("user_addr", ctypes.c_uint64)]


class io_uring_params(ctypes.Structure):  # noqa: N801
    """struct io_uring_params: io_uring_setup()'s in/out argument (sizes, features, offsets)."""

    _fields_ = [("sq_entries", u32), ("cq_entries", u32), ("flags", u32),
                ("sq_thread_cpu", u32), ("sq_thread_idle", u32), ("features", u32),
                ("wq_fd", u32), ("resv", u32 * 3), ("sq_off", io_sqring_offsets),
                ("cq_off", io_cqring_offsets)]


class io_uring_sqe(ctypes.Structure):  # noqa: N801 - the fields a fixed read/write uses
    """One submission queue entry (64 bytes), laid out for IORING_OP_READ/WRITE_FIXED."""

    _fields_ = [("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("ioprio", ctypes.c_uint16), ("fd", ctypes.c_int32), ("off", ctypes.c_uint64),
                ("addr", ctypes.c_uint64), ("len", u32), ("rw_flags", u32),
                ("user_data", ctypes.c_uint64), ("buf_index", ctypes.c_uint16),
                ("personality", ctypes.c_uint16), ("splice_fd_in", ctypes.c_int32),
                ("addr3", ctypes.c_uint64), ("pad", ctypes.c_uint64)]


class io_uring_cqe(ctypes.Structure):  # noqa: N801
    """One completion queue entry: the request's user_data and its result (bytes or -errno)."""

    _fields_ = [("user_data", ctypes.c_uint64), ("res", ctypes.c_int32), ("flags", u32)]


class io_uring_buf_reg(ctypes.Structure):  # noqa: N801
    """IORING_(UN)REGISTER_PBUF_RING's argument: where the ring is, its size, its group."""

    _fields_ = [("ring_addr", ctypes.c_uint64), ("ring_entries", u32),
                ("bgid", ctypes.c_uint16), ("flags", ctypes.c_uint16),
                ("resv", ctypes.c_uint64 * 3)]


assert ctypes.sizeof(io_uring_buf_reg) == 40
assert ctypes.sizeof(io_uring_params) == 120 and ctypes.sizeof(io_uring_sqe) == SQE_SIZE


def _close_ring(fd: int, maps: list[tuple[int, int]]) -> None:
    for addr, length in maps:
        with contextlib.suppress(OSError):
            libc.munmap(addr, length)
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)  # drops the ring, and with it any registered buffers


class IoUring:
    """An io_uring instance; closing it unmaps the rings and releases every pin it holds."""

    def __init__(self, entries: int = 4, user_memory: tuple[int, int] | None = None) -> None:
        if entries < 1 or entries & (entries - 1):
            raise ValueError(f"entries must be a power of two >= 1, got {entries}")
        self.entries = entries
        self.user_memory = user_memory   # (sq_off.user_addr, cq_off.user_addr): NO_MMAP
        self.fd = -1
        self.params = io_uring_params()
        self.buffers: list[tuple[int, int]] = []
        self._maps: list[tuple[int, int]] = []
        self._finalizer: weakref.finalize | None = None
        self._user_data = 0
        self._sq_tail = self._cq_head = 0      # the indices the user owns (see the module)
        self._sq_mask = self._cq_mask = 0
        self.sq_ring = self.cq_ring = self.sqes = 0      # addresses, once set up

    def __enter__(self) -> IoUring:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """io_uring_setup() and map the rings."""
        libc.check_arch()
        if self.user_memory is not None:
            self.params.flags |= IORING_SETUP_NO_MMAP
            self.params.sq_off.user_addr, self.params.cq_off.user_addr = self.user_memory
        try:
            self.fd = libc.syscall(libc.SYS_io_uring_setup, self.entries, self.params,
                                   name="io_uring_setup")
        except OSError as exc:
            hint: dict[int | None, str] = {
                errno.ENOSYS: "the kernel has no io_uring (CONFIG_IO_URING=n)",
                errno.EPERM: "io_uring is disabled: see /proc/sys/kernel/io_uring_disabled"}
            raise OSError(exc.errno, f"{exc.strerror}; {hint.get(exc.errno, '')}") from exc
        self._finalizer = weakref.finalize(self, _close_ring, self.fd, self._maps)
        try:
            self._map_rings()
        except BaseException:
            self.close()
            raise
        self._sq_mask = self._u32(self.sq_ring, self.params.sq_off.ring_mask).value
        self._cq_mask = self._u32(self.cq_ring, self.params.cq_off.ring_mask).value

    def moved(self, old: int, length: int, new: int) -> None:
        """The process moved [old, old+length) to `new` (mremap): its NO_MMAP ring memory
        in that range is now reached there (the kernel keeps the pinned pages)."""
        if self.user_memory is None:
            return

        def move(addr: int) -> int:
            return addr - old + new if old <= addr < old + length else addr
        self.sqes, self.sq_ring = move(self.sqes), move(self.sq_ring)
        self.cq_ring = self.sq_ring
        self.user_memory = (self.sqes, self.sq_ring)

    def _map_rings(self) -> None:
        p = self.params
        if self.user_memory is not None:     # the rings are in our memory already
            self.sqes, self.sq_ring = self.user_memory
            self.cq_ring = self.sq_ring
            return
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * CQE_SIZE
        rw, shared = libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_POPULATE
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        self.sq_ring = libc.mmap(0, sq_size, rw, shared, self.fd, IORING_OFF_SQ_RING)
        self._maps.append((self.sq_ring, sq_size))
        if p.features & IORING_FEAT_SINGLE_MMAP:
            self.cq_ring = self.sq_ring
        else:
            self.cq_ring = libc.mmap(0, cq_size, rw, shared, self.fd, IORING_OFF_CQ_RING)
            self._maps.append((self.cq_ring, cq_size))
        sqes_size = p.sq_entries * SQE_SIZE
        self.sqes = libc.mmap(0, sqes_size, rw, shared, self.fd, IORING_OFF_SQES)
        self._maps.append((self.sqes, sqes_size))

    def close(self) -> None:
        """Unmap the rings and close the fd; idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        self.fd = -1
        self.buffers = []

    def _need_open(self) -> None:
        if self.fd < 0:
            raise ValueError("the ring is closed; use it inside its `with` block")

    # -- fixed buffers --------------------------------------------------------------------
    def register_buffers(self, buffers: list[tuple[int, int]]) -> None:
        """IORING_REGISTER_BUFFERS: pin each (address, length) buffer, long-term.

        Raises OSError with the kernel's errno: EFAULT for memory that cannot be pinned
        long-term (e.g. a MAP_SHARED mapping of an ext4 file), ENOMEM over
        RLIMIT_MEMLOCK, EBUSY if buffers are already registered, EINVAL for an empty
        list (the kernel's answer, as the model gives it).
        """
        self._need_open()
        iov = libc.iovecs(buffers)
        try:
            libc.syscall(libc.SYS_io_uring_register, self.fd, IORING_REGISTER_BUFFERS, iov,
                         len(buffers), name="io_uring_register(REGISTER_BUFFERS)")
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} registering {len(buffers)} buffer(s) "
                          f"{[(hex(a), n) for a, n in buffers][:4]}") from exc
        self.buffers = list(buffers)

    def unregister_buffers(self) -> None:
        """IORING_UNREGISTER_BUFFERS: release every registered buffer's pins."""
        self._need_open()
        libc.syscall(libc.SYS_io_uring_register, self.fd, IORING_UNREGISTER_BUFFERS, None, 0,
                     name="io_uring_register(UNREGISTER_BUFFERS)")
        self.buffers = []

    # -- provided-buffer rings ---------------------------------------------------------------
    def _pbuf(self, op: int, reg: io_uring_buf_reg, what: str) -> None:
        self._need_open()
        libc.syscall(libc.SYS_io_uring_register, self.fd, op, reg, 1,
                     name=f"io_uring_register({what}, bgid={reg.bgid})")

    def register_pbuf_ring(self, addr: int, entries: int, bgid: int, flags: int = 0) -> None:
        """IORING_REGISTER_PBUF_RING: a ring of `entries` 16-byte entries at `addr` for
        buffer group `bgid`, pinned long-term (unless IOU_PBUF_RING_MMAP). OSError:
        EINVAL for an unaligned address or a bad size, EEXIST for a group that has one."""
        reg = io_uring_buf_reg(ring_addr=addr, ring_entries=entries, bgid=bgid, flags=flags)
        self._pbuf(IORING_REGISTER_PBUF_RING, reg, "REGISTER_PBUF_RING")

    def unregister_pbuf_ring(self, bgid: int) -> None:
        """IORING_UNREGISTER_PBUF_RING: release group `bgid`'s ring (ENOENT if none)."""
        self._pbuf(IORING_UNREGISTER_PBUF_RING, io_uring_buf_reg(bgid=bgid),
                   "UNREGISTER_PBUF_RING")

    # -- one request at a time ------------------------------------------------------------
    def _u32(self, base: int, offset: int) -> ctypes.c_uint32:
        return ctypes.c_uint32.from_address(base + offset)

    def submit_and_wait(self, opcode: int, fd: int, addr: int, length: int, offset: int,
                        buf_index: int = 0) -> int:
        """Submit one SQE, wait for its CQE and return `res` (bytes, or -errno)."""
        self._need_open()
        idx = self._sq_tail & self._sq_mask
        sqe = io_uring_sqe.from_address(self.sqes + idx * SQE_SIZE)
        before = ctypes.string_at(ctypes.addressof(sqe), SQE_SIZE)
        try:
            return self._submit(sqe, idx, opcode, fd, addr, length, offset, buf_index)
        finally:     # the kernel copied the SQE at submission: the slot gets back what
            ctypes.memmove(ctypes.addressof(sqe), before, SQE_SIZE)   # it held before

    def _submit(self, sqe: io_uring_sqe, idx: int, opcode: int, fd: int, addr: int,
                length: int, offset: int, buf_index: int) -> int:
        p = self.params
        ctypes.memset(ctypes.addressof(sqe), 0, SQE_SIZE)
        self._user_data += 1
        sqe.opcode, sqe.fd, sqe.off, sqe.addr = opcode, fd, offset, addr
        sqe.len, sqe.buf_index, sqe.user_data = length, buf_index, self._user_data
        self._u32(self.sq_ring, p.sq_off.array + idx * 4).value = idx
        self._sq_tail = (self._sq_tail + 1) & 0xFFFFFFFF
        # every earlier completion was consumed, so the CQ tail the kernel last stored
        # equals our CQ head: put it back, so that a store of ours over the ring cannot
        # make io_uring_enter's wait see a completion that is not there
        self._u32(self.cq_ring, p.cq_off.head).value = self._cq_head
        self._u32(self.cq_ring, p.cq_off.tail).value = self._cq_head
        # x86 is TSO; the syscall below orders the rest
        self._u32(self.sq_ring, p.sq_off.tail).value = self._sq_tail
        submitted = libc.syscall(libc.SYS_io_uring_enter, self.fd, 1, 1,
                                 IORING_ENTER_GETEVENTS, None, 0, name="io_uring_enter")
        if submitted == 0:    # it read the SQ tail from its own (pinned) pages
            raise OSError(errno.EIO, "io_uring_enter submitted nothing: the ring the kernel "
                          "reads is not the memory this process wrote its SQE to")
        cq_tail = self._u32(self.cq_ring, p.cq_off.tail).value
        if self._cq_head == cq_tail:
            raise OSError(errno.EIO, "io_uring_enter returned without a completion")
        cqe = io_uring_cqe.from_address(self.cq_ring + p.cq_off.cqes
                                        + (self._cq_head & self._cq_mask) * CQE_SIZE)
        res, user_data = cqe.res, cqe.user_data
        self._cq_head = (self._cq_head + 1) & 0xFFFFFFFF
        self._u32(self.cq_ring, p.cq_off.head).value = self._cq_head
        if user_data != self._user_data:
            raise OSError(errno.EIO, f"unexpected completion {user_data}, "
                          f"wanted {self._user_data}")
        return res

    def _fixed(self, opcode: int, fd: int, addr: int, length: int, offset: int,
               buf_index: int) -> int:
        if not 0 <= buf_index < len(self.buffers):
            raise ValueError(f"buf_index {buf_index} is not a registered buffer "
                             f"({len(self.buffers)} registered)")
        base, size = self.buffers[buf_index]
        if addr < base or addr + length > base + size:
            raise ValueError(f"[{addr:#x}, +{length}) is outside registered buffer "
                             f"{buf_index} [{base:#x}, +{size})")
        return self.submit_and_wait(opcode, fd, addr, length, offset, buf_index)

    def write_fixed(self, fd: int, addr: int, length: int, offset: int = 0,
                    buf_index: int = 0) -> int:
        """IORING_OP_WRITE_FIXED: write from registered buffer memory to `fd`; res."""
        return self._fixed(IORING_OP_WRITE_FIXED, fd, addr, length, offset, buf_index)

    def read_fixed(self, fd: int, addr: int, length: int, offset: int = 0,
                   buf_index: int = 0) -> int:
        """IORING_OP_READ_FIXED: read from `fd` into registered buffer memory; res."""
        return self._fixed(IORING_OP_READ_FIXED, fd, addr, length, offset, buf_index)


def no_mmap_supported() -> bool:
    """Whether this kernel takes IORING_SETUP_NO_MMAP (6.5+): a ring set up in two fresh
    pages of ours; False when setup answers EINVAL for a request that is valid."""
    size = 2 * libc.PAGE_SIZE
    mem = libc.mmap(0, size, libc.PROT_READ | libc.PROT_WRITE,
                    libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    try:
        with IoUring(1, user_memory=(mem + libc.PAGE_SIZE, mem)):
            return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    finally:
        libc.munmap(mem, size)
