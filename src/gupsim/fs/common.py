"""Helpers shared by the file systems: reference drops, errors, size arithmetic.

`folio_put()` is the one way `fs/` drops a page-cache reference, so that "a folio is
freed when its last reference goes, never before" (and the underflow warning) holds in
one place. It delegates to `memory.refs.folio_put`, which mm/ uses too: one WARN site.
"""

from __future__ import annotations

import errno

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..memory import Allocator, MemMap
from ..memory import refs as _refs

# The largest file offset a 64-bit kernel accepts on tmpfs/hugetlbfs (MAX_LFS_FILESIZE).
MAX_LFS_FILESIZE = (1 << 63) - 1
# ext4 with extents and 4 KiB blocks: 2**32 - 1 blocks (ext4_max_size()).
EXT4_MAX_FILESIZE = ((1 << 32) - 1) << PAGE_SHIFT


def folio_put(mem: MemMap, alloc: Allocator, head: int, n: int = 1) -> bool:
    """Drop `n` references on the folio at `head`; free it at zero. True if it was freed.

    Underflow is recorded as a WARN_ON_ONCE ("folio_put: refcount underflow") and the
    count clamped to zero, as the kernel's page_ref debugging would catch it.
    """
    if alloc.mem is not mem:
        raise ValueError("folio_put: the allocator belongs to another MemMap")
    return _refs.folio_put(alloc, head, n)


def oserror(code: int, message: str) -> OSError:
    """An OSError carrying a kernel errno and a message that says what to do next."""
    return OSError(code, message)


def pages_for(size: int) -> int:
    """Number of pages needed to hold `size` bytes: ceil(size / PAGE_SIZE)."""
    return (size + PAGE_SIZE - 1) >> PAGE_SHIFT


def check_offset(off: int, what: str = "offset") -> None:
    """EINVAL for a negative file offset, as pread()/pwrite() answer."""
    if not isinstance(off, int) or isinstance(off, bool):
        raise TypeError(f"{what} must be an int, not {type(off).__name__}")
    if off < 0:
        raise oserror(errno.EINVAL, f"{what} {off} is negative: file offsets start at 0")
