"""Taking and dropping GUP references and pins (spec 3.2, 3.3).

A pin of a small folio adds GUP_PIN_COUNTING_BIAS (1024) to its refcount; a large
folio keeps an exact `_pincount` and each pin adds 1 to both counts. The shared zero
page is never pin-counted. `nr_foll_pin_acquired` / `nr_foll_pin_released` count base
pages. Bulk forms work on PFN arrays: consecutive entries of one folio form a run and
each run is one `np.add.at` / `np.subtract.at` update, never a Python loop per page.
The refcount has 32-bit signed semantics: a wrap makes it negative, and the next grab
is refused with -ENOMEM (there is no pre-check, as in the kernel).
In 5.6 (before `pin-counting-bias`) FOLL_PIN was a placeholder: a pin is one plain
reference and unpin a put_page(), so nothing can tell a pinned page from a referenced one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import lean
from ..check.args import check_count, check_flag, check_folio, check_folios, check_page, check_pages
from ..constants import EINVAL, ENOMEM
from ..eras import NEWEST_ERA
from ..lean import amax, amin, has_null, lo_hi, total
from ..memory import GUP_PIN_COUNTING_BIAS, Allocator, Folio, Kind, MemMap, Page, PageArray
from ..memory.alloc import increasing
from ..memory.memmap import add_at
from ..memory.pagearray import NULL, pfns_of, stamp_of
from .flags import FOLL_GET, FOLL_PIN
from .pages import FolioRuns, machine_of
from .state import _state_of, gup_state

# plain ints for array comparisons: numpy probes an IntEnum operand's class for
# __array_ufunc__ through EnumType.__getattr__, about 2 us per comparison
_FREE, _ZERO_PAGE, _HUGE_ZERO = int(Kind.FREE), int(Kind.ZERO), int(Kind.HUGE_ZERO)
_ZERO1 = np.zeros(1, dtype=np.int64)
_ONE1 = np.ones(1, dtype=np.int64)
_NONE = np.zeros(0, dtype=np.int64)
_ZERO1.flags.writeable = _ONE1.flags.writeable = _NONE.flags.writeable = False

_NEWEST = NEWEST_ERA.version        # the era whose rules _unpin_express() follows
# the package's own frames from _unpin_express() outward: it and unpin_user_pages(); the
# sanitizer's walk for the user's call site starts beyond them (a Process or Kernel
# method in between is walked as usual; tests/test_call_sites.py checks both)
_CALLERS = 2
ACQUIRED = "nr_foll_pin_acquired"
RELEASED = "nr_foll_pin_released"
_S32 = 1 << 31


def _wrap_s32(mem: MemMap, heads: np.ndarray) -> None:
    """atomic_t semantics: a refcount pushed past INT_MAX wraps to a negative value."""
    r = mem.refcount[heads]
    if len(r) and amax(r) >= _S32:
        over = r >= _S32
        mem.refcount[heads[over]] = ((r[over] + _S32) % (1 << 32)) - _S32


Runs = FolioRuns                # (start index, head PFN, length) of runs


def clip_runs(runs: Runs, n: int) -> Runs:
    """The runs of the first `n` entries (n at most what `runs` cover)."""
    starts, heads, lengths = runs
    m = int(np.searchsorted(starts, n))          # runs that start before entry n
    if m == len(starts) and (m == 0 or int(starts[-1] + lengths[-1]) == n):
        return runs
    lengths = lengths[:m].copy()
    if m:
        lengths[-1] = n - int(starts[m - 1])
    return starts[:m], heads[:m], lengths


def folio_runs(mem: MemMap, pfns: np.ndarray, heads: np.ndarray | None = None) -> Runs:
    """(run start index, run head PFN, run length) of consecutive same-folio entries;
    `heads` (the folio of each entry) when the caller has them already."""
    if len(pfns) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    if heads is None:
        heads = mem.head_of(pfns).astype(np.int64, copy=False)
    if len(heads) == 1:                     # a one-page call: skip the run search
        return _ZERO1, heads, _ONE1
    # numpy's C entry points only (no np.diff / np.flatnonzero wrappers): this runs on
    # every pin and unpin, and tests count its Python calls
    change = np.empty(len(heads), dtype=bool)
    change[0] = True
    np.not_equal(heads[1:], heads[:-1], out=change[1:])
    starts = change.nonzero()[0]
    ends = np.empty(len(starts), dtype=np.int64)
    ends[:-1] = starts[1:]
    ends[-1] = len(pfns)
    return starts, heads[starts], ends - starts


def _by_size(mem: MemMap, heads: np.ndarray, refs: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(large heads, their refs, small heads, their refs): a large folio counts pins in
    `_pincount`, a small one by the bias. No copies when all are of one size (usual)."""
    orders = mem.order[heads]
    if not len(orders) or not amax(orders):
        return _NONE, _NONE, heads, refs
    large = orders > 0
    if amin(orders):
        return heads, refs, _NONE, _NONE
    return heads[large], refs[large], heads[~large], refs[~large]


def _without_zero_page(mem: MemMap, heads: np.ndarray, refs: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The folios and refs without the shared zero page (never pin-counted). It is the
    one frame of Kind.ZERO (allocated at boot, kernel.py), so a look for its PFN stands
    in for a kind lookup per folio; a machine without one is checked by kind."""
    zero = mem.zero_pfn
    if zero < 0:
        keep = mem.kind[heads] != _ZERO_PAGE
    elif zero in heads.tolist() if len(heads) <= lean.SHORT else (heads == zero).any():
        keep = heads != zero
    else:
        return heads, refs
    return heads[keep], refs[keep]


def _add_refs(mem: MemMap, heads: np.ndarray, refs: np.ndarray, flags: int) -> None:
    """Add `refs` references (GET) or pins (PIN) to each folio, with vmstat."""
    if flags & FOLL_GET or (flags & FOLL_PIN and not mem.era.has("pin-counting-bias")):
        add_at(mem.refcount, heads, refs)        # 5.6: a pin is a plain reference
    elif flags & FOLL_PIN:
        if mem.era.has("zero-page-not-pin-counted"):
            heads, refs = _without_zero_page(mem, heads, refs)
        big, big_refs, small, small_refs = _by_size(mem, heads, refs)
        if len(big):
            add_at(mem.refcount, big, big_refs)
            add_at(mem.pincount, big, big_refs)
        if len(small):
            add_at(mem.refcount, small, small_refs * GUP_PIN_COUNTING_BIAS)
        if mem.era.has("nr-foll-pin-vmstat"):
            mem.vmstat[ACQUIRED] += total(refs)
    else:
        return
    _wrap_s32(mem, heads)


def _s32(value: int) -> int:
    """A 32-bit signed counter's value after adding past its range (it wraps)."""
    return (value + _S32) % (1 << 32) - _S32


def _add_refs_one(mem: MemMap, head: int, refs: int, flags: int) -> None:
    """`_add_refs()` of one folio in plain ints: a one-page call, or a run inside one
    large folio (the kernel's one atomic per folio). A test checks it against the array
    form."""
    rc = mem.refcount.item(head)
    if flags & FOLL_GET or (flags & FOLL_PIN and not mem.era.has("pin-counting-bias")):
        rc += refs                               # 5.6: a pin is a plain reference
    elif flags & FOLL_PIN:
        counted = not (mem.era.has("zero-page-not-pin-counted")
                       and mem.kind.item(head) == _ZERO_PAGE)
        if counted and mem.order.item(head) > 0:
            rc += refs
            mem.pincount[head] = _s32(mem.pincount.item(head) + refs)
        elif counted:
            rc += refs * GUP_PIN_COUNTING_BIAS
        if mem.era.has("nr-foll-pin-vmstat"):
            mem.vmstat[ACQUIRED] += refs if counted else 0
    else:
        return
    mem.refcount[head] = _s32(rc) if rc >= _S32 else rc


def try_grab_folio(mem: MemMap, head: int, refs: int, flags: int) -> int:
    """try_grab_folio(): 0, or -ENOMEM (with a warning) if the refcount is unusable."""
    if mem.warnings.warn_on_once(int(mem.refcount[head]) <= 0, "try_grab_folio: refcount <= 0",
                                 lambda: f"folio {head:#x} has refcount "
                                 f"{int(mem.refcount[head])} (freed or overflowed)"):
        return -ENOMEM
    _add_refs(mem, np.array([head], dtype=np.int64), np.array([refs], dtype=np.int64), flags)
    return 0


def try_grab_pfns(mem: MemMap, pfns: np.ndarray, flags: int) -> int:
    """Grab one reference/pin per entry, in order, stopping at the first unusable folio.

    Returns how many entries were grabbed (a prefix); -ENOMEM if the first one failed.
    """
    if _grab_short_order0(mem, pfns, flags):
        return len(pfns)
    starts, heads, lengths = folio_runs(mem, pfns)
    counts = mem.refcount[heads]
    bad = (counts <= 0).nonzero()[0] if len(counts) and amin(counts) <= 0 else _NONE
    nruns = len(heads)
    if len(bad):
        nruns = int(bad[0])
        if nruns == 0:
            try_grab_folio(mem, int(heads[0]), 1, flags)   # records the warning
            return -ENOMEM
    _add_refs(mem, heads[:nruns], lengths[:nruns], flags)
    return int(starts[nruns]) if nruns < len(heads) else len(pfns)


def _grab_short_order0(mem: MemMap, pfns: np.ndarray, flags: int) -> bool:
    """try_grab_pfns() of a few distinct order-0 folios that all take the grab without
    wrapping, the zero page not among them (a slow-path pin of a few pages, usually): one
    array update, what `_add_refs()` does for them. False, with nothing changed, for any
    other call."""
    n = len(pfns)
    if not lean.ENABLED or not 0 < n <= lean.SHORT or not flags & (FOLL_GET | FOLL_PIN) \
            or mem.zero_pfn < 0:
        return False
    pl = pfns.tolist()
    if any(mem.head_off.take(pfns).tolist()) or any(mem.order.take(pfns).tolist()) \
            or mem.zero_pfn in pl or len(set(pl)) != n:
        return False
    bias = flags & FOLL_PIN and not flags & FOLL_GET and mem.era.has("pin-counting-bias")
    add = GUP_PIN_COUNTING_BIAS if bias else 1
    rcs = mem.refcount.take(pfns).tolist()
    if min(rcs) <= 0 or max(rcs) >= _S32 - add:
        return False
    mem.refcount[pfns] += mem.refcount.dtype.type(add)     # distinct: no add.at needed
    if bias and mem.era.has("nr-foll-pin-vmstat"):
        mem.vmstat[ACQUIRED] += n
    return True


def try_grab_pfns_fast(mem: MemMap, pfns: np.ndarray, flags: int,
                       heads: np.ndarray | None = None) -> int:
    """try_grab_folio_fast() on each entry, in order: how many were grabbed (a prefix).

    GUP-fast holds no stable reference, so it goes through try_get_folio(): a folio
    whose refcount is 0 (being freed) is skipped silently, a negative (overflowed) one
    with a warning; either ends the walk, and the slow path then decides (-ENOMEM).
    `heads`: the folio of each entry, if the caller has them.
    """
    return try_grab_runs(mem, *folio_runs(mem, pfns, heads), len(pfns), flags)


def try_grab_runs(mem: MemMap, starts: np.ndarray, heads: np.ndarray, lengths: np.ndarray,
                  n: int, flags: int) -> int:
    """`try_grab_pfns_fast()` of `n` entries given as folio runs (`folio_runs()`): one
    grab of `lengths[i]` references per folio, as the kernel's try_grab_folio_fast()
    takes one atomic per folio."""
    if len(heads) == 1 and lean.ENABLED:    # one folio: plain ints
        h = int(heads[0])
        rc = int(mem.refcount[h])
        if rc <= 0:
            mem.warnings.warn_on_once(rc < 0, "try_get_folio: refcount < 0",
                                      lambda: f"folio {h:#x} has refcount {rc} (overflowed)")
            return 0
        _add_refs_one(mem, h, n, flags)
        return n
    counts = mem.refcount[heads]
    bad = np.flatnonzero(counts <= 0) if len(counts) and amin(counts) <= 0 \
        else _NONE
    nruns = int(bad[0]) if len(bad) else len(heads)
    if len(bad):
        h = int(heads[nruns])
        mem.warnings.warn_on_once(int(mem.refcount[h]) < 0, "try_get_folio: refcount < 0",
                                  lambda: f"folio {h:#x} has refcount "
                                  f"{int(mem.refcount[h])} (overflowed)")
    _add_refs(mem, heads[:nruns], lengths[:nruns], flags)
    return int(starts[nruns]) if nruns < len(heads) else n


def gup_put_pfns(alloc: Allocator, pfns: np.ndarray, flags: int) -> int:
    """gup_put_folio() for every entry (NULLs skipped), grouped by runs; returns folios freed."""
    mem = alloc.mem
    if has_null(pfns):
        pfns = pfns[pfns != NULL]
    if len(pfns) == 0:
        return 0
    _, heads, refs = folio_runs(mem, pfns)
    return gup_put_folios(alloc, heads, refs, flags)


def gup_put_folios(alloc: Allocator, heads: np.ndarray, refs: np.ndarray, flags: int) -> int:
    """gup_put_folio() of `refs[i]` references or pins on folio `heads[i]`, vectorised.

    Underflows warn once and clamp to 0; returns how many folios were freed.
    """
    if len(heads) == 1 and lean.ENABLED:
        return _put_folio_one(alloc, int(heads[0]), int(refs[0]), flags)
    if len(heads) == 0:
        return 0
    mem = alloc.mem
    if flags & FOLL_PIN and not mem.era.has("pin-counting-bias"):
        np.subtract.at(mem.refcount, heads, refs)   # 5.6: unpin_user_page() is put_page()
    elif flags & FOLL_PIN:
        if mem.era.has("zero-page-not-pin-counted"):
            heads, refs = _without_zero_page(mem, heads, refs)
        if len(heads) == 0:
            return 0
        if mem.era.has("nr-foll-pin-vmstat"):
            mem.vmstat[RELEASED] += total(refs)
        big, big_refs, small, small_refs = _by_size(mem, heads, refs)
        if len(big):
            add_at(mem.pincount, big, -big_refs)
            add_at(mem.refcount, big, -big_refs)
            neg = big[mem.pincount[big] < 0]
            if mem.warnings.warn_on_once(len(neg) > 0, "gup_put_folio: pincount underflow",
                                         "more unpins than pins on a large folio"):
                mem.pincount[neg] = 0
        if len(small):
            add_at(mem.refcount, small, -small_refs * GUP_PIN_COUNTING_BIAS)
    else:
        add_at(mem.refcount, heads, -refs)
    # one read and one minimum tell the usual case (nothing at or below 0) apart;
    # duplicates are harmless below except when freeing: unique only the few hits
    counts = mem.refcount[heads]
    low = amin(counts)
    if low > 0:
        return 0
    under = heads[counts < 0]
    if mem.warnings.warn_on_once(len(under) > 0, "gup_put_folio: refcount underflow",
                                 lambda: f"folio {int(under[0]):#x} released more than it "
                                 "held"):
        mem.refcount[under] = 0
        counts = mem.refcount[heads]
    dead = heads[(counts == 0) & (mem.kind[heads] != _FREE)]
    _free_unused(alloc, dead)
    return len(dead)


def _free_unused(alloc: Allocator, dead: np.ndarray) -> None:
    """Free the folios whose last reference a release dropped (one may be listed twice)."""
    if len(dead) == 1:
        alloc.free_folio(int(dead[0]))
    elif len(dead):
        if not increasing(dead):        # runs of one folio may recur: free each once
            dead = np.unique(dead)
        alloc.free_folios(dead)         # order-0 folios by whole blocks, not one by one


def _put_folio_one(alloc: Allocator, head: int, refs: int, flags: int) -> int:
    """`gup_put_folios()` of one folio in plain ints (the same checks, warnings and
    order; a test checks it against the array form); returns folios freed (0 or 1)."""
    mem = alloc.mem
    rc = mem.refcount.item(head)
    if flags & FOLL_PIN and not mem.era.has("pin-counting-bias"):
        rc -= refs                               # 5.6: unpin_user_page() is put_page()
    elif flags & FOLL_PIN:
        if mem.era.has("zero-page-not-pin-counted") and mem.kind.item(head) == _ZERO_PAGE:
            return 0
        if mem.era.has("nr-foll-pin-vmstat"):
            mem.vmstat[RELEASED] += refs
        if mem.order[head] > 0:
            pins = _s32(mem.pincount.item(head) - refs)
            rc -= refs
            if mem.warnings.warn_on_once(pins < 0, "gup_put_folio: pincount underflow",
                                         "more unpins than pins on a large folio"):
                pins = 0
            mem.pincount[head] = pins
        else:
            rc -= refs * GUP_PIN_COUNTING_BIAS
    else:
        rc -= refs
    if mem.warnings.warn_on_once(rc < 0, "gup_put_folio: refcount underflow",
                                 lambda: f"folio {head:#x} released more than it held"):
        rc = 0
    mem.refcount[head] = rc
    if rc == 0 and mem.kind.item(head) != _FREE:
        alloc.free_folio(head)
        return 1
    return 0


def gup_put_folio(alloc: Allocator, head: int, refs: int, flags: int) -> None:
    """Drop `refs` pins (FOLL_PIN) or references (FOLL_GET) of one folio."""
    gup_put_folios(alloc, np.array([head], dtype=np.int64), np.array([refs], dtype=np.int64),
                   flags)


# -- adding pins to already pinned folios ---------------------------------------------


def folio_add_pin(folio: Folio, *, machine: MemMap | None = None) -> None:
    """folio_add_pin(): one more pin on a pinned folio; no vmstat update (spec 12.2)."""
    check_folio("folio_add_pin", "folio", folio, machine)
    mem = folio.mem
    head = folio.pfn
    if mem.kind.item(head) == _ZERO_PAGE:
        return
    if mem.has_pincount(head):
        mem.warnings.warn_on_once(int(mem.pincount[head]) < 1, "folio_add_pin: not pinned",
                                  f"folio {head:#x} has no pin to add to")
        mem.refcount[head] += 1
        mem.pincount[head] += 1
    else:
        mem.warnings.warn_on_once(int(mem.refcount[head]) < GUP_PIN_COUNTING_BIAS,
                                  "folio_add_pin: not pinned",
                                  f"folio {head:#x} has no pin to add to")
        mem.refcount[head] += GUP_PIN_COUNTING_BIAS
    _wrap_s32(mem, np.array([head]))
    _tell_sanitizer(mem, head, 1, "folio_add_pin")


def _tell_sanitizer(mem: MemMap, pfn: int, refs: int, call: str, flags: int = FOLL_PIN
                    ) -> None:
    """Record references taken outside GUP, so their release is matched too."""
    st = gup_state(mem)
    if st.sanitizer is not None:
        st.sanitizer.on_acquire(np.full(refs, pfn, dtype=np.int64), flags, call, None)


def folio_add_pins(folio: Folio, pins: int, *, machine: MemMap | None = None) -> int:
    """folio_add_pins(): `pins` more pins on a pinned folio, with vmstat; 0 or -errno."""
    from ..memory import folio_maybe_dma_pinned
    check_folio("folio_add_pins", "folio", folio, machine)
    pins = check_count("folio_add_pins", "pins", pins, limit=(1 << 32) - 1)
    mem = folio.mem
    mem.warnings.warn_on_once(not folio_maybe_dma_pinned(folio), "folio_add_pins: not pinned",
                              f"folio {folio.pfn:#x} is not pinned")
    rc = try_grab_folio(mem, folio.pfn, pins, FOLL_PIN)
    if rc == 0:
        _tell_sanitizer(mem, folio.pfn, pins, "folio_add_pins")
    return rc


# -- the unpin family -------------------------------------------------------------------
# Each checks every argument (check/args.py) before it releases anything: a bad entry in
# the middle of an array raises with nothing released, never half-way through.


def _release(mem: MemMap | None, pfns: np.ndarray, flags: int, call: str) -> None:
    if mem is None or len(pfns) == 0:
        return
    st = gup_state(mem)
    runs = st.sanitizer.on_release(pfns, flags, call) if st.sanitizer is not None else None
    if runs is not None and lean.ENABLED:
        gup_put_folios(st.alloc, runs[1], runs[2], flags)     # the folios GUP took
    else:
        gup_put_pfns(st.alloc, pfns, flags)


def _error_count(call: str, name: str, n: int, mem: MemMap | None) -> bool:
    """A count that is really a -errno: the kernel warns and releases nothing."""
    if n >= 0:
        return False
    if mem is not None:
        mem.warnings.warn_on_once(True, f"{call}: {name} is an error value",
                                  f"{name}={n}: pass the count of pinned pages, not -errno")
    return True


def _pages_count(call: str, pages: object, npages: object) -> int | None:
    """The count argument of a pages-array release (None: the whole array)."""
    if npages is None:
        return None
    return check_count(call, "npages", npages, errno_ok=True)


def unpin_user_page(page: Page, *, machine: MemMap | None = None) -> None:
    """Release one pin of the page's folio."""
    check_page("unpin_user_page", "page", page, machine)
    _release(page.mem, np.array([page.pfn], dtype=np.int64), FOLL_PIN, "unpin_user_page")


def unpin_user_pages(pages: Sequence[Page | None] | PageArray, npages: int | None = None, *,
                     machine: MemMap | None = None) -> None:
    """Release one pin per entry (NULLs skipped); a -errno count warns and does nothing."""
    if npages is None and type(pages) is PageArray and lean.ENABLED \
            and _unpin_express(pages, machine):
        return
    call = "unpin_user_pages"
    n = _pages_count(call, pages, npages)
    mem, pfns = check_pages(call, "pages", pages, None if n is None or n < 0 else n, machine)
    if n is not None and _error_count(call, "npages", n, mem or machine):
        return
    _release(mem, pfns, FOLL_PIN, call)


def _unpin_express(pages: PageArray, machine: MemMap | None) -> bool:
    """unpin_user_pages() of a pages array that is, entry for entry, what one held pin
    call took, on a machine of the newest era: one page, a few order-0 folios or any
    number of large ones (huge leaves, mTHPs), freeing those whose last reference was the
    pin. The same releases as the general path with its layers collapsed; False, with
    nothing changed, for anything else. `tests/gup/test_lean_paths.py` compares the two paths."""
    mem = pages.mem
    n = len(pages)
    if mem is None or machine is not None and mem is not machine or not n:
        return False
    st = _state_of(mem)
    if st is None or st.sanitizer is None or mem.era.version != _NEWEST:
        return False
    san = st.sanitizer
    # the record of the fill, if no entry was written since: no need to read them at all
    rec = san.held_fill("FOLL_PIN", n, stamp_of(pages)) \
        or san.held_whole("FOLL_PIN", pfns_of(pages))
    if rec is None:
        return False
    if n == 1:                                  # the plain-int put of one folio
        pfn = pfns_of(pages).item(0)
        san.release_whole(rec, _CALLERS)
        _put_folio_one(st.alloc, pfn - mem.head_off.item(pfn), 1, FOLL_PIN)
        st.express_unpins[1] = st.express_unpins.get(1, 0) + 1
        return True
    runs, orders = rec.folio_runs, rec.folio_orders
    if runs is None or orders is None:
        return False
    heads, lengths = runs[1], runs[2]
    if len(heads) <= lean.SHORT:                # plain ints: a few folios
        large = orders.tolist()
        some, every = any(large), all(large)
        distinct = lean.distinct(heads.tolist())
    else:                       # many: large ones only (the general path is as quick for
        smallest, largest = lo_hi(orders)       # order-0 folios)
        some, every = largest > 0, smallest > 0
        distinct = every and lean.distinct_array(heads)
    if not distinct or not san.folios_unchanged(rec):
        return False                # a folio in two runs, or changed by a misuse
    # one pin per entry: a run of one entry each (usual for order-0 folios) drops a
    # scalar; the counts are written back into their int32 arrays as they are
    per_run = 1 if len(heads) == n else lengths
    if not some:                                # order-0 folios: the bias per pin
        refs = mem.refcount[heads] - per_run * GUP_PIN_COUNTING_BIAS
        pins = None
    elif every:                                 # large folios: _pincount, one ref per pin
        refs = mem.refcount[heads] - per_run
        pins = mem.pincount[heads] - per_run
        if amin(pins) < 0:
            return False                        # an underflow: the general path warns
    else:
        return False
    least = amin(refs)
    if least < 0:
        return False                            # an underflow: the general path warns
    san.release_whole(rec, _CALLERS)
    mem.refcount[heads] = refs
    if pins is not None:
        mem.pincount[heads] = pins
    mem.vmstat[RELEASED] += n
    if least == 0:                  # the pin held the last reference (the memory was
        _free_unused(st.alloc, heads[refs == 0])   # unmapped): freed as gup_put_folios()
    st.express_unpins[n] = st.express_unpins.get(n, 0) + 1
    return True


def _mark_dirty(mem: MemMap, pfns: np.ndarray) -> None:
    """folio_mark_dirty() under the folio lock on every folio not dirty yet."""
    from ..memory import PG
    pfns = pfns[pfns != NULL]
    heads = mem.head_of(pfns)           # set_flag(): repeats are harmless, no unique
    heads = heads[mem.kind[heads] != _ZERO_PAGE]
    mem.set_flag(heads, PG.dirty)


def unpin_user_pages_dirty_lock(pages: Sequence[Page | None] | PageArray, npages: int,
                                make_dirty: bool, *, machine: MemMap | None = None) -> None:
    """Dirty (if asked) then unpin every entry: what a device that wrote the pages does."""
    call = "unpin_user_pages_dirty_lock"
    n = check_count(call, "npages", npages, errno_ok=True)
    dirty = check_flag(call, "make_dirty", make_dirty)
    mem, pfns = check_pages(call, "pages", pages, max(n, 0), machine)
    if _error_count("unpin_user_pages", "npages", n, mem or machine_of(pages) or machine):
        return
    if mem is None:
        return
    if dirty:
        _mark_dirty(mem, pfns)
    _release(mem, pfns, FOLL_PIN, call if dirty else "unpin_user_pages")


def unpin_user_page_range_dirty_lock(page: Page, npages: int, make_dirty: bool, *,
                                     machine: MemMap | None = None) -> None:
    """Unpin the physically contiguous pages page .. page+npages-1 (folio by folio)."""
    call = "unpin_user_page_range_dirty_lock"
    check_page(call, "page", page, machine)
    npages = check_count(call, "npages", npages)
    dirty = check_flag(call, "make_dirty", make_dirty)
    mem = page.mem
    if page.pfn + npages > mem.nr_pages:
        raise ValueError(f"{call}(): page + npages ({page.pfn:#x} + {npages}) runs past the "
                         "machine's memory: pass the count of pinned pages")
    pfns = np.arange(page.pfn, page.pfn + npages, dtype=np.int64)
    if dirty:
        _mark_dirty(mem, pfns)
    _release(mem, pfns, FOLL_PIN, call)


def unpin_folio(folio: Folio, *, machine: MemMap | None = None) -> None:
    """Release one pin of a folio (the memfd_pin_folios() counterpart of unpin_user_page)."""
    check_folio("unpin_folio", "folio", folio, machine)
    folio.mem.era.require("memfd-pin-folios", "unpin_folio()")
    _release(folio.mem, np.array([folio.pfn], dtype=np.int64), FOLL_PIN, "unpin_folio")


def unpin_folios(folios: Sequence[Folio | None], nfolios: int | None = None, *,
                 machine: MemMap | None = None) -> None:
    """Release one pin per folio (NULLs skipped); a -errno count warns and does nothing."""
    call = "unpin_folios"
    n = None if nfolios is None else check_count(call, "nfolios", nfolios, errno_ok=True)
    mem, pfns = check_folios(call, "folios", folios, None if n is None or n < 0 else n,
                             machine)
    if (mem or machine) is not None:
        (mem or machine).era.require("memfd-pin-folios", f"{call}()")   # type: ignore[union-attr]
    if n is not None and _error_count(call, "nfolios", n, mem or machine):
        return
    _release(mem, pfns, FOLL_PIN, call)


def unpin_user_folio(folio: Folio, npages: int, *, machine: MemMap | None = None) -> None:
    """Drop `npages` pins of one folio."""
    check_folio("unpin_user_folio", "folio", folio, machine)
    npages = check_count("unpin_user_folio", "npages", npages, limit=(1 << 32) - 1)
    _release(folio.mem, np.full(npages, folio.pfn, dtype=np.int64), FOLL_PIN,
             "unpin_user_folio")


# -- plain references ---------------------------------------------------------------------


def put_page(page: Page, *, machine: MemMap | None = None) -> None:
    """put_page(): drop one ordinary reference (the release for FOLL_GET)."""
    check_page("put_page", "page", page, machine)
    mem = page.mem
    st = gup_state(mem)
    if st.sanitizer is not None:
        st.sanitizer.on_release(np.array([page.pfn], dtype=np.int64), FOLL_GET, "put_page")
    head = int(mem.head_of(page.pfn))
    if mem.warnings.warn_on_once(mem.kind.item(head) in (_ZERO_PAGE, _HUGE_ZERO)
                                 and mem.refcount.item(head) <= 1,
                                 "put_page: zero page refcount", "would free the zero page"):
        return
    gup_put_folio(st.alloc, head, 1, FOLL_GET)


def get_page(page: Page, *, machine: MemMap | None = None) -> None:
    """get_page(): take one ordinary reference on the page's folio."""
    check_page("get_page", "page", page, machine)
    mem = page.mem
    head = int(mem.head_of(page.pfn))
    mem.warnings.warn_on_once(int(mem.refcount[head]) <= 0, "get_page: refcount <= 0",
                              f"folio {head:#x} is free")
    mem.refcount[head] += 1
    _tell_sanitizer(mem, page.pfn, 1, "get_page", FOLL_GET)


__all__ = ["ACQUIRED", "RELEASED", "EINVAL", "folio_runs", "try_grab_folio", "try_grab_pfns",
           "try_grab_pfns_fast", "try_grab_runs", "gup_put_pfns", "gup_put_folio", "gup_put_folios",
           "folio_add_pin", "folio_add_pins", "unpin_user_page", "unpin_user_pages",
           "unpin_user_pages_dirty_lock", "unpin_user_page_range_dirty_lock", "unpin_folio",
           "unpin_folios", "unpin_user_folio", "put_page", "get_page"]
