"""The KVM operations and map_fixed answer misuse, and the kernel's refusals, the same on
both back-ends (the host side skips where /dev/kvm cannot run a guest)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from test_protocol import misuse

from gupsim.constants import PAGE_SIZE
from gupsim.live.capabilities import host_capabilities
from gupsim.scenarios.host import HostSystem, host_skip_reason
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.ops import KVM_GUEST_MEMORY
from gupsim.scenarios.protocol import System


@pytest.fixture(params=[pytest.param("model"), pytest.param("host", marks=pytest.mark.host)])
def system(request: pytest.FixtureRequest) -> Iterator[System]:
    if request.param == "host":
        reason = host_skip_reason(("kvm",))
        if reason:
            pytest.skip(f"host cannot: {reason}")
        s: System = HostSystem()
    else:
        s = ModelSystem()
    try:
        yield s
    finally:
        s.close()


def test_a_guest_read_without_a_vm_is_ebadf(system: System) -> None:
    p = system.spawn("vmm")
    out = p.kvm_guest_read(0, 8)
    assert out.errno == errno.EBADF
    assert system.trace.steps[-1].outcome == "EBADF"


def test_guest_read_arguments_are_checked(system: System) -> None:
    p = system.spawn("vmm")
    assert "1..4096 bytes" in misuse(system, lambda: p.kvm_guest_read(0, 0))
    assert "1..4096 bytes" in misuse(system, lambda: p.kvm_guest_read(0, PAGE_SIZE + 1))
    assert "below guest-physical" in misuse(
        system, lambda: p.kvm_guest_read(KVM_GUEST_MEMORY - 1, 2))
    assert ">= 0" in misuse(system, lambda: p.kvm_guest_read(-1, 1))


def test_a_region_too_large_for_a_real_mode_guest(system: System) -> None:
    p = system.spawn("vmm")
    r = p.map("anon", KVM_GUEST_MEMORY + PAGE_SIZE, populate=False)
    assert "use a smaller region" in misuse(system, lambda: p.kvm_create(r))


def test_map_fixed_over_a_live_mapping_is_eexist_and_after_munmap_works(system: System
                                                                        ) -> None:
    p = system.spawn("vmm")
    r = p.map("anon", 2 * PAGE_SIZE, fill=7)
    assert p.map_fixed(r, 9).errno == errno.EEXIST
    assert p.read(r, 0, 1) == b"\x07"
    p.munmap(r)
    assert p.map_fixed(r, 9).ok
    assert p.read(r, PAGE_SIZE, 2) == b"\x09\x09"


def test_a_second_vm_replaces_the_first(system: System) -> None:
    if system.name != "model" and not host_capabilities()["kvm"]:
        pytest.skip("no kvm")
    p = system.spawn("vmm")
    a = p.map("anon", PAGE_SIZE, fill=1)
    b = p.map("anon", 2 * PAGE_SIZE, fill=2)
    assert p.kvm_create(a).ok
    assert p.kvm_guest_read(0, 1).value == b"\x01"
    assert p.kvm_create(b).ok
    assert p.kvm_guest_read(0, 1).value == b"\x02"
    assert p.kvm_guest_read(PAGE_SIZE, 1).value == b"\x02"
    assert all(s.acquired == 0 and s.released == 0 for s in system.trace.steps)


def test_without_dev_kvm_every_kvm_case_is_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host where /dev/kvm cannot be opened: the probe says why, and `gupsim live`
    records each KVM catalogue case as skipped on the host with that reason, while the
    model side still runs and meets the documented outcome."""
    import os

    from gupsim.live import capabilities, kvm
    from gupsim.scenarios import host
    from gupsim.scenarios.catalogue import kvm_cases
    from gupsim.scenarios.runner import run_case

    real_open = os.open

    def no_kvm(path: str, *args: object, **kwargs: object) -> int:
        if path == "/dev/kvm":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kvm.os, "open", no_kvm)
    reason = kvm.kvm_unusable()
    assert reason == "/dev/kvm cannot be opened: No such file or directory (errno 2)"
    probed = capabilities._probe(capabilities.PROBES["kvm"])
    assert not probed.ok and probed.reason == reason
    caps = {name: capabilities.Capability(True, "") for name in capabilities.PROBES}
    caps["kvm"] = probed
    monkeypatch.setattr(host, "host_capabilities", lambda: caps)
    cases = kvm_cases()
    assert len(cases) == 5
    for case in cases:
        result = run_case(case)
        assert result.host is not None and result.host.skipped == f"kvm: {reason}"
        assert not result.model.skipped and result.model_problems == []
