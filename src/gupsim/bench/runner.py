"""Running the cases: model and host interleaved round by round, each round warmed up.

Each case's two sides are set up once (the model in this process, the host in the worker
process), then alternate: model, host, so that a disturbance of the machine (another
process, frequency scaling) falls on both. Each side's timed round comes right after an
untimed warm-up round of its own (imports, caches, first faults):
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

How many rounds, and when. A case runs at least `rounds` timed rounds and, where its
rounds are short, more, until they have run `min_seconds` (at most `MAX_ROUNDS`); and
`run()` sets every case up first and then takes their rounds in turns, in `PASSES`
slices, so that one case's rounds come from moments seconds apart. This machine's CPU
has stretches of a second or more in which an interpreter runs up to 2x slower (a tight
Python loop's per-second minimum: 562 us in most seconds, 860-1042 us in some), and
the kernel's memory-bound pinning much less so; five rounds of a 64 MiB THP pin fit in
a tenth of a second, inside one such stretch or not. Over 5,000 paired rounds of that
case (150 s; the model about 0.72x the kernel at the median), the min of five
consecutive rounds put the ratio above 1.0 one time in four (at worst 1.55), the min of
forty consecutive ones one time in eighty (1.28), and forty in four slices 5 s apart
never (at worst 0.97). A case whose host side times a whole process (fork, exit: a
fork copies every mapping the other cases keep open in the worker) is measured on its
own, as is one with a cap on its rounds.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .cases import Case
from .model_side import WORKLOADS

SCALE = {"ns/page": 1e9, "us/call": 1e6, "ms": 1e3}
WARMUP_ROUNDS = 16          # CPython's specialization settles within about ten calls
WARMUP_SECONDS = 2.0        # a cap for the slow cases (1 GiB bulk, fork of 1 GiB)
MIN_SECONDS = 1.0           # timed rounds of a case go on at least this long ...
MAX_ROUNDS = 60             # ... up to this many
PASSES = 5                  # a case's rounds come in this many slices, spread over the run


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
    rounds: int = 0          # timed rounds behind the model's figures ...
    host_rounds: int = 0     # ... and behind the host's

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


@dataclass
class _Open:
    """A case while it is measured: its model round, its host side's id in the worker
    (None: none, `skip` says why) and the rounds each side has timed."""

    case: Case
    model_round: Callable[[], dict[str, float]]
    host_id: int | None
    skip: str
    model: list[dict[str, float]] = field(default_factory=list)
    host: list[dict[str, float]] = field(default_factory=list)


def _open(stack: contextlib.ExitStack, case: Case, worker: HostWorker | None, skip: str,
          host_id: int) -> _Open:
    """Set both sides of `case` up (closed with `stack`) and warm them up."""
    if not case.host:
        skip = "no host counterpart"
    elif worker is not None and not skip:
        skip = worker.call("open", id=host_id, workload=case.workload,
                           params=case.params).get("skip", "")
        if not skip:
            stack.callback(worker.call, "close", id=host_id)
    model_round = stack.enter_context(WORKLOADS[case.workload](**case.params))
    opened = _Open(case, model_round, host_id if worker is not None and not skip else None,
                   skip)
    if case.rounds != 1:                            # a one-round case is not repeated
        _warm_up(model_round)
        if worker is not None and opened.host_id is not None:
            host = worker
            _host_skips(opened, _warm_up(lambda: host.call("round", id=host_id)))
    return opened


def _host_skips(opened: _Open, why: str) -> None:
    """The host side stopped the case (its reason): no more host rounds."""
    if why:
        opened.skip, opened.host_id = why, None


def _rounds(opened: _Open, worker: HostWorker | None, at_least: int, seconds: float,
            at_most: int) -> None:
    """Timed rounds of both sides until the case has `at_least` and, when these took
    less than `seconds`, more, up to `at_most`. Each timed round of a side comes right
    after an untimed one of its own (not for a one-round case)."""
    warm = opened.case.rounds != 1
    start = time.perf_counter()
    while len(opened.model) < at_least or len(opened.model) < at_most \
            and time.perf_counter() - start < seconds:
        if warm:
            opened.model_round()
        opened.model.append(opened.model_round())
        for first in (True, False) if warm else (False,):
            if opened.host_id is None or worker is None:
                break
            reply = worker.call("round", id=opened.host_id)
            _host_skips(opened, reply.get("skip", ""))
            if opened.host_id is not None and not first:
                opened.host.append(reply["ok"])


def _rows(opened: _Open) -> list[Row]:
    """The case's figures, phase by phase."""
    case, host = opened.case, opened.host
    rows = []
    for phase in case.phases:
        row = Row(case.name, phase, case.unit, *_figures(case, opened.model, phase),
                  goal=case.goal.text(case.unit) if case.goal.applies(phase) else "",
                  host_skipped=opened.skip if opened.skip or not host else "",
                  rounds=len(opened.model))
        if host and not opened.skip:
            row.host_min, row.host_median = _figures(case, host, phase)
            row.host_rounds = len(host)
        row.met = _met(case, row)
        rows.append(row)
    return rows


def measure(case: Case, rounds: int, worker: HostWorker | None, skip: str = "",
            min_seconds: float = 0.0) -> list[Row]:
    """Rows of one case on its own: at least `rounds` timed rounds, more while they have
    taken less than `min_seconds` (at most `MAX_ROUNDS`); `worker` None (with the reason
    in `skip`): the model only. A case with a cap on its rounds takes no more."""
    if case.rounds:
        rounds, min_seconds = min(rounds, case.rounds), 0.0
    with contextlib.ExitStack() as stack:
        opened = _open(stack, case, worker, skip, 0)
        _rounds(opened, worker, rounds, min_seconds, max(rounds, MAX_ROUNDS))
    return _rows(opened)


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
        progress: Callable[[str], None] | None = None,
        min_seconds: float = MIN_SECONDS) -> list[Row]:
    """Measure every case; the host side runs in one worker process for the whole run.

    Every case is set up and warmed up first and stays open; then `PASSES` passes over
    them each take a slice of every case's rounds (at least its share of `rounds`, more
    for `min_seconds / PASSES`), so that a case's rounds come from moments seconds
    apart (see the module's docstring). A case with a cap on its rounds (memory per
    page: a fresh process) or one that must run alone (`Case.alone`) is measured on its
    own after them."""
    skip = host_skip_reason() if with_host else "not asked for (--model-only)"
    worker = HostWorker() if not skip else None
    say = progress or (lambda _: None)
    with worker if worker is not None else _Null(), contextlib.ExitStack() as stack:
        rotation: dict[int, _Open] = {}
        for i, case in enumerate(cases):
            if not (case.rounds or case.alone):
                say(f"[{i + 1}/{len(cases)}] {case.name}: setting up, warming up")
                rotation[i] = _open(stack, case, worker, skip, i)
        for p in range(1, PASSES + 1):
            for opened in rotation.values():
                say(f"pass {p}/{PASSES}: {opened.case.name}")
                _rounds(opened, worker, -(-rounds * p // PASSES), min_seconds / PASSES,
                        -(-max(rounds, MAX_ROUNDS) * p // PASSES))
        stack.close()
        done: dict[int, list[Row]] = {i: _rows(opened) for i, opened in rotation.items()}
        for i, case in enumerate(cases):
            if case.rounds or case.alone:
                say(f"[{i + 1}/{len(cases)}] {case.name}")
                done[i] = measure(case, rounds, worker, skip, min_seconds)
    return [row for i in range(len(cases)) for row in done[i]]


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
