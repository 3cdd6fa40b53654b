"""`gupsim fuzz`: run random programs on the model (and the host), sort what differs.

Each program runs through the scenario runner (`runner.run_case`), exactly as
`gupsim run --host FILE` runs its file: the host side takes the runner's lock, restores
every setting and retries noisy counters there. The model side checks the invariants
after every step (`CheckedModelSystem`). A program's verdict is one of:

- agree / model-only: nothing wrong was seen;
- disagree: the runner found a difference, classed by the first differing step (its
  operation and the observables that differ, e.g. "madvise MADV_COLLAPSE: outcome");
- crash: the model raised (an invariant broken, an exception inside gupsim), classed by
  the exception and the operation;
- skipped: the host could not run it (the reason is the class).

The first program of every new class of disagreement or crash is shrunk (see
`shrink.py`) and written to the output directory as a scenario file with its seed.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..check.invariants import InvariantViolation
from ..scenarios.model import ModelSystem
from ..scenarios.ops import ADVICE
from ..scenarios.protocol import Step, Trace
from ..scenarios.runner import HOST_ATTEMPTS, HOST_CONFIRM, Result, run_case
from ..scenarios.userfile import ScenarioError
from .generate import Generator
from .program import Program
from .shrink import shrink


class CheckedModelSystem(ModelSystem):
    """The model back-end, checking the machine's invariants after every step: a broken
    one raises `InvariantViolation` naming the step, and the program counts as a crash."""

    name = "model"

    def _step(self, proc: Any, op: Any, name: str, prim: dict[str, Any]) -> Any:
        try:
            return super()._step(proc, op, name, prim)
        finally:
            bad = self.k.check()
            if bad:
                raise InvariantViolation(f"after step {len(self.trace.steps)} ({name}): "
                                         + "; ".join(bad))


@dataclass
class Verdict:
    """How one program went: its status, its class (for counting) and the details."""

    status: str                 # agree, model-only, disagree, crash, skipped
    cls: str = ""
    detail: str = ""
    model_steps: int = 0
    model_seconds: float = 0.0
    host: list[tuple] = field(default_factory=list)   # the host's step keys


def evaluate(program: Program, with_host: bool, *, trusted: bool = True) -> Verdict:
    """Run one program on the model (and the host) and judge it. `trusted=False` takes
    a single host run (the shrinker's quick look) instead of the runner's confirmation."""
    case = program.case()
    model_trace: list[Trace] = []

    def make_model() -> CheckedModelSystem:
        system = CheckedModelSystem(needs=case.needs)
        model_trace.append(system.trace)
        return system

    start = time.perf_counter()
    try:
        result = run_case(case, with_host, make_model=make_model,
                          attempts=HOST_ATTEMPTS if trusted else 1,
                          confirm=HOST_CONFIRM if trusted else 1)
    except ScenarioError as exc:
        seconds = time.perf_counter() - start
        steps = len(exc.trace.steps)
        broken = isinstance(exc.exc, InvariantViolation)    # raised after its step
        kind = "invariant" if broken else type(exc.exc).__name__
        side = "" if exc.backend == "model" else f"{exc.backend} "
        return Verdict("crash", f"{side}{kind} at {_call_class(program, steps - broken)}",
                       str(exc.exc)[:500], steps, seconds)
    seconds = time.perf_counter() - start
    verdict = Verdict(result.status, model_steps=len(result.model.steps),
                      model_seconds=seconds)
    if result.host is not None and not result.host.skipped:
        verdict.host = [s.key() for s in result.host.steps]
    if result.status == "skipped":
        assert result.host is not None
        verdict.cls = result.host.skipped
    elif result.status == "disagree":
        verdict.cls, verdict.detail = _disagreement(result)
    return verdict


FIELDS = ("outcome", "pins+", "pins-", "VmPin", "VmLck", "data", "pages", "late")


def _disagreement(result: Result) -> tuple[str, str]:
    """The class of a disagreement: the first differing step's operation and fields."""
    detail = "; ".join(result.differences)[:500]
    host: list[Step] = result.host.steps if result.host is not None else []
    for m, h in zip(result.model.steps, host, strict=False):
        if m.key() != h.key():
            fields = [f for f, a, b in zip(FIELDS, m.key()[1:], h.key()[1:], strict=True)
                      if a != b]
            return f"{_op_class(m.op)}: {', '.join(fields)}", detail
    if result.differences:
        first = result.differences[0]
        if result.host is not None and result.host.error:    # "FILE:LINE: Type: message"
            return f"raised on the host only: {result.host.error.split(': ')[1]}", detail
        return ("ended differently" if "ended by" in first else "steps differ"), detail
    return "expectation", "; ".join(result.model_problems + result.host_problems)[:500]


def _call_class(program: Program, index: int) -> str:
    """The class of call `index`, the one that raised (every call records one step)."""
    index = min(index, len(program.calls) - 1)
    if index < 0:
        return "start"
    call = program.calls[index]
    what = {"madvise": "advice", "map": "kind"}.get(call.op)
    return _op_class(f"{call.op} {call.arg(what)}" if what else call.op)


def _op_class(op: str) -> str:
    """A step name without its sizes, an advice by name: "madvise MADV_COLLAPSE"."""
    words = [w for w in op.split() if not re.fullmatch(r"\d+(B|KiB|MiB|GiB)", w)]
    if words and words[0] == "madvise" and len(words) > 1 and words[1].isdigit():
        words[1] = ADVICE.get(int(words[1]), words[1])
    return " ".join(words)


@dataclass
class Finding:
    """A shrunk program of a new class, and where it was written."""

    cls: str
    status: str
    program: Program
    detail: str
    file: str = ""


@dataclass
class Report:
    """A campaign's figures and findings."""

    seed: int
    programs: int
    steps: int
    with_host: bool
    status: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    model_steps: int = 0
    model_seconds: float = 0.0
    pins_left: int | None = None        # host: outstanding pins after minus before

    @property
    def failed(self) -> bool:
        """True when any program disagreed or crashed (or pins were left on the host)."""
        return bool(self.status["disagree"] or self.status["crash"] or self.pins_left)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        mode = "model and host" if self.with_host else "model only"
        return {"seed": self.seed, "programs": self.programs, "max_steps": self.steps,
                "mode": mode, "status": dict(self.status),
                "classes": dict(self.classes.most_common()),
                "model_steps": self.model_steps,
                "model_steps_per_s": round(self.model_steps / self.model_seconds)
                if self.model_seconds and not self.with_host else None,
                "host_pins_left": self.pins_left,
                "findings": [{"class": f.cls, "status": f.status, "file": f.file,
                              "program": f.program.number, "calls": len(f.program.calls),
                              "note": f.program.note, "detail": f.detail}
                             for f in self.findings]}


def campaign(seed: int, programs: int, steps: int, *, with_host: bool,
             out: str | None = None, shrink_budget: int = 60,
             allowed: Callable[[str], bool] = lambda need: True,
             progress: Callable[[int, Verdict], None] = lambda i, v: None) -> Report:
    """Run `programs` programs of `seed` (up to `steps` calls each) and report; shrink
    the first program of each new disagreement or crash class and write it to `out`."""
    gen = Generator(seed, allowed)
    report = Report(seed, programs, steps, with_host)
    with _pins_watch(with_host, report):
        for number in range(programs):
            program = gen.program(number, steps)
            verdict = evaluate(program, with_host)
            report.status[verdict.status] += 1
            report.model_steps += verdict.model_steps
            report.model_seconds += verdict.model_seconds
            if verdict.cls:
                report.classes[f"{verdict.status}: {verdict.cls}"] += 1
            if verdict.status in ("disagree", "crash") and \
                    report.classes[f"{verdict.status}: {verdict.cls}"] == 1:
                report.findings.append(_found(program, verdict, with_host, out, shrink_budget))
            progress(number, verdict)
    return report


def _found(program: Program, verdict: Verdict, with_host: bool, out: str | None,
           budget: int) -> Finding:
    """Shrink a failing program to the smallest of the same class, confirm it, write it."""
    def still(candidate: Program) -> bool:
        v = evaluate(candidate, with_host, trusted=False)
        return (v.status, v.cls) == (verdict.status, verdict.cls)

    small = shrink(program, still, budget)
    final = evaluate(small, with_host)        # the runner's full confirmation
    if (final.status, final.cls) != (verdict.status, verdict.cls):
        small, final = program, verdict       # noise shrank it: keep the original
    small = replace(small, host=final.host if final.status == "disagree" else [])
    finding = Finding(verdict.cls, verdict.status, small, final.detail or verdict.detail)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", verdict.cls.lower()).strip("-")[:60]
        finding.file = os.path.join(out, f"seed{program.seed}-p{program.number}-{slug}.py")
        with open(finding.file, "w") as f:
            f.write(small.source())
    return finding


class _pins_watch:   # noqa: N801 - used as a context manager, named like one
    """On the host: the outstanding pin count before the campaign, and after it (waiting
    a while for deferred releases); what is left over goes in `report.pins_left`."""

    def __init__(self, with_host: bool, report: Report) -> None:
        self.with_host = with_host
        self.report = report
        self.before: int | None = None

    def __enter__(self) -> None:
        if self.with_host:
            from ..live.vmstat import pin_counters
            self.before = pin_counters().outstanding

    def __exit__(self, *exc: object) -> None:
        if self.before is not None:
            from ..live.vmstat import wait_outstanding
            after = wait_outstanding(self.before, timeout=5.0).outstanding
            self.report.pins_left = max(0, after - self.before)


def programs_of(seed: int, count: int, steps: int) -> Iterator[Program]:
    """The programs a campaign of `seed` runs, without running them (for tests)."""
    gen = Generator(seed)
    for number in range(count):
        yield gen.program(number, steps)
