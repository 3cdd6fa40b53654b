"""The command server: what runs inside every scenario process on the host.

A scenario process is a forked child of the orchestrator (`scenarios/host.py`) that
receives requests over a socketpair (`scenarios/wire.py`), runs the primitive
`do_<operation>` of the declared operation (`scenarios/ops.py`) on its own address
space (its `HostMapping`s by region id, its io_uring rings, its AF_XDP sockets, its
O_DIRECT scratch file) and replies. `fork` makes the server itself fork, so the child
shares the server's memory copy-on-write exactly as the kernel does it; the new
server's end of a fresh socketpair goes back to the orchestrator with SCM_RIGHTS.

CPU accesses (read, write, populate) go through a pipe (`copy_to/from_user`), which
takes the same page faults as the CPU but turns a would-be SIGSEGV/SIGBUS into EFAULT,
so a faulting access is reported (with the signal the CPU would have got) instead of
killing the server.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import signal
import socket
import tempfile
import traceback
from collections.abc import Iterable
from typing import Any

from ..constants import CAP_SYS_RESOURCE
from ..live import libc
from ..live.capabilities import soft_dirty_reason
from ..live.errors import HostUnsupported
from ..live.hostmem import HostMapping, kpageflags, pagemap
from ..live.kvm import KvmGuest
from ..live.odirect import DirectFile, user_buffer
from ..live.procvm import read_remote, write_remote
from ..live.uffd import read_pinned_while
from ..live.uring import (
    IORING_OP_READ_FIXED,
    IORING_OP_WRITE_FIXED,
    IoUring,
    no_mmap_supported,
)
from ..live.vmstat import forget_inherited_lock
from ..live.xdp import XdpUmem
from . import wire
from .holes import Holes, keeping_holes
from .identity import PageSeen, encode
from .ops import OPS
from .records import MTHP_KINDS, ProtocolError

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
SPLICE_F_NONBLOCK = 2
MAP_FIXED_NOREPLACE = 0x100000

HUGE_2M = 2 << 20
SCRATCH_SIZE = 4 << 20        # the O_DIRECT scratch file, as the model's
EXIT_BROKEN = 70              # a server that could not start or continue exits with this

_REPLIED = object()           # a primitive that sent its reply itself (fork, exit)


class Fault(Exception):
    """A CPU access that the kernel would answer with a signal."""

    def __init__(self, sig: str, addr: int, why: str) -> None:
        super().__init__(sig, addr, why)
        self.sig, self.addr, self.why = sig, addr, why


def fault_at(addr: int, write: bool) -> Fault:
    """Name the signal a CPU access at `addr` would get, from /proc/self/maps."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= addr < hi:
                if write and perms[1] != "w":
                    return Fault("SIGSEGV", addr, "write to a mapping without PROT_WRITE")
                if not write and perms[0] != "r":
                    return Fault("SIGSEGV", addr, "read of a PROT_NONE mapping")
                return Fault("SIGBUS", addr, "the mapping has no page to give "
                             "(beyond EOF, or no huge page left)")
    return Fault("SIGSEGV", addr, "no mapping at this address")


def host_pages(pid: int | str, addr: int, length: int) -> list[PageSeen]:
    """What /proc/PID/pagemap and /proc/kpageflags say about each page of the range."""
    out: list[PageSeen] = []
    for a in range(addr, addr + length, libc.PAGE_SIZE):
        e = pagemap(a, pid)
        if e.swapped:
            out.append(PageSeen("swapped", soft_dirty=e.soft_dirty))
            continue
        if not e.present:
            out.append(PageSeen(soft_dirty=e.soft_dirty))
            continue
        if e.pfn == 0:
            raise HostUnsupported("pagemap hides frame numbers here (needs CAP_SYS_ADMIN)")
        flags = kpageflags(e.pfn)
        out.append(PageSeen("present", e.pfn, "zero_page" in flags, "thp" in flags,
                            "huge" in flags, e.exclusive, e.soft_dirty))
    return out


def _forget(obj: Any) -> None:
    """Drop a finalizer inherited over fork, so this process never unlinks the parent's
    files; HostMapping.close() then only unmaps our copy and closes our fd."""
    fin = getattr(obj, "_finalizer", None)
    if fin is not None:
        fin.detach()
        obj._finalizer = None
    for attr in ("path", "_tmpdir"):
        if hasattr(obj, attr):
            setattr(obj, attr, None)


class CommandServer:
    """State and primitives of one scenario process (see `ops` for the operations)."""

    def __init__(self, sock: socket.socket, disk_dir: str, shm_dir: str | None,
                 spawned: bool) -> None:
        self.sock = sock
        self.disk_dir = disk_dir
        self.shm_dir = shm_dir
        self.spawned = spawned
        self.areas: dict[int, HostMapping] = {}
        self.files: dict[int, int] = {}   # region id -> an fd of its file (views, moved parts)
        self.holes = Holes()          # what it unmapped, kept out of its later maps
        self.rings: dict[int, IoUring] = {}          # io_uring rings by protocol ring id
        self.xdp: list[XdpUmem] = []
        self.dio: DirectFile | None = None
        self.splice: tuple[int, int] | None = None   # vmsplice's pipe (read, write)
        self.plain: tuple[int, str] | None = None   # uring_write_fixed's target file
        self.kvm: KvmGuest | None = None              # kvm_create's guest
        self._new_pipe()

    # -- process life ----------------------------------------------------------------------
    def _new_pipe(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self.pipe_size = fcntl.fcntl(w, F_GETPIPE_SZ)
        os.set_blocking(r, False)
        self.pipe = (r, w)

    def serve(self) -> None:
        """Answer requests until the orchestrator goes away or says exit."""
        wire.send(self.sock, ("ready", os.getpid()))
        while True:
            try:
                cmd, args = wire.recv(self.sock)[0]
            except (EOFError, OSError):
                os._exit(0)  # the orchestrator is gone
            reply = self._dispatch(cmd, args)
            if reply is not None:
                wire.send(self.sock, reply)

    def _dispatch(self, cmd: str, args: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run one declared operation's primitive; its reply (None: already sent)."""
        try:
            if cmd not in OPS:
                raise ProtocolError(f"{cmd!r} is not a declared scenario operation: "
                                    f"use one of {sorted(OPS)}")
            value = getattr(self, "do_" + cmd)(**args)
            return None if value is _REPLIED else ("ok", value)
        except Fault as f:
            return ("fault", f.sig, f.addr, f.why)
        except HostUnsupported as exc:
            return ("exc", exc, traceback.format_exc())
        except OSError as exc:
            return ("os", exc.errno or errno.EIO, str(exc))
        except BaseException as exc:  # noqa: BLE001 - everything goes to the orchestrator
            tb = traceback.format_exc()
            try:
                pickle.loads(pickle.dumps(exc))
                return ("exc", exc, tb)
            except Exception:
                return ("exc", f"{type(exc).__name__}: {exc}", tb)

    def do_exit(self) -> object:
        """Reply, then exit: the kernel releases everything, as at a real exit."""
        wire.send(self.sock, ("ok", None))
        os._exit(0)

    def do_fork(self) -> object:
        """os.fork(); the child serves on a new socketpair whose other end goes back to
        the orchestrator with the parent's reply. Both sides return having replied."""
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            wire.send(self.sock, ("os", exc.errno or errno.EIO, str(exc)))
            return _REPLIED
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            wire.send(self.sock, ("os", exc.errno or errno.EIO, str(exc)))
            return _REPLIED
        if pid == 0:
            try:
                self.sock.close()
                ours.close()
                self.sock = theirs
                self.spawned = False
                self._after_fork()
                wire.send(self.sock, ("ready", os.getpid()))
            except BaseException:  # noqa: BLE001
                os._exit(EXIT_BROKEN)
            return _REPLIED
        theirs.close()
        wire.send(self.sock, ("ok", pid), fds=[ours.fileno()])
        ours.close()
        return _REPLIED

    def _after_fork(self) -> None:
        """The child keeps the parent's memory (COW) but not its ring, sockets or files:
        a scenario process has one ring and one AF_XDP socket of its own."""
        os.close(self.pipe[0])
        os.close(self.pipe[1])
        self._new_pipe()
        for ring in self.rings.values():
            ring.close()             # unmaps our copy of the rings, closes our fd copy
        self.rings = {}
        for x in self.xdp:
            x.close()                # our copy of the socket; the parent's stays open
        self.xdp = []
        if self.dio is not None:
            _forget(self.dio)
            os.close(self.dio.fd)
            self.dio = None
        if self.plain is not None:
            os.close(self.plain[0])
            self.plain = None
        if self.splice is not None:          # the parent's pipe stays the parent's
            os.close(self.splice[0])
            os.close(self.splice[1])
            self.splice = None
        if self.kvm is not None:      # our copies of its fds and kvm_run: the VM stays
            self.kvm.close()          # the parent's (KVM_RUN needs the creator's mm)
            self.kvm = None
        for m in self.areas.values():
            _forget(m)

    # -- CPU access through a pipe: the same faults, EFAULT instead of a signal -------------
    def _drain(self) -> None:
        try:
            while os.read(self.pipe[0], self.pipe_size):
                pass
        except BlockingIOError:
            pass

    def _copy_out(self, addr: int, n: int) -> bytes:
        """Read n bytes at addr (copy_from_user into the pipe, as a CPU load would)."""
        r, w = self.pipe
        out = bytearray()
        while len(out) < n:
            k = min(self.pipe_size, n - len(out))
            at = addr + len(out)
            try:
                got = os.writev(w, [user_buffer(at, k)])
            except OSError as exc:
                self._drain()
                if exc.errno == errno.EFAULT:
                    raise fault_at(at, write=False) from None
                raise
            while got:
                chunk = os.read(r, got)
                out += chunk
                got -= len(chunk)
        return bytes(out)

    def _copy_in(self, addr: int, data: bytes | memoryview) -> None:
        """Write data at addr (copy_to_user from the pipe, as a CPU store would)."""
        r, w = self.pipe
        view = memoryview(data)
        off = 0
        while off < len(view):
            k = min(self.pipe_size, len(view) - off)
            os.write(w, view[off:off + k])  # an empty pipe of pipe_size takes it whole
            done = 0
            try:
                while done < k:
                    done += os.readv(r, [user_buffer(addr + off + done, k - done)])
            except OSError as exc:
                self._drain()
                if exc.errno == errno.EFAULT:
                    raise fault_at(addr + off + done, write=True) from None
                raise
            off += k

    def _read_fault(self, addr: int, length: int) -> None:
        for off in range(0, length, libc.PAGE_SIZE):
            self._copy_out(addr + off, 1)

    # -- memory ------------------------------------------------------------------------------
    @keeping_holes
    def do_map(self, kind: str, length: int, shared: bool, writable: bool,
               populate: bool | str, fill: int, new_rid: int) -> int:
        """A HostMapping of the kind, populated through the pipe; its address."""
        prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        where = self.shm_dir if kind == "tmpfs" else self.disk_dir
        m = HostMapping(length, kind, shared=shared, prot=prot,  # type: ignore[arg-type]
                        populate=False, dir=where)
        m.__enter__()
        self.areas[new_rid] = m
        if populate:
            if writable and populate != "read":
                chunk = bytes([fill]) * min(length, self.pipe_size)
                for off in range(0, length, len(chunk)):
                    self._copy_in(m.addr + off, chunk[:length - off])
                folio = {"thp": HUGE_2M, **MTHP_KINDS}.get(kind)
                for off in range(0, length, folio or length):
                    problem = folio and m.folio_problem(off, folio)
                    if problem:     # as cow.c skips when the THP did not materialise
                        raise HostUnsupported(f"{kind} at +{off:#x}: {problem}")
            else:
                self._read_fault(m.addr, length)
        return m.addr

    @keeping_holes
    def do_map_view(self, rid: int, addr: int, length: int, shared: bool, writable: bool,
                    new_rid: int) -> int:
        """mmap the file behind region `rid` again, read-faulted; its address."""
        prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        flags = libc.MAP_SHARED if shared else libc.MAP_PRIVATE
        new = libc.mmap(0, length, prot, flags, self._file_of(rid), 0)
        self._keep_file(rid, new_rid)
        self._read_fault(new, length)
        return new

    def _file_of(self, rid: int) -> int:
        """An fd of the file behind region `rid` (one map() made, or a view or moved part
        of one); EBADF for a region without one (the model's answer too)."""
        if rid in self.areas and self.areas[rid].fd >= 0:
            return self.areas[rid].fd
        if rid in self.files:
            return self.files[rid]
        raise OSError(errno.EBADF, f"region {rid} has no file behind it here")

    def _keep_file(self, rid: int, new_rid: int) -> None:
        """Region `new_rid` maps region `rid`'s file: keep an fd of it (a dup, so that
        the file outlives a munmap of `rid`, as the mapping does)."""
        try:
            self.files[new_rid] = os.dup(self._file_of(rid))
        except OSError:
            pass                  # anonymous memory: no file to keep

    @keeping_holes
    def do_mremap_move(self, rid: int, addr: int, length: int, new_rid: int) -> int:
        """mremap(MREMAP_MAYMOVE | MREMAP_FIXED) onto a fresh PROT_NONE reservation; the
        moved part keeps the region's file (if any) for map_view."""
        dst = libc.mmap(0, length, libc.PROT_NONE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        new = libc.mremap(addr, length, length, libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED, dst)
        self._keep_file(rid, new_rid)
        for ring in self.rings.values():     # the process reaches its ring memory there now
            ring.moved(addr, length, new)
        self.holes.add(addr, length)
        return new

    def do_read(self, addr: int, n: int) -> bytes:
        """A CPU read (through the pipe)."""
        return self._copy_out(addr, n)

    def do_write(self, addr: int, data: bytes) -> None:
        """A CPU write (through the pipe)."""
        self._copy_in(addr, data)

    def do_mprotect(self, addr: int, length: int, writable: bool | None,
                    prot: int | None) -> None:
        """mprotect() to `prot`, or to PROT_READ [| PROT_WRITE] by `writable`."""
        if prot is None:
            prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        libc.mprotect(addr, length, prot)

    def do_madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(); MADV_COLD and MADV_PAGEOUT on every CPU, so that, as in the model
        (which has no per-CPU folio batches), no page of the range is passed over for
        having been faulted on another CPU."""
        if advice in (libc.MADV_COLD, libc.MADV_PAGEOUT):
            libc.madvise_on_every_cpu(addr, length, advice)
        else:
            libc.madvise(addr, length, advice)

    def do_munmap(self, rid: int, addr: int, length: int) -> None:
        """munmap() the region, then close its file (if any)."""
        m = self.areas.pop(rid, None)
        libc.munmap(addr, length)
        self.holes.add(addr, length)
        if rid in self.files:
            os.close(self.files.pop(rid))
        if m is not None:
            m.addr = 0           # already unmapped; close() closes the fd, removes the file
            m.close()

    # -- pinning operations ------------------------------------------------------------------
    def _ring(self, ring_id: int) -> IoUring:
        """Ring `ring_id` of this process, set up at its first use."""
        if ring_id not in self.rings:
            ring = IoUring(4)
            try:
                ring.open()
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    raise HostUnsupported(f"io_uring is not available here: {exc}") from exc
                raise
            self.rings[ring_id] = ring
        return self.rings[ring_id]

    def do_uring_register(self, buffers: list[tuple[int, int]], ring: int) -> None:
        """IORING_REGISTER_BUFFERS on this process's ring `ring`."""
        self._ring(ring).register_buffers(buffers)

    def do_uring_unregister(self, ring: int) -> None:
        """IORING_UNREGISTER_BUFFERS."""
        self._ring(ring).unregister_buffers()

    def do_uring_setup_user(self, addr: int, ring: int) -> None:
        """io_uring_setup(IORING_SETUP_NO_MMAP) with the rings at addr and the SQEs on
        the next page; a kernel without NO_MMAP (before 6.5) skips the case."""
        if ring in self.rings:
            raise OSError(errno.EBUSY, f"ring {ring} exists already: uring_close it first")
        new = IoUring(4, user_memory=(addr + libc.PAGE_SIZE, addr))
        try:
            new.open()
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                raise HostUnsupported(f"io_uring is not available here: {exc}") from exc
            # an aligned request is valid: EINVAL then means no NO_MMAP here (the probe
            # pins, so it runs only then, never inside an unaligned case's measurement)
            if (exc.errno == errno.EINVAL and addr % libc.PAGE_SIZE == 0
                    and not no_mmap_supported()):
                raise HostUnsupported("this kernel has no IORING_SETUP_NO_MMAP (6.5+): "
                                      "io_uring_setup answers EINVAL") from exc
            raise
        self.rings[ring] = new

    def do_uring_close(self, ring: int) -> None:
        """close() of this process's ring `ring`."""
        if ring not in self.rings:
            raise OSError(errno.EBADF, f"this process has no ring {ring}")
        self.rings.pop(ring).close()

    def do_uring_register_pbuf_ring(self, addr: int, entries: int, bgid: int,
                                    ring: int) -> None:
        """IORING_REGISTER_PBUF_RING in our memory; a kernel without provided-buffer
        rings (before 5.19) answers EINVAL to a valid request, and skips the case."""
        try:
            self._ring(ring).register_pbuf_ring(addr, entries, bgid)
        except OSError as exc:
            valid = addr % libc.PAGE_SIZE == 0 and entries & (entries - 1) == 0
            if exc.errno == errno.EINVAL and valid:
                raise HostUnsupported("this kernel refuses a valid IORING_REGISTER_PBUF_RING "
                                      "(provided-buffer rings are 5.19+)") from exc
            raise

    def do_uring_unregister_pbuf_ring(self, bgid: int, ring: int) -> None:
        """IORING_UNREGISTER_PBUF_RING."""
        self._ring(ring).unregister_pbuf_ring(bgid)

    def _plain(self) -> int:
        """The plain (page cache) file fixed reads and writes use."""
        if self.plain is None:
            d = tempfile.mkdtemp(prefix="uring-", dir=self.disk_dir)
            path = os.path.join(d, "out")
            self.plain = (os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), path)
        return self.plain[0]

    def _fixed(self, opcode: int, fd: int, index: int, length: int, ring_id: int) -> int:
        """One fixed-buffer request at the start of buffer `index`; its byte count. The
        kernel checks the index and the range (-EFAULT), not us."""
        ring = self._ring(ring_id)
        if ring.user_memory is not None:    # the SQE page, then the rings page
            for page in ring.user_memory:   # the process's stores to them, as the CPU's
                self._copy_in(page, self._copy_out(page, 1))
        addr = ring.buffers[index][0] if 0 <= index < len(ring.buffers) else 0
        res = ring.submit_and_wait(opcode, fd, addr, length, 0, index)
        if res < 0:
            name = "READ" if opcode == IORING_OP_READ_FIXED else "WRITE"
            raise OSError(-res, f"IORING_OP_{name}_FIXED: {os.strerror(-res)}")
        return res

    def do_uring_write_fixed(self, index: int, length: int, ring: int) -> bytes:
        """IORING_OP_WRITE_FIXED to a plain file; the bytes it received."""
        fd = self._plain()
        os.ftruncate(fd, 0)
        return os.pread(fd, self._fixed(IORING_OP_WRITE_FIXED, fd, index, length, ring), 0)

    def do_uring_read_fixed(self, index: int, length: int, fill: int, ring: int) -> int:
        """IORING_OP_READ_FIXED from a plain file holding `length` bytes of `fill`."""
        fd = self._plain()
        os.ftruncate(fd, 0)
        os.pwrite(fd, bytes([fill]) * length, 0)
        return self._fixed(IORING_OP_READ_FIXED, fd, index, length, ring)

    def _dio(self) -> DirectFile:
        if self.dio is None:
            self.dio = DirectFile(SCRATCH_SIZE, dir=self.disk_dir).__enter__()
        return self.dio

    def do_odirect_write(self, addr: int, length: int) -> int:
        """pwrite(O_DIRECT) to the scratch file."""
        return os.pwritev(self._dio().fd, [user_buffer(addr, length)], 0)

    def do_odirect_read(self, addr: int, length: int, fill: int) -> int:
        """pread(O_DIRECT) of a scratch file holding `fill` bytes."""
        dio = self._dio()
        with open(dio.path, "r+b") as f:   # real blocks of `fill` (not unwritten extents,
            f.write(bytes([fill]) * max(length, 0))   # which a read would just zero)
            f.flush()
            os.fsync(f.fileno())
        return os.preadv(dio.fd, [user_buffer(addr, length)], 0)

    def do_process_vm_readv(self, target: int, addr: int, length: int) -> bytes:
        """process_vm_readv() of process `target` (its real pid)."""
        return read_remote(target, addr, length)

    def do_process_vm_writev(self, target: int, addr: int, data: bytes) -> int:
        """process_vm_writev() into process `target` (its real pid)."""
        return write_remote(target, addr, data)

    def do_proc_mem_read(self, target: int, addr: int, length: int) -> bytes:
        """pread() of /proc/<target>/mem."""
        fd = os.open(f"/proc/{target}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, addr)
        finally:
            os.close(fd)

    def do_proc_mem_write(self, target: int, addr: int, data: bytes) -> int:
        """pwrite() of /proc/<target>/mem."""
        fd = os.open(f"/proc/{target}/mem", os.O_WRONLY | os.O_CLOEXEC)
        try:
            return os.pwrite(fd, data, addr)
        finally:
            os.close(fd)

    def do_uffd_continue(self, addr: int, length: int) -> int:
        """Not on the host: no userfaultfd is registered for minor faults here."""
        raise HostUnsupported("uffd_continue: the host back-end registers no userfaultfd "
                              "for minor faults (UFFDIO_CONTINUE is model-only)")

    def do_pages(self, addr: int, length: int, other: int | None, soft_dirty: bool) -> str:
        """Page identity from /proc/PID/pagemap and /proc/kpageflags (identity.py)."""
        pids: list[int | str] = ["self"] if other is None else ["self", other]
        if soft_dirty and (reason := soft_dirty_reason()):
            raise HostUnsupported(reason)
        return encode([host_pages(pid, addr, length) for pid in pids], soft_dirty)

    def do_clear_refs(self) -> None:
        """write "4" to /proc/self/clear_refs (soft-dirty reset)."""
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")

    def do_ro_pin_then_write(self, addr: int, length: int, fill: int) -> bytes:
        """R/O pins held (userfaultfd) while we write `fill`; what the pins saw."""
        data = bytes([fill]) * length
        return read_pinned_while(addr, length, lambda: self._copy_in(addr, data))

    def _splice_pipe(self) -> tuple[int, int]:
        if self.splice is None:       # default size (16 buffers), as cow.c uses it
            self.splice = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        return self.splice

    def do_vmsplice(self, addr: int, length: int) -> int:
        """One vmsplice() call, as cow.c makes it: it splices what fits in the pipe (16
        pages by default) and returns that count; non-blocking, so never a hang."""
        _, w = self._splice_pipe()
        return libc.vmsplice(w, [(addr, length)], SPLICE_F_NONBLOCK)

    def do_pipe_read(self, length: int) -> bytes:
        """Read what the vmsplice pipe holds, up to `length` bytes."""
        r, _ = self._splice_pipe()
        out = bytearray()
        while len(out) < length:
            try:
                chunk = os.read(r, length - len(out))
            except BlockingIOError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def do_xdp_umem_reg(self, addr: int, length: int) -> None:
        """XDP_UMEM_REG on a new AF_XDP socket."""
        self.xdp.append(XdpUmem(addr, length).__enter__())

    def do_xdp_close(self) -> None:
        """Close the AF_XDP socket opened last."""
        if not self.xdp:
            raise OSError(errno.EBADF, "no AF_XDP socket is open")
        self.xdp.pop().close()

    # -- KVM -----------------------------------------------------------------------------------
    def do_kvm_create(self, addr: int, length: int) -> None:
        """A real VM (live/kvm.py) whose slot 0 is the region; replaces the previous one."""
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        self.kvm = KvmGuest(addr, length)

    def do_kvm_guest_read(self, offset: int, length: int) -> bytes:
        """The real guest loads the bytes through its NPT/EPT and reports them."""
        if self.kvm is None:
            raise OSError(errno.EBADF, "no VM: kvm_create first")
        return self.kvm.read(offset, length)

    def do_map_fixed(self, addr: int, length: int, fill: int) -> None:
        """mmap(MAP_FIXED_NOREPLACE) of fresh anonymous memory, then write `fill`."""
        got = libc.mmap(addr, length, libc.PROT_READ | libc.PROT_WRITE,
                        libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
        if got != addr:         # a kernel before 4.17 treats the flag as a hint
            libc.munmap(got, length)
            raise OSError(errno.EEXIST, f"could not map at {addr:#x}")
        self.holes.filled(addr, length)
        chunk = bytes([fill]) * min(length, self.pipe_size)
        for off in range(0, length, len(chunk)):
            self._copy_in(addr + off, chunk[:length - off])

    def _reserve_hole(self, addr: int, length: int) -> bool:
        """A PROT_NONE placeholder over a hole (holes.py); False if something is there."""
        try:
            got = libc.mmap(addr, length, libc.PROT_NONE,
                            libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
        except OSError:
            return False
        if got != addr:         # a kernel before 4.17 treats the flag as a hint
            libc.munmap(got, length)
            return False
        return True

    def _release_hole(self, addr: int, length: int) -> None:
        libc.munmap(addr, length)

    def do_limit_memlock(self, limit: int, uid: int) -> None:
        """Set RLIMIT_MEMLOCK, drop CAP_IPC_LOCK, and become `uid` keeping the rest."""
        if not libc.capget()[0] & (1 << libc.CAP_SETUID):   # kept by an earlier call
            raise HostUnsupported("limit_memlock switches to a private uid: needs root")
        libc.set_memlock_limit(limit)
        libc.drop_capability(libc.CAP_IPC_LOCK)
        libc.drop_capability(CAP_SYS_RESOURCE)   # a later raise is EPERM, as the model's
        libc.prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _, permitted, inheritable = libc.capget()
        libc.capset(permitted, permitted, inheritable)  # keep every capability but IPC_LOCK
        libc.prctl(PR_SET_KEEPCAPS, 0)
        libc.prctl(PR_SET_DUMPABLE, 1)     # a uid change cleared it, and the death signal
        if self.spawned:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)


def server_main(sock: socket.socket, disk_dir: str, shm_dir: str | None,
                mask: Iterable[int], foreign: Iterable[socket.socket]) -> None:
    """Entry of a spawned server (a child of the orchestrator); never returns. `mask` is
    the signal mask to restore once SIGINT is ignored (spawn blocked it around fork);
    `foreign` are the orchestrator's other sockets, closed here so that every server sees
    EOF (and exits) when the orchestrator goes away."""
    try:
        os.setpgid(0, 0)   # a group of its own: close() kills it and all its descendants
        forget_inherited_lock()
        for s in list(foreign):
            if s is not sock:
                try:
                    os.close(s.detach())
                except OSError:
                    pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # forked children reap themselves
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        CommandServer(sock, disk_dir, shm_dir, spawned=True).serve()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(EXIT_BROKEN)
