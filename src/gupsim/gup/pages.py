"""The `struct page **pages` output array, seen at an offset (the kernel's `pages + n`).

Callers pass a Python list (grown as needed), a `PageArray` (numpy PFNs) or None.
GUP writes PFN runs through `PagesOut.store()`, so bulk results are one numpy copy.
"""

from __future__ import annotations

import numpy as np

from ..memory import MemMap, Page, PageArray
from ..memory.pagearray import NULL, pfns_of, store_pfns

Pages = list[Page | None] | PageArray


class PagesOut:
    """`pages + off`: where GUP stores its results."""

    __slots__ = ("pages", "off", "mem")

    def __init__(self, pages: Pages, mem: MemMap, off: int = 0) -> None:
        self.pages = pages
        self.mem = mem
        self.off = off

    def sub(self, n: int) -> PagesOut:
        """`pages + n`: the same array seen `n` entries further on."""
        return PagesOut(self.pages, self.mem, self.off + n)

    def store(self, at: int, pfns: np.ndarray) -> None:
        """Write a run of PFNs from entry `at` on, as one copy (a list grows as needed)."""
        if len(pfns):
            store_pfns(self.pages, self.off + at, np.asarray(pfns, dtype=np.int64), self.mem)

    def pfns(self, n: int) -> np.ndarray:
        """The first `n` entries (from the offset) as PFNs; -1 for NULL."""
        if isinstance(self.pages, PageArray):
            return self.pages.pfns[self.off:self.off + n]
        return pfns_of(self.pages[self.off:self.off + n])

    def clear(self, n: int) -> None:
        """Set the first `n` entries to NULL (after their pins were dropped)."""
        if isinstance(self.pages, PageArray):
            self.pages.pfns[self.off:self.off + n] = NULL
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
