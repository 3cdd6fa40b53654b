"""What `gupsim fuzz` prints: progress while it runs, then the figures and findings."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..report.jsonout import dumps
from .campaign import Report, Verdict, campaign


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
    """Run a campaign with a progress bar on stderr and print its report on stdout."""
    allowed: Callable[[str], bool] = lambda need: True   # noqa: E731
    if not model_only:
        allowed = host_allowed()
    err = Console(stderr=True, highlight=False)
    with Progress(TextColumn("fuzz seed {task.fields[seed]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[tally]}"),
                  TimeElapsedColumn(), console=err, transient=as_json) as bar:
        task = bar.add_task("fuzz", total=programs, seed=seed, tally="")
        tally: dict[str, int] = {}

        def progress(i: int, verdict: Verdict) -> None:
            tally[verdict.status] = tally.get(verdict.status, 0) + 1
            bar.update(task, advance=1,
                       tally=" ".join(f"{n} {s}" for s, n in sorted(tally.items())))

        report = campaign(seed, programs, steps, with_host=not model_only, out=out,
                          shrink_budget=shrink_budget, allowed=allowed, progress=progress)
    if as_json:
        click.echo(dumps(report.as_dict()))
    else:
        Console(highlight=False).print(report_table(report))
    return report


def report_table(report: Report) -> Table:
    """One row per class of finding, with the shrunk file of the first of each."""
    d = report.as_dict()
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.status.items()))
    rate = f", model {d['model_steps_per_s']} steps/s" if d["model_steps_per_s"] else ""
    pins = ("" if report.pins_left is None else
            f", host pins left: {report.pins_left}")
    t = Table("programs", "class", title=f"gupsim fuzz --seed {report.seed} "
              f"({d['mode']}): {report.programs} programs, {counts}{rate}{pins}",
              caption_justify="left",
              caption="\n".join(f"{f.status} {f.cls}: {f.file or '(not written)'} "
                                f"({f.program.note})" for f in report.findings))
    for cls, n in report.classes.most_common():
        t.add_row(str(n), cls)
    return t
