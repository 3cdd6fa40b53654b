"""`PageArray`: the `struct page **pages` of bulk callers, backed by a numpy array of PFNs.

GUP fills a Python list with `Page` views one by one, which is fine for a few pages;
for a 1 GiB buffer the caller passes a `PageArray`, and GUP and unpin work on the PFN
array directly with no per-page Python. Entry -1 is a NULL pointer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from .memmap import MemMap
from .page import Page

NULL = -1
_NULLS = np.full(64, NULL, dtype=np.int64)
_NULLS.flags.writeable = False


class PageArray:
    """A fixed-capacity array of page pointers (PFNs), sliceable without copying."""

    def __init__(self, capacity: int | np.ndarray, mem: MemMap | None = None,
                 base: PageArray | None = None) -> None:
        if isinstance(capacity, np.ndarray):
            self.pfns = capacity
        else:
            if capacity < 0:
                raise ValueError(f"PageArray capacity must be >= 0, got {capacity}")
            n = int(capacity)
            # a copy of a template: np.full() costs about 1 us more for a short array
            self.pfns = _NULLS[:n].copy() if n <= len(_NULLS) else np.full(n, NULL,
                                                                             dtype=np.int64)
        self._base = base          # a slice shares its base's machine (`vec[n:]` filled by GUP)
        self._mem = mem

    @property
    def mem(self) -> MemMap | None:
        """The machine the pages belong to (None until something stored a page)."""
        return self._base.mem if self._base is not None else self._mem

    @mem.setter
    def mem(self, mem: MemMap | None) -> None:
        if self._base is not None:
            self._base.mem = mem
        else:
            self._mem = mem

    def __len__(self) -> int:
        return len(self.pfns)

    @overload
    def __getitem__(self, i: int) -> Page | None: ...
    @overload
    def __getitem__(self, i: slice) -> PageArray: ...

    def __getitem__(self, i: int | slice) -> Page | None | PageArray:
        if isinstance(i, slice):
            return PageArray(self.pfns[i], base=self._base or self)
        pfn = int(self.pfns[i])
        if pfn == NULL:
            return None
        if self.mem is None:
            raise RuntimeError("PageArray entry has no machine: it was never filled by GUP")
        return Page(self.mem, pfn)

    def __setitem__(self, i: int, page: Page | None) -> None:
        if page is None:
            self.pfns[i] = NULL
        else:
            self.mem = page.mem
            self.pfns[i] = page.pfn

    def __iter__(self) -> Iterator[Page | None]:
        for i in range(len(self)):
            yield self[i]

    def filled(self, n: int | None = None) -> list[Page]:
        """The first `n` entries (all by default), which a GUP call returned and so never
        NULL: what a driver walks to release them. A NULL among them is a RuntimeError."""
        out: list[Page] = []
        for i in range(len(self) if n is None else n):
            page = self[i]
            if page is None:
                raise RuntimeError(f"PageArray entry {i} is NULL: GUP did not return it")
            out.append(page)
        return out

    def __repr__(self) -> str:
        filled = int((self.pfns != NULL).sum())
        return f"<PageArray {filled}/{len(self)} filled>"


def pfns_of(pages: Sequence[Page | None] | PageArray, n: int | None = None) -> np.ndarray:
    """The first `n` entries of a pages array as PFNs (NULL as -1), without copying a PageArray."""
    if isinstance(pages, PageArray):
        return pages.pfns[:n] if n is not None else pages.pfns
    seq = pages if n is None else pages[:n]
    return np.fromiter((NULL if p is None else p.pfn for p in seq), dtype=np.int64,
                       count=len(seq))


def store_pfns(pages: list[Page | None] | PageArray, at: int, pfns: np.ndarray,
               mem: MemMap) -> None:
    """Write PFNs into a caller's pages array starting at index `at` (lists grow as needed)."""
    if isinstance(pages, PageArray):
        pages.mem = mem
        pages.pfns[at:at + len(pfns)] = pfns
        return
    end = at + len(pfns)
    if len(pages) < end:
        pages.extend([None] * (end - len(pages)))
    for j, pfn in enumerate(pfns.tolist()):
        pages[at + j] = Page(mem, pfn)
