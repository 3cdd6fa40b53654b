"""`--html OUT`: the pictures of a run as one self-contained HTML page.

Inline CSS and JavaScript, no network: the file opens from a USB stick in a classroom.
Every panel is rendered here, in Python, with every text escaped (`html.escape`); the
script only shows one panel at a time (prev/next buttons, the arrow keys, the list of
steps, the `#step-N` address) and, on hovering a frame, lights up the page-table rows
that map it. A frame has one colour wherever it appears, so "who maps what" reads as
matching colours between the page tables and the frames.
"""

from __future__ import annotations

import html
import zlib
from typing import TYPE_CHECKING

from .picture import FrameRun, PteRun, Snapshot, kib

if TYPE_CHECKING:
    from .picture_runs import Panel, Pictures


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _hue(head: int) -> int:
    """A stable colour per frame: the same frame has the same colour in every step."""
    return zlib.crc32(head.to_bytes(8, "little")) % 360


_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d232a;background:#f4f5f7}
header{background:#18324d;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center}
header h1{font-size:1.15em;margin:0;flex:1}
header button{font-size:1em;padding:.3em .9em;cursor:pointer}
#pos{min-width:6em;text-align:center}
.note{background:#fff3cd;padding:.4em 1em;margin:0}
.wrap{display:flex;align-items:flex-start}
nav{width:17em;max-height:calc(100vh - 3.5em);overflow-y:auto;overflow-x:hidden;background:#fff;
 border-right:1px solid #ccd;position:sticky;top:0;font-size:.85em}
nav h3{margin:.6em .6em .2em;font-size:.9em;color:#456}
nav a{display:block;padding:.25em .6em;color:#1d232a;text-decoration:none;overflow-wrap:anywhere;
 border-left:4px solid transparent}
nav a.cur{background:#e3ecf7;border-left-color:#18324d;font-weight:600}
nav a.bad{color:#b00020}
main{flex:1;padding:.6em 1.2em;min-width:0}
.panel{display:none}.panel.cur{display:block}
h2{font-size:1.2em;margin:.3em 0}
.src{font-family:monospace;background:#fff;border:1px solid #dde;padding:.3em .5em;
 white-space:pre-wrap}
.story{max-width:60em}
.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.box{background:#fff;border:1px solid #ccd;border-radius:6px;padding:.5em .7em}
.box h4{margin:.1em 0 .4em;font-size:1em}
table{border-collapse:collapse;font-size:.85em}
td,th{padding:.15em .45em;border-bottom:1px solid #eef;text-align:left;vertical-align:top}
th{color:#456;font-weight:600}
.mono{font-family:monospace}
tr.chg td,.frame.chg{background:#fff1a8}
.changes li{background:#fff1a8;margin:.1em 0;padding:.05em .3em;list-style:none}
.changes{padding:0}
.chip{display:inline-block;border-radius:4px;padding:0 .35em;font-family:monospace;
 border:1px solid #0003}
.tag{display:inline-block;font-size:.75em;border-radius:3px;padding:0 .3em;margin:0 .1em;
 background:#e8e8e8}
.tag.w{background:#cfe8cf}.tag.ae{background:#d7e3fb}.tag.sd{background:#f1dcf5}
.tag.pin{background:#c62828;color:#fff}.tag.get{background:#ef6c00;color:#fff}
.tag.sw{background:#777;color:#fff}
.frames{display:flex;flex-wrap:wrap;gap:.6em}
.frame{background:#fff;border:2px solid #ccd;border-radius:6px;padding:.4em .6em;
 width:23em;font-size:.85em}
.frame.hl,tr.hl td{outline:3px solid #18324d}
.bar{display:flex;height:.9em;border:1px solid #999;margin:.25em 0;background:#fafafa}
.bar span{display:block;height:100%}
.bar .plain{background:#4caf50}.bar .bias{background:#c62828}
.holders{margin:.2em 0 0;padding-left:1.1em}
.legend{font-size:.8em;color:#456}
.cmp td:nth-child(2),.cmp td:nth-child(3){font-family:monospace}
.cmp tr.differ td{background:#fbd3d3}
.machine{border-top:2px solid #ccd;margin-top:.8em}
"""

_JS = """
(function(){
var panels=[].slice.call(document.querySelectorAll('.panel'));
var links=[].slice.call(document.querySelectorAll('nav a'));
var cur=0;
function show(i){
 if(i<0||i>=panels.length)return;
 panels[cur].classList.remove('cur');links[cur].classList.remove('cur');
 cur=i;panels[cur].classList.add('cur');links[cur].classList.add('cur');
 document.getElementById('pos').textContent=(cur+1)+' / '+panels.length;
 links[cur].scrollIntoView({block:'nearest'});
 if(location.hash!=='#step-'+(cur+1))history.replaceState(null,'','#step-'+(cur+1));
}
document.getElementById('prev').onclick=function(){show(cur-1)};
document.getElementById('next').onclick=function(){show(cur+1)};
document.addEventListener('keydown',function(ev){
 if(ev.key==='ArrowRight'||ev.key==='ArrowDown'){show(cur+1);ev.preventDefault()}
 if(ev.key==='ArrowLeft'||ev.key==='ArrowUp'){show(cur-1);ev.preventDefault()}
});
links.forEach(function(a,i){a.onclick=function(ev){ev.preventDefault();show(i)}});
document.querySelectorAll('.frame').forEach(function(f){
 function mark(on){var p=f.closest('.panel');
  p.querySelectorAll('[data-head="'+f.dataset.head+'"]').forEach(function(x){
   var row=x.closest('tr')||x;row.classList.toggle('hl',on)})}
 f.onmouseenter=function(){mark(true)};f.onmouseleave=function(){mark(false)};
});
var m=/^#step-(\\d+)$/.exec(location.hash);
var start=m?parseInt(m[1],10)-1:0;
panels[0].classList.add('cur');links[0].classList.add('cur');
show(start>=0&&start<panels.length?start:0);
document.getElementById('pos').textContent=(cur+1)+' / '+panels.length;
})();
"""


def _chip(head: int, text: str) -> str:
    return (f'<span class="chip" data-head="{head}" style="background:hsl({_hue(head)},'
            f'70%,80%)">{_e(text)}</span>')


def _pte_row(r: PteRun, heads: dict[int, int]) -> str:
    span = f"{r.addr:#x}" + ("" if r.pages == 1 else f" +{r.pages} pages ({kib(r.pages)})")
    if r.state == "present" and r.pfn is not None:
        head = heads.get(r.pfn, r.pfn)
        last = r.pfn if r.special else r.pfn + r.pages - 1
        target = _chip(head, f"pfn {r.pfn:#x}" + ("" if last == r.pfn else f"..{last:#x}"))
        if r.special:
            target += ' <span class="tag">zero page / special</span>'
    elif r.state == "swapped":
        target = f'<span class="tag sw">swapped, slot {r.pfn}</span>'
    elif r.state == "none":
        target = '<span class="legend">not faulted in</span>'
    else:
        target = f'<span class="tag">{_e(r.state)}</span>'
    tags = []
    if r.state in ("present", "swapped"):
        tags.append('<span class="tag w">writable</span>' if r.writable
                    else '<span class="tag">read-only</span>')
    if r.anon_exclusive:
        tags.append('<span class="tag ae">anon-exclusive</span>')
    if r.soft_dirty:
        tags.append('<span class="tag sd">soft-dirty</span>')
    if r.huge:
        tags.append(f'<span class="tag">{_e(r.huge)}-mapped</span>')
    cls = ' class="chg"' if r.changed else ""
    return (f'<tr{cls}><td class="mono">{_e(span)}</td><td>&rarr;</td><td>{target}</td>'
            f'<td>{"".join(tags)}</td></tr>')


def _heads(snap: Snapshot) -> dict[int, int]:
    """First frame of each page of every frame row -> that row's first folio (colour)."""
    out: dict[int, int] = {}
    for f in snap.frames:
        n = f.folios << f.order
        if n <= 4096:
            for pfn in range(f.head, f.head + n):
                out[pfn] = f.head
    return out


def _procs(snap: Snapshot) -> str:
    heads = _heads(snap)
    out = ['<div class="grid">']
    for p in snap.procs:
        cls = ' chg' if p.changed else ''
        state = "" if p.alive else " (exited)"
        out.append(f'<div class="box{cls}"><h4>pid {p.pid} {_e(p.comm)}{state} '
                   f'<span class="tag">VmPin {p.vm_pin_kb} kB</span>'
                   f'<span class="tag">VmLck {p.vm_lck_kb} kB</span></h4>')
        for v in p.vmas:
            out.append(f'<div class="legend">VMA {v.start:#x}-{v.end:#x} {_e(v.what)} '
                       f'({kib((v.end - v.start) >> 12)})</div><table>')
            out += [_pte_row(r, heads) for r in v.runs]
            if v.more_rows:
                out.append(f'<tr><td colspan="4" class="legend">... {v.more_rows} more rows '
                           'not drawn</td></tr>')
            out.append("</table>")
        out.append("</div>")
    out.append("</div>")
    return "".join(out)


def _frame(f: FrameRun) -> str:
    cls = " chg" if f.changed else ""
    what = f"{f.folios} {f.kind} folios" if f.folios > 1 else f"{f.kind} folio"
    head = (f'<b>{_chip(f.head, "pfn " + f.key)}</b> {_e(what)}, order {f.order} '
            f'({kib(1 << f.order)}{" each" if f.folios > 1 else ""}), zone {_e(f.zone)}'
            f'{" CMA" if f.cma else ""}')
    total = max(f.refcount, 1)
    pinned = f.bias_refs if f.order == 0 else f.pincount    # the references pins account for
    bar = (f'<div class="bar" title="refcount {f.refcount}"><span class="plain" '
           f'style="width:{100 * max(f.plain_refs, 0) / total:.1f}%"></span>'
           f'<span class="bias" style="width:{100 * pinned / total:.1f}%"></span></div>')
    if f.order == 0:
        split = (f"refcount {f.refcount} = {f.plain_refs} plain + {f.bias_refs} "
                 f"(GUP_PIN_COUNTING_BIAS 1024 &times; {f.pincount} pin"
                 f"{'' if f.pincount == 1 else 's'})")
    else:
        split = (f"refcount {f.refcount} = {f.plain_refs} plain + {f.pincount} pin(s); "
                 f"_pincount {f.pincount}")
    pin = ('<span class="tag pin">maybe DMA-pinned</span>' if f.maybe_dma_pinned else "")
    stuck = "" if f.movable else '<span class="tag get">cannot migrate</span>'
    who = "holders of the first folio" if f.folios > 1 else "holders"
    holders = "".join(f"<li>{_e(h)}</li>" for h in f.holders) or "<li>none</li>"
    return (f'<div class="frame{cls}" data-head="{f.head}">{head}{bar}<div>{split}, mapcount '
            f'{f.mapcount} {pin}{stuck}</div><div class="legend">flags '
            f'{_e("|".join(f.flags) or "-")}</div><div class="legend">{who}:</div>'
            f'<ul class="holders">{holders}</ul></div>')


def _compare(p: Panel) -> str:
    if p.observed is None:
        return ""
    rows = []
    for key, value in p.observed.items():
        other = p.host.get(key, "") if p.host is not None else ""
        cls = ' class="differ"' if p.host is not None and other != value else ""
        rows.append(f"<tr{cls}><td>{_e(key)}</td><td>{_e(value)}</td><td>{_e(other)}</td></tr>")
    host = "host" if p.host is not None else "host (not run: add --host)"
    return (f'<div class="box"><h4>observed in this step</h4><table class="cmp"><tr><th>'
            f'</th><th>model</th><th>{host}</th></tr>{"".join(rows)}</table></div>')


def _machine(s: Snapshot, moment: str) -> str:
    """Page tables, then frames and their holders, then the pin counters."""
    out = [f'<div class="machine"><h3>The machine <span class="legend">{_e(moment)}</span>'
           f"</h3>"]
    if s.changes and s.changes[0].endswith("held at this moment of the step"):
        out.append(f'<ul class="changes"><li>{_e(s.changes[0])}</li></ul>')
    out.append(f"<h4>Page tables</h4>{_procs(s)}")
    out.append('<h4>Frames (folios) and who holds them</h4><div class="legend">bar: '
               'green = plain references (mappings, page cache, GET), red = the pins '
               '(1024 each on a small folio, 1 each on a large one); hover a frame to see '
               'the PTEs that map it</div>')
    out.append('<div class="frames">' + "".join(_frame(f) for f in s.frames) + "</div>")
    if s.more_frames:
        out.append(f'<div class="legend">... {s.more_frames} more frame rows not drawn</div>')
    acq = s.vmstat.get("nr_foll_pin_acquired", 0)
    rel = s.vmstat.get("nr_foll_pin_released", 0)
    out.append(f'<p class="mono">nr_foll_pin_acquired {acq}, nr_foll_pin_released '
               f'{rel}: {s.pins_held} pin(s) held</p></div>')
    return "".join(out)


def _panel(i: int, p: Panel) -> str:
    out = [f'<section class="panel" id="panel-{i + 1}" data-step="{i + 1}">',
           f'<div class="legend">{_e(p.group)}</div>',
           f'<h2>Step {i + 1}: {_e(p.title)}'
           + (f' &rarr; {_e(p.outcome)}' if p.outcome else "")
           + ("" if p.ok else ' <span class="tag pin">self-check failed</span>') + "</h2>"]
    if p.source:
        out.append(f'<div class="src">{_e(p.source)}</div>')
    if p.story:
        out.append(f'<p class="story">{_e(p.story)}</p>')
    out.append('<div class="grid">')
    if p.calls:
        out.append('<div class="box"><h4>GUP calls in this step: entry point, flags, '
                   'path taken, result; releases</h4><ul class="mono">'
                   + "".join(f"<li>{_e(c)}</li>" for c in p.calls) + "</ul></div>")
    if p.model is not None:
        out.append('<div class="box"><h4>what changed since the previous step</h4>'
                   '<ul class="changes">' + "".join(f"<li>{_e(c)}</li>"
                                                    for c in p.model.changes) + "</ul></div>")
    out.append(_compare(p))
    if p.facts:
        out.append('<div class="box"><h4>figures to look at</h4><table>' + "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in p.facts.items())
            + "</table></div>")
    out.append("</div>")
    if p.while_held is not None:
        out.append(_machine(p.while_held, "while the step held the most pins (it released "
                                          "them before it ended)"))
    if p.model is not None:
        out.append(_machine(p.model, p.moment))
    if p.table:
        cols = list(p.table[0])
        out.append("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in cols)
                             + "</tr>" for r in p.table) + "</table>")
    out.append("</section>")
    return "".join(out)


def _nav(pics: Pictures) -> str:
    out, group = [], None
    for i, p in enumerate(pics.panels):
        if p.group != group:
            group = p.group
            out.append(f"<h3>{_e(group)}</h3>")
        bad = "" if p.ok else ' class="bad"'
        out.append(f'<a href="#step-{i + 1}"{bad}>{i + 1}. {_e(p.title)}</a>')
    return "".join(out)


def render_html(pics: Pictures) -> str:
    """The whole page, as text."""
    if not pics.panels:
        raise ValueError("nothing to draw: the run recorded no step")
    note = f'<p class="note">{_e(pics.note)}</p>' if pics.note else ""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(pics.title)}</title><style>{_CSS}</style></head><body>"
            f'<header><h1>{_e(pics.title)}</h1><button id="prev" '
            'title="previous step (left arrow)">&larr; prev</button><span id="pos"></span>'
            '<button id="next" title="next step (right arrow)">next &rarr;</button></header>'
            f'{note}<div class="wrap"><nav>{_nav(pics)}</nav><main>'
            + "".join(_panel(i, p) for i, p in enumerate(pics.panels))
            + f"</main></div><script>{_JS}</script></body></html>")


def write_html(pics: Pictures, path: str) -> None:
    """Write the page to `path` (OSError if it cannot be written)."""
    text = render_html(pics)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
