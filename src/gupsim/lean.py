"""Plain-int shortcuts for short PFN arrays, where numpy's fixed cost dominates.

A numpy reduction (`a.min()`, `a.any()`, `np.array_equal`) costs about 1 us whatever the
length, because it runs through Python wrappers (`np.minimum.reduce` skips them); a
one-page pin and its unpin ran some ten of them. Up to `SHORT` entries the helpers here
answer from `a.tolist()` instead, with the same results; longer arrays keep the
vectorised form. `ENABLED` switches off the plain-int twins of GUP's per-folio work, for
the test that compares the two.
"""

from __future__ import annotations

import operator

import numpy as np

from .memory.pagearray import NULL

SHORT = 64                 # up to this many entries a Python list is cheaper than numpy

#: The one-folio and short-walk paths of GUP (gup/fast.py, gup/grab.py) redo in plain
#: ints what the array forms do. A test turns this off and checks that a random program
#: leaves the machine in exactly the same state both ways.
ENABLED = True


def has_null(pfns: np.ndarray) -> bool:
    """Whether a PFN array holds a NULL entry (-1; every other PFN is >= 0)."""
    if len(pfns) <= SHORT:
        return NULL in pfns.tolist()
    return bool(len(pfns)) and int(np.minimum.reduce(pfns)) == NULL


def lo_hi(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty integer array, as ints."""
    if len(values) <= SHORT:
        seq = values.tolist()
        return min(seq), max(seq)
    return int(np.minimum.reduce(values)), int(np.maximum.reduce(values))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape and contents (np.array_equal); a short pair is compared as bytes,
    without np.array_equal's Python-level checks, when the dtypes agree."""
    if len(a) <= SHORT and a.dtype == b.dtype:
        return a.shape == b.shape and a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


def amin(values: np.ndarray) -> int:
    """The minimum of a non-empty integer array, as an int."""
    if len(values) <= SHORT:
        return min(values.tolist())
    return int(np.minimum.reduce(values))


def amax(values: np.ndarray) -> int:
    """The maximum of a non-empty integer array, as an int."""
    if len(values) <= SHORT:
        return max(values.tolist())
    return int(np.maximum.reduce(values))


def total(values: np.ndarray) -> int:
    """The sum of an integer array, as an int."""
    if len(values) <= SHORT:
        return sum(values.tolist())
    return int(np.add.reduce(values))


def distinct(values: list[int]) -> bool:
    """Whether no value repeats. Told from neighbours when the list increases (the usual
    heads of huge leaves): a set of 32 heads of 2 MiB folios costs some 8,000
    instructions, as Python hashes an int to itself and multiples of 512 all collide."""
    return all(map(operator.lt, values, values[1:])) or len(set(values)) == len(values)


def distinct_array(values: np.ndarray) -> bool:
    """`distinct()` of an array: a long one is told increasing by one comparison of
    neighbours, else by sorting."""
    if len(values) <= SHORT:
        return distinct(values.tolist())
    return bool((values[1:] > values[:-1]).all()) or len(np.unique(values)) == len(values)
