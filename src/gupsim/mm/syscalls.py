"""The memory system calls: mmap, munmap, mprotect, madvise, mremap, mlock, munlock.

Each checks its arguments in the kernel's order and raises `OSError` with the errno
Linux gives, before changing anything, so that a refused call leaves the machine as
it was. (Where Linux applies an operation to the mapped parts of a range and then
reports ENOMEM for a hole, as madvise does, so does the model.)
"""

from __future__ import annotations

import errno
import os

import numpy as np

from ..constants import (
    CAP_IPC_LOCK,
    EHWPOISON,
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DODUMP,
    MADV_DOFORK,
    MADV_DONTDUMP,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_HWPOISON,
    MADV_KEEPONFORK,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_UNMERGEABLE,
    MADV_WILLNEED,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_FLAGS_KNOWN,
    MAP_GROWSDOWN,
    MAP_HUGE_MASK,
    MAP_HUGE_SHIFT,
    MAP_HUGETLB,
    MAP_LOCKED,
    MAP_NONBLOCK,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    MLOCK_ONFAULT,
    MMAP_BASE,
    MMAP_MIN_ADDR,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_ORDER,
    PMD_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    PUD_ORDER,
    TASK_SIZE,
)
from ..memory import PG, Kind
from .env import MMEnv
from .file import MappableFile
from .mm_struct import (
    MM,
    Cred,
    rlimit_pages,
    split_huge_mapping,
    zap_range,
)
from .mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_UNMAP,
    invalidate_end,
    invalidate_start,
)
from .reclaim import collapse_range, lazyfree_range, pageout_range, poison_page
from .vma import PTE, VM, VMA, vma_close


def fail(err: int, what: str) -> OSError:
    """The OSError a system call raises: the errno, its strerror text, and what went wrong."""
    return OSError(err, f"{os.strerror(err)}: {what}")


def page_align(n: int) -> int:
    """PAGE_ALIGN(): `n` rounded up to a multiple of PAGE_SIZE."""
    return (n + PAGE_SIZE - 1) & PAGE_MASK


def prot_to_vm(prot: int) -> int:
    """calc_vm_prot_bits(): PROT_READ/WRITE/EXEC as VM_READ/WRITE/EXEC."""
    flags = VM.NONE
    if prot & PROT_READ:
        flags |= VM.READ
    if prot & PROT_WRITE:
        flags |= VM.WRITE
    if prot & PROT_EXEC:
        flags |= VM.EXEC
    return flags


def _check_prot(prot: int) -> None:
    if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
        raise fail(errno.EINVAL, f"unknown protection bits {prot:#x}: use PROT_READ, "
                                 "PROT_WRITE, PROT_EXEC or PROT_NONE")


# -- mmap ---------------------------------------------------------------------------------


def get_unmapped_area(mm: MM, length: int, align: int = PAGE_SIZE,
                      hint: int = 0) -> int:
    """Top-down search for a free range below MMAP_BASE (the hint is used if it is free)."""
    if hint and hint + length <= TASK_SIZE and hint >= MMAP_MIN_ADDR and hint % align == 0:
        if not mm.vmas_in(hint, hint + length):
            return hint
    top = MMAP_BASE
    for vma in reversed(mm.vmas):          # kept sorted by start (find_vma bisects it)
        if vma.start >= top:
            top = min(top, vma.start)
            continue
        cand = (top - length) & ~(align - 1)
        if cand >= vma.end:
            return cand
        top = vma.start
    cand = (top - length) & ~(align - 1)
    if cand < MMAP_MIN_ADDR:
        raise fail(errno.ENOMEM, f"no room for {length} bytes in the address space")
    return cand


def do_mmap(env: MMEnv, mm: MM, cred: Cred, addr: int, length: int, prot: int, flags: int,
            file: MappableFile | None = None, offset: int = 0) -> int:
    """mmap(2). Returns the address; raises OSError(errno) as Linux would."""
    _check_prot(prot)
    maptype = flags & MAP_TYPE
    if maptype not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
        raise fail(errno.EINVAL, "flags must include exactly one of MAP_SHARED or MAP_PRIVATE")
    if maptype == MAP_SHARED_VALIDATE and flags & ~MAP_FLAGS_KNOWN:
        raise fail(errno.EOPNOTSUPP, f"MAP_SHARED_VALIDATE with unknown flags "
                                     f"{flags & ~MAP_FLAGS_KNOWN:#x}")
    shared = maptype in (MAP_SHARED, MAP_SHARED_VALIDATE)
    anon = bool(flags & MAP_ANONYMOUS)
    if not anon and file is None:
        raise fail(errno.EBADF, "no file given: pass fd=<file> or use MAP_ANONYMOUS")
    if offset % PAGE_SIZE or offset < 0:
        raise fail(errno.EINVAL, f"offset {offset:#x} is not a multiple of the page size")
    if length <= 0:
        raise fail(errno.EINVAL, "length must be greater than 0")
    huge_order = 0
    if anon and flags & MAP_HUGETLB:
        size_log = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK
        size_log = size_log or 21
        if size_log not in (21, 30):
            raise fail(errno.EINVAL, f"no hugetlb page size of 2**{size_log} bytes: use "
                                     "MAP_HUGE_2MB or MAP_HUGE_1GB")
        huge_order = PMD_ORDER if size_log == 21 else PUD_ORDER
    elif file is not None and file.kind == Kind.HUGETLBFS:
        huge_order = file.folio_order
    elif flags & MAP_HUGETLB and not anon:
        raise fail(errno.EINVAL, "MAP_HUGETLB needs MAP_ANONYMOUS or a hugetlbfs file")
    align = PAGE_SIZE << huge_order
    length = (length + align - 1) & ~(align - 1)
    if length > TASK_SIZE - MMAP_MIN_ADDR or offset + length < offset:
        raise fail(errno.ENOMEM, "length exceeds the address space")
    if file is not None and not anon:
        if not file.readable:
            raise fail(errno.EACCES, "the file is not open for reading")
        if shared and prot & PROT_WRITE and not file.writable:
            raise fail(errno.EACCES, "PROT_WRITE with MAP_SHARED needs a file opened for writing")
        if huge_order and (offset % align):
            raise fail(errno.EINVAL, "hugetlbfs offsets must be huge-page aligned")
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if fixed:
        if addr % align:
            raise fail(errno.EINVAL, f"MAP_FIXED address {addr:#x} is not aligned to {align}")
        if addr + length > TASK_SIZE:
            raise fail(errno.ENOMEM, "MAP_FIXED range goes beyond the user address space")
        if addr < MMAP_MIN_ADDR:
            raise fail(errno.EPERM, f"addresses below vm.mmap_min_addr ({MMAP_MIN_ADDR:#x}) "
                                    "cannot be mapped")
        if flags & MAP_FIXED_NOREPLACE and mm.vmas_in(addr, addr + length):
            raise fail(errno.EEXIST, "MAP_FIXED_NOREPLACE range overlaps an existing mapping")
    vmflags = prot_to_vm(prot) | VM.MAYREAD | VM.MAYWRITE | VM.MAYEXEC
    if shared:
        vmflags |= VM.SHARED | VM.MAYSHARE
        if file is not None and not anon and not file.writable:
            vmflags &= ~(VM.MAYWRITE | VM.SHARED)
    if flags & MAP_GROWSDOWN:
        vmflags |= VM.GROWSDOWN
    if flags & MAP_NORESERVE:
        vmflags |= VM.NORESERVE
    if flags & MAP_LOCKED:
        _charge_mlock(mm, cred, length >> PAGE_SHIFT, errno.EAGAIN)
        vmflags |= VM.LOCKED
    if file is not None and not anon and file.fs_name == "secretmem":
        # secretmem_mmap: shared mappings only, always locked (and charged as mlock)
        if not shared:
            raise fail(errno.EINVAL, "a memfd_secret() file can be mapped MAP_SHARED only")
        if not vmflags & VM.LOCKED:     # mlock_future_ok only: no can_do_mlock (EPERM)
            _charge_mlock(mm, cred, length >> PAGE_SHIFT, errno.EAGAIN, can_do_mlock=False)
        vmflags |= VM.LOCKED | VM.DONTDUMP
    if huge_order:
        vmflags |= VM.HUGETLB
    # the backing object for anonymous shared and hugetlb memory
    backing = file if not anon else None
    if anon and huge_order:
        if env.hugetlb_file is None:
            raise fail(errno.ENODEV, "this machine has no hugetlbfs")
        need = length >> (PAGE_SHIFT + huge_order)
        if not flags & MAP_NORESERVE and env.alloc.hugetlb_free_count(huge_order) < need:
            raise fail(errno.ENOMEM, f"{need} free huge pages of {align >> 20} MiB needed: "
                                     "raise nr_hugepages")
        backing = env.hugetlb_file(length, huge_order)   # its reference becomes the VMA's
    elif anon and shared:
        if env.shmem_file is None:
            raise fail(errno.ENODEV, "this machine has no shmem")
        backing = env.shmem_file(length)                 # its reference becomes the VMA's
    if not fixed:
        thp_align = PMD_SIZE if (anon and not shared and length >= PMD_SIZE) else PAGE_SIZE
        addr = get_unmapped_area(mm, length, max(align, thp_align), addr & PAGE_MASK)
    elif flags & MAP_FIXED:
        _unmap_range(env, mm, addr, addr + length)
    if backing is not None and backing is file:
        backing.get_file()
    vma = VMA(addr, addr + length, vmflags | VM.SOFTDIRTY, backing, offset >> PAGE_SHIFT)
    vma.huge_order = huge_order
    if anon and not shared and not huge_order:
        vma.pgoff = addr >> PAGE_SHIFT
    vma.anon_id = env.mem.new_mapping_id()
    if vmflags & VM.LOCKED:
        mm.locked_vm += vma.nr_pages
    mm.insert_vma(vma)
    if flags & MAP_LOCKED or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
        env.mm_populate(mm, addr, length, ignore_errors=True)     # mm_populate()
    return addr


# -- munmap -------------------------------------------------------------------------------


def _unmap_range(env: MMEnv, mm: MM, start: int, end: int) -> None:
    mm.split_at(start)
    mm.split_at(end)
    gone = mm.vmas_in(start, end)
    rng = invalidate_start(mm, MMU_NOTIFY_UNMAP, start, end) if gone else None
    for vma in gone:
        zap_range(mm, vma, 0, vma.nr_pages, env.swap)
        if vma.flags & VM.LOCKED:
            mm.locked_vm -= vma.nr_pages
        mm.vmas.remove(vma)
        vma_close(vma)
    invalidate_end(rng)


def do_munmap(env: MMEnv, mm: MM, addr: int, length: int) -> None:
    """munmap(2): pinned pages stay allocated (their pins hold them) but leave the mm."""
    if addr % PAGE_SIZE:
        raise fail(errno.EINVAL, f"address {addr:#x} is not page aligned")
    if length <= 0:
        raise fail(errno.EINVAL, "length must be greater than 0")
    end = addr + page_align(length)
    if end > TASK_SIZE:
        raise fail(errno.EINVAL, "range goes beyond the user address space")
    for vma in mm.vmas_in(addr, end):
        if vma.is_hugetlb:
            align = PAGE_SIZE << vma.huge_order
            if (addr > vma.start and addr % align) or (end < vma.end and end % align):
                raise fail(errno.EINVAL, "hugetlb mappings are unmapped in whole huge pages")
    _unmap_range(env, mm, addr, end)


# -- mprotect -----------------------------------------------------------------------------


def _covering(mm: MM, start: int, end: int) -> list[VMA]:
    """The VMAs of [start, end), or ENOMEM if part of it is unmapped."""
    vmas = mm.vmas_in(start, end)
    pos = start
    for v in vmas:
        if v.start > pos:
            raise fail(errno.ENOMEM, f"{pos:#x} is not mapped")
        pos = v.end
    if pos < end:
        raise fail(errno.ENOMEM, f"{pos:#x} is not mapped")
    return vmas


def do_mprotect(env: MMEnv, mm: MM, addr: int, length: int, prot: int) -> None:
    """mprotect(2): ENOMEM for a hole, EACCES for PROT_WRITE on a read-only file's shared map."""
    if addr % PAGE_SIZE:
        raise fail(errno.EINVAL, f"address {addr:#x} is not page aligned")
    _check_prot(prot)
    if length == 0:
        return
    end = addr + page_align(length)
    vmas = _covering(mm, addr, end)
    new = prot_to_vm(prot)

    def changes(v: VMA) -> bool:     # mprotect_fixup() leaves an unchanged VMA alone
        return (v.flags & ~(VM.READ | VM.WRITE | VM.EXEC)) | new != v.flags

    for v in vmas:
        if new & VM.WRITE and not v.flags & VM.MAYWRITE:
            raise fail(errno.EACCES, "the file is not open for writing: PROT_WRITE refused")
        if v.is_hugetlb and changes(v):
            align = PAGE_SIZE << v.huge_order
            if (addr > v.start and addr % align) or (end < v.end and end % align):
                raise fail(errno.EINVAL, "hugetlb mappings change protection in whole pages")
    for edge in (addr, end):         # no split (of the VMA, or of a THP) where nothing changes
        at = mm.find_vma(edge)
        if at is not None and changes(at):
            mm.split_at(edge)
    for v in mm.vmas_in(addr, end):
        if not changes(v):
            continue
        old = v.flags
        v.flags = (v.flags & ~(VM.READ | VM.WRITE | VM.EXEC)) | new
        rng = invalidate_start(mm, MMU_NOTIFY_PROTECTION_VMA, v.start, v.end) \
            if v.flags != old else None
        present = (v.pte & PTE.PRESENT) != 0
        if not new & VM.WRITE:
            v.pte[present] &= np.uint16(~PTE.WRITE & 0xFFFF)
        elif not old & VM.WRITE:
            _try_change_writable(env, v, present)
        invalidate_end(rng)
    mm.merge_vmas(addr, end)


def _try_change_writable(env: MMEnv, v: VMA, present: np.ndarray) -> None:
    """Make PTEs writable where no write fault is needed (can_change_pte_writable()).

    Private mappings: exclusive anon pages. Shared mappings: every page, or only dirty
    ones where the file system wants write notification.
    """
    mem = env.mem
    idx = np.nonzero(present & ((v.pte & PTE.SPECIAL) == 0))[0]
    if v.is_shared:
        if v.file is not None and v.file.needs_writenotify:
            idx = idx[(v.pte[idx] & PTE.DIRTY) != 0]
    else:
        pf = v.pfn[idx]
        heads = mem.head_of(pf)
        huge = (v.pte[idx] & (PTE.PMD | PTE.PUD)) != 0
        excl = (mem.flags[np.where(huge, heads, pf)] & np.uint32(PG.anon_exclusive)) != 0
        idx = idx[excl & (mem.kind[heads] == Kind.ANON)]
    v.pte[idx] |= PTE.WRITE


# -- madvise ------------------------------------------------------------------------------

_ADVICE = {MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE,
           MADV_REMOVE, MADV_DONTFORK, MADV_DOFORK, MADV_MERGEABLE, MADV_UNMERGEABLE,
           MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTDUMP, MADV_DODUMP, MADV_WIPEONFORK,
           MADV_KEEPONFORK, MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
           MADV_COLLAPSE, MADV_HWPOISON}

_FLAG_ADVICE = {   # MADV_NORMAL clears both read-ahead hints, each hint clears the other
    MADV_NORMAL: (VM.SEQ_READ | VM.RAND_READ, False),
    MADV_SEQUENTIAL: (VM.SEQ_READ, True), MADV_RANDOM: (VM.RAND_READ, True),
    MADV_DONTFORK: (VM.DONTCOPY, True), MADV_DOFORK: (VM.DONTCOPY, False),
    MADV_WIPEONFORK: (VM.WIPEONFORK, True), MADV_KEEPONFORK: (VM.WIPEONFORK, False),
    MADV_HUGEPAGE: (VM.HUGEPAGE, True), MADV_NOHUGEPAGE: (VM.NOHUGEPAGE, True),
    MADV_DONTDUMP: (VM.DONTDUMP, True), MADV_DODUMP: (VM.DONTDUMP, False),
    MADV_MERGEABLE: (VM.MERGEABLE, True), MADV_UNMERGEABLE: (VM.MERGEABLE, False),
}


def do_madvise(env: MMEnv, mm: MM, start: int, length: int, advice: int) -> None:
    """madvise(2): applies the advice to the mapped parts, then ENOMEM if there was a hole."""
    if advice not in _ADVICE:
        raise fail(errno.EINVAL, f"unknown madvise advice {advice}")
    if start % PAGE_SIZE:
        raise fail(errno.EINVAL, f"address {start:#x} is not page aligned")
    if length < 0:
        raise fail(errno.EINVAL, "length must not be negative")
    end = start + page_align(length)
    if end == start:
        return
    vmas = mm.vmas_in(start, end)
    for v in vmas:
        if advice == MADV_WIPEONFORK and (v.file is not None or v.is_shared or v.is_hugetlb):
            raise fail(errno.EINVAL, "MADV_WIPEONFORK applies to private anonymous memory only")
        if advice in (MADV_DONTNEED, MADV_FREE, MADV_COLD, MADV_PAGEOUT) and (
                v.flags & (VM.LOCKED | VM.PFNMAP)):
            raise fail(errno.EINVAL, "cannot discard or page out locked or PFN-mapped memory")
        if advice in (MADV_COLD, MADV_PAGEOUT) and v.flags & VM.HUGETLB:   # can_madv_lru_vma
            raise fail(errno.EINVAL, "MADV_COLD and MADV_PAGEOUT do not apply to hugetlb memory")
        if advice == MADV_DONTFORK and v.flags & VM.IO:
            raise fail(errno.EINVAL, "MADV_DONTFORK does not apply to VM_IO mappings")
        if advice == MADV_FREE and not v.is_anonymous:
            raise fail(errno.EINVAL, "MADV_FREE applies to private anonymous memory only")
        if advice == MADV_REMOVE:      # madvise_remove(): a hole punched in a shared file
            if v.flags & VM.LOCKED or v.file is None:
                raise fail(errno.EINVAL, "MADV_REMOVE needs an unlocked file mapping")
            if (v.flags & (VM.SHARED | VM.MAYWRITE)) != (VM.SHARED | VM.MAYWRITE):
                raise fail(errno.EACCES, "MADV_REMOVE needs a shared, writable mapping")
        if advice == MADV_COLLAPSE and (v.file is not None or v.is_shared or v.is_hugetlb):
            raise fail(errno.EINVAL, "MADV_COLLAPSE is modelled for private anonymous memory")
    hole = _first_hole(mm, start, end)
    if advice in _FLAG_ADVICE:
        def advised(v: VMA) -> int:
            flag, on = _FLAG_ADVICE[advice]
            if flag == VM.MERGEABLE and not _ksm_compatible(v):
                return v.flags               # ksm_madvise() leaves such a VMA as it is
            flags = (v.flags | flag) if on else (v.flags & ~flag)
            if advice == MADV_HUGEPAGE:
                flags &= ~VM.NOHUGEPAGE
            elif advice == MADV_NOHUGEPAGE:
                flags &= ~VM.HUGEPAGE
            elif advice == MADV_SEQUENTIAL:
                flags &= ~VM.RAND_READ
            elif advice == MADV_RANDOM:
                flags &= ~VM.SEQ_READ
            return flags

        for edge in (start, end):    # madvise_update_vma() splits only a VMA that changes
            at = mm.find_vma(edge)
            if at is not None and advised(at) != at.flags:
                mm.split_at(edge)
        for v in mm.vmas_in(start, end):
            v.flags = advised(v)
        mm.merge_vmas(start, end)
    elif advice == MADV_FREE:
        for v in vmas:
            s, e = max(start, v.start), min(end, v.end)
            rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, s, e)
            lazyfree_range(env, mm, v, v.idx(s), v.idx(e))
            invalidate_end(rng)
    elif advice in (MADV_DONTNEED, MADV_REMOVE):
        for v in vmas:
            s, e = max(start, v.start), min(end, v.end)
            if v.is_hugetlb:
                align = PAGE_SIZE << v.huge_order
                if s % align:
                    raise fail(errno.EINVAL, "hugetlb memory is discarded from a huge page "
                                             "boundary")
                if advice == MADV_DONTNEED:   # rounded down: never more than was asked
                    e = e // align * align
                elif e % align:
                    raise fail(errno.EINVAL, "hugetlb memory is discarded in whole huge pages")
                if s == e:
                    continue
            rng = invalidate_start(mm, MMU_NOTIFY_CLEAR, s, e)
            zap_range(mm, v, v.idx(s), v.idx(e), env.swap)
            invalidate_end(rng)
    elif advice == MADV_PAGEOUT:
        for v in vmas:
            s, e = max(start, v.start), min(end, v.end)
            pageout_range(env, mm, v, v.idx(s), v.idx(e))
    elif advice == MADV_COLLAPSE:
        rc = collapse_range(env, mm, start, end)
        if rc:
            raise fail(rc, "the range could not be collapsed into a THP")
    elif advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
        rc = madvise_populate(env, mm, start, end, advice)
        if rc:
            raise fail(-rc, _POPULATE_ERRORS.get(-rc, "populating the range failed"))
        return
    elif advice == MADV_HWPOISON:
        for v in vmas:
            s, e = max(start, v.start), min(end, v.end)
            for i in range(v.idx(s), v.idx(e)):
                poison_page(env, mm, v, i)
    if hole is not None:
        raise fail(errno.ENOMEM, f"{hole:#x} is not mapped (the rest was advised)")


def _ksm_compatible(v: VMA) -> bool:
    """vma_ksm_compatible(): KSM merges private anonymous-like memory only."""
    return not v.flags & (VM.SHARED | VM.MAYSHARE | VM.PFNMAP | VM.IO | VM.DONTEXPAND
                          | VM.HUGETLB | VM.MIXEDMAP)


_POPULATE_ERRORS = {
    errno.ENOMEM: "part of the range is not mapped, or memory ran out (the part before it "
                  "was populated)",
    errno.EINVAL: "a mapping in the range cannot be populated this way: PROT_NONE, a "
                  "missing permission (POPULATE_WRITE needs PROT_WRITE, POPULATE_READ "
                  "PROT_READ), VM_IO/VM_PFNMAP or secretmem",
    errno.EFAULT: "populating hit SIGBUS or SIGSEGV (past the end of a file?)",
    EHWPOISON: "populating hit a hardware-poisoned page",
}


def madvise_populate(env: MMEnv, mm: MM, start: int, end: int, advice: int) -> int:
    """MADV_POPULATE_(READ|WRITE): fault [start, end) in through GUP; 0 or -errno.

    The walk is the pinning layer's faultin_page_range(), which stops at the first
    problem; pages before it stay populated, as in the kernel. Errors other than the
    ones madvise(2) documents become -ENOMEM.
    """
    write = advice == MADV_POPULATE_WRITE
    while start < end:
        pages = env.faultin_page_range(mm, start, end, write, [0])
        if pages < 0:
            if -pages in (errno.EINTR, errno.EINVAL, EHWPOISON, errno.EFAULT):
                return pages
            return -errno.ENOMEM
        start += pages << PAGE_SHIFT
    return 0


def _first_hole(mm: MM, start: int, end: int) -> int | None:
    pos = start
    for v in mm.vmas_in(start, end):
        if v.start > pos:
            return pos
        pos = v.end
    return pos if pos < end else None


# -- mremap -------------------------------------------------------------------------------


def do_mremap(env: MMEnv, mm: MM, old_addr: int, old_size: int, new_size: int,
              flags: int = 0, new_addr: int = 0, *, one_vma: bool = False) -> int:
    """mremap(2): shrink, grow in place, or move; folios, pinned ones too, move with their PTEs.

    From 6.17 (`mremap-move-multiple-vmas`) a pure move (MREMAP_FIXED, same size) may
    span several VMAs: `_remap_move` moves them one by one (`one_vma`)."""
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
        raise fail(errno.EINVAL, f"unknown mremap flags {flags:#x}")
    if old_addr % PAGE_SIZE:
        raise fail(errno.EINVAL, f"old address {old_addr:#x} is not page aligned")
    if flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE:
        raise fail(errno.EINVAL, "MREMAP_FIXED needs MREMAP_MAYMOVE")
    old_size, new_size = page_align(old_size), page_align(new_size)
    dontunmap = bool(flags & MREMAP_DONTUNMAP)
    if dontunmap and (not flags & MREMAP_MAYMOVE or old_size != new_size):
        raise fail(errno.EINVAL, "MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and an unchanged size")
    if new_size == 0:
        raise fail(errno.EINVAL, "new size must be greater than 0")
    if flags & MREMAP_FIXED and new_addr % PAGE_SIZE:
        raise fail(errno.EINVAL, f"new address {new_addr:#x} is not page aligned")
    if (not one_vma and flags & MREMAP_FIXED and old_size == new_size
            and env.era.has("mremap-move-multiple-vmas")):
        return _remap_move(env, mm, old_addr, old_size, flags, new_addr)
    vma = mm.find_vma(old_addr)
    if vma is None or old_addr + old_size > vma.end:
        raise fail(errno.EFAULT, "the old range is not one mapping")
    if dontunmap and vma.flags & (VM.DONTEXPAND | VM.PFNMAP):
        raise fail(errno.EINVAL, "MREMAP_DONTUNMAP refuses VM_DONTEXPAND and VM_PFNMAP mappings")
    align = PAGE_SIZE
    if vma.is_hugetlb:     # whole huge pages, at huge page boundaries, and never grown
        align = PAGE_SIZE << vma.huge_order
        old_size, new_size = -(-old_size // align) * align, -(-new_size // align) * align
        if old_addr % align or (flags & MREMAP_FIXED and new_addr % align):
            raise fail(errno.EINVAL, "hugetlb memory moves at huge page boundaries only")
        if new_size > old_size:
            raise fail(errno.EINVAL, "hugetlb memory cannot grow by mremap")
    if dontunmap and not flags & MREMAP_FIXED:
        new_addr = get_unmapped_area(mm, new_size, align)
    elif not flags & MREMAP_FIXED:
        if new_size <= old_size:
            if new_size < old_size:
                _unmap_range(env, mm, old_addr + new_size, old_addr + old_size)
            return old_addr
        if old_addr + old_size == vma.end and not mm.vmas_in(vma.end, old_addr + new_size):
            _grow_vma(vma, old_addr + new_size)
            return old_addr
        if not flags & MREMAP_MAYMOVE:
            raise fail(errno.ENOMEM, "cannot grow in place and MREMAP_MAYMOVE was not given")
        new_addr = get_unmapped_area(mm, new_size, align)
    else:
        if new_addr < old_addr + old_size and old_addr < new_addr + new_size:
            raise fail(errno.EINVAL, "old and new ranges overlap")
        _unmap_range(env, mm, new_addr, new_addr + new_size)
    shrink = invalidate_start(mm, MMU_NOTIFY_UNMAP, old_addr + new_size, old_addr + old_size) \
        if new_size < old_size else None
    move = invalidate_start(mm, MMU_NOTIFY_UNMAP, old_addr, old_addr + min(old_size, new_size))
    mm.split_at(old_addr)
    mm.split_at(old_addr + old_size)
    moved = mm.find_vma(old_addr)
    assert moved is not None, "split_at() keeps the VMA that covered old_addr"
    mm.vmas.remove(moved)
    shift = new_addr - moved.start
    moved.start += shift
    moved.end += shift
    if new_size < moved.nr_pages << PAGE_SHIFT:
        tail = moved.split(new_addr + new_size)
        zap_range(mm, tail, 0, tail.nr_pages, env.swap)
        vma_close(tail)
    if not moved.is_hugetlb:     # move_soft_dirty_pte: what moved reads soft-dirty
        moved.pte[(moved.pte & (PTE.PRESENT | PTE.SWAP)) != 0] |= PTE.SOFT_DIRTY
    _fix_huge_alignment(mm, moved, shift)
    if new_size > moved.end - moved.start:
        _grow_vma(moved, new_addr + new_size)
    mm.insert_vma(moved)
    invalidate_end(move)
    invalidate_end(shrink)
    if dontunmap:
        _leave_empty_vma(mm, moved, old_addr)
    return new_addr


def _multi_move_allowed(vma: VMA) -> bool:
    """May this VMA take part in a move of several? Not a file whose get_unmapped_area
    could place it elsewhere than asked (ext4 and DAX files here; shmem, hugetlbfs and
    secretmem are fine). The model has no userfaultfd-armed VMAs, the other exception."""
    return vma.file is None or vma.file.fs_name in ("tmpfs", "hugetlbfs", "secretmem")


def _remap_move(env: MMEnv, mm: MM, start: int, size: int, flags: int,
                new_addr: int) -> int:
    """A pure move of [start, start+size) to new_addr, VMA by VMA (6.17+): the range may
    not start in a gap, gaps between VMAs are kept at the destination, a gap at the end is
    allowed; a VMA that may not move with others ends it with EFAULT unless it is the
    only one. Returns where the first VMA went."""
    end = start + size
    if new_addr < end and start < new_addr + size:
        raise fail(errno.EINVAL, "old and new ranges overlap")
    first, target, last_end = -1, new_addr, 0
    for vma in mm.vmas_in(start, end):          # a snapshot: pieces move out of the range
        addr, piece_end = max(vma.start, start), min(end, vma.end)
        if first < 0 and start < vma.start:
            raise fail(errno.EFAULT, "the old range starts in a gap")
        offset = vma.start - last_end if first >= 0 else 0
        last_end = vma.end
        if not _multi_move_allowed(vma) and (first >= 0 or vma.end < end):
            raise fail(errno.EFAULT, f"a {vma.file.fs_name if vma.file else ''} mapping "
                                     "cannot move together with others")
        got = do_mremap(env, mm, addr, piece_end - addr, piece_end - addr, flags,
                        target + offset, one_vma=True)
        first = got if first < 0 else first
        target = got + (piece_end - addr)
    if first < 0:
        raise fail(errno.EFAULT, "no mapping in the old range")
    return first


def _leave_empty_vma(mm: MM, moved: VMA, old_addr: int) -> None:
    """MREMAP_DONTUNMAP: the old range stays mapped with the moved VMA's attributes but
    no page-table entries, so later accesses fault in afresh (zero pages, or the file).

    The lock goes with the pages: the old VMA loses VM_LOCKED (and its locked_vm charge
    stays with the moved VMA), as the kernel clears VM_LOCKED_MASK on it.
    """
    old = VMA(old_addr, old_addr + (moved.end - moved.start),
              moved.flags & ~(VM.LOCKED | VM.LOCKONFAULT), moved.file, moved.pgoff,
              moved.anon_name)
    old.huge_order = moved.huge_order
    old.anon_id = moved.anon_id
    if old.file is not None:
        old.file.get_file()
    mm.insert_vma(old)


def _grow_vma(vma: VMA, new_end: int) -> None:
    extra = (new_end - vma.end) >> PAGE_SHIFT
    vma.pfn = np.concatenate([vma.pfn, np.zeros(extra, dtype=np.int64)])
    vma.pte = np.concatenate([vma.pte, np.zeros(extra, dtype=np.uint16)])
    vma.end = new_end


def _fix_huge_alignment(mm: MM, vma: VMA, shift: int) -> None:
    """A PMD mapping moved to an address that is not 2 MiB aligned must become PTEs."""
    if shift % PMD_SIZE == 0:
        return
    huge = np.nonzero(vma.pte & (PTE.PMD | PTE.PUD))[0]
    done = set()
    for i in huge.tolist():
        if vma.pte[i] & (PTE.PMD | PTE.PUD):
            head = int(mm.mem.head_of(int(vma.pfn[i])))
            if head not in done:
                done.add(head)
                _split_moved(mm, vma, i, shift)


def _split_moved(mm: MM, vma: VMA, i: int, shift: int) -> None:
    """split_huge_mapping() of entries that were laid out at the pre-move addresses."""
    vma.start -= shift
    vma.end -= shift
    split_huge_mapping(mm, vma, i)
    vma.start += shift
    vma.end += shift


# -- mlock ----------------------------------------------------------------------------------


def _charge_mlock(mm: MM, cred: Cred, pages: int, err: int, can_do_mlock: bool = True) -> None:
    """can_do_mlock() (EPERM at a limit of 0; mlock and MAP_LOCKED check it, secretmem_mmap
    does not), then mlock_future_ok() (`err` over the limit)."""
    if cred.capable(CAP_IPC_LOCK):
        return
    limit = rlimit_pages(cred.rlimit_memlock)
    if limit == 0 and can_do_mlock:
        raise fail(errno.EPERM, "RLIMIT_MEMLOCK is 0 and the task lacks CAP_IPC_LOCK")
    if mm.locked_vm + pages > limit:
        raise fail(err, f"locking {pages} more pages exceeds RLIMIT_MEMLOCK "
                        f"({cred.rlimit_memlock} bytes); raise it or get CAP_IPC_LOCK")


def do_mlock(env: MMEnv, mm: MM, cred: Cred, addr: int, length: int, flags: int = 0) -> None:
    """mlock2(2): charge locked_vm against RLIMIT_MEMLOCK, then fault in (unless ONFAULT)."""
    if flags & ~MLOCK_ONFAULT:
        raise fail(errno.EINVAL, f"unknown mlock2 flags {flags:#x}")
    start = addr & PAGE_MASK
    end = page_align(addr + length)
    if end == start:
        return
    vmas = _covering(mm, start, end)
    newly = sum((min(end, v.end) - max(start, v.start)) >> PAGE_SHIFT
                for v in vmas if not v.flags & VM.LOCKED)
    _charge_mlock(mm, cred, newly, errno.ENOMEM)
    mm.split_at(start)
    mm.split_at(end)
    for v in mm.vmas_in(start, end):
        if not v.flags & VM.LOCKED:
            mm.locked_vm += v.nr_pages
        # mlock() after mlock2(MLOCK_ONFAULT) (or the reverse) replaces the lock mode
        v.flags = (v.flags & ~VM.LOCKONFAULT) | VM.LOCKED | (
            VM.LOCKONFAULT if flags & MLOCK_ONFAULT else VM.NONE)
    mm.merge_vmas(start, end)
    rc = env.mm_populate(mm, start, end - start, ignore_errors=False)
    if rc:      # __mlock_posix_error_return(): the range stays locked
        if rc == -errno.EFAULT:
            raise fail(errno.ENOMEM, "part of the range cannot be faulted in (PROT_NONE, "
                                     "or past the end of a file); it stays locked")
        if rc == -errno.ENOMEM:
            raise fail(errno.EAGAIN, "out of memory while faulting in the locked range")
        raise fail(-rc, "faulting in the locked range failed")


def do_munlock(env: MMEnv, mm: MM, addr: int, length: int) -> None:
    """munlock(2): uncharge locked_vm; pages stay mapped, and pinned pages stay pinned."""
    start = addr & PAGE_MASK
    end = page_align(addr + length)
    if end == start:
        return
    _covering(mm, start, end)
    mm.split_at(start)
    mm.split_at(end)
    for v in mm.vmas_in(start, end):
        if v.flags & VM.LOCKED:
            mm.locked_vm -= v.nr_pages
        v.flags &= ~(VM.LOCKED | VM.LOCKONFAULT)
    mm.merge_vmas(start, end)
