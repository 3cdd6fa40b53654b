"""The `struct page **pages` output array, seen at an offset (the kernel's `pages + n`).

Callers pass a Python list (grown as needed), a `PageArray` (numpy PFNs) or None.
GUP writes PFN runs through `PagesOut.store()`, so bulk results are one numpy copy.
GUP-fast also hands over the folio runs it grabbed (it works per folio, as the kernel
does): the sanitizer records them and the unpin of the same array reuses them, so a
large pin is never looked up page by page again (`folio_runs()`).
"""

from __future__ import annotations

import numpy as np

from ..check.runs import FolioRuns
from ..memory import MemMap, Page, PageArray
from ..memory.pagearray import NULL, pfns_of, store_pfns, write_pfns

Pages = list[Page | None] | PageArray


class PagesOut:
    """`pages + off`: where GUP stores its results."""

    __slots__ = ("pages", "off", "mem", "runs")

    def __init__(self, pages: Pages, mem: MemMap, off: int = 0,
                 runs: list[tuple[int, FolioRuns] | None] | None = None) -> None:
        self.pages = pages
        self.mem = mem
        self.off = off
        # (array index, folio runs) of each store, in order; None: a store without runs
        self.runs: list[tuple[int, FolioRuns] | None] = [] if runs is None else runs

    def sub(self, n: int) -> PagesOut:
        """`pages + n`: the same array seen `n` entries further on."""
        return PagesOut(self.pages, self.mem, self.off + n, self.runs)

    def store(self, at: int, pfns: np.ndarray, runs: FolioRuns | None = None) -> None:
        """Write a run of PFNs from entry `at` on, as one copy (a list grows as needed);
        `runs`: their folio runs (start index, head, length), if the caller has them."""
        if len(pfns):
            # no int64 copy first: the page tables hold int32 PFNs and the PageArray
            # write converts on the fly (a temporary of a large pin costs page faults)
            store_pfns(self.pages, self.off + at, pfns, self.mem)
            self.runs.append(None if runs is None else (self.off + at, runs))

    def folio_runs(self, n: int) -> FolioRuns | None:
        """The folio runs of the first `n` entries of the whole array, when every store
        came with its runs and they cover those entries; else None (look them up)."""
        parts = self.runs
        if len(parts) != 1 or parts[0] is None:
            return None                 # a store without runs, a clear, or several VMAs
        at, (starts, heads, lengths) = parts[0]
        if at != 0 or int(np.add.reduce(lengths)) != n:
            return None
        return starts, heads, lengths

    def pfns(self, n: int) -> np.ndarray:
        """The first `n` entries (from the offset) as PFNs; -1 for NULL."""
        if isinstance(self.pages, PageArray):
            return pfns_of(self.pages)[self.off:self.off + n]
        return pfns_of(self.pages[self.off:self.off + n])

    def clear(self, n: int) -> None:
        """Set the first `n` entries to NULL (after their pins were dropped)."""
        self.runs.append(None)
        if isinstance(self.pages, PageArray):
            write_pfns(self.pages, self.off, np.full(n, NULL, dtype=np.int64))
        else:
            for i in range(self.off, min(self.off + n, len(self.pages))):
                self.pages[i] = None

    def capacity_ok(self, n: int) -> bool:
        """Can `n` results be stored? A PageArray has a fixed size; a list grows."""
        return not isinstance(self.pages, PageArray) or len(self.pages) >= self.off + n


def machine_of(pages: object) -> MemMap | None:
    """The MemMap the pages of an array belong to (None if it holds no page)."""
    if isinstance(pages, PageArray):
        return pages.mem
    if isinstance(pages, Page):
        return pages.mem
    if isinstance(pages, list | tuple):
        for p in pages:
            if p is not None:
                return p.mem
    return None
