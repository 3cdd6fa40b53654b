"""`k.explain(page_or_pfn)`: everything that holds a frame, and what each holder means.

For SREs asking "why won't this page move?": the folio's state (order, refcount,
mapcount, pincount or pin bias, flags, zone, CMA), then every holder the model can name
(PTE mappings through the rmap, the page-cache entry, GUP references and pins with the
call site that took them, from the sanitizer), the references nobody accounts for, and
the consequence for migration, compaction, CMA and memory offline, writeback and fork.

`why_unmovable(k, start_pfn, end_pfn)` lists, per folio of a range that cannot migrate,
the reason and the holders' call sites, grouped by call site the way Android's
page_pinner report groups failed migrations by the stack that pinned them.

Simplification: device mappings of drivers (vfio, RDMA) appear as the pins their
drivers took; the drivers' own tables are not read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import FOLL_LONGTERM, PAGE_SHIFT
from ..memory import GUP_PIN_COUNTING_BIAS, PG, Kind, Page, Zone
from ..memory.page import maybe_dma_pinned_pfns
from ..mm.mm_struct import MMF
from ..mm.rmap import mappings_of
from ..mm.vma import PTE

if TYPE_CHECKING:
    from ..kernel import Kernel

_UNMOVABLE = (Kind.FSDAX, Kind.ZERO, Kind.HUGE_ZERO, Kind.RESERVED, Kind.SECRETMEM)


@dataclass(frozen=True)
class Mapping:
    """One PTE that maps a page of the folio."""

    pid: int | None
    comm: str
    address: int
    pfn: int
    writable: bool
    anon_exclusive: bool


@dataclass(frozen=True)
class GupHolder:
    """References or pins one GUP call holds on this folio, and where it was made."""

    how: str          # "FOLL_PIN" or "FOLL_GET"
    call: str
    site: str
    longterm: bool
    pages: int        # entries of the call that fall in this folio


@dataclass
class Explanation:
    """What holds one frame and what that means; `str()` is the text for a human."""

    pfn: int
    head: int
    order: int
    kind: str
    refcount: int
    mapcount: int
    pincount: int
    maybe_dma_pinned: bool
    flags: list[str]
    zone: str
    cma: bool
    mappings: list[Mapping] = field(default_factory=list)
    page_cache: dict[str, int] | None = None
    gup: list[GupHolder] = field(default_factory=list)
    isolated: bool = False
    unaccounted_refs: int = 0
    consequences: dict[str, str] = field(default_factory=dict)
    movable: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The explanation as plain JSON-able data."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"pfn {self.pfn:#x}: folio {self.head:#x} order {self.order} {self.kind}, "
                 f"refcount {self.refcount}, mapcount {self.mapcount}, pincount "
                 f"{self.pincount}, maybe_dma_pinned {self.maybe_dma_pinned}",
                 f"  zone {self.zone}{' (CMA)' if self.cma else ''}; flags "
                 f"{'|'.join(self.flags) or '-'}", "holders:"]
        for m in self.mappings:
            who = f"pid {m.pid} ({m.comm})" if m.pid is not None else m.comm
            lines.append(f"  PTE  {who} at {m.address:#x} -> pfn {m.pfn:#x}"
                         f"{' writable' if m.writable else ' read-only'}"
                         f"{' anon-exclusive' if m.anon_exclusive else ''}")
        if self.page_cache is not None:
            lines.append(f"  page cache: mapping {self.page_cache['mapping']} index "
                         f"{self.page_cache['index']:#x}")
        for g in self.gup:
            lines.append(f"  {g.how}{' FOLL_LONGTERM' if g.longterm else ''} x{g.pages} "
                         f"by {g.call}() at {g.site}")
        if self.isolated:
            lines.append("  isolated by migration/compaction (1 reference)")
        if self.unaccounted_refs:
            lines.append(f"  {self.unaccounted_refs} reference(s) not accounted for "
                         "(kernel users outside GUP, or leaked)")
        if len(lines) == 3:
            lines.append("  none")
        lines.append("consequences:")
        lines += [f"  {k}: {v}" for k, v in self.consequences.items()]
        return "\n".join(lines)


def _pfn_of(k: Kernel, page_or_pfn: Page | int) -> int:
    if isinstance(page_or_pfn, Page):
        return page_or_pfn.pfn
    if isinstance(page_or_pfn, bool) or not isinstance(page_or_pfn, int | np.integer):
        raise TypeError(f"explain(): give a Page or a PFN (int), not {page_or_pfn!r}")
    pfn = int(page_or_pfn)
    if not 0 <= pfn < k.mem.nr_pages:
        raise ValueError(f"explain(): pfn {pfn:#x} is outside memory "
                         f"(0..{k.mem.nr_pages - 1:#x})")
    return pfn


def _holders_of(k: Kernel, head: int, n: int) -> list[GupHolder]:
    out = []
    for o in k.sanitizer.outstanding():
        inside = int(((o.pfns >= head) & (o.pfns < head + n)).sum())
        if inside:
            out.append(GupHolder(o.how, o.call, o.site, bool(o.flags & FOLL_LONGTERM), inside))
    return out


def explain(k: Kernel, page_or_pfn: Page | int) -> Explanation:
    """Every holder of the frame and what each means for migration, CMA, writeback, fork."""
    mem = k.mem
    pfn = _pfn_of(k, page_or_pfn)
    head = int(mem.head_of(pfn))
    kind = Kind(int(mem.kind[head]))
    n = mem.nr_pages_of(head) if kind != Kind.FREE else 1
    order = int(mem.order[head])
    ptes = int(mem.mapcount[head:head + n].sum()) + int(mem.entire_mapcount[head])
    pinned = bool(maybe_dma_pinned_pfns(mem, np.array([head]))[0]) if kind != Kind.FREE \
        else False
    bits = int(mem.flags[head])
    ex = Explanation(pfn, head, order, kind.name, int(mem.refcount[head]), ptes,
                     int(mem.pincount[head]), pinned, [f.name for f in PG if bits & f],
                     Zone(int(mem.zone_of(head))).name, bool(mem.is_cma(head)))
    if kind == Kind.FREE:
        ex.consequences["state"] = "free: nothing holds it; it can be allocated"
        return ex
    procs = {id(p.mm): p for p in k.processes.values()}
    for mm, vma, idx in mappings_of(k.env, head):
        p = procs.get(id(mm))
        for i in idx.tolist():
            f = int(vma.pfn[i])
            ex.mappings.append(Mapping(p.pid if p else None, p.comm if p else "<kernel mm>",
                                       vma.addr_of(i), f, bool(int(vma.pte[i]) & PTE.WRITE),
                                       mem.test(f, PG.anon_exclusive)))
    file_backed = kind not in (Kind.ANON, Kind.KSM) and bool(mem.mapping[head])
    if file_backed:
        ex.page_cache = {"mapping": int(mem.mapping[head]), "index": int(mem.index[head])}
    ex.gup = _holders_of(k, head, n)
    ex.isolated = mem.test(head, PG.isolated)
    pins = sum(g.pages for g in ex.gup if g.how == "FOLL_PIN")
    gets = sum(g.pages for g in ex.gup if g.how == "FOLL_GET")
    pin_refs = pins if order > 0 else pins * GUP_PIN_COUNTING_BIAS
    known = ptes + (n if file_backed else 0) + pin_refs + gets + int(ex.isolated)
    ex.unaccounted_refs = ex.refcount - known
    _consequences(k, ex, kind, pins, gets, file_backed)
    return ex


def _blockers(ex: Explanation) -> str:
    parts = [f"{g.how} x{g.pages} by {g.call}() at {g.site}" for g in ex.gup]
    if ex.isolated:
        parts.append("isolated by another migration")
    if ex.unaccounted_refs > 0:
        parts.append(f"{ex.unaccounted_refs} unaccounted reference(s)")
    return "; ".join(parts)


def _consequences(k: Kernel, ex: Explanation, kind: Kind, pins: int, gets: int,
                  file_backed: bool) -> None:
    """Fill ex.consequences and ex.movable from the holders."""
    c = ex.consequences
    extra = pins or gets or ex.unaccounted_refs > 0 or ex.isolated
    if kind in _UNMOVABLE:
        ex.movable = False
        c["migration"] = f"never: {kind.name} folios do not migrate"
    elif extra:
        ex.movable = False
        c["migration"] = ("fails with -EAGAIN: the refcount freeze sees references beyond "
                          f"the mappings and page cache ({_blockers(ex)})")
    elif not ex.mappings and not file_backed and kind in (Kind.ANON, Kind.KSM):
        c["migration"] = "possible (no mapping left: it is only waiting to be freed)"
    else:
        c["migration"] = ("possible: every reference is a mapping"
                          f"{' or the page cache' if file_backed else ''}; PTEs are "
                          "re-pointed to the copy")
    c["compaction"] = ("skipped: anon folio with references beyond its mappings is not "
                       "even isolated" if kind in (Kind.ANON, Kind.KSM) and extra
                       else c["migration"])
    where = "CMA" if ex.cma else "ZONE_MOVABLE" if ex.zone == "MOVABLE" else ""
    if where:
        c["cma_offline"] = (f"this {where} frame blocks alloc_contig_range()/offline_pages() "
                            "(-EBUSY) while held" if not ex.movable else
                            f"this {where} frame can be cleared for CMA allocation or "
                            "memory offline")
        if any(g.longterm for g in ex.gup):
            c["cma_offline"] += ("; a FOLL_LONGTERM pin here is a bug: long-term pins "
                                 "migrate out of CMA/ZONE_MOVABLE first")
    else:
        c["cma_offline"] = (f"not in CMA or ZONE_MOVABLE ({ex.zone}): offline of this "
                            "block " + ("fails while it is held" if not ex.movable
                                        else "would migrate it"))
    if file_backed:
        c["writeback"] = ("written back like any dirty folio: core writeback does not "
                          "consult folio_maybe_dma_pinned(), so DMA after folio_mkclean() "
                          "leaves it clean but changed" if ex.maybe_dma_pinned else
                          "ordinary writeback: folio_mkclean() write-protects the PTEs")
    else:
        c["writeback"] = ("not page cache; reclaim will not unmap an anon-exclusive "
                          "maybe-pinned page" if ex.maybe_dma_pinned else
                          "not page cache (anonymous): swap only")
    anon = kind in (Kind.ANON, Kind.KSM)
    forks = []
    for m in ex.mappings:
        p = k.processes.get(m.pid) if m.pid is not None else None
        has_pinned = p is not None and bool(p.mm.flags & MMF.HAS_PINNED)
        if anon and m.anon_exclusive and ex.maybe_dma_pinned and has_pinned:
            forks.append(f"fork of pid {m.pid}: copied for the child at fork "
                         "(maybe pinned, in an mm that has pinned)")
        elif anon:
            forks.append(f"fork of pid {m.pid}: shared copy-on-write with the child")
        else:
            forks.append(f"fork of pid {m.pid}: shared (file mapping)")
    c["fork"] = "; ".join(forks) if forks else "not mapped: fork does not see it"


@dataclass(frozen=True)
class Unmovable:
    """One folio of a range that cannot migrate, and why."""

    head: int
    pages: int
    reason: str
    sites: tuple[str, ...]


def why_unmovable(k: Kernel, start_pfn: int, end_pfn: int) -> dict[str, list[Unmovable]]:
    """Per folio of [start_pfn, end_pfn) that cannot migrate: the reason and the call
    sites holding it, grouped by call site (a page_pinner-style report)."""
    if not (isinstance(start_pfn, int) and isinstance(end_pfn, int)) or \
            not 0 <= start_pfn < end_pfn <= k.mem.nr_pages:
        raise ValueError(f"why_unmovable(): give 0 <= start_pfn < end_pfn <= "
                         f"{k.mem.nr_pages:#x}, not {start_pfn!r}, {end_pfn!r}")
    mem = k.mem
    pfns = np.arange(start_pfn, end_pfn, dtype=np.int64)
    heads = np.unique(mem.head_of(pfns))
    heads = heads[mem.kind[heads] != Kind.FREE]
    out: dict[str, list[Unmovable]] = {}
    for h in heads.tolist():
        ex = explain(k, int(h))
        if ex.movable:
            continue
        sites = tuple(g.site for g in ex.gup) or ("<no GUP holder>",)
        u = Unmovable(int(h), 1 << ex.order, ex.consequences["migration"], sites)
        for s in sites:
            out.setdefault(s, []).append(u)
    return out


def render_unmovable(report: dict[str, list[Unmovable]]) -> str:
    """The report as text: per call site, the folios it keeps from migrating."""
    if not report:
        return "every in-use folio of the range can migrate"
    lines = []
    for site, items in sorted(report.items(), key=lambda kv: -sum(u.pages for u in kv[1])):
        total = sum(u.pages for u in items)
        lines.append(f"{site}: {len(items)} folio(s), {total} page(s), "
                     f"{total << PAGE_SHIFT >> 10} KiB")
        lines += [f"  pfn {u.head:#x} x{u.pages}: {u.reason}" for u in items]
    return "\n".join(lines)
