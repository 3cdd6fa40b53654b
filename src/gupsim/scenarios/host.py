"""The host back-end of the scenario protocol: the same user-space steps, on this kernel.

Every scenario process is a real process, a *command server*: a forked child of the
test process that receives commands over a socketpair (length-prefixed pickle frames),
performs them on its own address space (its `HostMapping`s by region id, its io_uring
ring, its AF_XDP sockets, its O_DIRECT scratch file) and replies. `Proc.fork()` makes the
server itself fork, so the child shares the server's memory copy-on-write exactly as the
kernel does it; the new server's end of a fresh socketpair is passed back to the
orchestrator with SCM_RIGHTS. The orchestrator is a child subreaper, so every
descendant is reaped by `close()`.

Each step is measured from the orchestrator: the machine-wide `nr_foll_pin_*` counters
(exact through stat_refresh, in a quiet window, with a settle for releases the kernel
defers to a worker), then VmPin/VmLck of the acting process. CPU accesses (read, write,
populate) go through a pipe (`copy_to/from_user`), which takes the same page faults as
the CPU but turns a would-be SIGSEGV/SIGBUS into EFAULT, so a faulting access is
reported (as `gupsim.SegmentationFault` / `gupsim.BusError`) instead of killing the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pickle
import shutil
import signal
import socket
import struct
import tempfile
import time
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..live import cleanup, libc
from ..live.capabilities import host_capabilities
from ..live.errors import ChildError, HostUnsupported
from ..live.hostmem import HostMapping
from ..live.odirect import DirectFile, user_buffer
from ..live.proc import proc_status
from ..live.procvm import read_remote
from ..live.settings import (
    THP_ENABLED,
    ExtraHugepages,
    SharedSetting,
    read_setting,
    thp_size_enabled,
)
from ..live.uffd import read_pinned_while
from ..live.uring import IORING_OP_WRITE_FIXED, IoUring
from ..live.vmstat import (
    Measurement,
    PinCounters,
    PinDelta,
    counters_to_ourselves,
    forget_inherited_lock,
    pin_counters,
    wait_outstanding,
    wait_quiet,
)
from ..live.xdp import XdpUmem
from ..mm.access import BusError, SegmentationFault
from .protocol import FILE_KINDS, MAP_KINDS, MTHP_SIZE, Outcome, Region, Step, Trace
from .steps import op_name

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
SPLICE_F_NONBLOCK = 2

HUGE_SYSFS = "/sys/kernel/mm/hugepages/hugepages-2048kB"
HUGE_2M = 2 << 20
SCRATCH_SIZE = 4 << 20        # the O_DIRECT scratch file, as the model's
PRIVATE_UID_BASE = 60000      # limit_memlock: uid = base + the process's protocol pid

_LEN = struct.Struct("<Q")
# Orchestrator-side sockets of every live HostSystem: a newly spawned server closes them,
# so that each server sees EOF (and exits) when the orchestrator goes away.
_ORCH_SOCKS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


# -- framing ------------------------------------------------------------------------------

def _send(sock: socket.socket, obj: object, fds: list[int] | None = None) -> None:
    payload = pickle.dumps(obj)
    header = _LEN.pack(len(payload))
    if fds:
        sent = socket.send_fds(sock, [header], fds)
        sock.sendall(header[sent:] + payload)
    else:
        sock.sendall(header + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """One frame and the descriptors that came with its header."""
    header, fds = b"", []
    while len(header) < _LEN.size:
        data, got, _, _ = socket.recv_fds(sock, _LEN.size - len(header), 4)
        if not data:
            for fd in got:
                os.close(fd)
            raise EOFError
        header += data
        fds += got
    (n,) = _LEN.unpack(header)
    return pickle.loads(_recv_exact(sock, n)), fds


# -- the command server (runs in a scenario process) ---------------------------------------

class _Fault(Exception):
    """A CPU access that the kernel would answer with a signal."""

    def __init__(self, sig: str, addr: int, why: str) -> None:
        super().__init__(sig, addr, why)
        self.sig, self.addr, self.why = sig, addr, why


def _fault_at(addr: int, write: bool) -> _Fault:
    """Name the signal a CPU access at `addr` would get, from /proc/self/maps."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= addr < hi:
                if write and perms[1] != "w":
                    return _Fault("SIGSEGV", addr, "write to a mapping without PROT_WRITE")
                if not write and perms[0] != "r":
                    return _Fault("SIGSEGV", addr, "read of a PROT_NONE mapping")
                return _Fault("SIGBUS", addr, "the mapping has no page to give "
                              "(beyond EOF, or no huge page left)")
    return _Fault("SIGSEGV", addr, "no mapping at this address")


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


class _Server:
    """State and commands of one scenario process."""

    def __init__(self, sock: socket.socket, disk_dir: str, shm_dir: str | None,
                 spawned: bool) -> None:
        self.sock = sock
        self.disk_dir = disk_dir
        self.shm_dir = shm_dir
        self.spawned = spawned
        self.areas: dict[int, HostMapping] = {}
        self.ring: IoUring | None = None
        self.xdp: list[XdpUmem] = []
        self.dio: DirectFile | None = None
        self.splice: tuple[int, int] | None = None   # vmsplice's pipe (read, write)
        self.plain: tuple[int, str] | None = None   # uring_write_fixed's target file
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
        _send(self.sock, ("ready", os.getpid()))
        while True:
            try:
                cmd, args = _recv(self.sock)[0]
            except (EOFError, OSError):
                os._exit(0)  # the orchestrator is gone
            if cmd == "exit":
                _send(self.sock, ("ok", None))
                os._exit(0)  # the kernel releases everything, as at a real exit
            if cmd == "fork":
                if self._fork():
                    continue  # we are the new child: the parent has replied
                continue
            _send(self.sock, self._dispatch(cmd, args))

    def _dispatch(self, cmd: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            return ("ok", getattr(self, "do_" + cmd)(*args))
        except _Fault as f:
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

    def _fork(self) -> bool:
        """os.fork(); the child serves on a new socketpair. True in the child."""
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:
            _send(self.sock, ("os", exc.errno or errno.EIO, str(exc)))
            return False
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            _send(self.sock, ("os", exc.errno or errno.EIO, str(exc)))
            return False
        if pid == 0:
            try:
                self.sock.close()
                ours.close()
                self.sock = theirs
                self.spawned = False
                self._after_fork()
                _send(self.sock, ("ready", os.getpid()))
            except BaseException:  # noqa: BLE001
                os._exit(70)
            return True
        theirs.close()
        _send(self.sock, ("ok", pid), fds=[ours.fileno()])
        ours.close()
        return False

    def _after_fork(self) -> None:
        """The child keeps the parent's memory (COW) but not its ring, sockets or files:
        a scenario process has one ring and one AF_XDP socket of its own."""
        os.close(self.pipe[0])
        os.close(self.pipe[1])
        self._new_pipe()
        if self.ring is not None:
            self.ring.close()        # unmaps our copy of the rings, closes our fd copy
            self.ring = None
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
                    raise _fault_at(at, write=False) from None
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
                    raise _fault_at(addr + off + done, write=True) from None
                raise
            off += k

    # -- memory ------------------------------------------------------------------------------
    def do_map(self, rid: int, kind: str, length: int, shared: bool, writable: bool,
               populate: bool | str, fill: int) -> int:
        prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        where = self.shm_dir if kind == "tmpfs" else self.disk_dir
        m = HostMapping(length, kind, shared=shared, prot=prot,  # type: ignore[arg-type]
                        populate=False, dir=where)
        m.__enter__()
        self.areas[rid] = m
        if populate:
            if writable and populate != "read":
                chunk = bytes([fill]) * min(length, self.pipe_size)
                for off in range(0, length, len(chunk)):
                    self._copy_in(m.addr + off, chunk[:length - off])
                folio = {"thp": HUGE_2M, "mthp": MTHP_SIZE}.get(kind)
                for off in range(0, length, folio or length):
                    problem = folio and m.folio_problem(off, folio)
                    if problem:     # as cow.c skips when the THP did not materialise
                        raise HostUnsupported(f"{kind} at +{off:#x}: {problem}")
            else:
                self._read_fault(m.addr, length)
        return m.addr

    def _read_fault(self, addr: int, length: int) -> None:
        for off in range(0, length, libc.PAGE_SIZE):
            self._copy_out(addr + off, 1)

    def do_map_view(self, rid: int, new_rid: int, shared: bool, writable: bool) -> int:
        m = self.areas[rid]
        if m.fd < 0:
            raise ValueError(f"region {rid} ({m.kind}) has no file to map again")
        prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        flags = libc.MAP_SHARED if shared else libc.MAP_PRIVATE
        addr = libc.mmap(0, m.length, prot, flags, m.fd, 0)
        self._read_fault(addr, m.length)
        return addr

    def do_mremap_move(self, addr: int, length: int) -> int:
        dst = libc.mmap(0, length, libc.PROT_NONE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        return libc.mremap(addr, length, length, libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED, dst)

    def do_ro_pin_then_write(self, addr: int, length: int, fill: int) -> bytes:
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

    def do_read(self, addr: int, n: int) -> bytes:
        return self._copy_out(addr, n)

    def do_write(self, addr: int, data: bytes) -> None:
        self._copy_in(addr, data)

    def do_mprotect(self, addr: int, length: int, writable: bool) -> None:
        libc.mprotect(addr, length, libc.PROT_READ | (libc.PROT_WRITE if writable else 0))

    def do_madvise(self, addr: int, length: int, advice: int) -> None:
        libc.madvise(addr, length, advice)

    def do_munmap(self, rid: int, addr: int, length: int) -> None:
        m = self.areas.pop(rid, None)
        libc.munmap(addr, length)
        if m is not None:
            m.addr = 0           # already unmapped; close() closes the fd, removes the file
            m.close()

    # -- pinning operations ------------------------------------------------------------------
    def _ring(self) -> IoUring:
        if self.ring is None:
            ring = IoUring(4)
            try:
                ring.open()
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    raise HostUnsupported(f"io_uring is not available here: {exc}") from exc
                raise
            self.ring = ring
        return self.ring

    def do_uring_register(self, bufs: list[tuple[int, int]]) -> None:
        self._ring().register_buffers(bufs)

    def do_uring_unregister(self) -> None:
        self._ring().unregister_buffers()

    def do_uring_write_fixed(self, index: int, length: int) -> bytes:
        ring = self._ring()
        if self.plain is None:
            d = tempfile.mkdtemp(prefix="uring-", dir=self.disk_dir)
            path = os.path.join(d, "out")
            self.plain = (os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), path)
        fd = self.plain[0]
        os.ftruncate(fd, 0)
        addr = ring.buffers[index][0] if 0 <= index < len(ring.buffers) else 0
        # the kernel checks the index and the range (-EFAULT), not us
        res = ring.submit_and_wait(IORING_OP_WRITE_FIXED, fd, addr, length, 0, index)
        if res < 0:
            raise OSError(-res, f"IORING_OP_WRITE_FIXED: {os.strerror(-res)}")
        return os.pread(fd, res, 0)

    def _dio(self) -> DirectFile:
        if self.dio is None:
            self.dio = DirectFile(SCRATCH_SIZE, dir=self.disk_dir).__enter__()
        return self.dio

    def do_odirect_write(self, addr: int, length: int) -> int:
        return os.pwritev(self._dio().fd, [user_buffer(addr, length)], 0)

    def do_odirect_read(self, addr: int, length: int, fill: int) -> int:
        dio = self._dio()
        with open(dio.path, "r+b") as f:   # real blocks of `fill` (not unwritten extents,
            f.write(bytes([fill]) * max(length, 0))   # which a read would just zero)
            f.flush()
            os.fsync(f.fileno())
        return os.preadv(dio.fd, [user_buffer(addr, length)], 0)

    def do_process_vm_readv(self, pid: int, addr: int, length: int) -> bytes:
        return read_remote(pid, addr, length)

    def do_xdp_umem_reg(self, addr: int, length: int) -> None:
        self.xdp.append(XdpUmem(addr, length).__enter__())

    def do_xdp_close(self) -> None:
        if not self.xdp:
            raise OSError(errno.EBADF, "no AF_XDP socket is open")
        self.xdp.pop().close()

    def do_limit_memlock(self, limit: int, uid: int) -> None:
        if os.geteuid() != 0 and not os.getuid() == uid:
            raise HostUnsupported("limit_memlock switches to a private uid: needs root")
        libc.set_memlock_limit(limit)
        libc.drop_capability(libc.CAP_IPC_LOCK)
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


def _server_main(sock: socket.socket, disk_dir: str, shm_dir: str | None,
                 mask: set[signal.Signals]) -> None:
    """Entry of a spawned server (a child of the orchestrator); never returns. `mask` is
    the signal mask to restore once SIGINT is ignored (spawn blocked it around fork)."""
    try:
        os.setpgid(0, 0)   # a group of its own: close() kills it and all its descendants
        forget_inherited_lock()
        for s in list(_ORCH_SOCKS):
            if s is not sock:
                try:
                    os.close(s.detach())
                except OSError:
                    pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # forked children reap themselves
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _Server(sock, disk_dir, shm_dir, spawned=True).serve()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(70)


# -- the orchestrator side -------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _reap(pid: int, timeout: float) -> bool:
    """Wait until `pid` is gone: reap it if it is (or becomes, as an orphan) our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return True
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


class HostProc:
    """A scenario process on the host: a command server, driven over a socketpair."""

    def __init__(self, system: HostSystem, sock: socket.socket, host_pid: int, pid: int,
                 name: str) -> None:
        self.system = system
        self.sock = sock
        self.host_pid = host_pid     # the real pid
        self.pid = pid               # protocol numbering: 0, 1, ... in spawn/fork order
        self.name = name
        self.alive = True
        self.regions: dict[int, int] = {}   # rid -> address, mapped here or inherited

    def __repr__(self) -> str:
        state = "alive" if self.alive else "exited"
        return f"<HostProc {self.pid} {self.name!r} pid {self.host_pid} {state}>"

    # -- transport -----------------------------------------------------------------------
    def _call(self, cmd: str, *args: Any) -> tuple[tuple[Any, ...], list[int]]:
        if not self.alive:
            raise ValueError(f"process {self.pid} ({self.name}) has exited; "
                             "spawn or fork a new one")
        try:
            _send(self.sock, (cmd, args))
            return _recv(self.sock)
        except TimeoutError:
            self.system._kill(self)
            raise TimeoutError(f"process {self.pid} (pid {self.host_pid}) did not answer "
                               f"{cmd!r} within {self.system.timeout} s; it was killed "
                               "(raise HostSystem(timeout=) if the work is slow)") from None
        except (EOFError, ConnectionError):
            self.system._kill(self)
            raise ChildError(f"process {self.pid} (pid {self.host_pid}) died during "
                             f"{cmd!r}", "") from None

    def _addr(self, region: Region, offset: int, n: int) -> int:
        if region.rid not in self.regions:
            raise ValueError(f"region {region.rid} is not mapped in process {self.pid}: pass "
                             "a region this process mapped or inherited at fork")
        if offset < 0 or n < 0 or offset + n > region.length:
            raise ValueError(f"range [{offset}, {offset + n}) lies outside the region of "
                             f"{region.length} bytes")
        return self.regions[region.rid] + offset

    # -- memory -------------------------------------------------------------------------------
    def map(self, kind: str, length: int, *, shared: bool = False, writable: bool = True,
            populate: bool | str = True, fill: int = 0) -> Region:
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown mapping kind {kind!r}: use one of {MAP_KINDS}")
        system = self.system
        if kind in ("hugetlb", "memfd-hugetlb"):
            system._ensure_hugepages(length)
        elif kind in ("thp", "mthp"):
            try:
                mode = read_setting(THP_ENABLED)
            except FileNotFoundError:
                raise HostUnsupported("this kernel has no transparent huge pages") from None
            if mode == "never":
                raise HostUnsupported("transparent_hugepage/enabled is 'never'")
        rid = system._next_rid()
        op = op_name("map", kind=kind, length=length, shared=shared, writable=writable)
        knob = (SharedSetting(thp_size_enabled(MTHP_SIZE >> 10), "madvise") if kind == "mthp"
                else contextlib.nullcontext())
        with knob:          # the fault (populate) picks the folio size: hold the knob there
            out = system._step(self, op, "map", rid, kind, length, shared, writable,
                               populate, fill)
        if not out.ok:
            if kind in ("hugetlb", "memfd-hugetlb") and out.errno == errno.ENOMEM:
                raise HostUnsupported(f"no 2 MiB huge page for a {length}-byte {kind} map")
            raise OSError(out.errno, f"map {kind} of {length} bytes failed on the host: "
                          f"{os.strerror(out.errno)}")
        self.regions[rid] = out.value
        return Region(self.pid, rid, kind, length, shared, out.value)

    def map_view(self, region: Region, *, shared: bool, writable: bool) -> Region:
        if region.kind not in FILE_KINDS:
            raise ValueError(f"map_view needs a file-backed region ({FILE_KINDS}), "
                             f"not {region.kind!r}")
        self._addr(region, 0, 0)
        system = self.system
        rid = system._next_rid()
        op = op_name("map_view", kind=region.kind, length=region.length, shared=shared,
                     writable=writable)
        out = system._step(self, op, "map_view", region.rid, rid, shared, writable)
        if not out.ok:
            raise OSError(out.errno, f"map_view failed on the host: {os.strerror(out.errno)}")
        self.regions[rid] = out.value
        return Region(self.pid, rid, region.kind, region.length, shared, out.value)

    def mremap_move(self, region: Region, offset: int, length: int) -> Region:
        addr = self._addr(region, offset, length)
        system = self.system
        out = system._step(self, op_name("mremap_move", size=length), "mremap_move", addr,
                           length)
        if not out.ok:
            raise OSError(out.errno, f"mremap_move failed on the host: "
                          f"{os.strerror(out.errno)}")
        rid = system._next_rid()
        self.regions[rid] = out.value
        return Region(self.pid, rid, region.kind, length, region.shared, out.value)

    def read(self, region: Region, offset: int, n: int) -> bytes:
        addr = self._addr(region, offset, n)
        out = self.system._step(self, "read", "read", addr, n, data=True)
        return out.value if out.ok else b""

    def write(self, region: Region, offset: int, data: bytes) -> None:
        addr = self._addr(region, offset, len(data))
        self.system._step(self, "write", "write", addr, bytes(data))

    def mprotect(self, region: Region, offset: int, length: int, writable: bool) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, op_name("mprotect", writable=writable), "mprotect",
                                 addr, length, writable)

    def madvise(self, region: Region, offset: int, length: int, advice: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, op_name("madvise", advice=advice), "madvise", addr,
                                 length, advice, settle=True)

    def munmap(self, region: Region) -> Outcome:
        addr = self._addr(region, 0, region.length)
        return self.system._step(self, "munmap", "munmap", region.rid, addr, region.length,
                                 settle=True)

    def fork(self) -> HostProc:
        holder: list[HostProc] = []
        out = self.system._step(self, "fork", "fork", spawn_into=holder)
        if not out.ok:
            raise OSError(out.errno, f"fork failed on the host: {os.strerror(out.errno)}")
        return holder[0]

    def exit(self) -> None:
        self.system._step(self, "exit", "exit", settle=True)

    def status(self) -> dict[str, int]:
        return self.system._status(self)

    # -- operations that take pins ----------------------------------------------------------
    def uring_register(self, buffers: list[tuple[Region, int, int]]) -> Outcome:
        iovs = [(self._addr(r, off, n), n) for r, off, n in buffers]
        return self.system._step(self, "uring_register", "uring_register", iovs, settle=True)

    def uring_unregister(self) -> Outcome:
        return self.system._step(self, "uring_unregister", "uring_unregister", settle=True)

    def uring_write_fixed(self, index: int, length: int) -> Outcome:
        return self.system._step(self, "uring_write_fixed", "uring_write_fixed", index,
                                 length, data=True)

    def odirect_write(self, region: Region, offset: int, length: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, "odirect_write", "odirect_write", addr, length,
                                 settle=True)

    def odirect_read(self, region: Region, offset: int, length: int, fill: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, "odirect_read", "odirect_read", addr, length, fill,
                                 settle=True)

    def process_vm_readv(self, target: HostProc, region: Region, offset: int,  # type: ignore[override]
                         length: int) -> Outcome:
        if not isinstance(target, HostProc) or target.system is not self.system:
            raise ValueError("process_vm_readv needs a target process of the same HostSystem")
        addr = target._addr(region, offset, length)
        return self.system._step(self, "process_vm_readv", "process_vm_readv",
                                 target.host_pid, addr, length, data=True, settle=True)

    def ro_pin_then_write(self, region: Region, offset: int, length: int,
                          fill: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, "ro_pin_then_write", "ro_pin_then_write", addr,
                                 length, fill, data=True)

    def vmsplice(self, region: Region, offset: int, length: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self.system._step(self, "vmsplice", "vmsplice", addr, length)

    def pipe_read(self, length: int) -> Outcome:
        return self.system._step(self, "pipe_read", "pipe_read", length, data=True)

    def xdp_umem_reg(self, region: Region) -> Outcome:
        addr = self._addr(region, 0, region.length)
        return self.system._step(self, "xdp_umem_reg", "xdp_umem_reg", addr, region.length,
                                 settle=True)

    def xdp_close(self) -> Outcome:
        return self.system._step(self, "xdp_close", "xdp_close", settle=True)

    def limit_memlock(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 bytes, got {limit}")
        out = self.system._step(self, op_name("limit_memlock", size=limit), "limit_memlock",
                                limit, PRIVATE_UID_BASE + self.pid)
        if not out.ok:
            raise OSError(out.errno, f"limit_memlock failed: {os.strerror(out.errno)}")


class HostSystem:
    """The host back-end: scenario processes are real processes on this kernel.

    with HostSystem() as s:
        p = s.spawn("app")
        r = p.map("anon", 1 << 20)
        p.uring_register([(r, 0, r.length)])
        s.trace.steps[-1]         # Step('uring_register', 'ok', 256, 0, 1024, 0)

    `timeout` bounds each command (seconds); `quiet` is the quiet window of the pin
    counters around a step, `settle` how long they must stay still after a step that may
    release later (ring unregister/close, AF_XDP close, exit, O_DIRECT completion).
    """

    name = "host"

    def __init__(self, *, timeout: float = 5.0, quiet: float = 0.05, settle: float = 0.2,
                 quiet_timeout: float = 2.0) -> None:
        libc.check_arch()
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.quiet = quiet
        self.settle = settle
        self.quiet_timeout = quiet_timeout
        self.trace = Trace("host")
        self.procs: list[HostProc] = []
        self.groups: set[int] = set()          # process groups of spawned servers
        self.closed = False
        self.start: PinCounters | None = None  # counters when the system was opened
        self.end: PinCounters | None = None    # after close(): back to `start.outstanding`
        self._rid = 0
        self._last: PinCounters | None = None  # the previous step's closing quiet reading
        self._huge: ExtraHugepages | None = None  # huge pages we added to the pool
        self._token: int | None = None
        self._old_subreaper: int | None = None
        # no other gupsim process measures or pins while this system lives (see vmstat)
        self._lock = counters_to_ourselves()
        self.exclusive = self._lock.__enter__()
        try:
            self.disk_dir = tempfile.mkdtemp(prefix="gupsim-host-")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self.shm_dir: str | None = None
        try:
            os.chmod(self.disk_dir, 0o1777)    # servers may run as a private uid
            if os.path.isdir("/dev/shm") and libc.fs_type("/dev/shm") == "tmpfs":
                self.shm_dir = tempfile.mkdtemp(prefix="gupsim-host-", dir="/dev/shm")
                os.chmod(self.shm_dir, 0o1777)
            old = ctypes.c_int(0)
            libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(old))
            self._old_subreaper = old.value
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
            self._token = cleanup.register(self.close)
            self.start = wait_quiet(quiet, quiet_timeout)[0]
            if not self.start.exact:
                self.trace.exact = False
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HostSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    # -- processes -----------------------------------------------------------------------------
    def spawn(self, name: str = "task") -> HostProc:
        if self.closed:
            raise ValueError("the HostSystem is closed; make a new one")
        # No KeyboardInterrupt between fork() and recording the new process: close() must
        # know every process it has to end. A Ctrl-C pending meanwhile is raised after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                ours.detach()
                _server_main(theirs, self.disk_dir, self.shm_dir, mask)
            theirs.close()
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first
            self.groups.add(pid)
            proc = self._register(ours, pid, name)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._await_ready(proc)
        return proc

    def _adopt(self, sock: socket.socket, host_pid: int, name: str) -> HostProc:
        proc = self._register(sock, host_pid, name)
        self._await_ready(proc)
        return proc

    def _register(self, sock: socket.socket, host_pid: int, name: str) -> HostProc:
        sock.settimeout(self.timeout)
        _ORCH_SOCKS.add(sock)
        proc = HostProc(self, sock, host_pid, len(self.procs), name)
        self.procs.append(proc)
        return proc

    def _await_ready(self, proc: HostProc) -> None:
        host_pid = proc.host_pid
        try:
            ready, _ = _recv(proc.sock)
        except (TimeoutError, EOFError, ConnectionError) as exc:
            self._kill(proc)
            raise ChildError(f"scenario process {host_pid} did not start: {exc!r}",
                             "") from None
        if ready != ("ready", host_pid):
            self._kill(proc)
            raise ChildError(f"scenario process {host_pid} said {ready!r}", "")

    def _kill(self, proc: HostProc) -> None:
        """End one server by its pid and reap it."""
        proc.alive = False
        try:
            proc.sock.close()
        except OSError:
            pass
        try:
            os.kill(proc.host_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(proc.host_pid, self.timeout)

    def _status(self, proc: HostProc) -> dict[str, int]:
        if not proc.alive:
            return {"VmPin": 0, "VmLck": 0}
        try:
            st = proc_status(proc.host_pid)
        except (FileNotFoundError, ProcessLookupError):
            return {"VmPin": 0, "VmLck": 0}
        return {"VmPin": int(st["VmPin"]), "VmLck": int(st["VmLck"])}

    # -- one measured step ----------------------------------------------------------------------
    def _step(self, proc: HostProc, op: str, cmd: str, *args: Any, data: bool = False,
              settle: bool = False, spawn_into: list[HostProc] | None = None) -> Outcome:
        """Run `cmd` in `proc` inside a pin-counter measurement and record one Step."""
        if self.closed:
            raise ValueError("the HostSystem is closed; make a new one")
        if not proc.alive:
            raise ValueError(f"process {proc.pid} ({proc.name}) has exited; "
                             "spawn or fork a new one")
        with self._measure(settle) as m:
            reply, fds = proc._call(cmd, *args)
            if cmd == "fork" and reply[0] == "ok":
                if len(fds) != 1:
                    raise ChildError(f"fork reply carried {len(fds)} descriptors", "")
                child = self._adopt(socket.socket(fileno=fds[0]), reply[1],
                                    f"{proc.name}-child")
                child.regions = dict(proc.regions)
                assert spawn_into is not None
                spawn_into.append(child)
            else:
                for fd in fds:
                    os.close(fd)
            if cmd == "exit":
                proc.alive = False
                proc.sock.close()
                if not _reap(proc.host_pid, self.timeout):
                    os.kill(proc.host_pid, signal.SIGKILL)
                    _reap(proc.host_pid, self.timeout)
        d = m.delta
        if not (d.exact and d.quiet):
            self.trace.exact = False
        kind = reply[0]
        if kind == "exc":
            exc = reply[1]
            if isinstance(exc, BaseException):
                exc.add_note(f"--- raised in scenario process {proc.pid} "
                             f"(pid {proc.host_pid}) ---\n{reply[2]}")
                raise exc
            raise ChildError(f"scenario process {proc.pid} raised {exc}", reply[2])
        st = self._status(proc)
        if kind == "fault":
            _, sig, addr, why = reply
            self.trace.steps.append(Step(op, sig, d.acquired, d.released, st["VmPin"],
                                         st["VmLck"], None))
            raise (SegmentationFault if sig == "SIGSEGV" else BusError)(addr, why)
        out = Outcome(0, reply[1]) if kind == "ok" else Outcome(reply[1])
        value = out.value if data and out.ok else None
        self.trace.steps.append(Step(op, str(out), d.acquired, d.released, st["VmPin"],
                                     st["VmLck"], value))
        return out

    @contextmanager
    def _measure(self, settle: bool) -> Iterator[Measurement]:
        """As `live.measure()`, but chained: when the counters have not moved since the
        previous step's closing quiet check, that check is this step's opening quiet window
        (no new wait), which halves the time a case spends measuring."""
        m = Measurement(settle=self.settle if settle else 0.0)
        now = pin_counters()
        if self._last is not None and self._last == now:
            m.before, m.quiet_before = now, True
        else:
            m.before, m.quiet_before = wait_quiet(self.quiet, self.quiet_timeout)
        self._last = None
        try:
            yield m
        finally:  # a failing command (a refused pin) is measured too: the error is the point
            m.after = (wait_quiet(m.settle, self.quiet_timeout)[0] if m.settle
                       else pin_counters())
            time.sleep(self.quiet)
            check = pin_counters()
            m.quiet_after = check == m.after
            if m.quiet_after:
                self._last = check
            d = m.after - m.before
            m._delta = PinDelta(d.acquired, d.released, d.exact,
                                m.quiet_before and m.quiet_after)

    # -- host settings ------------------------------------------------------------------------
    def _ensure_hugepages(self, length: int) -> None:
        """Make sure 2 MiB hugetlb pages for `length` bytes, and as many again for copies
        (COW after fork, pinned pages copied at fork), are free; raise nr_hugepages."""
        if not os.path.isdir(HUGE_SYSFS):
            raise HostUnsupported("this kernel has no 2 MiB hugetlb pages")
        if length <= 0 or length % HUGE_2M:
            return  # HostMapping refuses it with a clear message
        need = 2 * (length // HUGE_2M)

        def read(name: str) -> int:
            return int(read_setting(f"{HUGE_SYSFS}/{name}"))

        avail = read("free_hugepages") - read("resv_hugepages")
        if avail >= need:
            return
        if self._huge is None:
            self._huge = ExtraHugepages(2048)
        self._huge.grow(need - avail)
        avail = read("free_hugepages") - read("resv_hugepages")
        if avail < need:
            raise HostUnsupported(f"needed {need} free 2 MiB huge pages, have {avail} "
                                  "after raising nr_hugepages (memory too fragmented)")

    # -- the end --------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill and reap every scenario process, wait for the pins they held to be
        released, restore nr_hugepages and the subreaper flag, remove the temp files."""
        if self.closed:
            return
        self.closed = True
        errors: list[BaseException] = []
        for undo in (self._end_processes, self._wait_released, self._restore_huge,
                     self._restore_subreaper, self._remove_dirs):
            try:     # every step runs, even after a failure or an interrupt in another
                undo()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
        self._lock.__exit__(None, None, None)
        if errors:
            raise errors[0]

    def _wait_released(self) -> None:
        """Pins of killed processes are released by the kernel as they exit, rings' by a
        worker a little later: wait (a while) until the count is back where it started."""
        if self.start is not None:
            self.end = wait_outstanding(self.start.outstanding, timeout=5.0)

    def _end_processes(self) -> None:
        for proc in self.procs:
            try:
                proc.sock.close()
            except OSError:
                pass
        for group in self.groups:
            try:
                if os.getpgid(group) == group:
                    os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:   # a process that left its group (none do) still ends
            if proc.alive and _alive(proc.host_pid):
                try:
                    os.kill(proc.host_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        stuck = [p.host_pid for p in self.procs if not _reap(p.host_pid, self.timeout)]
        for pid in self._orphans():       # descendants we never heard of, reparented to us
            if not _reap(pid, self.timeout):
                stuck.append(pid)
        for proc in self.procs:
            proc.alive = False
        if stuck:
            raise ChildError(f"scenario processes {stuck} did not end", "")

    def _orphans(self) -> list[int]:
        me, found = os.getpid(), []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = proc_status(entry)
                if st.get("PPid") == me and os.getpgid(int(entry)) in self.groups:
                    found.append(int(entry))
            except (OSError, ValueError):
                continue
        return found

    def _restore_huge(self) -> None:
        if self._huge is not None:
            self._huge.restore()
            self._huge = None

    def _restore_subreaper(self) -> None:
        if self._old_subreaper is not None:
            libc.prctl(PR_SET_CHILD_SUBREAPER, self._old_subreaper)
            self._old_subreaper = None

    def _remove_dirs(self) -> None:
        for d in (self.disk_dir, self.shm_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    # -- for tests and reports ------------------------------------------------------------------
    @property
    def host_pids(self) -> list[int]:
        """Real pids of every scenario process ever started (in protocol order)."""
        return [p.host_pid for p in self.procs]


# Every host run needs these: the protocol is x86-64 only, and a comparison of pin counts
# means nothing unless /proc/vmstat can be read exactly.
BASE_NEEDS: tuple[str, ...] = ("x86_64", "stat_refresh")


def host_skip_reason(needs: tuple[str, ...]) -> str:
    """Why this host cannot run a case needing `needs` (capability names), or ""."""
    caps = host_capabilities()
    for name in BASE_NEEDS + tuple(needs):
        cap = caps.get(name)
        if cap is None:
            raise ValueError(f"unknown host capability {name!r}: choose from {sorted(caps)}")
        if not cap.ok:
            return f"{name}: {cap.reason}"
    return ""
