"""`gupsim top`: who holds pinned memory on this host, as a table and as JSON.

The test process itself becomes a pinner (an io_uring registered buffer, charged to its
VmPin) and must show up with the right figures, then vanish once it unregisters; a
scenario process of a HostSystem shows up under its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.live import HostMapping, IoUring

pytestmark = pytest.mark.host
Need = Callable[..., None]
MiB = 1 << 20
WIDE = {"COLUMNS": "200"}


def top_json() -> dict:
    result = CliRunner().invoke(main, ["top", "--json"], env=WIDE)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def ours(snap: dict, pid: int | None = None) -> list[dict]:
    pid = os.getpid() if pid is None else pid
    return [p for p in snap["processes"] if p["pid"] == pid]


def test_json_has_the_counters_and_a_list_of_processes() -> None:
    snap = top_json()
    assert set(snap) == {"nr_foll_pin_acquired", "nr_foll_pin_released", "outstanding",
                         "exact", "xdp_diag", "accounted", "processes"}
    assert snap["outstanding"] == snap["nr_foll_pin_acquired"] - snap["nr_foll_pin_released"]
    acc = snap["accounted"]
    assert acc["difference"] == snap["outstanding"] - acc["total"] and acc["explanation"]
    for p in snap["processes"]:                             # only holders are listed
        assert (p["VmPin_kB"] or p["VmLck_kB"] or p["uring_buffers"] or p["xdp_umems"]
                or p["xdp_sockets_unsized"] or p["uring_user_rings"]), p
        assert p["command"]
    assert ours(snap) == []                                 # we hold nothing yet


def test_json_is_exact_as_root(need: Need) -> None:
    need("stat_refresh")
    assert top_json()["exact"] is True


def test_this_process_appears_while_it_holds_a_registered_buffer(need: Need) -> None:
    need("io_uring")
    with HostMapping(MiB, "anon") as m, IoUring(1) as ring:
        ring.register_buffers([(m.addr, MiB)])
        (me,) = ours(top_json())
        assert me["VmPin_kB"] == 1024
        assert me["uring_buffers"] == 1 and me["uring_bytes"] == MiB
        with open("/proc/self/comm") as f:
            assert me["name"] == f.read().strip()
        ring.unregister_buffers()
        assert ours(top_json()) == []          # nothing of ours after unregister


def test_the_table_shows_the_same(need: Need) -> None:
    need("io_uring")
    with HostMapping(MiB, "anon") as m, IoUring(1) as ring:
        ring.register_buffers([(m.addr, MiB)])
        out = CliRunner().invoke(main, ["top"], env=WIDE)
        assert out.exit_code == 0, out.output
        assert "pins outstanding" in out.output and "VmPin" in out.output
        rows = [line for line in out.output.splitlines() if f" {os.getpid()} " in line]
        assert len(rows) == 1 and "1,024" in rows[0] and "1 (1,024 KiB)" in rows[0], rows
        ring.unregister_buffers()   # synchronous; closing the ring unaccounts later
    out = CliRunner().invoke(main, ["top"], env=WIDE)
    assert out.exit_code == 0
    assert not [line for line in out.output.splitlines() if f" {os.getpid()} " in line]


def test_a_scenario_process_shows_under_its_own_pid(need: Need) -> None:
    need("io_uring", "stat_refresh")
    from gupsim.scenarios.host import HostSystem
    with HostSystem() as s:
        p = s.spawn("pinner")
        r = p.map("anon", 2 * MiB)
        assert p.uring_register([(r, 0, MiB), (r, MiB, MiB)]).ok
        (them,) = ours(top_json(), p.host_pid)
        assert (them["VmPin_kB"], them["uring_buffers"], them["uring_bytes"]) == (
            2048, 2, 2 * MiB)
        pid = p.host_pid
    assert ours(top_json(), pid) == []


def test_watch_rejects_a_non_positive_interval() -> None:
    result = CliRunner().invoke(main, ["top", "--watch", "0"])
    assert result.exit_code == 2 and "between 0.1 and 86400 seconds" in result.output


def test_watch_refreshes_until_ctrl_c() -> None:
    exe = Path(sys.executable).with_name("gupsim")
    if not exe.exists():
        pytest.skip(f"no gupsim script next to {sys.executable}")
    proc = subprocess.Popen([str(exe), "top", "--watch", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **WIDE})
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err          # interrupted, as every command
    assert "pins outstanding" in out
