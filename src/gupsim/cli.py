"""The `gupsim` command line: `demo` (the main job), `live`, `top`, `bench` and `run`."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .tour import run_tour


@click.group(help="gupsim: an executable model of Linux page pinning, checked against the host.")
@click.version_option(package_name="gupsim")
def main() -> None:
    pass


@main.command(help="The main job: a narrated tour of the model, then the model-versus-host "
                   "table of the whole catalogue.")
@click.option("--json", "as_json", is_flag=True, help="Print the tour's steps as JSON.")
@click.option("--tour-only", is_flag=True, help="Stop after the tour (no catalogue run).")
@click.option("--model-only", is_flag=True, help="Run the catalogue on the model only.")
def demo(as_json: bool, tour_only: bool, model_only: bool) -> None:
    console = Console(highlight=False)
    steps = run_tour()
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in steps], indent=2))
        return
    console.print(Panel.fit("[bold]gupsim[/] — Linux page pinning, as an executable model",
                            border_style="cyan"))
    for n, step in enumerate(steps, 1):
        console.print(f"\n[bold cyan]{n}. {step.title}[/]")
        console.print(step.story)
        if step.facts:
            table = Table(show_header=False, box=None, padding=(0, 2))
            for key, value in step.facts.items():
                table.add_row(f"[dim]{key}[/]", str(value))
            console.print(table)
        if step.dump:
            console.print(Panel(step.dump.rstrip(), title="dump_page()", border_style="dim",
                                expand=False))
    bad = [s.title for s in steps if not s.ok]
    if bad:
        console.print(f"\n[bold red]The model disagreed with the kernel's documented "
                      f"behaviour in: {', '.join(bad)}[/]")
    else:
        console.print("\n[green]Every step behaved as the kernel documents.[/]")
    if not tour_only:
        console.print("\n[bold cyan]The catalogue: each case runs on the model and on this "
                      "host's kernel, and the observables are compared step by step[/]")
        console.print("[dim]Cases come from the kernel's selftests (gup_longterm.c, cow.c, "
                      "hugetlb_dio.c) and the pin accounting rules; a skipped case says "
                      "why the host could not run it.[/]")
        results = run_live(console, None, model_only)
        disagree = print_live(console, results)
        if not disagree and not model_only:
            console.print("[green]The model and this kernel agreed on every step of every "
                          "case the host could run.[/]")
        bad = bad or disagree
    if bad:
        raise SystemExit(1)


def run_live(console: Console, only: str | None, model_only: bool) -> list:
    """Run the catalogue on both back-ends, case by case, with a progress line."""
    from .scenarios.catalogue import catalogue
    from .scenarios.runner import run_case
    cases = [c for c in catalogue() if not only or only.lower() in c.name.lower()]
    results = []
    with console.status("") as status:
        for i, case in enumerate(cases, 1):
            status.update(f"[{i}/{len(cases)}] {case.name}")
            results.append(run_case(case, with_host=not model_only))
    return results


@main.command(help="Run the catalogue on the model and on this host's kernel, and compare.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-k", "only", default=None, help="Only cases whose name contains this text.")
@click.option("--model-only", is_flag=True, help="Do not touch the host kernel.")
def live(as_json: bool, only: str | None, model_only: bool) -> None:
    from .report.live import as_json as to_json
    console = Console(stderr=as_json)
    results = run_live(console, only, model_only)
    if as_json:
        click.echo(json.dumps(to_json(results), indent=2))
        disagree = any(r.status == "disagree" for r in results)
    else:
        disagree = print_live(console, results)
    if disagree:
        raise SystemExit(1)


def print_live(console: Console, results: list) -> bool:
    """The agreement table and its totals; True if any case disagreed."""
    from .report.live import table
    console.print(table(results))
    counts = {s: sum(r.status == s for r in results)
              for s in ("agree", "disagree", "skipped", "model-only")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return counts["disagree"] > 0


def pins_snapshot() -> dict:
    """Outstanding pins, processes with VmPin/VmLck, and their io_uring buffers, right now."""
    from .live import pin_counters, pinned_processes, uring_fdinfo
    counters = pin_counters()
    procs = []
    for p in pinned_processes():
        try:
            bufs = uring_fdinfo(p.pid)
        except OSError:
            bufs = {}
        procs.append({"pid": p.pid, "name": p.name, "VmPin_kB": p.vm_pin_kb,
                      "VmLck_kB": p.vm_lck_kb,
                      "uring_buffers": sum(len(b) for b in bufs.values()),
                      "uring_bytes": sum(x.length for b in bufs.values() for x in b)})
    return {"nr_foll_pin_acquired": counters.acquired,
            "nr_foll_pin_released": counters.released,
            "outstanding": counters.outstanding, "exact": counters.exact, "processes": procs}


def pins_table(snap: dict) -> Table:
    approx = "" if snap["exact"] else " (approximate: not root)"
    t = Table("pid", "name", "VmPin kB", "VmLck kB", "io_uring buffers",
              title=f"pins outstanding (acquired − released): {snap['outstanding']}{approx}")
    for p in snap["processes"]:
        bufs = (f"{p['uring_buffers']} ({p['uring_bytes'] >> 10} KiB)"
                if p["uring_buffers"] else "")
        t.add_row(str(p["pid"]), p["name"], str(p["VmPin_kB"]), str(p["VmLck_kB"]), bufs)
    if not snap["processes"]:
        t.add_row("", "[dim]no process holds VmPin or VmLck[/]", "", "", "")
    return t


@main.command(help="Who holds pinned memory on this host right now.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", type=float, default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
def top(as_json: bool, watch: float | None) -> None:
    if as_json:
        click.echo(json.dumps(pins_snapshot(), indent=2))
        return
    console = Console()
    if watch is None:
        console.print(pins_table(pins_snapshot()))
        return
    if watch <= 0:
        raise click.BadParameter("must be a positive number of seconds", param_hint="--watch")
    import time

    from rich.live import Live
    try:
        with Live(pins_table(pins_snapshot()), console=console) as view:
            while True:
                time.sleep(watch)
                view.update(pins_table(pins_snapshot()))
    except KeyboardInterrupt:
        pass


def bench_table(rows: list) -> Table:
    t = Table("workload", "pages", "model pin", "host pin", "model/host", "model unpin",
              "host unpin", title="nanoseconds per 4 KiB page "
              "(pin_user_pages_fast(FOLL_WRITE|FOLL_LONGTERM); host: io_uring registration)")

    def ns(x: float | None) -> str:
        return "—" if x is None else f"{x:,.0f}"

    for r in rows:
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        host = ns(r.host_pin) if not r.host_skipped else f"[dim]skipped: {r.host_skipped}[/]"
        t.add_row(r.workload, f"{r.pages:,}", ns(r.model_pin), host, ratio, ns(r.model_unpin),
                  ns(r.host_unpin))
    return t


@main.command(help="Time bulk pins on the model against the host kernel, side by side.")
@click.option("--max-pages", type=click.IntRange(1, 1 << 18), default=1 << 18,
              show_default=True, help="Largest size measured (262144 pages = 1 GiB).")
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs per figure; the best is reported.")
@click.option("--model-only", is_flag=True, help="Do not touch the host kernel.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(max_pages: int, repeat: int, model_only: bool, as_json: bool) -> None:
    from .bench import run
    sizes = [n for n in (256, 4096, 65536, 1 << 18) if n < max_pages] + [max_pages]
    console = Console(stderr=as_json)
    with console.status("timing the model and the host kernel..."):
        rows = run(sizes, repeat, with_host=not model_only)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        console.print(bench_table(rows))


@main.command(help="Run a scenario file on the model (and with --host on this kernel too).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", "with_host", is_flag=True,
              help="Also run it on the host kernel and compare step by step.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run(file: str, with_host: bool, as_json: bool) -> None:
    """FILE defines `scenario(system)` (and optionally `expect(trace) -> list[str]`),
    written against gupsim.scenarios.protocol; see examples/ for one."""
    import runpy

    from .report.live import as_json as to_json
    from .scenarios.runner import Case, run_case

    ns = runpy.run_path(file)
    if not callable(ns.get("scenario")):
        raise click.UsageError(f"{file} must define a function scenario(system)")
    expect = ns.get("expect") or (lambda trace: [])
    case = Case(ns.get("NAME", file), ns["scenario"], expect, source=file,
                needs=tuple(ns.get("NEEDS", ())))
    result = run_case(case, with_host=with_host)
    if as_json:
        click.echo(json.dumps(to_json([result]), indent=2))
    else:
        Console().print(steps_table(result))
    if result.status == "disagree":
        raise SystemExit(1)


def steps_table(result) -> Table:
    """One row per step: what the model and (if it ran) the host observed."""
    from .scenarios.runner import describe
    host = result.host.steps if result.host is not None and not result.host.skipped else []
    t = Table("#", "step", "model", "host", title=f"{result.case.name}: {result.status}",
              caption="\n".join(result.model_problems + result.host_problems
                                + result.differences
                                + ([f"host skipped: {result.host.skipped}"]
                                   if result.host is not None and result.host.skipped else [])))
    for i in range(max(len(result.model.steps), len(host))):
        m = result.model.steps[i] if i < len(result.model.steps) else None
        h = host[i] if i < len(host) else None
        same = h is None or (m is not None and m.key() == h.key())
        t.add_row(str(i + 1), (m or h).op, describe(m) if m else "—",
                  ("" if same else "[red]") + (describe(h) if h else "—"))
    return t
