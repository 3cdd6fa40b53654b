"""One scenario on every kernel era: `gupsim eras FILE-or-CASE`.

The same scenario text runs on a fresh model machine of each profile in
`gupsim.KERNEL_VERSIONS`; its steps line up by position (a scenario takes the same
steps on every era unless one ends it early), and a step whose outcome differs between
eras is marked. Where an era cannot run the scenario at all (an entry point that did
not exist yet), its column says why instead of a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..eras import KERNEL_VERSIONS
from .era_expect import rule_for
from .protocol import Step, Trace
from .runner import Case, run_case

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class EraRun:
    """A scenario's trace (or the reason it could not run) and its problems per era."""

    case: Case
    versions: tuple[str, ...]
    traces: dict[str, Trace] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)       # version -> why no trace
    problems: dict[str, list[str]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, dict[str, str], bool]]:
        """Per step: (operation, cell per era, do the eras differ here?)."""
        n = max((len(t.steps) for t in self.traces.values()), default=0)
        out = []
        for i in range(n):
            cells: dict[str, str] = {}
            op = ""
            for v in self.versions:
                t = self.traces.get(v)
                if t is None:
                    cells[v] = ""
                elif i < len(t.steps):
                    op = op or t.steps[i].op
                    cells[v] = cell(t.steps[i])
                else:
                    cells[v] = "—"
            ran = {c for v, c in cells.items() if v in self.traces}
            out.append((op, cells, len(ran) > 1))
        return out

    def as_dict(self) -> dict[str, object]:
        """For `--json`: per era the steps (or the error) and the expectation's problems."""
        return {"case": self.case.name, "versions": list(self.versions),
                "eras": {v: ({"error": self.errors[v]} if v in self.errors else {
                    "steps": [{"op": s.op, "outcome": s.outcome, "acquired": s.acquired,
                               "released": s.released, "vm_pin_kb": s.vm_pin_kb,
                               "data": None if s.data is None else s.data.hex()}
                              for s in self.traces[v].steps],
                    "ended": self.traces[v].ended,
                    "problems": self.problems.get(v, [])}) for v in self.versions},
                "differs": [i + 1 for i, (_, _, d) in enumerate(self.rows()) if d]}


def cell(s: Step) -> str:
    """A step in a few characters: outcome, pins taken/released, first data byte."""
    text = s.outcome
    if s.acquired or s.released:
        text += f" +{s.acquired}/-{s.released}"
    if s.data:
        text += f" {s.data[:1].hex()}"
    return text


def run_across(case: Case, versions: tuple[str, ...] = KERNEL_VERSIONS) -> EraRun:
    """Run `case` on the model once per era (model only: the host has one era)."""
    from .userfile import ScenarioError
    result = EraRun(case, versions)
    for v in versions:
        try:
            r = run_case(case, with_host=False, version=v)
        except ScenarioError as e:
            # gupsim refusing the scenario on this era (AttributeError: not there yet)
            result.errors[v] = f"{type(e.exc).__name__}: {e.exc}"
            continue
        result.traces[v] = r.model
        result.problems[v] = r.model_problems
    return result


def era_groups(run: EraRun) -> list[list[str]]:
    """Consecutive eras whose every step (or whose error) is the same, as one group each:
    the table shows a group as one column, so it fits 80 columns."""
    rows = run.rows()

    def column(v: str) -> tuple:
        return (run.errors.get(v), tuple(cells[v] for _, cells, _ in rows))

    groups: list[list[str]] = []
    for v in run.versions:
        if groups and column(groups[-1][-1]) == column(v):
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def era_table(run: EraRun) -> Table:
    """One column per era (consecutive eras that behave alike share one, headed
    "first-last"), one row per step; `≠` marks the steps where eras differ."""
    from rich.table import Table
    t = Table(title=f"{run.case.name}: each kernel era (model)", pad_edge=False)
    t.add_column("", no_wrap=True)
    t.add_column("step")
    groups = era_groups(run)
    for g in groups:
        t.add_column(g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}")
    for i, (op, cells, differs) in enumerate(run.rows()):
        t.add_row(f"{i + 1}≠" if differs else str(i + 1), op,
                  *(cells[g[0]] if g[0] in run.traces else "not run" for g in groups),
                  style="bold" if differs else "")
    return t


def era_notes(run: EraRun) -> list[str]:
    """Under the table: why an era could not run it, and what the expectation found,
    one line per run of consecutive eras with the same answer."""
    def said(v: str) -> str:
        if v in run.errors:
            return f"not run: {run.errors[v]}"
        found = "; ".join(run.problems.get(v, [])) or "as expected"
        rule = rule_for(run.case, v)
        return found if rule is None else f"{found} (of that era: {rule.why})"

    lines: list[str] = []
    spans: list[list[str]] = []
    for v in run.versions:
        if spans and said(spans[-1][-1]) == said(v):
            spans[-1].append(v)
        else:
            spans.append([v])
    for span in spans:
        name = span[0] if len(span) == 1 else f"{span[0]}-{span[-1]}"
        lines.append(f"{name}: {said(span[0])}")
    return lines


def load_target(target: str) -> Case:
    """A scenario file, else the one catalogue case whose name contains `target`;
    ValueError naming the candidates when that is not exactly one."""
    import os

    from .catalogue import catalogue
    from .userfile import load_scenario
    if os.path.isfile(target):
        return load_scenario(target)
    cases = [c for c in catalogue() if target.lower() in c.name.lower()]
    exact = [c for c in cases if c.name.lower() == target.lower()]
    if len(exact) == 1 or len(cases) == 1:
        return (exact or cases)[0]
    if not cases:
        raise ValueError(f"{target!r} is neither a file nor part of a catalogue case name "
                         "(`gupsim live --list` prints the names)")
    names = "; ".join(c.name for c in cases[:5])
    raise ValueError(f"{target!r} matches {len(cases)} catalogue cases ({names}"
                     f"{'; ...' if len(cases) > 5 else ''}): give more of the name")


__all__ = ["EraRun", "cell", "era_groups", "era_notes", "era_table", "load_target",
           "run_across"]
