"""Run-length form of per-page arrays, for the sanitizer's history of released records.

A released record is kept (the last 64) only so that a later misuse report can say where
a page's pin was taken and released. Kept as per-page arrays, a history of large records
(a 64 MiB pin is 16384 entries, about 340 KB) holds some 20 MB that malloc cannot hand
out again, so every new large pin faults in fresh memory: a one-call THP pin+unpin of 64
MiB ran about twice as long. PFN ranges and folios come in runs, so the history keeps the
runs and expands a record only when a report reads it (the same values, exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# GUP's folio runs of a pages array: (start index of each run, its folio's head PFN, its
# length); GUP-fast hands them on through the pin's record to the unpin
FolioRuns = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(slots=True)
class Runs:
    """An integer array as runs: from each run's first entry, values count up by `step`
    (1 for PFNs, 0 for folios and per-entry states)."""

    starts: np.ndarray     # index of each run's first entry
    values: np.ndarray     # the value at each of those entries
    n: int
    step: int
    dtype: np.dtype

    @classmethod
    def of(cls, a: np.ndarray, step: int) -> Runs:
        """The runs of a non-empty array `a`."""
        brk = np.empty(len(a), dtype=bool)
        brk[0] = True
        np.not_equal(a[1:], a[:-1] + step if step else a[:-1], out=brk[1:])
        starts = brk.nonzero()[0]
        return cls(starts, a[starts], len(a), step, a.dtype)

    def __len__(self) -> int:
        return len(self.starts)

    def expand(self) -> np.ndarray:
        """The array back, entry by entry."""
        lengths = np.diff(self.starts, append=self.n)
        base = self.values.astype(np.int64)
        if self.step:
            base = base - self.starts * self.step
        out = np.repeat(base, lengths)
        if self.step:
            out += np.arange(self.n, dtype=np.int64) * self.step
        return out.astype(self.dtype, copy=False)
