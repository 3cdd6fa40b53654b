"""Running the cases: model and host interleaved round by round, each round warmed up.

For each case both sides set up once (the model in this process, the host in the worker
process), then alternate: model, host, `rounds` times, so that a disturbance of the
machine (another process, frequency scaling) falls on both. Each side's timed round
comes right after an untimed warm-up round of its own (imports, caches, first faults):
without it, a side runs cold after the other's round, and the two are not cold alike:
the host's set-up populates the whole range (64 MiB of zeroing flushes every cache),
the model's set-up touches little, and the model's pinning code is an interpreter's
working set where the kernel's is a few cache lines. Before the first timed round each
side also runs `WARMUP_ROUNDS` untimed rounds (at most `WARMUP_SECONDS`): CPython
specializes a function's bytecode only once it has run several times (a code object is
quickened after 8 calls, each instruction adapts after more), so code that runs once a
round, as a THP pin's leaf path does, ran its first ten rounds unspecialized and some
1.5x slower than from then on; the kernel's code needs no such warm-up. Each phase
reports min and median of its rounds; the ratio is model min over host min (below 1:
the model is faster).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .cases import Case
from .model_side import WORKLOADS

SCALE = {"ns/page": 1e9, "us/call": 1e6, "ms": 1e3}
WARMUP_ROUNDS = 16          # CPython's specialization settles within about ten calls
WARMUP_SECONDS = 2.0        # a cap for the slow cases (1 GiB bulk, fork of 1 GiB)


@dataclass
class Row:
    """One phase of one case: the figures of each side in the case's unit."""

    case: str
    phase: str
    unit: str
    model_min: float
    model_median: float
    host_min: float | None = None
    host_median: float | None = None
    goal: str = ""
    met: bool | None = None
    host_skipped: str = ""

    @property
    def ratio(self) -> float | None:
        """Model over host, best rounds (None without a host figure)."""
        return None if not self.host_min else self.model_min / self.host_min

    def as_dict(self) -> dict[str, object]:
        """The row as plain data, ratio included, for `gupsim bench --json`."""
        return asdict(self) | {"ratio": self.ratio}


class HostWorker:
    """The parent's handle on a worker process (a context manager)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostWorker:
        self.proc = subprocess.Popen([sys.executable, "-m", "gupsim.bench.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()         # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        """Send one request, return the reply ({"ok": ...} or {"skip": why})."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the host worker died (exit {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply


def _figures(case: Case, rounds: list[dict[str, float]], phase: str) -> tuple[float, float]:
    """(best, median) of a phase in the case's unit; best is the highest rate, else the
    lowest."""
    raw = [r[phase] for r in rounds]
    if case.unit == "steps/s":
        vals = [case.per / s for s in raw]
        return max(vals), statistics.median(vals)
    vals = [s * SCALE[case.unit] / case.per for s in raw] if case.unit in SCALE else raw
    return min(vals), statistics.median(vals)


def _met(case: Case, row: Row) -> bool | None:
    goal = case.goal
    if not goal.applies(row.phase):
        return None
    if goal.kind == "ratio":
        return None if row.ratio is None else row.ratio <= goal.value
    return row.model_min <= goal.value if goal.kind == "max" else row.model_min >= goal.value


def measure(case: Case, rounds: int, worker: HostWorker | None, skip: str = "") -> list[Row]:
    """Rows of one case; `worker` None (with the reason in `skip`): the model only."""
    rounds = min(rounds, case.rounds or rounds)
    model: list[dict[str, float]] = []
    host: list[dict[str, float]] = []
    if case.host and worker is not None and not skip:
        reply = worker.call("open", workload=case.workload, params=case.params)
        skip = reply.get("skip", "")
    elif not case.host:
        skip = "no host counterpart"
    try:
        warm = case.rounds != 1                     # a one-round case is not repeated
        with WORKLOADS[case.workload](**case.params) as model_round:
            if warm:
                _warm_up(model_round)
                if not skip and worker is not None:
                    skip = _warm_up(lambda: worker.call("round"))
            for _ in range(rounds):
                if warm:
                    model_round()
                model.append(model_round())
                for first in (True, False) if warm else (False,):
                    if skip or worker is None:
                        break
                    reply = worker.call("round")
                    skip = reply.get("skip", "")
                    if not skip and not first:
                        host.append(reply["ok"])
    finally:
        if case.host and worker is not None:
            worker.call("close")
    rows = []
    for phase in case.phases:
        row = Row(case.name, phase, case.unit, *_figures(case, model, phase),
                  goal=case.goal.text(case.unit) if case.goal.applies(phase) else "",
                  host_skipped=skip if skip or not host else "")
        if host and not skip:
            row.host_min, row.host_median = _figures(case, host, phase)
        row.met = _met(case, row)
        rows.append(row)
    return rows


def _warm_up(round_: Callable[[], object]) -> str:
    """Untimed rounds before the first timed one (`WARMUP_ROUNDS`, at most
    `WARMUP_SECONDS`); a host round's reason to skip the case ends them ("" if none)."""
    start = time.perf_counter()
    for _ in range(WARMUP_ROUNDS):
        reply = round_()
        if isinstance(reply, dict) and reply.get("skip"):
            return str(reply["skip"])
        if time.perf_counter() - start >= WARMUP_SECONDS:
            break
    return ""


def run(cases: list[Case], rounds: int = 5, with_host: bool = True,
        progress: Callable[[str], None] | None = None) -> list[Row]:
    """Measure every case; the host side runs in one worker process for the whole run."""
    skip = host_skip_reason() if with_host else "not asked for (--model-only)"
    rows: list[Row] = []
    worker = HostWorker() if not skip else None
    with worker if worker is not None else _Null():
        for i, case in enumerate(cases, 1):
            if progress is not None:
                progress(f"[{i}/{len(cases)}] {case.name}")
            rows += measure(case, rounds, worker, skip)
    return rows


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def host_skip_reason() -> str:
    """Why the host side cannot run here ("" if it can): io_uring must be usable."""
    from ..live import host_capabilities
    cap = host_capabilities()["io_uring"]
    return "" if cap else f"io_uring: {cap.reason}"
