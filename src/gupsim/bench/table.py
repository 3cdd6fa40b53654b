"""The `gupsim bench` table: a line per case, then one per phase, model beside host."""

from __future__ import annotations

from rich import box
from rich.table import Table

from .runner import Row

_GOAL_OPS = {"ratio": "<=", "max": "<=", "min": ">="}


def _num(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _goal(r: Row) -> str:
    if not r.goal:
        return ""
    short = r.goal.split()[0] + r.goal.split()[1].removesuffix(".0")
    mark = {True: "[green]met[/]", False: "[red]not met[/]", None: "[dim]no host[/]"}[r.met]
    return f"{short} {mark}"


def _skipped(rows: list[Row]) -> list[str]:
    """Why the host was skipped, each reason once, with the cases it applies to."""
    why: dict[str, list[str]] = {}
    for r in rows:
        if r.host_skipped and r.host_skipped != "no host counterpart":
            cases = why.setdefault(r.host_skipped, [])
            if r.case not in cases:
                cases.append(r.case)
    return [f"host skipped ({', '.join(c)}): {w}" if len(why) > 1 else f"host skipped: {w}"
            for w, c in why.items()]


def _rounds(rows: list[Row]) -> str:
    """How many timed rounds the figures come from (per case, the model's)."""
    counts = [r.rounds for r in rows]
    low, high = min(counts, default=0), max(counts, default=0)
    return f"timed rounds per case: {low}" + (f"-{high}" if high != low else "")


def bench_table(rows: list[Row]) -> Table:
    """Min and median of each side, the ratio of the mins, and the goal (the ratio for
    "<=1x", the model's own figure otherwise); fits 80 columns."""
    t = Table("case / phase", "model\nmin", "model\nmedian", "host\nmin", "host\nmedian",
              "model/\nhost", "goal", box=box.SIMPLE_HEAD,
              title="the model against the host kernel (its pin: io_uring registration)",
              caption="\n".join([*_skipped(rows), _rounds(rows)]))
    for c in t.columns[1:6]:
        c.justify = "right"
    for c in t.columns:
        c.no_wrap = True
    last = ""
    for r in rows:
        if r.case != last:
            t.add_row(f"[bold]{r.case}[/]", "", "", "", "", "", f"[dim]{r.unit}[/]")
            last = r.case
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        t.add_row(f"  {r.phase}", _num(r.model_min), _num(r.model_median), _num(r.host_min),
                  _num(r.host_median), ratio, _goal(r))
    return t
