"""`--show`: the pictures of a run in the terminal, drawn with rich, readable at 100 columns.

The same data as the HTML page (`picture_html`), one block per step: the step and its
scenario line, what changed (a `*` marks a changed row, also without colour), the
observables beside the host's, each process's page table and the frames with their
holders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel as RichPanel
from rich.table import Table
from rich.text import Text

from ..constants import PAGE_SHIFT
from .picture import FrameRun, PteRun, Snapshot, kib

if TYPE_CHECKING:
    from .picture_runs import Panel, Pictures

_CHANGED = "bold yellow"


def _pte_cells(r: PteRun) -> tuple[str, str, str, str]:
    span = f"{r.addr:#x}"
    pages = str(r.pages) if r.pages == 1 else f"{r.pages} ({kib(r.pages)})"
    if r.state == "present" and r.pfn is not None:
        last = r.pfn if r.special else r.pfn + r.pages - 1
        target = f"pfn {r.pfn:#x}" + ("" if last == r.pfn else f"..{last:#x}")
        if r.special:
            target += " zero/special"
    elif r.state == "swapped":
        target = f"swap slot {r.pfn}"
    elif r.state == "none":
        target = "not faulted in"
    else:
        target = r.state
    tags = []
    if r.state in ("present", "swapped"):
        tags.append("rw" if r.writable else "ro")
    if r.anon_exclusive:
        tags.append("anon-excl")
    if r.soft_dirty:
        tags.append("soft-dirty")
    if r.huge:
        tags.append(r.huge)
    return span, pages, target, " ".join(tags)


def _page_tables(snap: Snapshot) -> list[RenderableType]:
    out: list[RenderableType] = []
    for p in snap.procs:
        title = (f"pid {p.pid} {p.comm}{'' if p.alive else ' (exited)'}: VmPin "
                 f"{p.vm_pin_kb} kB, VmLck {p.vm_lck_kb} kB")
        t = Table(" ", "virtual page", "pages", "-> frame", "PTE bits", box=box.SIMPLE_HEAD,
                  title=title, title_justify="left",
                  title_style=_CHANGED if p.changed else "bold")
        for v in p.vmas:
            t.add_row("", Text(f"VMA {v.start:#x}", style="dim"),
                      Text(kib((v.end - v.start) >> PAGE_SHIFT), style="dim"),
                      Text(v.what, style="dim"), "")
            for r in v.runs:
                t.add_row("*" if r.changed else "", *_pte_cells(r),
                          style=_CHANGED if r.changed else None)
            if v.more_rows:
                t.add_row("", Text(f"... {v.more_rows} more rows", style="dim"), "", "", "")
        out.append(t)
    return out


def _refs(f: FrameRun) -> str:
    if f.order == 0:
        return f"{f.refcount} = {f.plain_refs} + 1024x{f.pincount}"
    return f"{f.refcount} = {f.plain_refs} + {f.pincount} pin(s)"


def _frames(snap: Snapshot) -> list[RenderableType]:
    """The folios (one row per run), then their holders, one line each (wide enough to
    read a call site at 100 columns)."""
    t = Table(" ", "frame", "folio", "refcount = plain + bias", "mapcount", "state",
              box=box.SIMPLE_HEAD, title="frames", title_justify="left", title_style="bold")
    t.columns[1].overflow = "fold"
    held = Table(" ", "frame", "held by", box=box.SIMPLE_HEAD, title="who holds them",
                 title_justify="left", title_style="bold")
    held.columns[2].overflow = "fold"
    for f in snap.frames:
        folio = f"{f.kind} order {f.order} {f.zone}{' CMA' if f.cma else ''}"
        if f.folios > 1:
            folio = f"{f.folios} x " + folio
        state = ", ".join((["maybe pinned"] if f.maybe_dma_pinned else [])
                          + ([] if f.movable else ["cannot migrate"])) or "-"
        style = _CHANGED if f.changed else None
        mark = "*" if f.changed else ""
        t.add_row(mark, f.key, folio, _refs(f), str(f.mapcount), state, style=style)
        for i, h in enumerate(f.holders or ["none"]):
            first = "(first folio) " if f.folios > 1 and i == 0 else ""
            held.add_row(mark if i == 0 else "", f.key if i == 0 else "", first + h,
                         style=style)
    if snap.more_frames:
        t.add_row("", Text(f"... {snap.more_frames} more", style="dim"), "", "", "", "")
    return [t, held]


def _observed(p: Panel) -> Table | None:
    if p.observed is None:
        return None
    t = Table("observed", "model", "host" if p.host is not None else "host (not run)",
              box=box.SIMPLE_HEAD)
    for key, value in p.observed.items():
        other = p.host.get(key, "") if p.host is not None else ""
        differ = p.host is not None and other != value
        t.add_row(key, value, other, style="bold red" if differ else None)
    return t


def render_panel(i: int, p: Panel) -> RenderableType:
    """One step as a rich renderable."""
    parts: list[RenderableType] = []
    if p.source:
        parts.append(Text(p.source, style="cyan"))
    if p.story:
        parts.append(Text(p.story))
    if p.calls:
        parts.append(Text("GUP calls: " + "; ".join(p.calls), style="magenta"))
    if p.model is not None:
        parts.append(Text("changed: " + "; ".join(p.model.changes), style=_CHANGED))
    obs = _observed(p)
    if obs is not None:
        parts.append(obs)
    if p.facts:
        facts = Table(show_header=False, box=None, padding=(0, 2))
        for key, value in p.facts.items():
            facts.add_row(Text(key, style="dim"), value)
        parts.append(facts)
    for snap, moment in ((p.while_held, "while the step held the most pins (it released "
                                        "them before it ended)"), (p.model, p.moment)):
        if snap is None:
            continue
        parts.append(Text(f"the machine {moment}:", style="bold"))
        parts += _page_tables(snap)
        parts += _frames(snap)
        parts.append(Text(f"pins held: {snap.pins_held} (nr_foll_pin_acquired - "
                          "nr_foll_pin_released)"))
    if p.table:
        cols = list(p.table[0])
        t = Table(*cols, box=box.SIMPLE_HEAD)
        for row in p.table:
            t.add_row(*(row.get(c, "") for c in cols))
        parts.append(t)
    title = f"step {i + 1}: {p.title}" + (f" -> {p.outcome}" if p.outcome else "")
    if not p.ok:
        title += " (self-check FAILED)"
    return RichPanel(Group(*parts), title=Text(title, style="bold"), title_align="left",
                     subtitle=p.group, subtitle_align="right", border_style="cyan")


def show(console: Console, pics: Pictures) -> None:
    """Print every step's picture."""
    console.rule(f"[bold]{pics.title}")
    if pics.note:
        console.print(pics.note, style="yellow")
    for i, p in enumerate(pics.panels):
        console.print(render_panel(i, p))
