"""Fixtures for tests that drive the host kernel (marked `host`).

Every test runs under `no_leak`: afterwards the machine-wide outstanding pin count must be
back where it was, this process must hold no VmPin, no fd and no child may be left over.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from gupsim.live import (
    Capability,
    PinDelta,
    host_capabilities,
    pin_counters,
    vm_pin_kb,
    wait_outstanding,
)
from gupsim.live.vmstat import wait_quiet

T = TypeVar("T")


@pytest.fixture(scope="session")
def caps() -> dict[str, Capability]:
    return host_capabilities()


@pytest.fixture
def need(caps: dict[str, Capability]) -> Callable[..., None]:
    """need("io_uring", "root"): skip with the host's reason unless all are available."""

    def check(*names: str) -> None:
        for name in names:
            if not caps[name]:
                pytest.skip(f"host cannot: {name}: {caps[name].reason}")

    return check


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leak(caps: dict[str, Capability]) -> Iterator[None]:
    """Assert that the test released every pin, fd and child it took."""
    if not caps["x86_64"]:
        pytest.skip(caps["x86_64"].reason)
    before, _ = wait_quiet()
    fds = _open_fds()
    yield
    after = wait_outstanding(before.outstanding, timeout=3.0)
    assert after.outstanding == before.outstanding, (
        f"pins outstanding machine-wide went {before.outstanding} -> {after.outstanding}")
    assert vm_pin_kb() == 0, "VmPin of the test process is not 0 after the test"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left to reap
    leaked = _open_fds() - fds
    assert not {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}, leaked


def _quiet(run: Callable[[], T], retries: int = 5) -> T:
    for _ in range(retries):
        result = run()
        values = result if isinstance(result, tuple | list) else (result,)
        if all(v.quiet for v in values if isinstance(v, PinDelta)):
            return result
    pytest.skip(f"pin counters kept moving (other processes pinning); {retries} tries")


@pytest.fixture
def quiet(need: Callable[..., None]) -> Callable[..., object]:
    """quiet(run): re-run a self-contained measuring `run` until all its PinDeltas were
    taken in a quiet window (skip if the machine never quiets down). Needs exact counters."""
    need("stat_refresh")
    assert pin_counters().exact
    return _quiet
