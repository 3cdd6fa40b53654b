"""`gupsim top --prometheus` and `gupsim exporter`: the `gupsim top` snapshot as Prometheus
metrics, through the official client library (prometheus_client).

Metrics (sizes in bytes, counts as plain numbers; per-process series carry pid, comm
and user labels):

    gupsim_foll_pin_acquired_pages_total, gupsim_foll_pin_released_pages_total
    gupsim_pins_outstanding_pages            acquired - released, machine-wide
    gupsim_pins_accounted_pages{source}      io_uring / af_xdp pages the holders explain
    gupsim_process_vm_pin_bytes              VmPin
    gupsim_process_vm_locked_bytes           VmLck
    gupsim_process_io_uring_buffers          registered buffers
    gupsim_process_io_uring_buffer_bytes
    gupsim_process_af_xdp_umems, gupsim_process_af_xdp_umem_bytes
    gupsim_user_af_xdp_umem_bytes{user}      umems are charged to the user, not the process
    gupsim_snapshot_exact                    1 if the counters are exact (root)
"""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]
_LABELS = ["pid", "comm", "user"]


def _user(pid: int) -> str:
    """The owner of process `pid` by name (its uid if it has no name), "" if it is gone."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class PinCollector(Collector):
    """A collector that takes a fresh `gupsim top` snapshot on every scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        """The metric families of one snapshot (see the module docstring)."""
        snap = self.snapshot()
        yield CounterMetricFamily("gupsim_foll_pin_acquired_pages",
                                  "Pages pinned with FOLL_PIN since boot (nr_foll_pin_acquired)",
                                  value=snap["nr_foll_pin_acquired"])
        yield CounterMetricFamily("gupsim_foll_pin_released_pages",
                                  "Pages unpinned since boot (nr_foll_pin_released)",
                                  value=snap["nr_foll_pin_released"])
        yield GaugeMetricFamily("gupsim_pins_outstanding_pages",
                                "FOLL_PIN pins held now, machine-wide (acquired - released)",
                                value=snap["outstanding"])
        yield GaugeMetricFamily("gupsim_snapshot_exact",
                                "1 if the pin counters are exact (read as root), else 0",
                                value=1 if snap["exact"] else 0)
        acc = GaugeMetricFamily("gupsim_pins_accounted_pages",
                                "Pinned pages the listed holders account for, by source",
                                labels=["source"])
        acc.add_metric(["io_uring"], snap["accounted"]["uring_pages"])
        acc.add_metric(["af_xdp"], snap["accounted"]["xdp_umem_pages"])
        yield acc
        fams = {key: GaugeMetricFamily(name, doc, labels=_LABELS) for key, name, doc in (
            ("pin", "gupsim_process_vm_pin_bytes", "VmPin of the process (mm->pinned_vm)"),
            ("lck", "gupsim_process_vm_locked_bytes", "VmLck of the process (mm->locked_vm)"),
            ("ubufs", "gupsim_process_io_uring_buffers", "io_uring registered buffers"),
            ("ubytes", "gupsim_process_io_uring_buffer_bytes",
             "Bytes of io_uring registered buffers"),
            ("umems", "gupsim_process_af_xdp_umems", "AF_XDP umems the process's sockets use"),
            ("xbytes", "gupsim_process_af_xdp_umem_bytes",
             "Bytes of AF_XDP umems the process's sockets use"))}
        by_user: dict[str, int] = {}
        for p in snap["processes"]:
            user = _user(p["pid"])
            lv = [str(p["pid"]), p["name"], user]
            fams["pin"].add_metric(lv, p["VmPin_kB"] * 1024)
            fams["lck"].add_metric(lv, p["VmLck_kB"] * 1024)
            fams["ubufs"].add_metric(lv, p["uring_buffers"])
            fams["ubytes"].add_metric(lv, p["uring_bytes"])
            fams["umems"].add_metric(lv, p["xdp_umems"])
            fams["xbytes"].add_metric(lv, p["xdp_umem_bytes"])
            if p["xdp_umem_pages"]:
                by_user[user] = by_user.get(user, 0) + p["xdp_umem_bytes"]
        yield from fams.values()
        users = GaugeMetricFamily("gupsim_user_af_xdp_umem_bytes",
                                  "AF_XDP umem bytes charged to each user (user->locked_vm)",
                                  labels=["user"])
        for user, n in sorted(by_user.items()):
            users.add_metric([user], n)
        yield users


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A registry holding only the pin collector (no process/platform default metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PinCollector(snapshot))
    return reg


def exposition(snap: dict[str, Any]) -> str:
    """The text exposition format of one snapshot (`gupsim top --prometheus`)."""
    return generate_latest(registry_for(lambda: snap)).decode()


class _Stopped(Exception):
    """SIGTERM: a service manager stopping the exporter, a normal end (exit 0)."""


def serve(port: int, bind: str, snapshot: Snapshot) -> None:
    """Serve /metrics on bind:port until SIGTERM (returns: a service stop) or Ctrl-C
    (KeyboardInterrupt goes on to the command line: exit 130, as every command's
    interruption); a fresh snapshot per scrape."""
    from prometheus_client import start_http_server
    server, thread = start_http_server(port, addr=bind, registry=registry_for(snapshot))

    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    signal.signal(signal.SIGTERM, stop)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except _Stopped:
        pass
    finally:
        server.shutdown()
        server.server_close()
