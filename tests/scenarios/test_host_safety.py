"""A HostSystem leaves the machine as it found it, however the scenario ends.

Scenarios take real pins (io_uring fixed buffers in a parent and a forked child), raise
nr_hugepages for hugetlb maps, and create temp dirs. Whether the scenario returns,
raises midway, or is interrupted (KeyboardInterrupt, from code or a real SIGINT while
the orchestrator waits on a scenario process), after `close()`: the machine-wide
outstanding pin count is back to its start value, every scenario process is gone, no
io_uring ring is open, nr_hugepages and the subreaper flag are restored, and the temp
dirs are removed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from gupsim.live import host_capabilities, libc, uring_fdinfo, wait_outstanding
from gupsim.live.errors import ChildError
from gupsim.live.vmstat import LOCK_PATH, wait_quiet
from gupsim.scenarios import host as host_mod
from gupsim.scenarios import wire
from gupsim.scenarios.host import HostSystem, host_skip_reason
from gupsim.scenarios.protocol import Region, System

pytestmark = pytest.mark.host

NR_HUGEPAGES = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
MiB = 1 << 20
ATTEMPTS = 3   # other processes' pins can hide a clean close; a leak shows in every attempt
HUGE_MAP = 8 * MiB   # needs 8 free huge pages: more than other users usually leave free


class Boom(Exception):
    """Raised by a scenario midway."""


@pytest.fixture(scope="module", autouse=True)
def host_can() -> None:
    reason = host_skip_reason(("root", "io_uring"))
    if reason:
        pytest.skip(f"host cannot: {reason}")


@dataclass
class Seen:
    """What the scenario observed while it held everything (so the test can fail)."""

    pids: list[int] = field(default_factory=list)
    rings: int = 0
    huge_raised: bool = False


def _hugetlb() -> bool:
    return host_capabilities()["hugetlb_2m"].ok


def _read_huge() -> int:
    with open(NR_HUGEPAGES) as f:
        return int(f.read())


def hold_everything(s: System, seen: Seen, huge_before: int) -> None:
    """Pins in a parent and a forked child, a hugetlb map, a scratch file."""
    assert isinstance(s, HostSystem)
    p = s.spawn("parent")
    r = p.map("anon", MiB)
    assert p.uring_register([(r, 0, MiB)]).ok
    child = p.fork()
    assert child.uring_register([(r, 0, MiB)]).ok
    p.odirect_write(r, 0, 4096)
    if _hugetlb():
        p.map("hugetlb", HUGE_MAP)
        seen.huge_raised = s._huge is not None and s._huge.added > 0
    seen.pids = list(s.host_pids)
    seen.rings = sum(1 for pid in seen.pids for bufs in uring_fdinfo(pid).values() if bufs)


def _gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def _subreaper() -> int:
    v = ctypes.c_int(0)
    libc.prctl(host_mod.PR_GET_CHILD_SUBREAPER, ctypes.addressof(v))
    return v.value


def _uring_fds_of_self() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]":
                out.append(fd)
        except OSError:
            pass
    return out


def _holding_the_measuring_lock() -> bool:
    """Whether this process has the lock file open (an flock lives as long as its fd;
    whether it is free cannot be asked: another gupsim process may take it at once)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == LOCK_PATH:
                return True
        except OSError:
            pass
    return False


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def check_clean_close(body: Callable[[HostSystem, Seen], None],
                      expect: type[BaseException] | None) -> None:
    """Run `body` in a HostSystem (as run_on does: close() in `finally`) and check that
    the machine is as before. The pin count is retried against noise; the rest is exact."""
    for _ in range(ATTEMPTS):
        huge_before = _read_huge() if _hugetlb() else None
        sub_before = _subreaper()
        fds_before = set(os.listdir("/proc/self/fd"))
        seen = Seen()
        s = HostSystem()
        assert _holding_the_measuring_lock()
        start = s.start
        assert start is not None and start.exact
        raised: BaseException | None = None
        try:
            try:
                body(s, seen)
            finally:
                s.close()
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt is the point
            raised = exc
        if expect is None:
            assert raised is None, repr(raised)
        else:
            assert isinstance(raised, expect), repr(raised)

        # the scenario really held what we check for
        assert len(seen.pids) >= 2 and seen.rings >= 2, seen
        # every scenario process is gone, and so are its rings
        assert s.closed and all(_gone(pid) for pid in s.host_pids), s.host_pids
        assert not _uring_fds_of_self()
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
        # host settings and files
        assert _subreaper() == sub_before
        assert not os.path.exists(s.disk_dir)
        assert s.shm_dir is None or not os.path.exists(s.shm_dir)
        assert not _holding_the_measuring_lock()
        leaked = {fd for fd in set(os.listdir("/proc/self/fd")) - fds_before
                  if os.path.exists(f"/proc/self/fd/{fd}")}
        assert not leaked, leaked
        # machine-wide state other processes may change meanwhile: retried
        problems = []
        if huge_before is not None:
            if not seen.huge_raised:
                problems.append("the hugetlb map found enough free huge pages (another "
                                "process added them), so nothing was raised to restore")
            elif not _wait_for(lambda hb=huge_before: _read_huge() == hb):
                problems.append(f"nr_hugepages {_read_huge()}, was {huge_before}")
        end = s.end if s.end is not None else wait_outstanding(start.outstanding)
        if end.outstanding != start.outstanding:
            end = wait_outstanding(start.outstanding, timeout=5.0)
        if end.outstanding != start.outstanding:
            problems.append(f"outstanding pins {start.outstanding} -> {end.outstanding}")
        if not problems:
            return
        wait_quiet(0.2, 5.0)
    pytest.fail(f"in all {ATTEMPTS} attempts: {problems}")


def test_normal_close_releases_everything() -> None:
    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)

    check_clean_close(body, None)


def test_exception_midway_releases_everything() -> None:
    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        raise Boom("midway")

    check_clean_close(body, Boom)


def test_keyboard_interrupt_midway_releases_everything() -> None:
    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        raise KeyboardInterrupt

    check_clean_close(body, KeyboardInterrupt)


def test_sigint_while_waiting_on_a_scenario_process() -> None:
    """A real Ctrl-C: SIGINT arrives while the orchestrator waits for replies."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread only")

    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        p = s.procs[0]
        big = p.map("anon", 64 * MiB)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                p.write(big, 0, b"\x5a" * (64 * MiB))
        finally:
            timer.cancel()

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_clean_close(body, KeyboardInterrupt)
    finally:
        signal.signal(signal.SIGINT, old)


def test_interrupt_while_a_reply_is_pending() -> None:
    """KeyboardInterrupt inside the transport: the command was sent, its reply never read."""
    calls = {"n": 0}
    real = wire.recv

    def flaky(sock):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(sock)

    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        wire.recv = flaky
        try:
            p = s.procs[0]
            r = p.map("anon", MiB)
            for _ in range(20):
                p.write(r, 0, b"\x01" * 4096)
        finally:
            wire.recv = real

    check_clean_close(body, KeyboardInterrupt)


def test_sigint_during_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between fork() and the bookkeeping must not leave an untracked process."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread only")
    real = HostSystem._register

    def register_with_sigint(self: HostSystem, *args, **kwargs):
        if len(self.procs) == 2:    # the third process: after hold_everything's two
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        monkeypatch.setattr(HostSystem, "_register", register_with_sigint)
        try:
            s.spawn("late")
        finally:
            monkeypatch.undo()

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_clean_close(body, KeyboardInterrupt)
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_scenario_process_killed_from_outside() -> None:
    def body(s: HostSystem, seen: Seen) -> None:
        hold_everything(s, seen, _read_huge() if _hugetlb() else 0)
        child = s.procs[1]
        os.kill(child.host_pid, signal.SIGKILL)
        region = Region(child.pid, min(child.regions), "anon", MiB, False)
        child.read(region, 0, 1)

    check_clean_close(body, ChildError)


@pytest.fixture(autouse=True)
def _no_pending_cleanup() -> Iterator[None]:
    """close() unregisters its atexit/SIGTERM callback: none may remain from these tests."""
    from gupsim.live import cleanup
    before = set(cleanup._pending)
    yield
    assert set(cleanup._pending) <= before
