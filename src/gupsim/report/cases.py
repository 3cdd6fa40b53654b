"""The `gupsim cases` rendering: which case a driver is, then each case's right driver
and its wrong-flag twin, narrated step by step as the tour is, with each self-check.

Reads `drivers.cases.CaseRun` values only (whatever cases the list holds); `as_json()`
gives the same content as plain data for `--json`.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ..drivers.cases import CaseRun, CaseStep

#: The cases of Documentation/core-api/pin_user_pages.rst, one line each: (case, who,
#: flags, why). Cases 1-4 date from the v5.6 series; case 3 was reworded for MMU
#: notifiers in v5.8, case 5 was added later.
WHICH_CASE: list[tuple[str, str, str, str]] = [
    ("1", "Direct IO", "FOLL_PIN",
     "pages held while an I/O runs; the data must reach the file or process"),
    ("2", "RDMA, io_uring, VFIO", "FOLL_PIN | FOLL_LONGTERM",
     "a device holds the memory indefinitely: moved out of movable memory first"),
    ("3", "MMU notifier users", "no pin, or FOLL_GET + notifier",
     "replayable faults: mirror, no pin; else get pages and drop them on invalidate"),
    ("4", "struct page only", "FOLL_GET",
     "only struct page is read or changed: plain references"),
    ("5", "kernel writes the data", "FOLL_PIN",
     "pin, write through a kernel mapping, then unpin and dirty the pages"),
]


def which_case_table() -> Table:
    """"Which case is my driver?": the five cases in one line each, with their flags."""
    t = Table(title="which case is my driver? (pin_user_pages.rst)", box=box.SIMPLE_HEAD,
              expand=False)
    t.add_column("case", justify="right", no_wrap=True)
    t.add_column("who", ratio=2)
    t.add_column("flags", ratio=2)
    t.add_column("because", ratio=4)
    for case, who, flags, why in WHICH_CASE:
        t.add_row(case, who, f"[bold]{flags}[/]", f"[dim]{why}[/]")
    return t


def _facts(step: CaseStep) -> Table:
    t = Table(show_header=False, box=None, padding=(0, 2))
    t.add_column(style="dim", ratio=2)
    t.add_column(ratio=3, overflow="fold")
    for key, value in step.facts.items():
        if isinstance(value, bytes | bytearray):     # text if printable, else hex (a NUL
            text = bytes(value).decode("latin-1")    # written to a terminal is invisible)
            value = text if text.isascii() and text.isprintable() else value.hex(" ")
        t.add_row(str(key), str(value))
    return t


def _steps(console: Console, side: str, flags: str, steps: list[CaseStep]) -> None:
    colour = "green" if side == "right" else "magenta"
    console.print(f"\n[bold {colour}]{side} driver[/]: [bold]{flags}[/]")
    for n, step in enumerate(steps, 1):
        mark = "[green]✓[/]" if step.ok else "[bold red]✗ self-check failed[/]"
        console.print(f"\n[bold cyan]{n}. {step.title}[/] {mark}")
        console.print(step.story)
        if step.facts:
            console.print(_facts(step))
        if step.dump:
            console.print(Panel(step.dump.rstrip(), title="dump_page()", border_style="dim",
                                expand=False))


def render(console: Console, runs: list[CaseRun]) -> bool:
    """Print the which-case table and every run, narrated; True if every step passed."""
    console.print(which_case_table())
    for run in runs:
        console.rule(f"[bold]{run.name}[/]")
        console.print(run.summary)
        _steps(console, "right", run.right_flags, run.right)
        _steps(console, "wrong", run.wrong_flags, run.wrong)
    bad = [f"{r.name}: {s.title}" for r in runs for s in r.right + r.wrong if not s.ok]
    console.print()
    if bad:
        console.print("[bold red]These steps did not show what the kernel documents:[/]")
        for line in bad:
            console.print(f"[red]  {line}[/]")
        return False
    console.print(f"[green]Every step of the {len(runs)} case(s) showed what the kernel "
                  "documents, the right driver and the wrong one alike.[/]")
    return True


def as_json(runs: list[CaseRun]) -> dict[str, Any]:
    """The which-case summary and every run as plain data, with the overall verdict."""
    return {"which_case": [{"case": c, "who": w, "flags": f, "because": why}
                           for c, w, f, why in WHICH_CASE],
            "cases": [r.as_dict() for r in runs],
            "ok": all(r.ok for r in runs)}


__all__ = ["WHICH_CASE", "as_json", "render", "which_case_table"]
