"""`gupsim top` lists every holder a user would look for, not only VmPin: an AF_XDP umem
(charged to the user, so in no process's VmPin) and an io_uring buffer held by another
process, under its full command line, with totals that add up or say why not."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main

pytestmark = pytest.mark.host
Need = Callable[..., None]
MiB = 1 << 20

HOLDER = textwrap.dedent("""
    import sys, time
    from gupsim.live import HostMapping, IoUring, XdpUmem
    with HostMapping(1 << 20, "anon", fill=1) as a, HostMapping(2 << 20, "anon", fill=1) as b:
        with IoUring(2) as ring, XdpUmem(b.addr, 2 << 20):
            ring.register_buffers([(a.addr, 1 << 20)])
            print("holding", flush=True)
            sys.stdin.read()            # until the test closes our stdin
""")


@pytest.fixture
def holder(need: Need) -> Iterator[subprocess.Popen]:
    need("io_uring", "af_xdp")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, "--marker-argument"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if line != "holding\n":
            err = proc.stderr.read() if proc.stderr else ""
            pytest.skip(f"the holder could not pin: {err.strip()[-300:]}")
        yield proc
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()


def snapshot() -> dict:
    out = CliRunner().invoke(main, ["top", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_an_af_xdp_umem_and_a_uring_buffer_of_another_process_are_listed(
        holder: subprocess.Popen) -> None:
    snap = snapshot()
    [them] = [p for p in snap["processes"] if p["pid"] == holder.pid]
    assert "--marker-argument" in them["command"]        # the full command line
    assert them["uring_buffers"] == 1 and them["uring_bytes"] == MiB
    if snap["xdp_diag"]:
        assert them["xdp_umems"] == 1 and them["xdp_umem_bytes"] == 2 * MiB
    else:
        assert them["xdp_sockets_unsized"] == 1
    acc = snap["accounted"]
    assert acc["uring_pages"] >= MiB // 4096
    assert acc["difference"] == snap["outstanding"] - acc["total"]
    if not snap["xdp_diag"] and acc["difference"] > 0:
        assert "AF_XDP" in acc["explanation"]


def test_the_table_shows_the_holder_and_explains_the_totals(
        holder: subprocess.Popen) -> None:
    out = CliRunner().invoke(main, ["top"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert max(len(line) for line in out.output.splitlines()) <= 80
    assert str(holder.pid) in out.output and "--marker-argument" in out.output
    assert "1 (1,024 KiB)" in out.output
    assert "pages listed" in out.output


def test_json_and_watch_together_stream_one_object_per_line() -> None:
    gupsim = Path(sys.executable).with_name("gupsim")
    proc = subprocess.Popen([str(gupsim), "top", "--json", "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()
    snaps = [json.loads(line) for line in lines]
    assert all("outstanding" in s and "processes" in s for s in snaps)
    assert snaps[0]["time"] < snaps[1]["time"] < snaps[2]["time"]
    assert proc.returncode == 130


@pytest.mark.parametrize("entries", [4, 256])
def test_a_ring_in_the_processs_own_memory_is_listed_with_the_pages_it_pins(
        need: Need, entries: int) -> None:
    """IORING_SETUP_NO_MMAP: the SQ/CQ rings and SQEs are the process's own pages, pinned
    at setup and in no fdinfo list or VmPin; top finds the ring by its unmapped inode and
    sizes it from its entries. The size is checked against the pins setup really took."""
    from gupsim.live import HostMapping, IoUring
    from gupsim.live.proc import pin_snapshot
    from gupsim.live.uring import no_mmap_supported
    from gupsim.live.vmstat import wait_quiet
    need("io_uring", "root")
    if not no_mmap_supported():
        pytest.skip("host cannot: IORING_SETUP_NO_MMAP (Linux 6.5+)")
    with HostMapping(MiB, "anon", fill=0) as mem, IoUring(2) as mapped_ring:
        before, _ = wait_quiet()
        with IoUring(entries, user_memory=(mem.addr + MiB // 2, mem.addr)) as ring:
            after, _ = wait_quiet()
            snap = pin_snapshot()
        [me] = [p for p in snap["processes"] if p["pid"] == os.getpid()]
        assert me["uring_user_rings"] == 1, "the mapped ring is not counted, the other is"
        assert me["uring_ring_pages"] == after.outstanding - before.outstanding
        assert ring.fd != mapped_ring.fd
