"""Physically contiguous runs of a PFN array, and releasing pins run by run.

RDMA's scatterlist segments and VFIO's IOMMU mappings are runs of physically contiguous
pages, and both drivers release a run with one `unpin_user_page_range_dirty_lock()`.
When memory is fragmented into many short runs the model releases all of them in one
`unpin_user_pages_dirty_lock()` over the page list instead: the same pages unpinned
once each and dirtied alike (so the same counts, flags and vmstat), without Python work
per run. Only the name of the release call the sanitizer records differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..memory import PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel


BULK_RELEASE_RUNS = 64      # above this many runs, one vectorised release call


def contiguous_runs(pfns: np.ndarray, max_len: int | None = None) -> np.ndarray:
    """Start indexes of the runs of consecutive PFNs, each at most `max_len` long."""
    if len(pfns) == 0:
        return np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(pfns) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    if max_len is None:
        return starts
    ends = np.append(starts[1:], len(pfns))
    if ((ends - starts) <= max_len).all():
        return starts
    pieces = [np.arange(s, e, max_len) for s, e in zip(starts.tolist(), ends.tolist(),
                                                          strict=True)]
    return np.concatenate(pieces).astype(np.int64)


def unpin_runs(k: Kernel, pfns: np.ndarray, starts: np.ndarray, make_dirty: bool) -> int:
    """Unpin every page of `pfns` (runs beginning at `starts`); returns pages unpinned."""
    if len(pfns) == 0:
        return 0
    if len(starts) > BULK_RELEASE_RUNS:
        k.unpin_user_pages_dirty_lock(PageArray(pfns.copy(), k.mem), len(pfns), make_dirty)
        return len(pfns)
    ends = np.append(starts[1:], len(pfns))
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        k.unpin_user_page_range_dirty_lock(k.page(int(pfns[s])), e - s, make_dirty)
    return len(pfns)
