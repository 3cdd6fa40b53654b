"""FOLL_LONGTERM: which folios may stay pinned, and the pin -> check -> migrate loop.

A long-term pin must not keep a folio in ZONE_MOVABLE or a CMA pageblock (spec 4.2).
`__gup_longterm_locked()` pins with PF_MEMALLOC_PIN set (faults then allocate
unmovable memory), checks what it got, and if anything is unpinnable drops every pin
of the call, migrates the offenders and pins the whole range again (spec 4.4).
`memfd_pin_folios()` (spec 4.6) pins shmem/hugetlbfs page cache by folio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from .. import lean
from ..constants import EAGAIN, EINVAL, ENOMEM, PAGE_SHIFT, PAGE_SIZE
from ..memory import Folio, Kind, MemMap, Zone
from ..memory.migrate import ReplaceCache, isolate_folio, migrate_folio, putback_folio
from ..memory.pagearray import NULL
from ..mm import MM, MappableFile, MMEnv
from ..mm.reclaim import page_cache_replacer
from .flags import FOLL_LONGTERM, FOLL_PIN
from .grab import gup_put_pfns, try_grab_folio
from .pages import PagesOut
from .slow import __get_user_pages_locked
from .state import gup_state, note_gup, race_point

# plain ints for array comparisons (see grab.py: an IntEnum operand costs numpy ~2 us)
_ZERO, _HUGE_ZERO, _FSDAX = int(Kind.ZERO), int(Kind.HUGE_ZERO), int(Kind.FSDAX)
_MOVABLE = int(Zone.MOVABLE)


def longterm_pinnable(mem: MemMap, heads: np.ndarray) -> NDArray[np.bool_]:
    """Vectorised folio_is_longterm_pinnable() over head PFNs. ZONE_MOVABLE counts only
    from 5.13 (`longterm-migrate-movable`): before, a long-term pin stays where it is
    and blocks offlining that memory. CMA is refused from 5.1 (`longterm-migrate-cma`),
    which is on in every modelled profile (the oldest profile is 5.1)."""
    kind = mem.kind[heads]
    zero = (kind == _ZERO) | (kind == _HUGE_ZERO)
    ok = ~np.asarray(mem.is_cma(heads), dtype=bool)
    if not mem.era.has("longterm-migrate-cma"):
        ok = np.ones_like(ok)
    movable = np.asarray(mem.zone_of(heads)) == _MOVABLE
    if not mem.era.has("longterm-migrate-movable"):
        movable = np.zeros_like(movable)
    return ok & (zero | ((kind != _FSDAX) & ~movable))


def longterm_pinnable_one(mem: MemMap, head: int, kind: int) -> bool:
    """`longterm_pinnable()` of one folio (`kind`: its Kind as an int), in plain ints for
    the short walks of GUP-fast; a test checks it against the vectorised form."""
    if mem.cma_start <= head < mem.cma_end:
        return False
    if kind in (_ZERO, _HUGE_ZERO):
        return True
    movable = head >= mem.movable_start and mem.era.has("longterm-migrate-movable")
    return kind != _FSDAX and not movable


def all_longterm_pinnable(mem: MemMap, heads: list[int], kinds: list[int]) -> bool:
    """True when every folio passes `longterm_pinnable_one()`, told from the lowest and
    highest head and the kinds present (no head in CMA or, where the era counts it,
    ZONE_MOVABLE; no FS-DAX folio); False means: check each."""
    lo, hi = min(heads), max(heads)
    if lo < mem.cma_end and hi >= mem.cma_start:
        return False
    if hi >= mem.movable_start and mem.era.has("longterm-migrate-movable"):
        return False
    return _FSDAX not in kinds


def folio_is_longterm_pinnable(folio: Folio) -> bool:
    """May this folio be pinned long-term where it is? (spec 4.2, in order)."""
    return bool(longterm_pinnable(folio.mem, np.array([folio.pfn]))[0])


def _replacer(env: MMEnv, files: Iterable[object]) -> ReplaceCache:
    """A hook set on the pinning layer, else the file systems' own, else the model's."""
    st = gup_state(env.mem)
    return st.replace_cache or env.replace_cache or page_cache_replacer(env, files)


def check_and_migrate_pfns(env: MMEnv, pfns: np.ndarray, unpin_all: Callable[[], None],
                           files: Iterable[object] = ()) -> int:
    """check_and_migrate_movable_pages/folios(): 0 (keep the pins), -EAGAIN or -ENOMEM.

    On anything but 0, every pin of the call has been dropped via `unpin_all()`, and
    `k.gup.last_migrate_failure` says what could not be moved, or isolated, and why.
    """
    mem = env.mem
    st = gup_state(mem)
    valid = pfns[pfns != NULL]
    heads = mem.head_of(valid).astype(np.int64)
    if lean.ENABLED and 0 < len(heads) <= lean.SHORT and all_longterm_pinnable(
            mem, heads.tolist(), mem.kind.take(heads).tolist()):
        return 0                        # a short array: told in plain ints
    bad = ~longterm_pinnable(mem, heads)
    if not bad.any():
        return 0
    collected = list(dict.fromkeys(heads[bad].tolist()))      # distinct, in order
    isolated = [h for h in collected if isolate_folio(mem, h)]
    stuck = sorted(set(collected) - set(isolated), key=collected.index)
    unpin_all()
    race_point(mem, "longterm:before_migrate", heads=collected)
    replace = _replacer(env, files)
    failed: list[str] = []
    for h in isolated:
        res = migrate_folio(env.alloc, h, replace, isolated=True)
        if res.rc:
            failed.append(res.reason)
            putback_folio(env.alloc, h)
    if failed:
        st.last_migrate_failure = "; ".join(failed)
        return -ENOMEM
    if stuck:
        st.last_migrate_failure = "; ".join(
            f"folio {h:#x} is not long-term pinnable and could not be isolated "
            "(not on the LRU)" for h in stuck)
    return -EAGAIN


def _longterm_retry(env: MMEnv, rounds: int) -> bool:
    """True when the loop must give up: the kernel would spin; the model stops, warns."""
    st = gup_state(env.mem)
    note_gup(env.mem, migrate_rounds=rounds)
    if rounds < st.migrate_retry_limit:
        return False
    env.mem.warnings.warn_on_once(
        True, "__gup_longterm_locked: no progress",
        f"unpinnable folios still found after {rounds} migration rounds (isolation keeps "
        "failing); giving up with -ENOMEM")
    st.last_migrate_failure = (f"gave up after {rounds} rounds: "
                               + (st.last_migrate_failure or "no progress"))
    return True


@contextlib.contextmanager
def memalloc_pin_save(env: MMEnv) -> Iterator[None]:
    """memalloc_pin_save()/restore(): allocations inside are unmovable (spec 4.3)."""
    saved = env.memalloc_pin
    env.memalloc_pin = True
    try:
        yield
    finally:
        env.memalloc_pin = saved


def __gup_longterm_locked(env: MMEnv, mm: MM, start: int, nr_pages: int,
                          out: PagesOut | None, locked: list[int] | None, flags: int) -> int:
    """The slow path, plus the long-term check/migrate/retry loop when FOLL_LONGTERM."""
    if not flags & FOLL_LONGTERM:
        return __get_user_pages_locked(env, mm, start, nr_pages, out, locked, flags)
    with memalloc_pin_save(env):
        rounds = 0
        while True:
            rc = __get_user_pages_locked(env, mm, start, nr_pages, out, locked, flags)
            if rc <= 0 or out is None:
                return rc
            n = rc

            def unpin_all(n: int = n, out: PagesOut = out) -> None:
                gup_put_pfns(env.alloc, out.pfns(n).copy(), FOLL_PIN)
                out.clear(n)

            mrc = check_and_migrate_pfns(env, out.pfns(n).copy(), unpin_all)
            if mrc == 0:
                return n
            if mrc != -EAGAIN:
                return mrc
            rounds += 1
            if _longterm_retry(env, rounds):
                return -ENOMEM


def memfd_pin_folios(env: MMEnv, memfd: MappableFile | None, start: int, end: int,
                     folios: list[Folio | None], max_folios: int, offset: list[int]) -> int:
    """Pin the folios of a shmem/hugetlbfs file covering bytes [start, end] (inclusive).

    One pin per folio; `offset[0]` receives the offset of `start` in the first folio.
    Returns the number of folios pinned (<= max_folios) or -errno.
    """
    mem = env.mem
    if start < 0 or start > end or max_folios == 0:
        return -EINVAL
    if memfd is None or getattr(memfd, "kind", None) not in (Kind.SHMEM, Kind.HUGETLBFS):
        return -EINVAL
    if end >= memfd.size:
        return -EINVAL
    order = int(memfd.folio_order)
    fsize = PAGE_SIZE << order
    with memalloc_pin_save(env):
        rounds = 0
        while True:
            got: list[int] = []

            def unpin_all(got: list[int] = got) -> None:
                if got:
                    gup_put_pfns(env.alloc, np.array(got, dtype=np.int64), FOLL_PIN)
                    got.clear()

            idx = start >> PAGE_SHIFT
            last = end >> PAGE_SHIFT
            while idx <= last and len(got) < max_folios:
                head = memfd.get_folio(idx)
                if head < 0:
                    unpin_all()
                    return head
                if try_grab_folio(mem, head, 1, FOLL_PIN):
                    unpin_all()
                    return -EINVAL
                got.append(head)
                idx = int(mem.index[head]) + (1 << order)
            mrc = check_and_migrate_pfns(env, np.array(got, dtype=np.int64), unpin_all,
                                         files=(memfd,))
            if mrc == 0:
                folios[:] = [Folio(mem, h) for h in got] + folios[len(got):]
                offset[0] = start % fsize
                return len(got)
            if mrc != -EAGAIN:
                return mrc
            rounds += 1
            if _longterm_retry(env, rounds):
                return -ENOMEM
