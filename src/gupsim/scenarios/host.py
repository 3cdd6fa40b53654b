"""The host back-end of the scenario protocol: the orchestrator of real processes.

Every scenario process is a real process running the command server
(`scenarios/server.py`), driven over a socketpair (`scenarios/wire.py`). `HostSystem`
spawns the servers, runs each step of the shared base (`scenarios/base.py`) as a request
to one of them inside a pin-counter measurement (`live.vmstat.Meter`), makes the host
settings a step needs (free 2 MiB huge pages, the mTHP size's `enabled` knob), and at
`close()` ends every process and restores every setting. The orchestrator is a child
subreaper, so every descendant is reaped by `close()`.

Each step is measured from the orchestrator: the machine-wide `nr_foll_pin_*` counters
(exact through stat_refresh, in a quiet window, with a settle for releases the kernel
defers to a worker), then VmPin/VmLck of the acting process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..live import cleanup, libc
from ..live.capabilities import host_capabilities
from ..live.errors import ChildError, HostUnsupported
from ..live.proc import proc_status
from ..live.repair import announce_repairs
from ..live.settings import (
    THP_ENABLED,
    ExtraHugepages,
    SharedSetting,
    read_setting,
    thp_size_enabled,
)
from ..live.swapfile import SwapFile, active_swaps
from ..live.vmstat import Meter, PinCounters, counters_to_ourselves, wait_outstanding, wait_quiet
from ..mm.access import BusError, SegmentationFault
from . import wire
from .base import BaseProc, BaseSystem, Counted
from .ops import Op
from .race import Race
from .records import MTHP_KINDS, Outcome
from .server import server_main

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

HUGE_SYSFS = "/sys/kernel/mm/hugepages/hugepages-2048kB"
HUGE_2M = 2 << 20
SWAP_FILE_SIZE = 64 << 20    # the temporary swap file of a case that needs swap

# Orchestrator-side sockets of every live HostSystem: a newly spawned server closes them,
# so that each server sees EOF (and exits) when the orchestrator goes away.
_ORCH_SOCKS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


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


class HostProc(BaseProc):
    """A scenario process on the host: a command server, driven over a socketpair."""

    system: HostSystem

    def __init__(self, system: HostSystem, sock: socket.socket, host_pid: int, pid: int,
                 name: str) -> None:
        super().__init__(system, pid, name)
        self.sock = sock
        self.host_pid = host_pid     # the real pid

    def __repr__(self) -> str:
        state = "alive" if self.alive else "exited"
        return f"<HostProc {self.pid} {self.name!r} pid {self.host_pid} {state}>"

    # -- transport -----------------------------------------------------------------------
    def _call(self, cmd: str, args: dict[str, Any]) -> tuple[tuple[Any, ...], list[int]]:
        """Send one request and wait for its reply (and any descriptors with it)."""
        try:
            wire.send(self.sock, (cmd, args))
            return wire.recv(self.sock)
        except TimeoutError:
            self.system._kill(self)
            raise TimeoutError(f"process {self.pid} (pid {self.host_pid}) did not answer "
                               f"{cmd!r} within {self.system.timeout} s; it was killed "
                               "(raise HostSystem(timeout=) if the work is slow)") from None
        except (EOFError, ConnectionError):
            self.system._kill(self)
            raise ChildError(f"process {self.pid} (pid {self.host_pid}) died during "
                             f"{cmd!r}", "") from None

    # -- the primitives --------------------------------------------------------------------
    def _perform(self, op: Op, args: dict[str, Any]) -> Outcome:
        """Run `do_<op>` in the server; a process argument travels as its real pid."""
        wire_args = {k: (v.host_pid if isinstance(v, HostProc) else v)
                     for k, v in args.items()}
        reply, fds = self._call(op.name, wire_args)
        value: Any = None
        if op.name == "fork" and reply[0] == "ok":
            if len(fds) != 1:
                raise ChildError(f"fork reply carried {len(fds)} descriptors", "")
            value = self.system._adopt(socket.socket(fileno=fds[0]), reply[1],
                                       f"{self.name}-child")
        else:
            for fd in fds:
                os.close(fd)
        if op.ends:
            self.system._ended(self)
        kind = reply[0]
        if kind == "exc":
            exc = reply[1]
            if isinstance(exc, BaseException):
                exc.add_note(f"--- raised in scenario process {self.pid} "
                             f"(pid {self.host_pid}) ---\n{reply[2]}")
                raise exc
            raise ChildError(f"scenario process {self.pid} raised {exc}", reply[2])
        if kind == "fault":
            _, sig, addr, why = reply
            raise (SegmentationFault if sig == "SIGSEGV" else BusError)(addr, why)
        if kind == "os":
            return Outcome(reply[1])
        return Outcome(0, value if value is not None else reply[1])

    def _oom_kill(self) -> None:
        """Nothing to do: on the host the kernel's OOM killer ends the child itself."""

    def _identity(self, addr: int, length: int) -> str:
        reply, fds = self._call("pages", {"addr": addr, "length": length, "other": None,
                                          "soft_dirty": False})
        for fd in fds:
            os.close(fd)
        if reply[0] == "exc" and isinstance(reply[1], HostUnsupported):
            raise reply[1]
        if reply[0] != "ok":
            raise ChildError(f"process {self.pid} could not read its pagemap: {reply}", "")
        return str(reply[1])

    def _status(self) -> dict[str, int]:
        try:
            st = proc_status(self.host_pid)
        except (FileNotFoundError, ProcessLookupError):
            return {"VmPin": 0, "VmLck": 0}
        return {"VmPin": int(st["VmPin"]), "VmLck": int(st["VmLck"])}


class HostSystem(BaseSystem):
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
    procs: list[HostProc]  # type: ignore[assignment]

    def __init__(self, *, timeout: float = 5.0, quiet: float = 0.05, settle: float = 0.2,
                 quiet_timeout: float = 2.0, needs: tuple[str, ...] = (),
                 observe_pages: bool = False) -> None:
        libc.check_arch()
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        super().__init__()
        self.timeout = timeout
        self.quiet = quiet
        self.settle = settle
        self.quiet_timeout = quiet_timeout
        self.observe_pages = observe_pages
        self.groups: set[int] = set()          # process groups of spawned servers
        self.start: PinCounters | None = None  # counters when the system was opened
        self.end: PinCounters | None = None    # after close(): back to `start.outstanding`
        self._meter = Meter(quiet=quiet, timeout=quiet_timeout)
        self._huge: ExtraHugepages | None = None  # huge pages we added to the pool
        self._want_swap = "swap" in needs         # the case's host capabilities
        self._swap: SwapFile | None = None        # a swap file we added for the run
        self._token: int | None = None
        self._old_subreaper: int | None = None
        announce_repairs()     # put back what a killed gupsim run left, before we measure
        # no other gupsim process measures or pins while this system lives (see vmstat)
        self._lock = counters_to_ourselves()
        self.exclusive = self._lock.__enter__()
        try:
            self.disk_dir = cleanup.temp_dir("host", at_exit=False)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self.shm_dir: str | None = None
        try:
            os.chmod(self.disk_dir, 0o1777)    # servers may run as a private uid
            if os.path.isdir("/dev/shm") and libc.fs_type("/dev/shm") == "tmpfs":
                self.shm_dir = cleanup.temp_dir("host", dir="/dev/shm", at_exit=False)
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

    # -- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str) -> HostProc:
        # No KeyboardInterrupt between fork() and recording the new process: close() must
        # know every process it has to end. A Ctrl-C pending meanwhile is raised after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                ours.detach()
                server_main(theirs, self.disk_dir, self.shm_dir, mask, _ORCH_SOCKS)
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
            ready, _ = wire.recv(proc.sock)
        except (TimeoutError, EOFError, ConnectionError) as exc:
            self._kill(proc)
            raise ChildError(f"scenario process {host_pid} did not start: {exc!r}",
                             "") from None
        if ready != ("ready", host_pid):
            self._kill(proc)
            raise ChildError(f"scenario process {host_pid} said {ready!r}", "")

    def _ended(self, proc: HostProc) -> None:
        """A process said it exits: close its socket and reap it."""
        proc.alive = False
        proc.sock.close()
        if not _reap(proc.host_pid, self.timeout):
            os.kill(proc.host_pid, signal.SIGKILL)
            _reap(proc.host_pid, self.timeout)

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

    # -- one measured step ----------------------------------------------------------------------
    @contextmanager
    def _measure(self, settle: bool) -> Iterator[Counted]:
        """The machine-wide counters around a step, chained with the previous step's."""
        counted = Counted()
        with self._meter.block(self.settle if settle else 0.0) as m:
            yield counted
        d = m.delta
        counted.acquired, counted.released = d.acquired, d.released
        counted.late = m.late_released
        counted.trusted = d.exact and d.quiet

    @contextmanager
    def _prepare(self, proc: BaseProc, op: Op, args: dict[str, Any]) -> Iterator[None]:
        """Host settings a map needs: free huge pages for hugetlb kinds, THP enabled for
        "thp", and hugepages-<size>kB at "madvise" while an mTHP kind's map faults; a swap file
        before the first step of a case that needs swap, when the host has none."""
        if self._want_swap:
            self._ensure_swap()
        huge = ("hugetlb", "memfd-hugetlb")
        if op.name == "map_view" and args["rid"] in proc.regions:
            # a private view of a hugetlb file reserves huge pages of its own at mmap
            if proc.regions[args["rid"]].kind in huge:
                self._ensure_hugepages(args["length"])
        elif op.name == "fork":     # a pinned private huge page is copied for the child,
            # and the child's own faults get no reservation: one free page per inherited
            # huge page (`inherited // 2` asked none for a single 2 MiB page)
            inherited = sum(r.length for r in proc.regions.values() if r.kind in huge)
            if inherited:
                self._ensure_hugepages(inherited, per_page=1)
        if op.name != "map":
            yield
            return
        kind, length = args["kind"], args["length"]
        if kind in ("hugetlb", "memfd-hugetlb"):
            self._ensure_hugepages(length)
        elif kind == "thp" or kind in MTHP_KINDS:
            try:
                mode = read_setting(THP_ENABLED)
            except FileNotFoundError:
                raise HostUnsupported("this kernel has no transparent huge pages") from None
            if mode == "never":
                raise HostUnsupported("transparent_hugepage/enabled is 'never'")
        knob: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if kind in MTHP_KINDS:
            path = thp_size_enabled(MTHP_KINDS[kind] >> 10)
            if not os.path.exists(path):
                raise HostUnsupported(f"this kernel offers no {MTHP_KINDS[kind] >> 10} KiB "
                                      f"mTHP ({path} is missing)")
            knob = SharedSetting(path, "madvise")
        with knob:          # the fault (populate) picks the folio size: hold the knob there
            yield

    def _refused(self, op: Op, args: dict[str, Any], name: str, out: Outcome) -> None:
        """A hugetlb map without a free huge page is the host's limit, not a result."""
        if op.name == "map" and args["kind"] in ("hugetlb", "memfd-hugetlb") \
                and out.errno == errno.ENOMEM:
            raise HostUnsupported(f"no 2 MiB huge page for a {args['length']}-byte "
                                  f"{args['kind']} map")
        super()._refused(op, args, name, out)

    # -- host settings ------------------------------------------------------------------------
    def _ensure_hugepages(self, length: int, per_page: int = 2) -> None:
        """Make sure `per_page` free 2 MiB hugetlb pages per huge page of `length` bytes
        (by default one for it and one for a copy: COW after fork, pinned pages copied
        at fork) are there, unreserved; raise nr_hugepages."""
        if not os.path.isdir(HUGE_SYSFS):
            raise HostUnsupported("this kernel has no 2 MiB hugetlb pages")
        need = per_page * (-(-length // HUGE_2M))

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

    def _ensure_swap(self) -> None:
        """Add a temporary swap file (journaled, removed at close) if none is active."""
        self._want_swap = False
        if not active_swaps():
            self._swap = SwapFile(SWAP_FILE_SIZE)
            self._swap.__enter__()

    # -- the end --------------------------------------------------------------------------------
    def _close(self) -> None:
        """Kill and reap every scenario process, wait for the pins they held to be
        released, restore nr_hugepages, remove a swap file we added, restore the subreaper
        flag, remove the temp files."""
        errors: list[BaseException] = []
        for undo in (self._end_processes, self._wait_released, self._restore_huge,
                     self._remove_swap, self._restore_subreaper, self._remove_dirs):
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

    def _remove_swap(self) -> None:
        if self._swap is not None:
            self._swap.remove()
            self._swap = None

    def _restore_subreaper(self) -> None:
        if self._old_subreaper is not None:
            libc.prctl(PR_SET_CHILD_SUBREAPER, self._old_subreaper)
            self._old_subreaper = None

    def _remove_dirs(self) -> None:
        for d in (self.disk_dir, self.shm_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    def _arm_race(self, race: Race) -> None:
        """The host cannot inject steps into the kernel's race windows: skip the case."""
        raise HostUnsupported(f"on_race({race.point!r}): the host cannot run steps inside a "
                              "kernel race window; races are model-only")

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
