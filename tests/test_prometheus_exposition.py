"""`gupsim top --prometheus`: the snapshot as a Prometheus text exposition, parsed back
with the official client library's parser."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from gupsim.cli import main
from gupsim.live import HostUnsupported, pin_counters
from gupsim.report.prometheus import _user, exposition


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


SNAP = {"nr_foll_pin_acquired": 700, "nr_foll_pin_released": 400, "outstanding": 300,
        "exact": True, "xdp_diag": True,
        "accounted": {"uring_pages": 256, "xdp_umem_pages": 512, "xdp_sockets_unsized": 0,
                      "total": 768, "difference": -468, "explanation": "x"},
        "processes": [{"pid": 1, "name": "init", "command": "/sbin/init", "VmPin_kB": 1024,
                       "VmLck_kB": 8, "uring_buffers": 2, "uring_bytes": 1 << 20,
                       "xdp_umems": 1, "xdp_umem_bytes": 2 << 20,
                       "xdp_sockets_unsized": 0, "xdp_umem_pages": 512}]}


def test_a_snapshot_round_trips_through_the_parser() -> None:
    got = samples(exposition(SNAP))
    assert got[("gupsim_pins_outstanding_pages", ())] == 300
    assert got[("gupsim_foll_pin_acquired_pages_total", ())] == 700
    assert got[("gupsim_pins_accounted_pages", (("source", "io_uring"),))] == 256
    owner = _user(1)            # the label names the owner of the live pid 1
    lab = (("comm", "init"), ("pid", "1"), ("user", owner))
    assert got[("gupsim_process_vm_pin_bytes", lab)] == 1024 * 1024
    assert got[("gupsim_process_vm_locked_bytes", lab)] == 8 * 1024
    assert got[("gupsim_process_io_uring_buffers", lab)] == 2
    assert got[("gupsim_process_io_uring_buffer_bytes", lab)] == 1 << 20
    assert got[("gupsim_process_af_xdp_umem_bytes", lab)] == 2 << 20
    assert got[("gupsim_user_af_xdp_umem_bytes", (("user", owner),))] == 2 << 20
    assert all(name.startswith("gupsim_") for name, _ in got)


@pytest.mark.host
def test_top_prometheus_prints_the_host_snapshot() -> None:
    """The exposition's counters are this kernel's /proc/vmstat pin counters, read between
    a reading before and one after (they only grow), and outstanding is their difference."""
    try:
        before = pin_counters(wait=False)
    except HostUnsupported as exc:
        pytest.skip(f"host cannot: {exc}")
    out = CliRunner().invoke(main, ["top", "--prometheus"])
    after = pin_counters(wait=False)
    assert out.exit_code == 0, out.output
    got = samples(out.output)
    acq = got[("gupsim_foll_pin_acquired_pages_total", ())]
    rel = got[("gupsim_foll_pin_released_pages_total", ())]
    assert before.acquired <= acq <= after.acquired
    assert before.released <= rel <= after.released
    assert got[("gupsim_pins_outstanding_pages", ())] == acq - rel


def test_top_prometheus_refuses_json_and_watch() -> None:
    out = CliRunner().invoke(main, ["top", "--prometheus", "--json"])
    assert out.exit_code == 2 and "gupsim exporter" in out.output
