"""The Python process's own heap, tuned once for the model's large numpy temporaries.

A pin or an unpin of N pages makes a few arrays of N entries. With glibc's defaults an
array of 128 KiB or more is a fresh mmap() each time, or the heap is trimmed after it is
freed, so every such temporary page-faults its memory in again: about half the time of a
16k-page unpin went to those faults. `tune()` (called by the first `Kernel()`) sets
M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 32 MiB, so those arrays are served
from memory the process already has. The price is up to ~32 MiB of freed heap kept
resident. Set GUPSIM_MALLOC_DEFAULTS=1 to leave the allocator alone; nothing is done on a
C library without mallopt().
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import numpy as np

M_TRIM_THRESHOLD = -1               # glibc's mallopt() parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 32 << 20

_done = False


def tune() -> bool:
    """Set the two thresholds once per process; True if they were set now."""
    global _done
    if _done or os.environ.get("GUPSIM_MALLOC_DEFAULTS") == "1":
        return False
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


MADV_NOHUGEPAGE = 15                # the host's madvise() advice number (x86-64 and arm64)
_HOST_PAGE = 4096


def sparse(arr: np.ndarray) -> np.ndarray:
    """Ask the host not to back `arr` with transparent huge pages (MADV_NOHUGEPAGE) and
    return it. numpy advises MADV_HUGEPAGE for every array of 4 MiB or more, so a write
    to one entry of a per-PFN array made 2 MiB of it resident: the arrays of a 1 TiB
    machine, touched from the bottom up, then cost twice their entry size per page.
    Only whole host pages inside the array are advised; a failure is ignored (the
    advice only saves memory)."""
    start = -(-arr.ctypes.data // _HOST_PAGE) * _HOST_PAGE
    end = (arr.ctypes.data + arr.nbytes) // _HOST_PAGE * _HOST_PAGE
    libc = _libc()
    if end - start >= 2 << 20 and libc is not None:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_NOHUGEPAGE)
    return arr


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
