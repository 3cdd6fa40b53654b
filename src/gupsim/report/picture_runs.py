"""Pictures of whole runs: one panel per step of a scenario, of the tour, of the cases.

A `Pictures` is what `--html` writes and `--show` prints: a title and panels, each with
what the step did (its operation and outcome, the scenario line, the GUP calls it made,
the counters that moved), the model's `Snapshot` with the changes since the previous
step of the same machine marked, and, where the host ran the same scenario, the host's
observables of that step beside the model's.

- `scenario_pictures(case, host)`: a scenario (`gupsim run FILE`) on the model, a
  snapshot after every step, taken inside the step recorder of the model back-end
  (as `gupsim explain` does);
- `narrated_pictures(...)`: the tour (`gupsim demo`) and the cases (`gupsim cases`),
  whose machines and steps are seen through the hooks of `observe.py`; a case step's
  picture is its machine when the step's record was made, after its work;
- `table_pictures(...)`: a command with a table and no machine (`gupsim eras`).
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .picture import Snapshot, diff, short_site, snapshot

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..scenarios.records import Step, Trace
    from ..scenarios.runner import Case


@dataclass
class Panel:
    """One step: what it did and the picture after it."""

    group: str                       # the scenario, tour or case (and driver) it belongs to
    title: str                       # the operation or the step's title
    outcome: str = ""
    story: str = ""                  # what to notice (tour and cases)
    source: str = ""                 # the scenario line that made the step
    calls: list[str] = field(default_factory=list)   # kernel functions that ran
    facts: dict[str, str] = field(default_factory=dict)
    ok: bool = True
    model: Snapshot | None = None
    observed: dict[str, str] | None = None   # the model's step record (as the host's)
    host: dict[str, str] | None = None
    table: list[dict[str, str]] = field(default_factory=list)
    moment: str = "after this step"   # when the picture was taken, for the reader
    while_held: Snapshot | None = None   # the step's fullest moment, if it unpinned again

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)


@dataclass
class Pictures:
    """A run's panels, in order, and a note under the title (for example the host's
    reason for skipping)."""

    title: str
    panels: list[Panel]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"title": self.title, "note": self.note,
                "panels": [p.as_dict() for p in self.panels]}


def _gup_calls(k: Kernel, seen: list[Any]) -> list[str]:
    """The GUP entry point calls and the release calls made since the last look (`seen`
    holds the last entry call and the number of release calls then)."""
    calls = list(k.gup.calls)
    if seen[0] is not None:
        for i in range(len(calls) - 1, -1, -1):
            if calls[i] is seen[0]:
                calls = calls[i + 1:]
                break
    out = [str(c) for c in calls]
    releases: dict[str, int] = {}
    for site in k.sanitizer.release_sites(seen[1]):
        releases[site] = releases.get(site, 0) + 1
    out += [f"release (unpin_*/put_page) x{n} called from {short_site(site)}"
            for site, n in releases.items()]
    seen[:] = [k.gup.calls[-1] if k.gup.calls else None, k.sanitizer.release_calls]
    return out


def _line_in(files: set[str]) -> str:
    """The innermost frame of the call stack that lies in one of `files`, as text."""
    for frame in reversed(traceback.extract_stack()):
        if os.path.realpath(frame.filename) in files:
            return f"{os.path.basename(frame.filename)}:{frame.lineno}: " \
                   f"{(frame.line or '').strip()}"
    return ""


def _what_op_does(op: str) -> str:
    """The operation's own declaration (`scenarios/ops.py`), as its story."""
    from ..scenarios.ops import Operations
    method = getattr(Operations, op.split(" ")[0], None)
    return " ".join((inspect.getdoc(method) or "").split("\n\n")[0].split())


def _observed(s: Step) -> dict[str, str]:
    """A step record's observables, as text (the same for model and host)."""
    out = {"outcome": s.outcome, "nr_foll_pin_acquired": f"+{s.acquired}",
           "nr_foll_pin_released": f"+{s.released}", "VmPin": f"{s.vm_pin_kb} kB",
           "VmLck": f"{s.vm_lck_kb} kB"}
    if s.data is not None:
        out["data read"] = repr(s.data[:16]) + ("..." if len(s.data) > 16 else "")
    return out


def scenario_pictures(case: Case, host: Trace | None = None,
                      version: str | None = None) -> Pictures:
    """Run `case` on the model (of kernel era `version`, default the newest) with a
    snapshot after every step; with `host` (the same scenario's host trace), each panel
    carries the host's step beside the model's."""
    from ..scenarios.model import ModelSystem
    system = ModelSystem(needs=case.needs, version=version)
    k = system.k
    panels: list[Panel] = []
    note = ""
    last: list[Snapshot | None] = [None]
    seen: list[Any] = [None, 0]
    files = {os.path.realpath(f) for f in (case.source, inspect.getsourcefile(case.run))
             if f and os.path.exists(f)}
    inner = system._step

    def step_hook(*args: Any, **kw: Any) -> Any:
        try:
            return inner(*args, **kw)
        finally:
            s = system.trace.steps[-1] if len(system.trace.steps) > len(panels) else None
            if s is not None:
                snap = diff(last[0], snapshot(k))
                last[0] = snap
                panels.append(Panel(case.name, s.op, s.outcome, story=_what_op_does(s.op),
                                    source=_line_in(files),
                                    calls=_gup_calls(k, seen), observed=_observed(s),
                                    model=snap))

    system._step = step_hook  # type: ignore[method-assign]
    try:
        case.run(system)
    except Exception as e:      # noqa: BLE001 - sorted out below
        step = getattr(e, "gupsim_step", None)
        if step is None:
            raise           # not a step's fault or refusal: an error, never hidden
        note = f"the scenario ended at step {step}: {type(e).__name__}"
    finally:
        system.close()
    if host is not None:
        if host.skipped:
            note = "; ".join(filter(None, [note, f"host skipped: {host.skipped}"]))
        else:
            for panel, hs in zip(panels, host.steps, strict=False):
                panel.host = _observed(hs)
    return Pictures(f"gupsim run: {case.name}", panels, note)


def narrated_pictures(title: str, run: Callable[[], Iterable[Any]],
                      group_of: Callable[[Any], str]) -> tuple[Pictures, list[Any]]:
    """Run narrated steps (`run()` returns the tour's steps or the case runs) and draw a
    panel per step with the picture of its machine when the step was recorded and, if
    the step pinned pages and released them again before it ended, a second picture of
    the moment it held the most. `group_of(step)` names the group a step belongs to
    once the run is known. Returns the pictures and what `run()` returned."""
    from ..observe import Observer, observing
    machine: list[Kernel | None] = [None]
    shots: list[tuple[Any, Snapshot, Snapshot | None, list[str]]] = []
    last: dict[int, Snapshot] = {}
    seen: dict[int, list[Any]] = {}
    peak: list[Any] = [0, None]         # pins held at the step's fullest moment, its picture

    def held(k: Kernel) -> int:
        return k.vmstat.count("nr_foll_pin_acquired") - k.vmstat.count("nr_foll_pin_released")

    def on_kernel(k: Kernel) -> None:
        machine[0] = k
        peak[:] = [0, None]

    def on_gup(mem: Any) -> None:
        k = machine[0]
        if k is not None and k.mem is mem and held(k) > peak[0]:
            peak[:] = [held(k), snapshot(k)]

    def on_step(step: Any) -> None:
        k = machine[0]
        if k is None:
            return
        prev = last.get(id(k))
        snap = snapshot(k)
        fullest = None
        if peak[1] is not None and peak[0] > held(k):
            fullest = diff(prev, peak[1])
            fullest.changes.insert(0, f"{peak[0]} pin(s) held at this moment of the step")
        snap = diff(prev, snap)
        last[id(k)] = snap
        peak[:] = [held(k), None]
        shots.append((step, snap, fullest, _gup_calls(k, seen.setdefault(id(k), [None, 0]))))

    with observing(Observer(on_kernel, on_gup, on_step)):
        result = list(run())
    panels = []
    for step, snap, fullest, calls in shots:
        panels.append(Panel(group_of(step), step.title, story=step.story, calls=calls,
                            facts={str(key): _fact(v) for key, v in step.facts.items()},
                            ok=step.ok, model=snap, while_held=fullest,
                            moment="at the end of this step, after every operation its "
                                   "story tells (the figures were read along the way)"))
    return Pictures(title, panels), result


def _fact(v: object) -> str:
    if isinstance(v, bytes):
        return repr(v[:32]) + ("..." if len(v) > 32 else "")
    text = str(v)
    return text if len(text) <= 200 else text[:200] + "..."


def table_pictures(title: str, rows: list[dict[str, Any]], note: str = "") -> Pictures:
    """A command that has a table and no machine: one panel holding the table."""
    table = [{str(key): "" if v is None else str(v) for key, v in r.items()} for r in rows]
    return Pictures(title, [Panel(title, title, table=table)], note)


def tour_pictures() -> tuple[Pictures, list[Any]]:
    """The tour of `gupsim demo`, a picture per step; also returns the tour's steps."""
    from ..tour import run_tour
    return narrated_pictures("gupsim demo: the tour", run_tour, lambda step: "the tour")


def case_pictures(run: Callable[[], list[Any]]) -> tuple[Pictures, list[Any]]:
    """The cases of `gupsim cases` (`run()` returns their CaseRuns), a picture per step of
    each right driver and of its wrong-flag twin; also returns the CaseRuns."""
    groups: dict[int, str] = {}

    def runs() -> list[Any]:
        out = run()
        for r in out:
            for side, steps, flags in (("right", r.right, r.right_flags),
                                       ("wrong", r.wrong, r.wrong_flags)):
                for s in steps:
                    groups[id(s)] = f"{r.name}: {side} driver, {flags}"
        return out

    return narrated_pictures("gupsim cases: pin_user_pages.rst", runs,
                             lambda step: groups.get(id(step), ""))


def catalogue_panel(results: list[Any]) -> Panel:
    """The catalogue's model-versus-host verdicts (`gupsim demo`) as a table panel."""
    rows = [{"case": r.case.name, "source": r.case.source, "status": r.status,
             "why": "; ".join(r.model_problems + r.host_problems + r.differences)
             or (r.host.skipped if r.host is not None else "")} for r in results]
    return Panel("the catalogue, model against this kernel", "catalogue verdicts",
                 ok=not any(r.status == "disagree" for r in results), table=rows)
