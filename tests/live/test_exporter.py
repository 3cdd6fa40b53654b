"""`gupsim exporter`: /metrics served on a loopback port, scraped over HTTP while another
process holds an io_uring registered buffer; and a real Prometheus server scraping it
(only where Debian's `prometheus` package is installed)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gupsim.live.proc import proc_status

pytestmark = pytest.mark.host
Need = Callable[..., None]
MiB = 1 << 20

HOLDER = textwrap.dedent("""
    import sys
    from gupsim.live import HostMapping, IoUring
    with HostMapping(1 << 20, "anon", fill=1) as a, IoUring(2) as ring:
        ring.register_buffers([(a.addr, 1 << 20)])
        print("holding", flush=True)
        sys.stdin.read()            # until the test closes our stdin
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen, how: Callable[[], None]) -> int:
    how()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
    finally:
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s:
                s.close()


@pytest.fixture
def holder(need: Need) -> Iterator[subprocess.Popen]:
    need("io_uring")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if line != "holding\n":
            pytest.skip(f"the holder could not pin: {proc.stderr.read()[-300:]}")  # type: ignore[union-attr]
        yield proc
    finally:
        stop(proc, lambda: proc.stdin.close() if proc.stdin else None)


@pytest.fixture
def exporter() -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from gupsim.cli import main; main()",
                             "exporter", "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        scrape(port)                    # up, and its SIGTERM handler installed
        yield proc, port
    finally:
        if proc.poll() is None:
            rc = stop(proc, lambda: proc.send_signal(signal.SIGTERM))
            assert rc == 0, "the exporter did not exit cleanly on SIGTERM"
        else:
            stop(proc, lambda: None)


def scrape(port: int, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def series(text: str, pid: int) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.labels.get("pid") == str(pid)}


def test_scraping_the_exporter_shows_the_holders_buffer(
        holder: subprocess.Popen, exporter: tuple[subprocess.Popen, int]) -> None:
    _, port = exporter
    got = series(scrape(port), holder.pid)
    assert got["gupsim_process_io_uring_buffers"] == 1
    assert got["gupsim_process_io_uring_buffer_bytes"] == MiB
    vm_pin = int(proc_status(holder.pid)["VmPin"]) * 1024
    assert got["gupsim_process_vm_pin_bytes"] == vm_pin
    labels = next(s.labels for fam in text_string_to_metric_families(scrape(port))
                  for s in fam.samples if s.labels.get("pid") == str(holder.pid))
    assert labels["comm"] == "python3" or labels["comm"].startswith("python")
    assert labels["user"]


def test_the_exporter_says_what_to_do_when_the_port_is_taken() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-c", "from gupsim.cli import main; main()",
                              "exporter", "--port", str(port)], capture_output=True,
                             text=True, timeout=30)
    assert out.returncode == 2 and "choose a free port with --port" in out.stderr


def test_ctrl_c_stops_the_exporter_as_an_interruption(
        exporter: tuple[subprocess.Popen, int]) -> None:
    """SIGTERM is a service stop (exit 0, the fixture checks it); Ctrl-C is exit 130 with
    the line every interrupted command prints, and the port is free again."""
    proc, port = exporter
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert proc.stderr is not None and "gupsim: interrupted" in proc.stderr.read()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # no listener is left
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.fixture
def prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed: apt-get install prometheus")
    return binary


def test_a_real_prometheus_server_scrapes_the_holders_figures(
        prometheus: str, holder: subprocess.Popen,
        exporter: tuple[subprocess.Popen, int]) -> None:
    binary = prometheus
    _, port = exporter
    web = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(textwrap.dedent(f"""
                global: {{scrape_interval: 1s}}
                scrape_configs:
                  - job_name: gupsim
                    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
            """))
        server = subprocess.Popen([binary, f"--config.file={cfg}",
                                   f"--storage.tsdb.path={tmp}/data",
                                   f"--web.listen-address=127.0.0.1:{web}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            q = urllib.parse.quote(
                f'gupsim_process_io_uring_buffer_bytes{{pid="{holder.pid}"}}')
            deadline = time.monotonic() + 60
            result: list = []
            while not result and time.monotonic() < deadline:
                time.sleep(1)
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{web}/api/v1/query?query={q}", timeout=5) as r:
                        result = json.load(r)["data"]["result"]
                except OSError:
                    continue
            assert result, "prometheus never answered the query with the holder's series"
            assert float(result[0]["value"][1]) == MiB
        finally:
            stop(server, server.terminate)
