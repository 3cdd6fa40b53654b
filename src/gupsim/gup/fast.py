"""GUP-fast: the lockless walk over the current mm's page tables (spec 7).

The walk reads a run of entries, grabs the acceptable prefix at once, re-reads the
entries and keeps only what did not change, exactly as the kernel's per-PTE
read / grab / recheck sequence, but vectorised over the VMA arrays. Pinning callers
bracket the walk with `write_protect_seq` and drop everything if fork ran meanwhile.
`gup_fast_fallback()` then hands the remainder to the slow path unless FOLL_FAST_ONLY.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..constants import EFAULT, EINVAL, EOVERFLOW, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE
from ..memory import PG, Kind
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
from .grab import gup_put_pfns, try_grab_pfns_fast
from .longterm import __gup_longterm_locked, longterm_pinnable
from .pages import Pages, PagesOut
from .slow import gup_must_unshare
from .state import PATH_FALLBACK, PATH_INVALID, note_gup, race_point

TASK_SIZE_MAX = TASK_SIZE - PAGE_SIZE
_U64 = 1 << 64


def gup_fast_folio_allowed(env: MMEnv, heads: np.ndarray, flags: int) -> NDArray[np.bool_]:
    """Vectorised gup_fast_folio_allowed(): secretmem never; long-term writable pins only
    of anon, shmem and hugetlb folios (a NULL mapping, e.g. after truncate, falls back),
    from 6.5 on (`longterm-file-write-refused`)."""
    mem = env.mem
    kind = mem.kind[heads]
    allowed = kind != Kind.SECRETMEM
    if (flags & (FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE)) == (FOLL_PIN | FOLL_LONGTERM
                                                               | FOLL_WRITE) \
            and env.era.has("longterm-file-write-refused"):
        hugetlb = (mem.flags[heads] & np.uint32(PG.hugetlb)) != 0
        anon = (kind == Kind.ANON) | (kind == Kind.KSM)
        shmem = (kind == Kind.SHMEM) & (mem.mapping[heads] != 0)
        allowed &= hugetlb | anon | shmem
    return allowed


def _fast_checks(env: MMEnv, vma: VMA, i0: int, i1: int, flags: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry of [i0, i1): (may it be grabbed, does it pass the after-grab checks, PFN).

    The kernel's order per entry (spec 7.2): the PTE tests and the long-term pinnability
    test inside try_grab_folio_fast() refuse before anything is counted; the folio test
    of gup_fast_folio_allowed() and gup_must_unshare() run after the grab, so a refusal
    there is a pin taken and dropped again (visible as +1/-1 in the vmstat counters).
    """
    mem = env.mem
    pte = vma.pte[i0:i1].astype(np.int64)
    pfn = vma.pfn[i0:i1]
    grab = ((pte & PTE.PRESENT) != 0) & ((pte & PTE.SPECIAL) == 0)
    if not vma.flags & (VM.READ | VM.WRITE | VM.EXEC):
        grab[:] = False                     # PROT_NONE: protnone entries end the walk
    writable = (pte & PTE.WRITE) != 0
    if flags & FOLL_WRITE:
        grab &= writable
    safe = np.where(grab, pfn, 0)
    heads = mem.head_of(safe).astype(np.int64)
    if flags & FOLL_LONGTERM:
        grab &= longterm_pinnable(mem, heads)
    after = gup_fast_folio_allowed(env, heads, flags)
    if flags & FOLL_PIN and not flags & FOLL_WRITE:
        kind = mem.kind[heads]
        anon = (kind == Kind.ANON) | (kind == Kind.KSM)
        huge = (pte & (PTE.PMD | PTE.PUD)) != 0
        excl = (mem.flags[np.where(huge, heads, safe)] & np.uint32(PG.anon_exclusive)) != 0
        must = gup_must_unshare(env.era, anon, excl, bool(flags & FOLL_LONGTERM))
        after &= writable | ~must
    return grab, after, pfn


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
    if mem.warnings.warn_on_once(not flags & (FOLL_GET | FOLL_PIN),
                                 "try_grab_folio_fast: neither FOLL_GET nor FOLL_PIN",
                                 f"flags {foll_flags_str(flags)}"):
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
        grab, after, pfns = _fast_checks(env, vma, i0, i1, walk)
        keep, k = _walk_extent(vma, i0, i1, grab, after)
        if k == 0:
            break
        pfns = pfns[:k].copy()
        snap_pte = vma.pte[i0:i0 + k].copy()
        raced = race_point(mem, "gup_fast:after_pte_read", mm=mm, address=addr)
        got = try_grab_pfns_fast(mem, pfns, flags)
        keep = min(keep, got)
        if got and raced:
            # re-read the entries, then re-check the folios as they are now (without a
            # race nothing could change them: the first checks stand)
            keep = 0
            if mm.find_vma(addr) is vma and vma.start <= addr and i0 + got <= vma.nr_pages:
                same = (vma.pte[i0:i0 + got] == snap_pte[:got]) & (vma.pfn[i0:i0 + got]
                                                                   == pfns[:got])
                grab2, after2, _ = _fast_checks(env, vma, i0, i0 + got, walk)
                keep, _ = _walk_extent(vma, i0, i0 + got, same & grab2, after2)
        if keep < got:
            gup_put_pfns(env.alloc, pfns[keep:got], flags)
            got = keep
        if got:
            out.store(nr, pfns[:got])
            heads = mem.head_of(pfns[:got])      # set_flag: repeats are harmless
            mem.set_flag(heads, PG.referenced)
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
                      pages: Pages | None) -> int:
    """GUP-fast, then the slow path for the rest unless FOLL_FAST_ONLY (spec 1.4, 2.3, 7)."""
    mem = env.mem
    if mem.warnings.warn_on_once(bool(gup_flags & ~FAST_GUP_ALLOWED),
                                 "gup_fast_fallback: flag not allowed",
                                 f"{foll_flags_str(gup_flags & ~FAST_GUP_ALLOWED)} is not "
                                 "supported by the fast entry points"):
        note_gup(mem, path=PATH_INVALID)
        return -EINVAL
    if gup_flags & FOLL_PIN:
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
    out = PagesOut(pages, mem)
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
