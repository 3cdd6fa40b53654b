"""What `gupsim fuzz` prints: progress while it runs, then the figures and findings."""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..report.jsonout import dumps
from .campaign import Report, Verdict, campaign

PROGRESS_EVERY = 5.0   # seconds between progress lines when stderr is not a terminal


def host_allowed() -> Callable[[str], bool]:
    """What this host can run: a campaign leaves out the operations and map kinds whose
    capability it lacks (they would only be skipped). UsageError if it runs no scenario."""
    from ..live.capabilities import host_capabilities
    from ..scenarios.host import host_skip_reason
    reason = host_skip_reason(())
    if reason:
        raise click.UsageError(f"this host cannot run scenarios ({reason}): "
                               "use --model-only")
    caps = host_capabilities()
    return lambda need: need in caps and caps[need].ok


def run_fuzz(seed: int, programs: int, steps: int, model_only: bool, as_json: bool,
             out: str | None, shrink_budget: int) -> Report:
    """Run a campaign with progress on stderr (a bar on a terminal, else a line every
    few seconds) and print its report on stdout."""
    allowed: Callable[[str], bool] = lambda need: True   # noqa: E731
    if not model_only:
        allowed = host_allowed()
    err = Console(stderr=True, highlight=False)
    tally: dict[str, int] = {}

    def counts() -> str:
        return ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))

    def run(progress: Callable[[int, Verdict], None]) -> Report:
        return campaign(seed, programs, steps, with_host=not model_only, out=out,
                        shrink_budget=shrink_budget, allowed=allowed, progress=progress)

    if err.is_terminal:
        with Progress(TextColumn("fuzz seed {task.fields[seed]}"), BarColumn(),
                      MofNCompleteColumn(), TextColumn("{task.fields[tally]}"),
                      TimeElapsedColumn(), console=err, transient=as_json) as bar:
            task = bar.add_task("fuzz", total=programs, seed=seed, tally="")

            def on_bar(i: int, verdict: Verdict) -> None:
                tally[verdict.status] = tally.get(verdict.status, 0) + 1
                bar.update(task, advance=1, tally=counts())
            report = run(on_bar)
    else:
        start = last = time.monotonic()

        def on_line(i: int, verdict: Verdict) -> None:
            nonlocal last
            tally[verdict.status] = tally.get(verdict.status, 0) + 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY or i + 1 == programs:
                click.echo(f"gupsim fuzz: [{i + 1}/{programs}] {now - start:4.0f}s "
                           f"{counts()}", err=True)
                last = now
        report = run(on_line)
    if as_json:
        click.echo(dumps(report.as_dict()))
    else:
        Console(highlight=False).print(report_table(report))
    return report


def report_table(report: Report) -> Table:
    """How many programs got each verdict, then each class of finding; the caption
    names the shrunk file of the first program of each class."""
    d = report.as_dict()
    notes = [f"model: {d['model_steps_per_s']} steps/s (invariants checked after each)"
             if d["model_steps_per_s"] else "",
             "" if report.pins_left is None else f"host pins left: {report.pins_left}"]
    notes += [f"{f.status} {f.cls}: {f.file or '(not written)'} ({f.program.note})"
              for f in report.findings]
    t = Table(title=f"gupsim fuzz --seed {report.seed} ({d['mode']})", min_width=60,
              caption_justify="left", caption="\n".join(n for n in notes if n))
    t.add_column("programs", justify="right")
    t.add_column("verdict", ratio=1)
    for status, n in sorted(report.status.items()):
        t.add_row(str(n), status)
    for cls, n in report.classes.most_common():
        t.add_row(str(n), f"  {cls}")
    return t
