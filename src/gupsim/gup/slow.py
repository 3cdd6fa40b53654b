"""The slow path: `__get_user_pages_locked()` and `__get_user_pages()` (spec 2.4 - 2.8).

Walks the range VMA by VMA under mmap_lock, checks each VMA (`check_vma_flags`), looks
pages up, and faults in what is absent or must be unshared. The lookup is vectorised:
`follow_range()` classifies a run of page-table entries at once and the acceptable
prefix is grabbed in one step, so pinning a prefaulted 1 GiB range costs a few numpy
operations; per-page Python runs only where a page must be faulted. After a fault the
lookup window restarts at one page and doubles while lookups succeed, so a range that
faults page after page does not re-classify its tail each time.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray

from .. import lean
from ..constants import (
    EAGAIN,
    EBUSY,
    EEXIST,
    EFAULT,
    EHWPOISON,
    EINVAL,
    ENOMEM,
    EOPNOTSUPP,
    FOLL_COW,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from ..eras import NEWEST_ERA, Era
from ..memory import PG, Kind
from ..mm import MM, MMF, VM, VMA, FaultFlag, MMEnv, VMFault, handle_mm_fault
from ..mm.fault import populate_anon_bulk, wp_copy_run
from ..mm.mm_struct import mmap_read_lock, mmap_read_unlock, split_huge_mapping
from ..mm.vma import PTE
from .flags import (
    FOLL_ANON,
    FOLL_DUMP,
    FOLL_FORCE,
    FOLL_GET,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_LONGTERM,
    FOLL_MADV_POPULATE,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_PIN,
    FOLL_REMOTE,
    FOLL_SPLIT_PMD,
    FOLL_TOUCH,
    FOLL_TRIED,
    FOLL_UNLOCKABLE,
    FOLL_WRITE,
)
from .grab import try_grab_pfns
from .pages import PagesOut
from .state import race_point

# lookup outcomes of follow_range()
OK, ABSENT, UNSHARE, NOPAGE, DUMP_FAULT = 0, 1, 2, 3, 4
_MAX_FAULT_RETRIES = 8


# -- VMA checks ------------------------------------------------------------------------


def vma_is_fsdax(vma: VMA) -> bool:
    """vma_is_fsdax(): maps fs-dax device memory, which long-term pins must refuse."""
    return vma.file is not None and vma.file.kind == Kind.FSDAX


def vma_is_secretmem(vma: VMA) -> bool:
    """vma_is_secretmem(): a memfd_secret() mapping, which GUP refuses outright."""
    return vma.file is not None and vma.file.kind == Kind.SECRETMEM


def vma_needs_dirty_tracking(vma: VMA) -> bool:
    """Shared writable mapping of a file whose fs tracks dirtying through write faults."""
    if (vma.flags & (VM.SHARED | VM.WRITE)) != (VM.SHARED | VM.WRITE):
        return False
    if vma.flags & VM.PFNMAP or vma.file is None:
        return False
    return bool(vma.file.needs_writenotify)


def check_vma_flags(vma: VMA, gup_flags: int, era: Era = NEWEST_ERA) -> int:
    """0, or the errno that refuses this VMA for these flags (spec 2.5, in order).
    Writable long-term pins of dirty-tracked file mappings are refused from 6.5 on
    (`longterm-file-write-refused`); before, they were accepted."""
    write = gup_flags & FOLL_WRITE
    anon = vma.is_anonymous
    if vma.flags & (VM.IO | VM.PFNMAP):
        return -EFAULT
    if gup_flags & FOLL_ANON and not anon:
        return -EFAULT
    if gup_flags & FOLL_LONGTERM and vma_is_fsdax(vma):
        return -EOPNOTSUPP
    if gup_flags & FOLL_SPLIT_PMD and vma.is_hugetlb:
        return -EOPNOTSUPP
    if vma_is_secretmem(vma):
        return -EFAULT
    if write:
        if (not anon and (gup_flags & (FOLL_PIN | FOLL_LONGTERM)) == (FOLL_PIN | FOLL_LONGTERM)
                and vma_needs_dirty_tracking(vma) and era.has("longterm-file-write-refused")):
            return -EFAULT
        if not vma.flags & VM.WRITE:
            if not gup_flags & FOLL_FORCE:
                return -EFAULT
            if not vma.is_cow:
                return -EFAULT
    elif not vma.flags & VM.READ:
        if not gup_flags & FOLL_FORCE:
            return -EFAULT
        if not vma.flags & VM.MAYREAD:
            return -EFAULT
    return 0


# -- lookup ----------------------------------------------------------------------------


def follow_range(env: MMEnv, vma: VMA, i0: int, i1: int, flags: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """follow_page_mask() over entries [i0, i1): (outcome per entry, PFN per entry).

    A write takes a R/O entry only under FOLL_FORCE in a R/O private mapping
    (can_follow_write_pte()): from 6.0 when the page is anonymous and exclusive; before
    6.0 (no `foll-force-no-foll-cow`) when the retry carries FOLL_COW and the entry is
    dirty, whatever the page (the Dirty COW fix of 4.9, which CVE-2022-2590 got around
    with a dirty R/O entry of a shmem page).

    Folio state (kind, anon-exclusive bit) is looked up only when the answer needs it:
    special entries (zero page or no page), FOLL_FORCE writes and read-only pins; an
    all-empty range answers at once. So a populate or a writable pin of a large range
    costs a few array passes.
    """
    mem = env.mem
    pte = vma.pte[i0:i1]
    pfn = vma.pfn[i0:i1]
    write = bool(flags & FOLL_WRITE)
    # the usual answer first: every entry present, not special, and writable where a
    # write or a read pin (which may need unsharing otherwise) asks for it: all OK
    need = PTE.PRESENT | (PTE.WRITE if write or flags & FOLL_PIN else 0)
    if not lean.ENABLED:
        all_ok = False
    elif len(pte) <= lean.SHORT:
        all_ok = {e & (need | PTE.SPECIAL) for e in pte.tolist()} == {need}   # no call per entry
    else:
        all_ok = not np.count_nonzero((pte & (need | PTE.SPECIAL)) != need)
    if all_ok:
        return np.zeros(len(pte), dtype=np.int8), pfn
    present = (pte & PTE.PRESENT) != 0
    if not present.any():
        return np.full(len(pte), ABSENT, dtype=np.int8), pfn
    special = (pte & PTE.SPECIAL) != 0
    writable = (pte & PTE.WRITE) != 0
    force_ok = write and bool(flags & FOLL_FORCE) \
        and not vma.flags & (VM.SHARED | VM.MAYSHARE) \
        and bool(vma.flags & VM.MAYWRITE) and not vma.flags & VM.WRITE
    ro_pin = bool(flags & FOLL_PIN) and not write
    any_special = bool(special.any())
    if force_ok or ro_pin or any_special:
        huge = (pte & (PTE.PMD | PTE.PUD)) != 0
        safe = np.where(present, pfn, 0)
        heads = mem.head_of(safe).astype(np.int64)
        kind = mem.kind[heads]
        zero = special & ((kind == Kind.ZERO) | (kind == Kind.HUGE_ZERO))
        anon = ~special & ((kind == Kind.ANON) | (kind == Kind.KSM))
        excl_at = np.where(huge, heads, safe)       # a PMD-mapped THP uses its head's bit
        exclusive = (mem.flags[excl_at] & np.uint32(PG.anon_exclusive)) != 0
    codes = np.where(present, OK, ABSENT).astype(np.int8)
    if write:
        if not env.era.has("foll-force-no-foll-cow"):
            cow = bool(flags & FOLL_COW) and bool(flags & FOLL_FORCE)
            can_write = writable | ((pte & PTE.DIRTY) != 0) if cow else writable
        else:
            can_write = writable | (force_ok & anon & exclusive) if force_ok else writable
        codes[present & ~can_write] = ABSENT
    if any_special:
        if flags & FOLL_DUMP:
            codes[(codes == OK) & special] = DUMP_FAULT
        codes[(codes == OK) & special & ~zero] = NOPAGE
    if ro_pin:
        ro = (codes == OK) & ~writable
        must = gup_must_unshare(env.era, anon, exclusive,
                                bool(flags & FOLL_LONGTERM) and vma.is_cow)
        codes[ro & must] = UNSHARE
    return codes, pfn


def gup_must_unshare(era: Era, anon: NDArray[np.bool_], exclusive: NDArray[np.bool_],
                     longterm_cow: bool) -> NDArray[np.bool_]:
    """Vectorised gup_must_unshare() for R/O pins of R/O-mapped pages: must the page be
    unshared (FAULT_FLAG_UNSHARE) before it is pinned?

    From 5.19 (`anon-exclusive-unshare`) a possibly shared anonymous page must; from 6.2
    (`reliable-ro-longterm`) also any other page of a COW mapping under FOLL_LONGTERM
    (`longterm_cow`). Before 5.19 nothing is unshared: the pin takes the shared page and
    a later write by the process copies it away from the pin.
    """
    if era.has("anon-exclusive-unshare"):
        must = anon & ~exclusive
    else:
        must = np.zeros(len(anon), dtype=bool)
    if longterm_cow and era.has("reliable-ro-longterm"):
        must = must | ~anon
    return must


def must_unshare_one(era: Era, anon: bool, exclusive: bool, longterm_cow: bool) -> bool:
    """`gup_must_unshare()` of one page, in plain bools (GUP-fast's short walks)."""
    if era.has("anon-exclusive-unshare") and anon and not exclusive:
        return True
    return longterm_cow and era.has("reliable-ro-longterm") and not anon


def forced_cow_flags(era: Era, vma: VMA, gup_flags: int) -> int:
    """5.8 only (`gup-forced-cow-break`): GUP taking references (FOLL_GET or FOLL_PIN) in
    a COW mapping walks and faults as if writing, so a shared page is copied first.
    Modelled for writable VMAs only (on a read-only private VMA the 5.8 kernel relied on
    FOLL_COW, as every kernel before 6.0 did: see follow_range())."""
    if (era.has("gup-forced-cow-break") and vma.is_cow and vma.flags & VM.WRITE
            and gup_flags & (FOLL_GET | FOLL_PIN)):
        return gup_flags | FOLL_WRITE
    return gup_flags


def _touch(env: MMEnv, vma: VMA, i0: int, n: int, pfns: np.ndarray, flags: int) -> None:
    """FOLL_TOUCH: mark folios accessed; a write dirties a folio whose PTE is clean."""
    if not flags & FOLL_TOUCH or n == 0:
        return
    mem = env.mem
    pte = vma.pte[i0:i0 + n]
    if lean.ENABLED and n <= lean.SHORT:            # plain ints, one flag update each
        ptes, taken = pte.tolist(), pfns[:n]
        bits = {e & (PTE.SPECIAL | PTE.DIRTY) for e in ptes}      # one pass, no call per entry
        if not any(b & PTE.SPECIAL for b in bits):
            heads = taken if not any(mem.head_off.take(taken).tolist()) \
                else mem.head_of(taken)
            mem.set_flag(heads, PG.referenced)
            if flags & FOLL_WRITE and 0 in bits:            # some entry is clean
                clean = [j for j, e in enumerate(ptes) if not e & PTE.DIRTY]
                mem.set_flag(heads[clean], PG.dirty)
            return
    real = (pte & PTE.SPECIAL) == 0
    heads = mem.head_of(pfns[:n][real])
    mem.set_flag(heads, PG.referenced)
    if flags & FOLL_WRITE:
        clean = (pte[real] & PTE.DIRTY) == 0
        mem.set_flag(heads[clean], PG.dirty)


def dump_skips_hole(vma: VMA, addr: int) -> bool:
    """no_page_table() under FOLL_DUMP: an empty entry that would read as zeros (anonymous
    memory, or hugetlb with nothing in the page cache) is -EFAULT instead of a fault.
    Only pte_none entries count: swap and other non-present entries are faulted in."""
    if vma.pte[vma.idx(addr)] != PTE.NONE:
        return False
    if vma.is_hugetlb:
        return vma.file is None or not vma.file.has_folio(vma.file_index(addr))
    return vma.is_anonymous


# -- faults ------------------------------------------------------------------------------


@functools.cache
def _fault_flags(flags: int, unshare: bool) -> FaultFlag:
    """The FAULT_FLAG_* a GUP fault with these FOLL_* flags passes to handle_mm_fault()
    (cached: IntFlag arithmetic costs more than the rest of a populate fault)."""
    ff = FaultFlag(0)
    if flags & FOLL_WRITE:
        ff |= FaultFlag.WRITE
    if flags & FOLL_REMOTE:
        ff |= FaultFlag.REMOTE
    if flags & FOLL_UNLOCKABLE:
        ff |= FaultFlag.ALLOW_RETRY | FaultFlag.KILLABLE
        if flags & FOLL_INTERRUPTIBLE:
            ff |= FaultFlag.INTERRUPTIBLE
    if flags & FOLL_NOWAIT:
        ff |= FaultFlag.ALLOW_RETRY | FaultFlag.RETRY_NOWAIT
    if flags & FOLL_TRIED:
        ff |= FaultFlag.TRIED
    if unshare:
        ff |= FaultFlag.UNSHARE
    return ff


_VM_FAULT_ERROR = int(VMFault.ERROR)
_VM_FAULT_OOM = int(VMFault.OOM)
_VM_FAULT_HWPOISON = int(VMFault.HWPOISON)
_VM_FAULT_RETRY = int(VMFault.RETRY)
_VM_FAULT_MAJOR = int(VMFault.MAJOR)


def faultin_page(env: MMEnv, mm: MM, vma: VMA, address: int, flags: int, unshare: bool,
                 locked: list[int] | None) -> int:
    """Fault one page in for GUP: 0 (look it up again), -EBUSY (stop here), or -errno."""
    if flags & FOLL_NOFAULT:
        return -EFAULT
    ff = _fault_flags(flags, unshare)
    ret = int(handle_mm_fault(env, mm, vma, address, ff))
    if ret & _VM_FAULT_ERROR:
        if ret & _VM_FAULT_OOM:
            return -ENOMEM
        if ret & _VM_FAULT_HWPOISON:
            return -EHWPOISON if flags & FOLL_HWPOISON else -EFAULT
        return -EFAULT
    if ret & _VM_FAULT_RETRY:
        if not flags & FOLL_NOWAIT and locked is not None:   # no FAULT_FLAG_RETRY_NOWAIT
            locked[0] = 0
        return -EBUSY
    if flags & FOLL_NOWAIT and ret & _VM_FAULT_MAJOR:
        return -EBUSY     # the model did the I/O at once; GUP still reports "not yet"
    return 0


def _bulk_anon_write_faults(env: MMEnv, mm: MM, vma: VMA, i: int, codes: np.ndarray,
                            flags: int) -> int:
    """Write-fault a run of empty entries of a private anonymous VMA at once.

    A model shortcut with the kernel's result: each page of the run would take one
    do_anonymous_page() write fault and get a fresh exclusive page (THP where enabled),
    which is what populate_anon_bulk() does as arrays. Returns the entries faulted in
    (0: not applicable here, so take the per-page fault path).
    """
    if (not flags & FOLL_WRITE or flags & (FOLL_NOFAULT | FOLL_NOWAIT)
            or vma.file is not None or vma.is_shared or vma.is_hugetlb
            or not vma.flags & VM.WRITE):
        return 0
    n = _empty_run(vma, i, codes)
    if n < 2:
        return 0
    populate_anon_bulk(env, mm, vma, i, i + n)          # the run was all empty before
    return int(np.count_nonzero(vma.pte[i:i + n]))


def _cow_faults(env: MMEnv, mm: MM, vma: VMA, i: int, codes: np.ndarray, flags: int) -> int:
    """The write (or unshare) faults of a run of present entries GUP cannot use yet, at
    once (`wp_copy_run()`: fork's shared pages, the zero page). Returns the entries done
    (0: not applicable here, so take the per-page fault path). A FOLL_FORCE write into a
    mapping without VM_WRITE goes per page: its retry rule depends on the era (FOLL_COW)."""
    code = int(codes[0])
    if flags & (FOLL_NOFAULT | FOLL_NOWAIT) or not vma.pte[i] & PTE.PRESENT or not (
            code == UNSHARE or (code == ABSENT and flags & FOLL_WRITE
                                and vma.flags & VM.WRITE)):
        return 0
    other = np.flatnonzero(codes != code)
    return wp_copy_run(env, mm, vma, i, i + (int(other[0]) if len(other) else len(codes)),
                       code == UNSHARE)


def _empty_run(vma: VMA, i: int, codes: np.ndarray) -> int:
    """Length of the run of absent, empty (pte_none) entries that starts at entry i."""
    run = np.flatnonzero(codes != ABSENT)
    n = int(run[0]) if len(run) else len(codes)
    empty = vma.pte[i:i + n] == 0
    if not empty.all():
        n = int(np.argmin(empty))
    return n


def _populate_faults(env: MMEnv, mm: MM, vma: VMA, i: int, codes: np.ndarray, flags: int,
                     locked: list[int] | None, failed: dict[int, int]) -> int:
    """Populate's faults for a run of empty entries, one after the other (no pages array).

    The kernel faults a page, looks it up, and moves on to the next; faulting the run
    first and looking it up once after is the same sequence of faults without a lookup
    between each (entries that an earlier fault of the run filled, a THP or a hugetlb
    page, are skipped). A failing fault ends the run; its result is kept in `failed` by
    address, for the walk to report when it reaches that page instead of faulting it
    again. Returns how many entries were filled.
    """
    if flags & (FOLL_NOFAULT | FOLL_NOWAIT | FOLL_DUMP):
        return 0
    n = _empty_run(vma, i, codes)
    filled = 0
    for j in range(i, i + n):
        if vma.pte[j] != PTE.NONE:
            continue
        addr = vma.addr_of(j)
        rc = faultin_page(env, mm, vma, addr, flags, False, locked)
        if rc:
            failed[addr] = rc
            break
        filled += 1
    return filled


# -- the walk ----------------------------------------------------------------------------


def _split_pmds(mm: MM, vma: VMA, i0: int, i1: int) -> None:
    """FOLL_SPLIT_PMD: PTE-map every THP PMD mapping the range touches (folios stay whole)."""
    if vma.is_hugetlb:
        return
    idx = np.flatnonzero((vma.pte[i0:i1] & PTE.PMD) != 0)
    done: set[int] = set()
    for j in idx.tolist():
        i = i0 + j
        if vma.pte[i] & PTE.PMD:
            first = i - ((vma.start >> PAGE_SHIFT) + i) % 512
            if first not in done:
                done.add(first)
                split_huge_mapping(mm, vma, i)


def __get_user_pages(env: MMEnv, mm: MM, start: int, nr_pages: int, gup_flags: int,
                     out: PagesOut | None, locked: list[int] | None) -> int:
    """Pages done (a prefix of the range), or the error of the first page (spec 2.4)."""
    if nr_pages == 0:
        return 0
    mem = env.mem
    start &= ~(PAGE_SIZE - 1)
    done = 0
    ret = 0
    vma: VMA | None = None
    window = nr_pages
    retries = 0
    grab = bool(gup_flags & (FOLL_GET | FOLL_PIN))
    walk = gup_flags                # the flags the walk and its faults use (5.8: +WRITE)
    cow_at = -1                     # before 6.0: the page whose retry carries FOLL_COW
    failed: dict[int, int] = {}     # address -> result of a run's failed fault (populate)
    while done < nr_pages:
        addr = start + (done << PAGE_SHIFT)
        if vma is None or addr >= vma.end or addr < vma.start:
            vma = mm.find_vma(addr)
            if vma is None:
                ret = -ENOMEM if gup_flags & FOLL_MADV_POPULATE else -EFAULT
                break
            rc = check_vma_flags(vma, gup_flags, env.era)
            if rc:
                ret = -EINVAL if gup_flags & FOLL_MADV_POPULATE else rc
                break
            walk = forced_cow_flags(env.era, vma, gup_flags)
        i = vma.idx(addr)
        n = min(nr_pages - done, vma.nr_pages - i, window)
        if gup_flags & FOLL_SPLIT_PMD:
            _split_pmds(mm, vma, i, i + n)
        codes, pfns = follow_range(env, vma, i, i + n,
                                   walk | FOLL_COW if addr == cow_at else walk)
        # count_nonzero first: the usual all-OK answer costs no index array
        k = n if not np.count_nonzero(codes) else int((codes != OK).nonzero()[0][0])
        if k:
            got = k
            if grab:
                got = try_grab_pfns(mem, pfns[:k], gup_flags)
                if got < 0:
                    ret = got
                    break
                if out is not None:
                    out.store(done, pfns[:got])
            _touch(env, vma, i, got, pfns, walk)
            done += got
            retries = 0
            cow_at = -1
            window = min(window * 2, nr_pages)
            if got < k:
                ret = -ENOMEM
                break
            continue
        code = int(codes[0])
        window = 1
        if code in (ABSENT, UNSHARE):
            if code == ABSENT and gup_flags & FOLL_DUMP and dump_skips_hole(vma, addr):
                ret = -EFAULT       # a core dump skips holes that would read as zeros
                break
            retries += 1
            if mem.warnings.warn_on_once(retries > _MAX_FAULT_RETRIES,
                                         "__get_user_pages: fault makes no progress",
                                         f"address {addr:#x} still not usable after "
                                         f"{_MAX_FAULT_RETRIES} faults (a model bug)"):
                ret = -EFAULT
                break
            raced = race_point(mem, "gup_slow:before_fault", mm=mm, address=addr)
            bulk = 0 if raced or addr in failed else _cow_faults(env, mm, vma, i, codes, walk)
            bulk = bulk or (0 if raced or code != ABSENT or addr in failed else (
                _bulk_anon_write_faults(env, mm, vma, i, codes, walk)
                or (out is None and not grab
                    and _populate_faults(env, mm, vma, i, codes, gup_flags, locked, failed))))
            if bulk:                # progress is counted when the entries are grabbed
                window = n
                continue
            if addr in failed:              # populate already faulted here and failed
                rc = failed.pop(addr)
            else:
                rc = faultin_page(env, mm, vma, addr, walk, code == UNSHARE, locked)
            if rc == 0:
                if walk & FOLL_WRITE and not vma.flags & VM.WRITE \
                        and not env.era.has("foll-force-no-foll-cow"):
                    # before 6.0 faultin_page() set FOLL_COW once the write fault broke
                    # COW (VM_FAULT_WRITE; modelled: any write fault that succeeded here)
                    cow_at = addr
                race_point(mem, "gup_slow:after_fault", mm=mm, address=addr)
                vma = None          # the fault may have changed the VMA list (never here)
                continue
            ret = 0 if rc in (-EBUSY, -EAGAIN) else rc
            break
        if code == NOPAGE:
            # follow_pfn_pte(): the entry is touched, then there is no page to return
            if gup_flags & FOLL_TOUCH:
                vma.pte[i] |= PTE.YOUNG | (PTE.DIRTY if gup_flags & FOLL_WRITE else 0)
            if out is not None:
                ret = -EEXIST
                break
            done += 1
            continue
        ret = -EFAULT               # FOLL_DUMP and the zero page / no struct page
        break
    return done if done else ret


def __get_user_pages_locked(env: MMEnv, mm: MM, start: int, nr_pages: int,
                            out: PagesOut | None, locked: list[int] | None, flags: int) -> int:
    """Take mmap_lock if `*locked == 0`, run the walk, retry after a dropped lock."""
    if nr_pages == 0:
        return 0
    warn = env.mem.warnings
    must_unlock = False
    if locked is not None and locked[0] == 0:
        mmap_read_lock(mm)
        must_unlock = True
        locked[0] = 1
    else:
        warn.warn_on_once(not mm.mmap_lock.held(), "__get_user_pages_locked: mmap_lock not held",
                          "the caller must hold mmap_lock (take it, or use a *_fast or "
                          "*_unlocked variant)")
    if flags & FOLL_PIN:
        mm.flags |= MMF.HAS_PINNED
    if out is not None and not flags & FOLL_PIN:
        flags |= FOLL_GET
    pages_done = 0
    while True:
        ret = __get_user_pages(env, mm, start, nr_pages, flags, out, locked)
        if not flags & FOLL_UNLOCKABLE or locked is None or locked[0]:
            if pages_done == 0:
                pages_done = ret
            elif ret > 0:
                pages_done += ret
            break
        # the fault dropped mmap_lock after `ret` pages: retake it, retry that page alone
        if ret > 0:
            pages_done += ret
            nr_pages -= ret
            start += ret << PAGE_SHIFT
            out = out.sub(ret) if out is not None else None
        if nr_pages == 0:
            break
        mmap_read_lock(mm)
        locked[0] = 1
        ret = __get_user_pages(env, mm, start, 1, flags | FOLL_TRIED, out, locked)
        while not locked[0]:        # dropped again: retry the same page until it sticks
            mmap_read_lock(mm)
            locked[0] = 1
            ret = __get_user_pages(env, mm, start, 1, flags | FOLL_TRIED, out, locked)
        if ret != 1:
            if pages_done == 0:
                pages_done = ret
            break
        pages_done += 1
        nr_pages -= 1
        start += PAGE_SIZE
        out = out.sub(1) if out is not None else None
        if nr_pages == 0:
            break
    if must_unlock and locked is not None and locked[0]:
        mmap_read_unlock(mm)
        locked[0] = 0
    if warn.warn_on_once(pages_done == 0 and not flags & FOLL_NOWAIT,
                         "__get_user_pages_locked: no pages and no error",
                         "the walk returned 0 without FOLL_NOWAIT"):
        return -EFAULT
    return pages_done


# -- populate: the page walk of mmap(MAP_POPULATE), mlock() and MADV_POPULATE_* ----------
#
# The kernel keeps these in mm/gup.c and mm/ calls them; the model's mm/ may not import
# gup/, so `register_populate()` installs them on the machine's MMEnv and mm/syscalls.py
# calls them through `env.mm_populate()` / `env.faultin_page_range()`. They pass no pages
# array: nothing is pinned, no reference is taken, only page tables are filled.


def vma_is_accessible(vma: VMA) -> bool:
    """vma_is_accessible(): any of read, write or execute permission (not PROT_NONE)."""
    return bool(vma.flags & (VM.READ | VM.WRITE | VM.EXEC))


def populate_vma_page_range(env: MMEnv, mm: MM, vma: VMA, start: int, end: int,
                            locked: list[int] | None) -> int:
    """Fault in [start, end) of one VMA for mlock() / MAP_POPULATE: pages done, or -errno.

    VM_LOCKONFAULT has nothing to do (reported as done); PROT_NONE is -EFAULT. A private
    writable VMA is walked with FOLL_WRITE, so COW is broken and anonymous memory gets
    its own pages now; anything else with FOLL_FORCE, a read fault that also reaches
    write-only or exec-only mappings; FOLL_TOUCH marks what it finds accessed.
    """
    nr_pages = (end - start) >> PAGE_SHIFT
    if vma.flags & VM.LOCKONFAULT:
        return nr_pages
    if not vma_is_accessible(vma):
        return -EFAULT
    gup_flags = FOLL_TOUCH
    if (vma.flags & (VM.WRITE | VM.SHARED)) == VM.WRITE:
        gup_flags |= FOLL_WRITE
    else:
        gup_flags |= FOLL_FORCE
    if locked is not None:
        gup_flags |= FOLL_UNLOCKABLE
    return __get_user_pages(env, mm, start, nr_pages, gup_flags, None,
                            locked if locked is not None else [1])


def faultin_page_range(env: MMEnv, mm: MM, start: int, end: int, write: bool,
                       locked: list[int] | None) -> int:
    """MADV_POPULATE_(READ|WRITE)'s walk of [start, end): pages done, or -errno.

    No FOLL_FORCE (the mapping's own permissions apply); FOLL_MADV_POPULATE makes a hole
    -ENOMEM and a refused VMA -EINVAL; FOLL_HWPOISON reports poison as -EHWPOISON.
    """
    gup_flags = FOLL_TOUCH | FOLL_HWPOISON | FOLL_UNLOCKABLE | FOLL_MADV_POPULATE
    if write:
        gup_flags |= FOLL_WRITE
    return __get_user_pages_locked(env, mm, start, (end - start) >> PAGE_SHIFT, None, locked,
                                   gup_flags)


def _find_vma_intersection(mm: MM, start: int, end: int) -> VMA | None:
    """The first VMA overlapping [start, end), or None."""
    for vma in mm.vmas:
        if vma.end > start:
            return vma if vma.start < end else None
    return None


def __mm_populate(env: MMEnv, mm: MM, start: int, length: int, ignore_errors: bool) -> int:
    """Populate every VMA of [start, start+length) in turn: 0, or the first -errno.

    VM_IO / VM_PFNMAP VMAs are skipped; with `ignore_errors` (mmap) a failing VMA is
    left as it is and the walk goes on with the next one, without (mlock) it stops.
    """
    end = start + length
    locked = [0]
    vma: VMA | None = None
    ret = 0
    nstart = start
    while nstart < end:
        if not locked[0]:
            mmap_read_lock(mm)
            locked[0] = 1
            vma = _find_vma_intersection(mm, nstart, end)
        elif vma is not None and nstart >= vma.end:
            vma = _find_vma_intersection(mm, vma.end, end)
        if vma is None:
            break
        nend = min(end, vma.end)
        if vma.flags & (VM.IO | VM.PFNMAP):
            nstart = nend
            continue
        nstart = max(nstart, vma.start)
        ret = populate_vma_page_range(env, mm, vma, nstart, nend, locked)
        if ret < 0:
            if ignore_errors:
                ret = 0
                nstart = nend
                continue
            break
        if env.mem.warnings.warn_on_once(ret == 0 and bool(locked[0]),
                                         "__mm_populate: no progress",
                                         f"populating {nstart:#x} did nothing with "
                                         "mmap_lock held (a model bug)"):
            ret = -EFAULT
            break
        nstart += ret << PAGE_SHIFT
        ret = 0
    if locked[0]:
        mmap_read_unlock(mm)
    return ret


def register_populate(env: MMEnv) -> None:
    """Install the populate walks on a machine's MMEnv (called when it is registered)."""
    env.populate_hook = __mm_populate
    env.faultin_hook = faultin_page_range


__all__ = ["EAGAIN", "check_vma_flags", "follow_range", "faultin_page", "__get_user_pages",
           "__get_user_pages_locked", "vma_needs_dirty_tracking", "mmap_read_lock",
           "mmap_read_unlock"]
__all__ += ["populate_vma_page_range", "faultin_page_range", "register_populate"]
