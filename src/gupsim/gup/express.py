"""GUP-fast of the common cases in plain ints: `p.pin_user_pages_fast(addr, n, flags, vec)`.

A driver pinning one page at a time (gup_test -n 1, a 4 KiB io_uring buffer), a few
(-n 16) or a range of huge pages went through some 150 Python calls and 40 numpy
operations on the general path: argument binding, the walk over PFN arrays, folio runs,
the pages-array writer, the call record. The kernel's gup_fast_fallback() for such a
range is a few PTE reads, the folio tests and one atomic per folio; this module is that,
for the common cases only: present PTEs in one VMA that pass every GUP-fast test (one
page of any folio, up to `lean.SHORT` pages of order-0 folios, or a range that huge
leaves map whole), on a machine of the newest era, with no race hook waiting. A write
pin of a few pages that GUP-fast would refuse at the first page because they are not
mapped yet, or mapped read-only (a fork's shared pages), and the *_unlocked entries of
a few pages, take the slow path's faults first (`_fault_in()`: the same mm functions, in
the same order) and then the pages. Anything else (a refusal, an unusual flag, a large
folio among several pages, a refcount near overflow, a list as pages) answers None
before changing anything, and the caller takes the general path, which decides and
warns. The result is the general path's, state for
state: `tests/gup/test_lean_paths.py` runs random programs with it (`lean.ENABLED`) and
without and compares the machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import lean
from ..check.runs import Runs
from ..constants import PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, TASK_SIZE
from ..eras import NEWEST_ERA
from ..memory import GUP_PIN_COUNTING_BIAS, PG, Kind, MemMap, PageArray
from ..memory.pagearray import fill_runs, stamp, write_pfns
from ..mm import MM, MMF, VM, VMA
from ..mm.fault import anon_orders, populate_anon_bulk, wp_copy_run
from ..mm.mm_struct import mmap_read_lock, mmap_read_unlock
from ..mm.vma import PTE
from ..observe import gup_call_ended
from . import fast
from .fast import folio_allowed_one, folios_pass
from .flags import (
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_TOUCH,
    FOLL_UNLOCKABLE,
    FOLL_WRITE,
    is_valid_gup_args,
)
from .grab import ACQUIRED, folio_runs
from .longterm import longterm_pinnable_one
from .slow import check_vma_flags, faultin_page
from .state import PATH_FALLBACK, PATH_FAST, PATH_SLOW, GupCall, GupState, _state_of

if TYPE_CHECKING:
    from .entry import EntryPoint

_REFERENCED = int(PG.referenced)
_ZERO, _HUGE_ZERO = int(Kind.ZERO), int(Kind.HUGE_ZERO)
# the caller's flags the express path takes; anything else goes the general way
_CALLER_FLAGS = FOLL_WRITE | FOLL_LONGTERM
_PAGE_MASK = ~(PAGE_SIZE - 1)
_NEWEST = NEWEST_ERA.version        # the era whose rules the checks below follow
_NO_WRAP = (1 << 31) - GUP_PIN_COUNTING_BIAS   # counts below this take a pin without wrapping
_WRITE_CLEAN = PTE.WRITE | PTE.DIRTY
_ANON = int(Kind.ANON)
_PMD_PAGES = 1 << PMD_ORDER
# a few order-0 pages' folio runs, one per entry: (start index, head, length), and their
# orders; read-only, shared by every record that takes them
_RUN_STARTS = np.arange(lean.SHORT, dtype=np.int64)
_RUN_ONES = np.ones(lean.SHORT, dtype=np.int64)
_ORDER0 = np.zeros(lean.SHORT, dtype=np.int8)
for _a in (_RUN_STARTS, _RUN_ONES, _ORDER0):
    _a.flags.writeable = False
# the package's own frames from a taking function outward: it (_one, _short, _leaves),
# gup_fast_express() and the Process method that called it (entry.py); the sanitizer's
# walk for the user's call site starts beyond them (tests/test_call_sites.py checks it)
_CALLERS = 3


def gup_fast_express(ep: EntryPoint, proc: Any, start: object, nr_pages: object,
                 gup_flags: object, pages: object) -> int | None:
    """`ep` (a GUP-fast entry point, or a *_unlocked one: `ep.fast` tells) of `nr_pages`
    pages for process `proc`: the count when the pages were taken here, None when the
    general path must decide (nothing was changed but faults the slow path takes too)."""
    if (type(nr_pages) is not int or nr_pages < 1
            or type(start) is not int or type(gup_flags) is not int
            or type(pages) is not PageArray or len(pages) < nr_pages
            or gup_flags & ~_CALLER_FLAGS or not lean.ENABLED
            or not 0 <= start < TASK_SIZE - (nr_pages + 1) * PAGE_SIZE):
        return None
    mm = proc.mm
    mem = mm.mem
    st = _state_of(mem)
    if st is None or mem.era.version != _NEWEST or mm.write_protect_seq & 1 \
            or st.race_hooks and any(st.race_hooks.values()):
        return None
    vma = mm.find_vma(start)
    if vma is None or start < vma.start or not vma.flags & VM.ACCESS_FLAGS:
        return None
    if (start & _PAGE_MASK) + (nr_pages << PAGE_SHIFT) > vma.end:
        return None                     # the range goes on into another VMA
    i = (start - vma.start) >> PAGE_SHIFT
    pin = ep.adds & FOLL_PIN
    if not pin and gup_flags & FOLL_LONGTERM:
        return None                     # invalid: is_valid_gup_args() warns
    path = PATH_FAST
    pte = vma.pte.item(i)
    if not ep.fast or nr_pages <= lean.SHORT and not (   # GUP-fast takes the first page?
            pte & PTE.PRESENT and not pte & PTE.SPECIAL
            and (pte & PTE.WRITE or not (gup_flags & FOLL_WRITE or pin))):
        # the slow path's part: GUP-fast would take nothing (the first page is not
        # usable yet), or the entry has no GUP-fast
        if nr_pages > lean.SHORT or not _fault_in(ep, st, mm, vma, i, nr_pages, gup_flags):
            return None
        path = PATH_FALLBACK if ep.fast else PATH_SLOW
    if nr_pages == 1:
        return _one(ep, st, mm, vma, i, start, gup_flags, pages, path)
    if nr_pages <= lean.SHORT:
        return _short(ep, st, mm, vma, i, start, nr_pages, gup_flags, pages, path)
    return _leaves(ep, st, mm, vma, i, start, nr_pages, gup_flags, pages)


def _fault_in(ep: EntryPoint, st: GupState, mm: MM, vma: VMA, i: int, n: int,
              gup_flags: int) -> bool:
    """The write faults the slow path takes before it grabs [i, i+n) of a private
    anonymous VMA, in its order and through the same functions (`wp_copy_run()` for runs
    of read-only pages: a fork's shared pages, what clear_refs write-protected;
    `populate_anon_bulk()` for runs of empty entries, `faultin_page()` for one), so that
    the pages can then be taken as GUP-fast takes them. True when every entry is usable
    afterwards; False, with nothing changed, unless every entry is empty or maps an
    order-0 anonymous folio (read-only, or writable and dirty: FOLL_TOUCH would dirty
    the folio of a clean one), no THP size applies, no notifier watches the mm, the
    memory for a new page per entry is free, and a long-term pin finds every mapped page
    pinnable (new pages come from outside ZONE_MOVABLE under memalloc_pin)."""
    env = st.env
    mem = mm.mem
    longterm = gup_flags & FOLL_LONGTERM
    flags = gup_flags | ep.implies | FOLL_TOUCH | FOLL_UNLOCKABLE   # as the slow path walks
    if (not gup_flags & FOLL_WRITE or vma.file is not None or vma.is_shared
            or vma.is_hugetlb or not vma.flags & VM.WRITE
            or mm.notifier_subscriptions is not None or anon_orders(env, vma)
            or check_vma_flags(vma, flags, mem.era)):
        return False
    ptes = vma.pte[i:i + n].tolist()
    if any(e & PTE.NOT_SMALL or e & _WRITE_CLEAN == PTE.WRITE for e in ptes):
        return False
    mapped = vma.pfn[i:i + n].astype(np.int64)
    if 0 in ptes:
        mapped = mapped[[j for j, e in enumerate(ptes) if e]]
    if len(mapped):
        heads = mapped.tolist()
        if any(mem.head_off.take(mapped).tolist()) or any(mem.order.take(mapped).tolist()) \
                or any(k != _ANON for k in mem.kind.take(mapped).tolist()) \
                or longterm and not all(longterm_pinnable_one(mem, h, _ANON) for h in heads):
            return False
    todo = [j for j, e in enumerate(ptes) if not e & PTE.WRITE]
    if not todo:
        return True
    saved = env.memalloc_pin
    env.memalloc_pin = saved or bool(longterm)
    try:
        if sum(r.nr_free for r in env.alloc.regions(env.movable_alloc)) < len(todo):
            return False
        mmap_read_lock(mm)
        try:
            return _faults(env, mm, vma, i + todo[0], i + n, flags)
        finally:
            mmap_read_unlock(mm)
    finally:
        env.memalloc_pin = saved


def _faults(env: Any, mm: MM, vma: VMA, j: int, end: int, flags: int) -> bool:
    """`_fault_in()`'s faults from entry j on; False if one did not make its entries
    usable (memory ran out after all: the general path goes on from there)."""
    while j < end:
        e = vma.pte.item(j)
        if e & PTE.WRITE:
            j += 1
        elif e:
            done = wp_copy_run(env, mm, vma, j, end, False)
            if not done:
                return False
            j += done
        else:
            run = 1
            while j + run < end and vma.pte.item(j + run) == 0:
                run += 1
            if run > 1:
                populate_anon_bulk(env, mm, vma, j, j + run)
            elif faultin_page(env, mm, vma, vma.addr_of(j), flags, False, [1]):
                return False
            if not all(e & PTE.WRITE for e in vma.pte[j:j + run].tolist()):
                return False
            j += run
    return True


def _one(ep: EntryPoint, st: GupState, mm: MM, vma: VMA, i: int, start: int,
         gup_flags: int, pages: PageArray, path: str = PATH_FAST) -> int | None:
    """One page, any folio size (`path`: the general path's record of the call)."""
    mem = mm.mem
    pte = vma.pte.item(i)       # .item(): a Python int, no numpy scalar in between
    write, longterm = gup_flags & FOLL_WRITE, gup_flags & FOLL_LONGTERM
    pin = ep.adds & FOLL_PIN
    if not pte & PTE.PRESENT or pte & PTE.SPECIAL or (write or pin) and not pte & PTE.WRITE:
        return None             # refused, or a read pin that may need unsharing first
    pfn = vma.pfn.item(i)
    head = pfn - mem.head_off.item(pfn)
    kind = mem.kind.item(head)
    rc = mem.refcount.item(head)
    large = mem.order.item(head) > 0
    if kind in (_ZERO, _HUGE_ZERO) or not 0 < rc < _NO_WRAP \
            or large and mem.pincount.item(head) >= _NO_WRAP \
            or longterm and not longterm_pinnable_one(mem, head, kind) \
            or not folio_allowed_one(mem, head, kind, bool(pin and write and longterm)):
        return None
    flags = _valid_flags(ep, mem, pages, gup_flags)
    if flags is None:
        return None
    # taken: what gup_fast_fallback(), gup_fast() and gup_call() do for this page
    _mark_pinned(mm, pin)
    # grab.py's _add_refs_one() as the newest era has it, with no wrap possible
    if not pin:
        mem.refcount[head] = rc + 1
    elif large:                         # an exact _pincount, and one reference per pin
        mem.refcount[head] = rc + 1
        mem.pincount[head] += 1
    else:
        mem.refcount[head] = rc + GUP_PIN_COUNTING_BIAS
    if pin:
        mem.vmstat[ACQUIRED] += 1
    write_pfns(pages, 0, pfn, mem)
    fl = mem.flags.item(head)
    if not fl & _REFERENCED:
        mem.flags[head] = fl | _REFERENCED
    st.calls.append(GupCall(ep.name, start, 1, flags, path, fast=1, ret=1, express=True)
                    if path == PATH_FAST else _call(ep, start, 1, flags, path))
    if st.sanitizer is not None:
        stamp(pages, st.sanitizer.on_acquire_one(pfn, head, _taken(flags), ep.name, mm,
                                                 _CALLERS), 1)
    gup_call_ended(mem)
    return 1


def _short(ep: EntryPoint, st: GupState, mm: MM, vma: VMA, i: int, start: int, n: int,
           gup_flags: int, pages: PageArray, path: str = PATH_FAST) -> int | None:
    """A few pages, each an order-0 folio, in one VMA: checked in plain ints, counted
    with one array update."""
    mem = mm.mem
    pin = ep.adds & FOLL_PIN
    need = PTE.PRESENT | (PTE.WRITE if gup_flags & FOLL_WRITE or pin else 0)
    mask = need | PTE.SPECIAL | PTE.LEAF
    if vma.pte.item(i) & mask != need or \
            {e & mask for e in vma.pte[i:i + n].tolist()} != {need}:   # a set: one call
        return None
    pfns = vma.pfn[i:i + n].astype(np.int64)
    if any(mem.head_off.take(pfns).tolist()) or any(mem.order.take(pfns).tolist()):
        return None                     # a page of a large folio: the general path
    hl, kinds = pfns.tolist(), mem.kind.take(pfns).tolist()
    rcs = mem.refcount.take(pfns).tolist()
    if min(rcs) <= 0 or max(rcs) >= _NO_WRAP - n * GUP_PIN_COUNTING_BIAS:
        return None
    flags = _allowed_flags(ep, mem, pages, hl, kinds, gup_flags)
    if flags is None:
        return None
    _mark_pinned(mm, pin)
    add = mem.refcount.dtype.type(GUP_PIN_COUNTING_BIAS if pin else 1)
    distinct = lean.distinct(hl)        # else a page mapped twice (KSM): counted twice
    if distinct:
        mem.refcount[pfns] += add
    else:
        np.add.at(mem.refcount, pfns, add)
    if pin:
        mem.vmstat[ACQUIRED] += n
    write_pfns(pages, 0, pfns, mem)
    mem.flags[pfns] |= _REFERENCED
    st.calls.append(_call(ep, start, n, flags, path))
    if st.sanitizer is not None:
        # each page its own folio, none the zero page (_allowed_flags()): the runs are
        # one per entry unless a page repeats, the bounds the lowest and highest frame
        runs = (_RUN_STARTS[:n], pfns, _RUN_ONES[:n]) if distinct \
            else folio_runs(mem, pfns, pfns)
        stamp(pages, st.sanitizer.on_acquire(pfns, _taken(flags), ep.name, mm, runs,
                                             orders=_ORDER0[:len(runs[1])],
                                             bounds=(min(hl), max(hl)),
                                             callers=_CALLERS), n)
    gup_call_ended(mem)
    return n


def _leaves(ep: EntryPoint, st: GupState, mm: MM, vma: VMA, i: int, start: int, n: int,
            gup_flags: int, pages: PageArray) -> int | None:
    """A range that PMD or PUD leaves map whole (THP, hugetlb): each leaf checked and
    counted once, as gup_fast_pmd_leaf() does, the folios' counts in one update."""
    if n <= _PMD_PAGES:
        return None                     # not a range of leaves (fast.leaf_starts())
    mem = mm.mem
    pin = ep.adds & FOLL_PIN
    need = PTE.PRESENT | (PTE.WRITE if gup_flags & FOLL_WRITE or pin else 0)
    # the first entry of each leaf part: entry i and every PMD boundary after it, read
    # through strided views (no index array)
    first = fast.pmd_boundary(vma, i)
    ptes = vma.pte[first:i + n:_PMD_PAGES]
    every = int(np.bitwise_and.reduce(ptes))      # the bits every entry has
    some = int(np.bitwise_or.reduce(ptes))        # the bits some entry has
    firsts = vma.pfn[first:i + n:_PMD_PAGES].astype(np.int64)
    offs = np.arange(first - i, n, _PMD_PAGES, dtype=np.int64)
    if first != i:
        e = vma.pte.item(i)
        every, some = every & e, some | e
        firsts = np.concatenate(([vma.pfn.item(i)], firsts))
        offs = np.concatenate(([0], offs))
    if every & need != need or some & PTE.SPECIAL or not every & PTE.LEAF:
        return None                     # not all leaves, or GUP-fast refuses one
    heads = firsts - mem.head_off.take(firsts)
    pfn_runs = Runs(offs, firsts, n, 1, firsts.dtype)   # a leaf maps consecutive frames
    hl = heads.tolist()
    if not lean.distinct(hl):           # the PMD parts of one PUD leaf: one folio
        starts_folio = np.empty(len(heads), dtype=bool)
        starts_folio[0] = True
        np.not_equal(heads[1:], heads[:-1], out=starts_folio[1:])
        offs, heads = offs[starts_folio], heads[starts_folio]
        hl = heads.tolist()
        if not lean.distinct(hl):
            return None                 # a folio in two places: the general path counts
    lengths = np.empty(len(offs), dtype=np.int64)     # each leaf part up to the next
    np.subtract(offs[1:], offs[:-1], out=lengths[:-1])
    lengths[-1] = n - offs.item(-1)
    kinds = mem.kind.take(heads).tolist()
    refs = mem.refcount.take(heads).tolist()
    orders = mem.order.take(heads)
    large = orders.tolist()
    if min(large) == 0 or min(refs) <= 0 or max(refs) >= _NO_WRAP - n \
            or max(mem.pincount.take(heads).tolist()) >= _NO_WRAP - n:
        return None
    flags = _allowed_flags(ep, mem, pages, hl, kinds, gup_flags)
    if flags is None:
        return None
    _mark_pinned(mm, pin)
    counts = lengths.astype(mem.refcount.dtype)
    mem.refcount[heads] += counts       # large folios: one reference per pin, and
    if pin:                             # an exact _pincount
        mem.pincount[heads] += counts.astype(mem.pincount.dtype)
        mem.vmstat[ACQUIRED] += n
    fill_runs(pages, pfn_runs, mem)     # the entries are made when first read
    mem.flags[heads] |= _REFERENCED
    st.calls.append(GupCall(ep.name, start, n, flags, PATH_FAST, fast=n, ret=n,
                            leaves=True, express=True))
    if st.sanitizer is not None:
        # no zero page among the folios (_allowed_flags()): the record's bounds are
        # the lowest head and the highest head's folio end
        bounds = min(hl), max(hl) + (1 << max(large)) - 1
        stamp(pages, st.sanitizer.on_acquire(None, _taken(flags), ep.name, mm,
                                             (offs, heads, lengths), pfn_runs,
                                             orders=orders, bounds=bounds,
                                             callers=_CALLERS), n)
    gup_call_ended(mem)
    return n


def _call(ep: EntryPoint, start: int, n: int, flags: int, path: str) -> GupCall:
    """The record the general path leaves for a call that took all `n` pages by `path`."""
    if path == PATH_FAST:
        return GupCall(ep.name, start, n, flags, path, fast=n, ret=n, express=True)
    return GupCall(ep.name, start, n, flags, path, fast=0 if path == PATH_FALLBACK else None,
                   slow=n, ret=n, express=True)


def _allowed_flags(ep: EntryPoint, mem: MemMap, pages: PageArray, heads: list[int],
                   kinds: list[int], gup_flags: int) -> int | None:
    """The call's validated flags when every folio passes GUP-fast's tests (not a zero
    page: their entries are special, the general walk decides; long-term pinnable where
    asked; gup_fast_folio_allowed()), a run of one kind told from its lowest and highest
    head (`folios_pass()`); None otherwise."""
    longterm = gup_flags & FOLL_LONGTERM
    file_write = bool(ep.adds & FOLL_PIN and gup_flags & FOLL_WRITE and longterm)
    if not (folios_pass(mem, heads, kinds, longterm, file_write) or all(
            k not in (_ZERO, _HUGE_ZERO) and (not longterm or longterm_pinnable_one(mem, h, k))
            and folio_allowed_one(mem, h, k, file_write)
            for h, k in zip(heads, kinds, strict=True))):
        return None
    return _valid_flags(ep, mem, pages, gup_flags)


# is_valid_gup_args()'s answer for (caller's flags with the entry's implied ones, the
# entry's added ones), where it accepted them: with a pages array and no `locked`, as
# every express call has, the answer depends on nothing else, and an accepted call warns
# of nothing; so it is worked out once per pair instead of on every call
_VALID: dict[tuple[int, int], int] = {}


def _valid_flags(ep: EntryPoint, mem: MemMap, pages: PageArray, gup_flags: int) -> int | None:
    """is_valid_gup_args() of an express call (a pages array, no `locked`)."""
    key = (gup_flags | ep.implies, ep.adds)
    flags = _VALID.get(key)
    if flags is None:
        flags = is_valid_gup_args(mem.warnings, pages, None, key[0], key[1])
        if flags is not None:
            _VALID[key] = flags
    return flags


def _mark_pinned(mm: MM, pin: int) -> None:
    """MMF_HAS_PINNED, set by a pin before its walk (gup_fast_fallback())."""
    if pin and not mm.flags & MMF.HAS_PINNED:
        mm.flags |= MMF.HAS_PINNED


def _taken(flags: int) -> int:
    """The flags the sanitizer records: FOLL_GET for a call that took references."""
    return flags if flags & FOLL_PIN else flags | FOLL_GET
