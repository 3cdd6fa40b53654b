"""Forked children: results, errors, timeouts, commands, privileges; always reaped."""

from __future__ import annotations

import os
import time

import pytest

from gupsim.live import Child, ChildError, run_in_child
from gupsim.live.libc import CAP_IPC_LOCK, capget, has_capability, memlock_limit, prctl

pytestmark = pytest.mark.host


def test_result_comes_back() -> None:
    assert run_in_child(lambda a, b: (os.getpid() != a, b), os.getpid(), "x") == (True, "x")


def test_exception_is_reraised_with_child_traceback() -> None:
    def boom() -> None:
        raise KeyError("missing-in-child")

    with pytest.raises(KeyError, match="missing-in-child") as exc:
        run_in_child(boom)
    assert "boom" in exc.value.__notes__[0]


def test_unpicklable_result_becomes_child_error() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        run_in_child(lambda: (lambda: None))


def test_timeout_kills_and_reaps() -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="killed"):
        run_in_child(time.sleep, 30, timeout=0.3)
    assert time.monotonic() - start < 2
    with Child(commands={"sleep": time.sleep}) as child:
        with pytest.raises(TimeoutError, match="killed"):
            child.call("sleep", 30, timeout=0.3)
        assert child.pid == 0 and child.exit_status == -9


def test_child_dying_is_reported() -> None:
    with pytest.raises(ChildError, match="died"):
        run_in_child(os._exit, 3)


def test_child_stays_until_block_ends() -> None:
    with Child(os.getpid, commands={"ppid": os.getppid}) as child:
        pid = child.result
        assert child.call("ppid") == os.getpid()
        assert os.path.exists(f"/proc/{pid}")
        with pytest.raises(ValueError, match="no command"):
            child.call("nope")
    assert child.exit_status == 0
    assert not os.path.exists(f"/proc/{pid}/status") or "Z" not in open(
        f"/proc/{pid}/status").read().split("State:")[1][:4]


def test_dropping_cap_ipc_lock_and_memlock() -> None:
    if not has_capability(CAP_IPC_LOCK):
        pytest.skip("we do not hold CAP_IPC_LOCK to drop")

    def inspect() -> tuple[bool, bool, bool, tuple[int, int]]:
        eff, perm, _ = capget()
        return (bool(eff >> CAP_IPC_LOCK & 1), bool(perm >> CAP_IPC_LOCK & 1),
                bool(prctl(23, CAP_IPC_LOCK)), memlock_limit())

    assert run_in_child(inspect, drop_cap_ipc_lock=True, memlock=65536) == (
        False, False, False, (65536, 65536))
    assert has_capability(CAP_IPC_LOCK)  # the parent keeps it


def test_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Child(os.getpid, timeout=0)
