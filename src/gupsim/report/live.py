"""The `gupsim live` agreement table: one row per catalogue case."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..scenarios.protocol import Trace
from ..scenarios.runner import Result, describe

STYLE = {"agree": "green", "disagree": "bold red", "skipped": "yellow", "model-only": "cyan"}


def summarize(trace: Trace | None) -> str:
    """The interesting steps of a trace in one line: refusals and pin movements."""
    if trace is None:
        return "—"
    if trace.skipped:
        return f"skipped: {trace.skipped}"
    parts = []
    for s in trace.steps:
        if s.outcome != "ok" or s.acquired or s.released:
            parts.append(f"{s.op.split()[0]} {s.outcome}"
                         + (f" +{s.acquired}/-{s.released}" if s.acquired or s.released else "")
                         + (f" VmPin {s.vm_pin_kb}" if s.vm_pin_kb else ""))
    return "; ".join(parts) or "ok, no pins"


def table(results: list[Result]) -> Table:
    """Case, what the model observed, what the host observed ("same" when it agreed), and
    the verdict; a line between groups of cases (cow, longterm, dio, ...)."""
    t = Table(title="model versus host kernel", expand=True)
    t.add_column("case", ratio=4)
    t.add_column("model", ratio=5)
    t.add_column("host", ratio=3)
    t.add_column("result", no_wrap=True, min_width=8)
    group = None
    for r in results:
        status = r.status
        head = r.case.name.split(":")[0]
        if group is not None and head != group:
            t.add_section()
        group = head
        why = "; ".join(r.model_problems + r.host_problems + r.differences)
        if status == "disagree" and r.case.model_gap:
            why = f"known model gap: {r.case.model_gap}" + (f"; {why}" if why else "")
        host = "[dim]same[/]" if status == "agree" else summarize(r.host)
        if why:
            host += f"\n[red]{why}[/]"
        t.add_row(r.case.name, summarize(r.model), host, f"[{STYLE[status]}]{status}[/]")
    return t


def summary(results: list[Result]) -> list[dict[str, Any]]:
    """One entry per selftest row (a case's `source`), in catalogue order: how many of its
    cases agreed, disagreed, were skipped or ran on the model only, and the distinct
    reasons for skips and disagreements."""
    groups: dict[str, dict[str, Any]] = {}
    for r in results:
        g = groups.setdefault(r.case.source or r.case.name, {
            "source": r.case.source or r.case.name, "cases": 0, "agree": 0, "disagree": 0,
            "skipped": 0, "model-only": 0, "skip_reasons": [], "disagreeing": []})
        g["cases"] += 1
        g[r.status] += 1
        if r.status == "skipped" and r.host is not None and \
                r.host.skipped not in g["skip_reasons"]:
            g["skip_reasons"].append(r.host.skipped)
        if r.status == "disagree":
            g["disagreeing"].append(r.case.name)
    return list(groups.values())


def summary_table(results: list[Result]) -> Table:
    """The agreement table with one row per selftest row instead of per case: short enough
    to read in a CI log, every word of it whole at 80 columns."""
    t = Table(title="model versus host kernel, per selftest", expand=True)
    t.add_column("selftest row", ratio=3)
    t.add_column("cases", justify="right", no_wrap=True)
    t.add_column("result", ratio=2)
    for g in summary(results):
        parts = [f"[{STYLE[s]}]{g[s]} {s}[/]" for s in STYLE if g[s]]
        text = ", ".join(parts)
        for reason in g["skip_reasons"]:
            text += f"\n[dim]skipped: {reason}[/]"
        for name in g["disagreeing"]:
            text += f"\n[red]disagrees: {name}[/]"
        t.add_row(g["source"], str(g["cases"]), text)
    return t


def findings(result: Result) -> list[str]:
    """What a run left besides its steps: how each back-end's scenario ended early, the
    pins it left held (the close released them), the model's sanitizer reports and
    warnings. One line each, for the table's caption."""
    out: list[str] = []
    traces = [t for t in (result.model, result.host) if t is not None and not t.skipped]
    for t in traces:
        if t.ended:
            out.append(f"{t.backend}: the scenario ended by {t.ended}")
    held = [f"{t.backend} {t.left_pins}" for t in traces if t.left_pins]
    if held:
        out.append("pins left held when the scenario returned (released by the close): "
                   + ", ".join(held))
    out += [f"model sanitizer: {r}" for r in result.model.reports]
    out += [f"model {w}" for w in result.model.warnings]
    return out


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    """The results as plain data for `--json`: each case, its verdict, and both traces."""
    def trace(tr: Trace | None) -> dict[str, Any] | None:
        if tr is None:
            return None
        return {"skipped": tr.skipped, "exact": tr.exact, "attempts": tr.attempts,
                "ended": tr.ended, "error": tr.error, "left_pins": tr.left_pins,
                "sanitizer_reports": tr.reports, "warnings": tr.warnings,
                "steps": [{"op": s.op, "outcome": s.outcome, "acquired": s.acquired,
                           "released": s.released, "VmPin": s.vm_pin_kb, "VmLck": s.vm_lck_kb,
                           "data": None if s.data is None else s.data.hex(),
                           "pages": s.pages, "late_released": s.late}
                          for s in tr.steps]}
    return [{"case": r.case.name, "source": r.case.source, "why": r.case.why,
             "model_gap": r.case.model_gap, "status": r.status, "model": trace(r.model),
             "host": trace(r.host),
             "model_problems": r.model_problems, "host_problems": r.host_problems,
             "differences": r.differences} for r in results]


__all__ = ["findings", "table", "summary_table", "summary", "as_json", "summarize", "describe"]
