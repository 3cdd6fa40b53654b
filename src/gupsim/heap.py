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
import os

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
