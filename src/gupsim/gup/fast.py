"""GUP-fast: the lockless walk over the current mm's page tables (spec 7).

The walk reads a run of entries, grabs the acceptable prefix at once, re-reads the
entries and keeps only what did not change, exactly as the kernel's per-PTE
read / grab / recheck sequence, but vectorised over the VMA arrays. Huge leaves are
checked and grabbed once per leaf (gup_fast_pmd_leaf(): one reference count update per
folio), and a short range (`SMALL_WALK`) is checked in plain ints, where numpy's fixed
cost per operation would dominate; tests/gup/test_lean_paths.py holds both to the
entry-by-entry result. Pinning callers
bracket the walk with `write_protect_seq` and drop everything if fork ran meanwhile.
`gup_fast_fallback()` then hands the remainder to the slow path unless FOLL_FAST_ONLY.
"""

from __future__ import annotations

import functools
import operator

import numpy as np
from numpy.typing import NDArray

from .. import lean
from ..constants import EFAULT, EINVAL, EOVERFLOW, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, TASK_SIZE
from ..memory import PG, Kind, MemMap
from ..mm import MM, MMF, VM, VMA, MMEnv
from ..mm.vma import PTE
from .flags import (
    FAST_GUP_ALLOWED,
    FOLL_FAST_ONLY,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_TOUCH,
    FOLL_UNLOCKABLE,
    FOLL_WRITE,
    foll_flags_str,
)
from .grab import Runs, clip_runs, folio_runs, gup_put_pfns, try_grab_runs
from .longterm import (
    __gup_longterm_locked,
    all_longterm_pinnable,
    longterm_pinnable,
    longterm_pinnable_one,
)
from .pages import Pages, PagesOut
from .slow import gup_must_unshare, must_unshare_one
from .state import PATH_FALLBACK, PATH_INVALID, note_gup, race_pending, race_point

TASK_SIZE_MAX = TASK_SIZE - PAGE_SIZE
_U64 = 1 << 64
# plain ints for array comparisons (see grab.py: an IntEnum operand costs numpy ~2 us)
_ANON, _KSM, _SHMEM, _SECRETMEM = (int(k) for k in (Kind.ANON, Kind.KSM, Kind.SHMEM,
                                                   Kind.SECRETMEM))
_FSDAX, _ZERO, _HUGE_ZERO = int(Kind.FSDAX), int(Kind.ZERO), int(Kind.HUGE_ZERO)
_PG_HUGETLB, _PG_ANON_EXCLUSIVE = np.uint32(PG.hugetlb), np.uint32(PG.anon_exclusive)
_PMD_PAGES = 1 << PMD_ORDER
_NO_RUNS: Runs = (np.zeros(0, dtype=np.int64),) * 3


def gup_fast_folio_allowed(env: MMEnv, heads: np.ndarray, flags: int) -> NDArray[np.bool_]:
    """Vectorised gup_fast_folio_allowed(): secretmem never; long-term writable pins only
    of anon, shmem and hugetlb folios (a NULL mapping, e.g. after truncate, falls back),
    from 6.5 on (`longterm-file-write-refused`)."""
    mem = env.mem
    kind = mem.kind[heads]
    allowed = kind != _SECRETMEM
    if (flags & (FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE)) == (FOLL_PIN | FOLL_LONGTERM
                                                               | FOLL_WRITE) \
            and env.era.has("longterm-file-write-refused"):
        hugetlb = (mem.flags[heads] & _PG_HUGETLB) != 0
        anon = (kind == _ANON) | (kind == _KSM)
        shmem = (kind == _SHMEM) & (mem.mapping[heads] != 0)
        allowed &= hugetlb | anon | shmem
    return allowed


def _fast_checks(env: MMEnv, vma: VMA, i0: int, i1: int, flags: int,
                 at: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per entry of [i0, i1), or of the entries `at`: (may it be grabbed, does it pass
    the after-grab checks, PFN, its folio; the folio is 0 for an entry that may not be
    grabbed).

    The kernel's order per entry (spec 7.2): the PTE tests and the long-term pinnability
    test inside try_grab_folio_fast() refuse before anything is counted; the folio test
    of gup_fast_folio_allowed() and gup_must_unshare() run after the grab, so a refusal
    there is a pin taken and dropped again (visible as +1/-1 in the vmstat counters).
    """
    mem = env.mem
    where = slice(i0, i1) if at is None else at
    pte = vma.pte[where].astype(np.int64)
    pfn = vma.pfn[where]
    grab = ((pte & PTE.PRESENT) != 0) & ((pte & PTE.SPECIAL) == 0)
    if not vma.flags & VM.ACCESS_FLAGS:
        grab[:] = False                     # PROT_NONE: protnone entries end the walk
    writable = (pte & PTE.WRITE) != 0
    if flags & FOLL_WRITE:
        grab &= writable
    safe = np.where(grab, pfn, 0)
    heads = mem.head_of(safe).astype(np.int64, copy=False)
    if flags & FOLL_LONGTERM:
        grab &= longterm_pinnable(mem, heads)
    after = gup_fast_folio_allowed(env, heads, flags)
    if flags & FOLL_PIN and not flags & FOLL_WRITE:
        kind = mem.kind[heads]
        anon = (kind == _ANON) | (kind == _KSM)
        huge = (pte & (PTE.PMD | PTE.PUD)) != 0
        excl = (mem.flags[np.where(huge, heads, safe)] & _PG_ANON_EXCLUSIVE) != 0
        must = gup_must_unshare(env.era, anon, excl, bool(flags & FOLL_LONGTERM))
        after &= writable | ~must
    return grab, after, pfn, heads


# Up to this many entries the walk checks entry by entry with plain Python ints: numpy's
# fixed cost (about 1 us per operation, some 25 operations) dominates a short range.
SMALL_WALK = 16
# Up to this many huge leaves (2 MiB each: 128 MiB) are checked the same way, once each.
SMALL_LEAVES = 64


def _fast_checks_small(env: MMEnv, vma: VMA, i0: int, i1: int, flags: int,
                       at: np.ndarray | None = None) -> NDArray[np.int64] | None:
    """`_fast_checks()` for a short range (or the few entries `at`, one per huge leaf)
    whose every entry passes, in plain ints: the folio of each entry; None if any entry
    is refused (the vectorised checks then decide how far the walk got, so the order of
    the tests here does not matter). The same tests; a test compares the two."""
    mem = env.mem
    if not vma.flags & VM.ACCESS_FLAGS:
        return None
    write, pin, longterm = flags & FOLL_WRITE, flags & FOLL_PIN, flags & FOLL_LONGTERM
    where = slice(i0, i1) if at is None else at
    ptes = vma.pte[where].tolist()
    for pte in ptes:
        if not pte & PTE.PRESENT or pte & PTE.SPECIAL or write and not pte & PTE.WRITE:
            return None
    pfns = vma.pfn[where]
    heads = mem.head_of(pfns)
    hl, kinds = heads.tolist(), mem.kind.take(heads).tolist()
    era = env.era
    file_write = bool(pin and write and longterm) and era.has("longterm-file-write-refused")
    if not folios_pass(mem, hl, kinds, longterm, file_write):
        if longterm and not all(map(functools.partial(longterm_pinnable_one, mem), hl,
                                    kinds)):
            return None
        if not all(folio_allowed_one(mem, h, kind, file_write)
                   for h, kind in zip(hl, kinds, strict=True)):
            return None
    if pin and not write:
        for pte, pfn, head, kind in zip(ptes, pfns.tolist(), hl, kinds, strict=True):
            if pte & PTE.WRITE:
                continue
            excl = bool(mem.flags[head if pte & (PTE.PMD | PTE.PUD) else pfn]
                        & _PG_ANON_EXCLUSIVE)
            if must_unshare_one(era, kind in (_ANON, _KSM), excl, bool(longterm)):
                return None
    return heads


def folios_pass(mem: MemMap, heads: list[int], kinds: list[int], longterm: int,
                file_write: bool) -> bool:
    """True when the folios are all of one kind that `folio_allowed_one()` takes and
    none lies in CMA or (for a long-term pin, where the era counts it) ZONE_MOVABLE:
    every one then passes `longterm_pinnable_one()` and `folio_allowed_one()`, told from
    the lowest and highest head (the usual run of THP or hugetlb leaves) instead of a
    call per folio. False means: check each."""
    if len(heads) < 4:
        return False
    kind = kinds[0]
    if kinds.count(kind) != len(kinds) or kind in (_SECRETMEM, _FSDAX, _ZERO, _HUGE_ZERO):
        return False
    if longterm and not all_longterm_pinnable(mem, heads, kinds):
        return False
    if file_write and kind not in (_ANON, _KSM):    # only hugetlb folios pass unchecked
        return bool(int(_PG_HUGETLB) & functools.reduce(operator.and_,
                                                         mem.flags.take(heads).tolist()))
    return True


def folio_allowed_one(mem: MemMap, head: int, kind: int, file_write: bool) -> bool:
    """`gup_fast_folio_allowed()` of one folio; `file_write`: a long-term writable pin
    on an era that refuses file folios to it."""
    if kind == _SECRETMEM:
        return False
    if not file_write:
        return True
    return (bool(mem.flags[head] & _PG_HUGETLB) or kind in (_ANON, _KSM)
            or kind == _SHMEM and int(mem.mapping[head]) != 0)


def pmd_boundary(vma: VMA, i: int) -> int:
    """The first entry at or after entry `i` of `vma` that starts a PMD (2 MiB aligned)."""
    return i + (-((vma.start >> PAGE_SHIFT) + i)) % _PMD_PAGES


def leaf_starts(vma: VMA, i0: int, i1: int) -> np.ndarray | None:
    """When PMD/PUD leaves map all of [i0, i1): i0 and every PMD boundary after it, the
    first entry of each leaf part (else None). A leaf's entries share their bits and map
    one folio (vma.py), so GUP-fast checks and grabs it once, as the kernel's
    gup_fast_pmd_leaf() does, instead of once per 4 KiB entry."""
    if i1 - i0 <= _PMD_PAGES or not lean.ENABLED:
        return None
    first = pmd_boundary(vma, i0)
    starts = np.arange(first, i1, _PMD_PAGES, dtype=np.int64)
    if first != i0:
        starts = np.concatenate(([i0], starts))
    if len(starts) <= SMALL_LEAVES:                 # a few leaves: plain ints
        return starts if 0 not in [e & PTE.LEAF for e in vma.pte[starts].tolist()] else None
    return None if ((vma.pte[starts] & PTE.LEAF) == 0).any() else starts


def _checked_runs(env: MMEnv, vma: VMA, i0: int, i1: int, flags: int
                  ) -> tuple[int, int, np.ndarray, Runs]:
    """The walk over [i0, i1) up to its first refusal: (entries kept, entries to grab,
    the PFNs, the folio runs of the entries to grab). Short ranges are checked in plain
    ints, huge leaves once each, anything else entry by entry in numpy."""
    mem = env.mem
    pfns = vma.pfn[i0:i1]
    if lean.ENABLED:                    # refused at its first entry: no folio is looked at
        entry = vma.pte.item(i0)
        if not entry & PTE.PRESENT or entry & PTE.SPECIAL or flags & FOLL_WRITE and not \
                entry & PTE.WRITE or not vma.flags & VM.ACCESS_FLAGS:
            return 0, 0, pfns, _NO_RUNS
    heads = _fast_checks_small(env, vma, i0, i1, flags) \
        if lean.ENABLED and i1 - i0 <= SMALL_WALK else None
    if heads is not None:
        return i1 - i0, i1 - i0, pfns, folio_runs(mem, pfns, heads)
    starts = leaf_starts(vma, i0, i1)
    if starts is None:
        grab, after, pfns, heads = _fast_checks(env, vma, i0, i1, flags)
        keep, k = _walk_extent(vma, i0, i1, grab, after)
        return keep, k, pfns, folio_runs(mem, pfns[:k], heads[:k])
    note_gup(mem, leaves=True)
    keep = k = i1 - i0
    # a few leaves: each checked in plain ints (numpy's fixed cost would dominate)
    small = _fast_checks_small(env, vma, i0, i1, flags, at=starts) \
        if len(starts) <= SMALL_LEAVES else None
    if small is not None:
        heads = small
    else:
        grab, after, _, heads = _fast_checks(env, vma, i0, i1, flags, at=starts)
        bad = np.flatnonzero(~(grab & after))
        if len(bad):
            u = int(bad[0])
            a, b = _unit_bounds(vma, i0, i1, int(starts[u]))
            keep, k = a - i0, (b if grab[u] else a) - i0
    offs = starts - i0
    n = int(np.searchsorted(offs, k))             # the leaf parts the walk grabs
    offs, heads = offs[:n], heads[:n]
    if n > 1:                                     # PMD parts of one PUD leaf: one run
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(heads[1:], heads[:-1], out=first[1:])
        offs, heads = offs[first], heads[first]
    lengths = np.empty(len(offs), dtype=np.int64)      # np.diff(offs, append=k)
    if len(offs):
        np.subtract(offs[1:], offs[:-1], out=lengths[:-1])
        lengths[-1] = k - int(offs[-1])
    return keep, k, pfns, (offs, heads, lengths)


def _unit_bounds(vma: VMA, i0: int, i1: int, j: int) -> tuple[int, int]:
    """The entries [a, b) (clipped to [i0, i1)) that GUP-fast grabs together with entry j:
    the entry itself, or the part of the range inside its PMD / PUD leaf."""
    pte = int(vma.pte[j])
    if not pte & (PTE.PMD | PTE.PUD):
        return j, j + 1
    span = 512 if pte & PTE.PMD else 512 * 512
    a = j - ((vma.start >> PAGE_SHIFT) + j) % span
    return max(a, i0), min(a + span, i1)


def _walk_extent(vma: VMA, i0: int, i1: int, grab: np.ndarray, after: np.ndarray
                 ) -> tuple[int, int]:
    """(entries kept, entries grabbed), counted from i0: the walk stops at the first
    refused entry; one refused after its grab was grabbed with its whole leaf."""
    bad = np.flatnonzero(~(grab & after))
    if len(bad) == 0:
        return i1 - i0, i1 - i0
    j = int(bad[0])
    a, b = _unit_bounds(vma, i0, i1, i0 + j)
    return a - i0, (b if grab[j] else a) - i0


def gup_fast(env: MMEnv, mm: MM, start: int, end: int, flags: int, out: PagesOut) -> int:
    """The lockless walk: pages taken (a prefix of the range), possibly 0."""
    mem = env.mem
    if not flags & (FOLL_GET | FOLL_PIN) and mem.warnings.warn_on_once(
                                 True, "try_grab_folio_fast: neither FOLL_GET nor FOLL_PIN",
                                 lambda: f"flags {foll_flags_str(flags)}"):
        return 0
    seq = mm.write_protect_seq
    # from 5.11 (gup-fast-write-protect-seq) a pin backs off while fork write-protects
    seqcheck = bool(flags & FOLL_PIN) and mem.era.has("gup-fast-write-protect-seq")
    if seqcheck and seq & 1:
        return 0                            # fork is write-protecting: fall back
    # 5.8 (gup-forced-cow-break): only already-writable entries are safe to take
    # without the slow path's early COW, so a read walks as a write
    walk = flags | FOLL_WRITE if mem.era.has("gup-forced-cow-break") else flags
    nr = 0
    addr = start
    while addr < end:
        vma = mm.find_vma(addr)
        if vma is None:
            break
        i0 = vma.idx(addr)
        i1 = min(vma.nr_pages, i0 + ((end - addr) >> PAGE_SHIFT))
        keep, k, pfns, runs = _checked_runs(env, vma, i0, i1, walk)
        if k == 0:
            break
        # a race hook may change the tables: snapshot what was read (only then)
        pending = race_pending(mem, "gup_fast:after_pte_read")
        pfns = pfns[:k].copy() if pending else pfns[:k]
        snap_pte = vma.pte[i0:i0 + k].copy() if pending else None
        raced = pending and race_point(mem, "gup_fast:after_pte_read", mm=mm, address=addr)
        got = try_grab_runs(mem, *runs, k, flags)
        keep = min(keep, got)
        if got and raced:
            assert snap_pte is not None             # a hook ran: it was pending
            # re-read the entries, then re-check the folios as they are now (without a
            # race nothing could change them: the first checks stand)
            keep = 0
            if mm.find_vma(addr) is vma and vma.start <= addr and i0 + got <= vma.nr_pages:
                same = (vma.pte[i0:i0 + got] == snap_pte[:got]) & (vma.pfn[i0:i0 + got]
                                                                   == pfns[:got])
                grab2, after2, _, _ = _fast_checks(env, vma, i0, i0 + got, walk)
                keep, _ = _walk_extent(vma, i0, i0 + got, same & grab2, after2)
        if keep < got:
            gup_put_pfns(env.alloc, pfns[keep:got], flags)
            got = keep
        if got:
            out.store(nr, pfns[:got], clip_runs(runs, got) if lean.ENABLED and got > 1
                      else None)
            starts, heads, _ = runs
            mem.set_flag(int(heads[0]) if len(heads) == 1 else heads[starts < got],
                         PG.referenced)
            nr += got
        if got < i1 - i0:
            break
        addr = vma.end
    if seqcheck and mm.write_protect_seq != seq:
        if nr:
            gup_put_pfns(env.alloc, out.pfns(nr).copy(), flags)
            out.clear(nr)
        return 0
    return nr


def gup_fast_fallback(env: MMEnv, mm: MM, start: int, nr_pages: int, gup_flags: int,
                      pages: Pages | PagesOut | None) -> int:
    """GUP-fast, then the slow path for the rest unless FOLL_FAST_ONLY (spec 1.4, 2.3, 7).
    `pages` may be given as a `PagesOut` whose folio runs the caller reads afterwards."""
    mem = env.mem
    if gup_flags & ~FAST_GUP_ALLOWED and mem.warnings.warn_on_once(
                                 True, "gup_fast_fallback: flag not allowed",
                                 lambda: f"{foll_flags_str(gup_flags & ~FAST_GUP_ALLOWED)}"
                                 " is not supported by the fast entry points"):
        note_gup(mem, path=PATH_INVALID)
        return -EINVAL
    if gup_flags & FOLL_PIN and not mm.flags & MMF.HAS_PINNED:
        mm.flags |= MMF.HAS_PINNED
    start = (start % _U64) & ~(PAGE_SIZE - 1)
    length = ((nr_pages % _U64) << PAGE_SHIFT) % _U64
    end = start + length
    if end >= _U64:
        note_gup(mem, path=PATH_INVALID)        # the range checks of spec 1.4
        return -EOVERFLOW
    if end > TASK_SIZE_MAX:
        note_gup(mem, path=PATH_INVALID)
        return -EFAULT
    assert pages is not None, "is_valid_gup_args() refuses FOLL_GET/FOLL_PIN without pages"
    out = pages if isinstance(pages, PagesOut) else PagesOut(pages, mem)
    nr_pinned = gup_fast(env, mm, start, end, gup_flags, out) if nr_pages > 0 else 0
    note_gup(mem, fast=nr_pinned)
    if nr_pinned == nr_pages or gup_flags & FOLL_FAST_ONLY:
        return nr_pinned
    locked = [0]
    ret = __gup_longterm_locked(env, mm, start + (nr_pinned << PAGE_SHIFT),
                                nr_pages - nr_pinned, out.sub(nr_pinned), locked,
                                gup_flags | FOLL_TOUCH | FOLL_UNLOCKABLE)
    note_gup(mem, path=PATH_FALLBACK, slow=ret)
    if ret < 0:
        return nr_pinned if nr_pinned else ret
    return ret + nr_pinned
