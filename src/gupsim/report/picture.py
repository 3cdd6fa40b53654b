"""The data of one picture: a model machine's page tables, frames and their holders.

`snapshot(k)` reads a `Kernel` after a step and returns plain data (`Snapshot`) that
the HTML writer (`picture_html`) and the terminal view (`picture_term`) draw; `diff()`
marks what changed since the previous snapshot. Both views draw the same data, so a
student sees the same picture in the browser and in the terminal.

What a snapshot holds:

- per process, its page table for every mapped region, as runs of pages in the same
  state (present/swapped/none, writable, anon-exclusive, soft-dirty) whose frames are
  consecutive: a 1 GiB mapping is one row, not 262144. At most `MAX_PT_ROWS` rows per
  VMA, the rest counted;
- the folios those PTEs reach, plus every folio a GUP call holds and every frame a
  notifier driver's device page table maps, again as runs of folios in the same state
  (at most `MAX_FRAME_ROWS`), with refcount, mapcount, pincount, flags, zone, order;
  for a small folio the refcount is split into plain references and
  GUP_PIN_COUNTING_BIAS x pins, the bias the kernel adds instead of a pincount;
- every holder of the first folio of each run, from `check/explain.py` (PTEs, page
  cache, GUP references and pins with their call site), and device entries of notifier
  drivers (HMM mirror, RDMA ODP, userptr), which `explain` does not read;
- the machine's vmstat and per process VmPin/VmLck.

Simplification: holders are listed for the first folio of a run of identical folios.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..check.explain import explain
from ..constants import PAGE_SHIFT
from ..memory import GUP_PIN_COUNTING_BIAS, PG, Kind
from ..mm.vma import PTE

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..mm import MM

# call sites inside gupsim are shown from the package (gupsim/drivers/rdma.py:214)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) \
    + os.sep
MAX_PT_ROWS = 32        # page-table rows per VMA; a teacher's screen, not a dump
MAX_FRAME_ROWS = 48     # folio rows per snapshot
MAX_HOLDERS = 8         # PTE holders listed per folio row (the rest counted)


@dataclass
class PteRun:
    """Consecutive virtual pages of one VMA in the same state, mapping consecutive frames."""

    key: str            # identity across snapshots: pid and first address
    addr: int
    pages: int
    state: str          # "present", "swapped", "none" (not faulted in), "marker"
    # anon_exclusive: PG_anon_exclusive of the page (of the head for a PMD/PUD mapping),
    # or, for a swap entry, its exclusive marker
    pfn: int | None     # first frame (present) or swap slot (swapped)
    writable: bool
    anon_exclusive: bool
    soft_dirty: bool
    special: bool       # zero page / PFN map: no struct page refcounting
    huge: str = ""      # "PMD" / "PUD" when part of a huge mapping
    changed: bool = False


@dataclass
class VmaView:
    """One VMA of a process and the runs of its page table."""

    start: int
    end: int
    what: str            # anon / file name / hugetlb, and shared or private
    runs: list[PteRun] = field(default_factory=list)
    more_rows: int = 0   # rows left out beyond MAX_PT_ROWS


@dataclass
class ProcView:
    """One process: its name, VmPin/VmLck and its page tables."""

    pid: int
    comm: str
    alive: bool
    vm_pin_kb: int
    vm_lck_kb: int
    vmas: list[VmaView] = field(default_factory=list)
    changed: bool = False


@dataclass
class FrameRun:
    """Consecutive folios in the same state, with the holders of the first one."""

    key: str
    head: int
    folios: int
    order: int
    kind: str
    zone: str
    cma: bool
    refcount: int
    mapcount: int
    pincount: int        # large folios: the exact _pincount; small: the pins GUP holds
    plain_refs: int      # small folios: refcount minus the pins' bias; large: refcount - pins
    bias_refs: int       # small folios: GUP_PIN_COUNTING_BIAS x pins; large: 0
    maybe_dma_pinned: bool
    flags: list[str]
    holders: list[str] = field(default_factory=list)
    movable: bool = True
    changed: bool = False


@dataclass
class Snapshot:
    """One picture of the machine: processes, frames, counters, and what changed."""

    procs: list[ProcView]
    frames: list[FrameRun]
    more_frames: int
    vmstat: dict[str, int]
    pins_held: int
    changes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the HTML page embeds it)."""
        return asdict(self)


def _vma_what(vma: Any) -> str:
    if vma.is_hugetlb:
        base = "hugetlb"
    elif vma.file is not None:
        base = f"file {getattr(vma.file, 'name', '') or type(vma.file).__name__}"
    else:
        base = "anon"
    return f"{base}, {'shared' if vma.is_shared else 'private'}"


def _pte_runs(k: Kernel, pid: int, vma: Any) -> tuple[list[PteRun], int]:
    """The VMA's page table as runs (vectorised: no Python per page)."""
    pte = vma.pte.astype(np.int64)
    pfn = vma.pfn
    n = len(pte)
    if n == 0:
        return [], 0
    present = (pte & PTE.PRESENT) != 0
    safe = np.where(present, pfn, 0)
    # a PMD/PUD-mapped folio carries PG_anon_exclusive on its head page only
    huge = (pte & (PTE.PMD | PTE.PUD)) != 0
    if huge.any():
        safe = np.where(huge, k.mem.head_of(safe), safe)
    ae = present & ((k.mem.flags[safe].astype(np.int64) & int(PG.anon_exclusive)) != 0)
    ae |= (pte & (PTE.SWAP | PTE.SWP_EXCLUSIVE)) == (PTE.SWAP | PTE.SWP_EXCLUSIVE)
    bits = PTE.PRESENT | PTE.WRITE | PTE.SWAP | PTE.SOFT_DIRTY | PTE.SPECIAL | PTE.MARKER \
        | PTE.PMD | PTE.PUD
    state = (pte & bits) | (ae.astype(np.int64) << 20)
    brk = np.zeros(n, dtype=bool)
    brk[0] = True
    brk[1:] = state[1:] != state[:-1]
    # a present or swapped run continues only over consecutive frames (slots)
    mapped = (pte & (PTE.PRESENT | PTE.SWAP)) != 0
    brk[1:] |= mapped[1:] & (pfn[1:] != pfn[:-1] + 1)
    # the zero page maps every untouched page: keep a run of it together
    zero = present & ((pte & PTE.SPECIAL) != 0)
    brk[1:] &= ~(zero[1:] & zero[:-1] & (pfn[1:] == pfn[:-1]) & (state[1:] == state[:-1]))
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], n)
    runs = []
    for s, e in zip(starts[:MAX_PT_ROWS].tolist(), ends[:MAX_PT_ROWS].tolist(), strict=True):
        p = int(pte[s])
        if p & PTE.PRESENT:
            st = "present"
        elif p & PTE.SWAP:
            st = "swapped"
        elif p & PTE.MARKER:
            st = "marker"
        else:
            st = "none"
        addr = vma.addr_of(s)
        runs.append(PteRun(f"{pid}:{addr:#x}", addr, e - s, st,
                           int(pfn[s]) if st in ("present", "swapped") else None,
                           bool(p & PTE.WRITE), bool(ae[s]), bool(p & PTE.SOFT_DIRTY),
                           bool(p & PTE.SPECIAL),
                           "PUD" if p & PTE.PUD else "PMD" if p & PTE.PMD else ""))
    return runs, max(0, len(starts) - MAX_PT_ROWS)


def _device_holders(k: Kernel) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(driver, frames, writable) of every notifier driver's device page table."""
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    seen: set[int] = set()
    for p in k.processes.values():
        subs = getattr(p.mm, "notifier_subscriptions", None)
        if subs is None:
            continue
        for sub in [*subs.itree.overlapping(0, (1 << 64) - 1), *subs.hlist]:
            ops = getattr(sub, "ops", None)
            if ops is None or id(ops) in seen or not hasattr(ops, "device_mappings"):
                continue
            seen.add(id(ops))
            _va, pfns, writable = ops.device_mappings()
            if len(pfns):
                out.append((f"{type(ops).__name__} (pid {p.pid})",
                            np.asarray(pfns, dtype=np.int64), np.asarray(writable, dtype=bool)))
    return out


def _held_by(k: Kernel, how: str) -> np.ndarray:
    held = [o.pfns for o in k.sanitizer.outstanding() if o.how == how]
    return np.concatenate(held).astype(np.int64) if held else np.zeros(0, dtype=np.int64)


def _mapcount(k: Kernel, head: int, order: int) -> int:
    n = 1 << order
    return int(k.mem.mapcount[head:head + n].sum()) + int(k.mem.entire_mapcount[head])


def _frame_runs(k: Kernel, pfns: np.ndarray,
                devices: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[list[FrameRun], int]:
    mem = k.mem
    heads = np.unique(mem.head_of(pfns)) if len(pfns) else pfns
    heads = heads[mem.kind[heads] != Kind.FREE]
    if len(heads) == 0:
        return [], 0
    pin_heads = mem.head_of(_held_by(k, "FOLL_PIN"))
    pins = np.searchsorted(np.sort(pin_heads), heads, side="right") - \
        np.searchsorted(np.sort(pin_heads), heads, side="left")
    order = mem.order[heads].astype(np.int64)
    refs = mem.refcount[heads].astype(np.int64)
    state = np.stack([mem.kind[heads].astype(np.int64), order, refs,
                      mem.mapcount[heads].astype(np.int64), pins,
                      mem.flags[heads].astype(np.int64), mem.pincount[heads].astype(np.int64)])
    brk = np.ones(len(heads), dtype=bool)
    brk[1:] = (state[:, 1:] != state[:, :-1]).any(axis=0) | \
        (heads[1:] != heads[:-1] + (1 << order[:-1]))
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], len(heads))
    out = []
    for s, e in zip(starts[:MAX_FRAME_ROWS].tolist(), ends[:MAX_FRAME_ROWS].tolist(),
                    strict=True):
        out.append(_frame_row(k, int(heads[s]), e - s, int(pins[s]), heads[s:e], devices))
    return out, max(0, len(starts) - MAX_FRAME_ROWS)


def _frame_row(k: Kernel, head: int, folios: int, pins: int, heads: np.ndarray,
               devices: list[tuple[str, np.ndarray, np.ndarray]]) -> FrameRun:
    """One row: the first folio's state and holders (explain()), device entries counted."""
    ex = explain(k, head)
    small = ex.order == 0
    pincount = pins if small else ex.pincount
    bias = pins * GUP_PIN_COUNTING_BIAS if small else 0
    plain = ex.refcount - bias if small else ex.refcount - ex.pincount
    ptes = _pte_holders(ex.mappings)
    holders = ptes[:MAX_HOLDERS]
    if len(ptes) > MAX_HOLDERS:
        holders.append(f"... {len(ptes) - MAX_HOLDERS} more mappings")
    if ex.page_cache is not None:
        holders.append(f"page cache (mapping {ex.page_cache['mapping']}, index "
                       f"{ex.page_cache['index']:#x})")
    for g in ex.gup:
        holders.append(f"{g.how}{' | FOLL_LONGTERM' if g.longterm else ''} x{g.pages} by "
                       f"{g.call}() at {short_site(g.site)}")
    n = 1 << ex.order
    for name, pfns, writable in devices:
        inside = (pfns >= head) & (pfns < head + n)
        if inside.any():
            holders.append(f"device entry of {name} x{int(inside.sum())} "
                           f"{'rw' if writable[inside].any() else 'ro'} (not a pin)")
    if ex.isolated:
        holders.append("isolated by migration/compaction")
    if ex.unaccounted_refs > 0:
        holders.append(f"{ex.unaccounted_refs} reference(s) nobody accounts for")
    span = f"{head:#x}" if folios == 1 else f"{head:#x}..{int(heads[-1]) + n - 1:#x}"
    return FrameRun(f"{span}", head, folios, ex.order, ex.kind, ex.zone, ex.cma,
                    ex.refcount, ex.mapcount, pincount, plain, bias, ex.maybe_dma_pinned,
                    ex.flags, holders, ex.movable)


def short_site(site: str) -> str:
    """A call site inside gupsim, from the package (gupsim/drivers/rdma.py:214 in ...)."""
    return site.replace(_PACKAGE_DIR, "")


def _pte_holders(mappings: list[Any]) -> list[str]:
    """The PTEs mapping a folio, consecutive pages of one process in one line."""
    out: list[str] = []
    groups: list[list[Any]] = []
    for m in sorted(mappings, key=lambda m: (m.pid or 0, m.address)):
        g = groups[-1] if groups else None
        if g is not None and (g[-1].pid, g[-1].writable) == (m.pid, m.writable) and \
                m.address == g[-1].address + (1 << PAGE_SHIFT):
            g.append(m)
        else:
            groups.append([m])
    for g in groups:
        m = g[0]
        where = f"{m.address:#x}" if len(g) == 1 else \
            f"{m.address:#x}..{g[-1].address:#x} ({len(g)} pages)"
        ae = " anon-exclusive" if any(x.anon_exclusive for x in g) else ""
        out.append(f"PTE pid {m.pid} ({m.comm}) {where} {'rw' if m.writable else 'ro'}{ae}")
    return out


def _reached(k: Kernel, devices: list[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Every frame a PTE maps, a GUP call holds, or a device entry points at."""
    parts = [_held_by(k, "FOLL_PIN"), _held_by(k, "FOLL_GET")]
    for p in k.processes.values():
        if not p.alive:
            continue
        for vma in p.mm.vmas:
            present = (vma.pte & PTE.PRESENT) != 0
            parts.append(vma.pfn[present].astype(np.int64))
    parts += [pfns for _, pfns, _ in devices]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _proc_views(k: Kernel) -> list[ProcView]:
    out = []
    for p in k.processes.values():
        st = p.proc_status() if p.alive else {"VmPin": 0, "VmLck": 0}
        view = ProcView(p.pid, p.comm, p.alive, st["VmPin"], st["VmLck"])
        if p.alive:
            mm: MM = p.mm
            for vma in mm.vmas:
                runs, more = _pte_runs(k, p.pid, vma)
                view.vmas.append(VmaView(vma.start, vma.end, _vma_what(vma), runs, more))
        out.append(view)
    return out


def _split_at(runs: list[PteRun], starts: list[int]) -> list[PteRun]:
    """Cut present runs where a frame row begins, so that each page-table row points into
    one frame row (one colour in the pictures, one holder list)."""
    out = []
    for r in runs:
        first = r.pfn
        cuts = [] if first is None or r.state != "present" or r.special else \
            [b - first for b in starts if first < b < first + r.pages]
        if first is None or not cuts:
            out.append(r)
            continue
        pid = r.key.split(":")[0]
        for a, b in zip([0] + cuts, cuts + [r.pages], strict=True):
            addr = r.addr + (a << PAGE_SHIFT)
            out.append(replace(r, key=f"{pid}:{addr:#x}", addr=addr, pages=b - a,
                               pfn=first + a))
    return out


def snapshot(k: Kernel) -> Snapshot:
    """The picture of `k` now (no changes marked: see `diff`)."""
    devices = _device_holders(k)
    frames, more = _frame_runs(k, _reached(k, devices), devices)
    vm = {key: int(v) for key, v in sorted(k.vmstat.items()) if v}
    held = k.vmstat.count("nr_foll_pin_acquired") - k.vmstat.count("nr_foll_pin_released")
    procs = _proc_views(k)
    starts = sorted(f.head for f in frames)
    for pv in procs:
        for v in pv.vmas:
            v.runs = _split_at(v.runs, starts)
    return Snapshot(procs, frames, more, vm, int(held))


def _pt_sig(r: PteRun) -> tuple:
    return (r.pages, r.state, r.pfn, r.writable, r.anon_exclusive, r.soft_dirty, r.huge)


def _frame_sig(f: FrameRun) -> tuple:
    return (f.folios, f.kind, f.refcount, f.mapcount, f.pincount, tuple(f.flags),
            tuple(f.holders))


def diff(prev: Snapshot | None, cur: Snapshot) -> Snapshot:
    """Mark in `cur` every row that is new or changed since `prev`, and list in
    `cur.changes`, for a human, what changed: counters, processes, mappings, frames."""
    if prev is None:
        cur.changes = ["the first picture: everything is new"]
        for pv in cur.procs:
            pv.changed = True
            for v in pv.vmas:
                for r in v.runs:
                    r.changed = True
        for f in cur.frames:
            f.changed = True
        return cur
    changes: list[str] = []
    for key in sorted(set(prev.vmstat) | set(cur.vmstat)):
        a, b = prev.vmstat.get(key, 0), cur.vmstat.get(key, 0)
        if a != b:
            changes.append(f"{key} {a} -> {b} ({b - a:+d})")
    old_procs = {p.pid: p for p in prev.procs}
    old_rows = {r.key: _pt_sig(r) for p in prev.procs for v in p.vmas for r in v.runs}
    new_rows: set[str] = set()
    for pv in cur.procs:
        old = old_procs.get(pv.pid)
        if old is None:
            changes.append(f"new process pid {pv.pid} ({pv.comm})")
            pv.changed = True
        elif (old.alive, old.vm_pin_kb, old.vm_lck_kb) != (pv.alive, pv.vm_pin_kb,
                                                           pv.vm_lck_kb):
            pv.changed = True
            what = ["exited"] if old.alive and not pv.alive else []
            for name, a, b in (("VmPin", old.vm_pin_kb, pv.vm_pin_kb),
                               ("VmLck", old.vm_lck_kb, pv.vm_lck_kb)):
                if a != b and pv.alive:
                    what.append(f"{name} {a} -> {b} kB")
            changes.append(f"pid {pv.pid} ({pv.comm}): {', '.join(what)}")
        moved = 0
        for v in pv.vmas:
            for r in v.runs:
                new_rows.add(r.key)
                if old_rows.get(r.key) != _pt_sig(r):
                    r.changed = True
                    moved += 1
        if moved:
            changes.append(f"pid {pv.pid} ({pv.comm}): {moved} page-table row(s) changed")
    gone = [k for k in old_rows if k not in new_rows]
    if gone:
        changes.append(f"{len(gone)} page-table row(s) gone (unmapped, merged or split)")
    old_frames = {f.key: _frame_sig(f) for f in prev.frames}
    seen = set()
    for f in cur.frames:
        seen.add(f.key)
        if old_frames.get(f.key) != _frame_sig(f):
            f.changed = True
            how = "new" if f.key not in old_frames else "changed"
            changes.append(f"frame {f.key} {how}: refcount {f.refcount}, mapcount "
                           f"{f.mapcount}, pins {f.pincount}")
    left = [key for key in old_frames if key not in seen]
    if left:
        changes.append(f"frame row(s) gone (freed, unmapped, or their run split or merged): "
                       f"{', '.join(left[:6])}{' ...' if len(left) > 6 else ''}")
    cur.changes = changes or ["nothing the picture shows changed"]
    return cur


def kib(pages: int) -> str:
    """A page count as a size a human reads."""
    size = pages << PAGE_SHIFT
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size >> 10} KiB"
