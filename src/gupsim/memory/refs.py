"""Folio reference counting: folio_get()/folio_put() and their vectorised forms.

Every path that drops a reference comes through here, so "a page is freed when its
last reference goes, never before" holds in one place.
"""

from __future__ import annotations

import numpy as np

from .alloc import Allocator, increasing
from .memmap import add_at


def folio_get(alloc: Allocator, head: int, n: int = 1) -> None:
    """folio_ref_add(): take `n` ordinary references (a mapping, the page cache, FOLL_GET)."""
    alloc.mem.refcount[head] += n


def folio_put(alloc: Allocator, head: int, n: int = 1) -> bool:
    """Drop `n` references; free the folio when none remain. True if it was freed."""
    mem = alloc.mem
    ref = int(mem.refcount[head]) - n
    if mem.warnings.warn_on_once(ref < 0, "folio_put: refcount underflow",
                                 f"folio {head:#x} dropped below zero"):
        ref = 0
    mem.refcount[head] = ref
    if ref == 0:
        alloc.free_folio(head)
        return True
    return False


def folio_put_many(alloc: Allocator, heads: np.ndarray, counts: np.ndarray | None = None) -> int:
    """Drop references on many folios at once (counts default to 1 each); return how many freed.

    Heads may repeat: their counts add up, as one folio_put() per entry would.
    """
    mem = alloc.mem
    if len(heads) == 0:
        return 0
    if counts is None and not increasing(heads):
        # repeats or out of order: count them with one unbuffered subtract instead of
        # a sort (np.unique); only the folios that reach 0 need to be made unique
        add_at(mem.refcount, heads, -1)
        left = mem.refcount[heads]          # each entry reads its folio's final count
        lowest = int(np.minimum.reduce(left))
        if lowest > 0:
            return 0
        if lowest < 0:
            under = np.unique(heads[left < 0])
            mem.warnings.warn_on_once(True, "folio_put: refcount underflow",
                                      f"{len(under)} folios dropped below zero")
            mem.refcount[under] = 0
            left = np.maximum(left, 0)
        dead = np.unique(heads[left == 0])
        alloc.free_folios(dead)
        return len(dead)
    if counts is None:
        uniq, cnt = heads, np.ones(len(heads), dtype=np.int64)
    else:
        uniq, inv = np.unique(heads, return_inverse=True)
        cnt = np.bincount(inv, weights=counts).astype(np.int64)
    mem.refcount[uniq] -= cnt
    under = mem.refcount[uniq] < 0
    if under.any():
        mem.warnings.warn_on_once(True, "folio_put: refcount underflow",
                                  f"{int(under.sum())} folios dropped below zero")
        mem.refcount[uniq[under]] = 0
    dead = uniq[mem.refcount[uniq] == 0]
    alloc.free_folios(dead)
    return len(dead)
