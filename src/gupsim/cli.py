"""The `gupsim` command line: `demo` (the main job), `status` of the host's pins."""

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


@main.command(help="A narrated tour of the model for newcomers.")
@click.option("--json", "as_json", is_flag=True, help="Print the tour's steps as JSON.")
def demo(as_json: bool) -> None:
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
            console.print(Panel(step.dump, title="dump_page()", border_style="dim",
                                expand=False))
    bad = [s.title for s in steps if not s.ok]
    if bad:
        console.print(f"\n[bold red]The model disagreed with the kernel's documented "
                      f"behaviour in: {', '.join(bad)}[/]")
        raise SystemExit(1)
    console.print("\n[green]Every step behaved as the kernel documents.[/]")


@main.command(help="Who holds pinned memory on this host right now.")
@click.option("--json", "as_json", is_flag=True)
def top(as_json: bool) -> None:
    from .live import pin_counters, pinned_processes
    counters = pin_counters()
    procs = pinned_processes()
    if as_json:
        click.echo(json.dumps({
            "nr_foll_pin_acquired": counters.acquired, "nr_foll_pin_released": counters.released,
            "outstanding": counters.outstanding, "exact": counters.exact,
            "processes": [p._asdict() if hasattr(p, "_asdict") else vars(p) for p in procs]}))
        return
    console = Console()
    console.print(f"pins outstanding (acquired − released): [bold]{counters.outstanding}[/]"
                  f"{'' if counters.exact else ' (approximate)'}")
    table = Table("pid", "name", "VmPin kB", "VmLck kB")
    for p in procs:
        table.add_row(str(p.pid), p.name, str(p.vm_pin_kb), str(p.vm_lck_kb))
    console.print(table)
