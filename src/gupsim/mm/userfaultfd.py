"""UFFDIO_CONTINUE (mm/userfaultfd.c mfill_atomic_continue): resolve a minor fault by
mapping the shmem page the page cache already holds.

Only what CVE-2022-2590 needs: in a private shmem mapping the page cache page is mapped
read-only (a private mapping never maps the shared page writable) and, as
mfill_atomic_install_pte() did in the kernels of that CVE, dirty. Before 6.0 a
FOLL_FORCE write whose retry carries FOLL_COW accepts such an entry
(gup/slow.py `follow_range`), and writes into the shared file page.

Simplifications: no userfaultfd context; the range is taken to be registered in minor
mode (VM_UFFD_MINOR), which the caller must have done on a real kernel; 4 KiB pages only.
"""

from __future__ import annotations

import errno

import numpy as np

from ..constants import PAGE_SIZE
from ..memory import Kind
from .env import MMEnv
from .mm_struct import MM, map_pte_range
from .vma import PTE, VM, VMA


def mfill_continue(env: MMEnv, mm: MM, start: int, length: int) -> int:
    """Map the page cache pages behind [start, start+length) of a shmem mapping: the
    bytes mapped, or -errno for the first page (EINVAL: not page-aligned or not shmem;
    ENOENT: no mapping; EEXIST: already mapped; EFAULT: no page in the page cache)."""
    if start % PAGE_SIZE or length % PAGE_SIZE or length <= 0:
        return -errno.EINVAL
    done = 0
    for addr in range(start, start + length, PAGE_SIZE):
        vma = mm.find_vma(addr)
        if vma is None or addr < vma.start:
            rc = -errno.ENOENT
        elif vma.file is None or vma.file.kind != Kind.SHMEM or vma.is_hugetlb:
            rc = -errno.EINVAL
        else:
            rc = _install(env, mm, vma, vma.idx(addr))
        if rc:
            return done if done else rc
        done += PAGE_SIZE
    return done


def _install(env: MMEnv, mm: MM, vma: VMA, i: int) -> int:
    """mfill_atomic_install_pte() for one entry: 0 or -errno."""
    if vma.pte[i] != PTE.NONE:
        return -errno.EEXIST
    f = vma.file
    assert f is not None
    index = vma.pgoff + i
    if not f.has_folio(index):
        return -errno.EFAULT            # shmem_get_folio(SGP_NOALLOC) found nothing
    head = f.get_folio(index)
    pfn = head + (index - int(env.mem.index[head]))
    bits = PTE.YOUNG | PTE.DIRTY
    if vma.flags & VM.SHARED and vma.flags & VM.WRITE:
        bits |= PTE.WRITE
    map_pte_range(mm, vma, i, np.array([pfn], dtype=np.int64), bits)
    return 0


__all__ = ["mfill_continue"]
