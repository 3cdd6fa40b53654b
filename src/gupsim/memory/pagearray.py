"""`PageArray`: the `struct page **pages` of bulk callers, backed by a numpy array of PFNs.

GUP fills a Python list with `Page` views one by one, which is fine for a few pages;
for a 1 GiB buffer the caller passes a `PageArray`, and GUP and unpin work on the PFN
array directly with no per-page Python. Entry -1 is a NULL pointer.

An array that GUP filled whole, and that nobody has written since, remembers the pin
record of that fill (its stamp): the unpin of the same array then needs no pass over its
entries to find what they are. The stamp goes with any write through the array's
methods, and for good once `.pfns` hands the numpy array out (whoever holds it may write
it at any time): from then on an unpin compares entry by entry, as before.

The numpy array itself is made when first needed: all NULL for a read or a partial
write, or as a copy of the frames when GUP's fill of the whole array comes first, so a
large pin does not write NULLs it overwrites at once. A fill by huge leaves, whose
frames GUP knows as runs of consecutive PFNs, keeps the runs (`fill_runs()`) and makes
the entries from them at the first read: a 64 MiB THP pin that the same array unpins
never writes its 128 KiB of entries, and any read sees exactly the frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from .memmap import MemMap
from .page import Page

if TYPE_CHECKING:
    from ..check.runs import Runs

NULL = -1
_NULLS = np.full(64, NULL, dtype=np.int64)
_NULLS.flags.writeable = False


class PageArray:
    """A fixed-capacity array of page pointers (PFNs), sliceable without copying."""

    def __init__(self, capacity: int | np.ndarray, mem: MemMap | None = None,
                 base: PageArray | None = None) -> None:
        self._pfns: np.ndarray | None
        if isinstance(capacity, np.ndarray):
            self._pfns, self._size = capacity, len(capacity)
        else:
            if capacity < 0:
                raise ValueError(f"PageArray capacity must be >= 0, got {capacity}")
            # made (all NULL) when first needed: a GUP fill of the whole array, the usual
            # first write, then makes it in one pass instead of writing NULLs first
            self._pfns, self._size = None, int(capacity)
        self._base = base          # a slice shares its base's machine (`vec[n:]` filled by GUP)
        self._mem = mem
        # an array passed in is held by the caller too: it may change under us at any time
        self._exposed = base is None and isinstance(capacity, np.ndarray)
        self._stamp: object | None = None       # the record of the fill, while unchanged
        self._runs: Runs | None = None          # the entries as runs, until first read

    @property
    def pfns(self) -> np.ndarray:
        """The entries as a numpy array of PFNs (NULL is -1), writable. From this first
        read on, unpinning the array compares its entries with the pin's record (gupsim's
        own code reads through `pfns_of()` and writes through `write_pfns()`)."""
        root = self._base or self
        root._exposed = True
        root._stamp = None
        return self._entries()

    def _entries(self) -> np.ndarray:
        """The array, made from the fill's runs, or all NULL, if nothing has needed it
        yet."""
        if self._pfns is None:
            n = self._size          # a copy of a template: np.full() costs ~1 us more
            if self._runs is not None:
                self._pfns, self._runs = self._runs.expand().astype(np.int64, copy=False), None
                return self._pfns
            self._pfns = _NULLS[:n].copy() if n <= len(_NULLS) else np.full(
                n, NULL, dtype=np.int64)
        return self._pfns

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
        return self._size

    @overload
    def __getitem__(self, i: int) -> Page | None: ...
    @overload
    def __getitem__(self, i: slice) -> PageArray: ...

    def __getitem__(self, i: int | slice) -> Page | None | PageArray:
        if isinstance(i, slice):
            return PageArray(self._entries()[i], base=self._base or self)
        pfn = int(self._entries()[i])
        if pfn == NULL:
            return None
        if self.mem is None:
            raise RuntimeError("PageArray entry has no machine: it was never filled by GUP")
        return Page(self.mem, pfn)

    def __setitem__(self, i: int, page: Page | None) -> None:
        (self._base or self)._stamp = None
        if page is None:
            self._entries()[i] = NULL
        else:
            self.mem = page.mem
            self._entries()[i] = page.pfn

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
        filled = int((self._entries() != NULL).sum())
        return f"<PageArray {filled}/{len(self)} filled>"


def write_pfns(pages: PageArray, at: int, pfns: np.ndarray | int,
               mem: MemMap | None = None) -> None:
    """gupsim's own write of PFNs into a PageArray from index `at`, of the machine `mem`
    (if given): the fill's stamp goes."""
    (pages._base or pages)._stamp = None
    if mem is not None:
        pages.mem = mem
    if isinstance(pfns, int):
        pages._entries()[at] = pfns
    elif pages._pfns is None and at == 0 and len(pfns) == pages._size:
        pages._pfns = pfns.astype(np.int64)     # the whole array: a copy, no NULLs first
        pages._runs = None
    else:
        pages._entries()[at:at + len(pfns)] = pfns


def fill_runs(pages: PageArray, runs: Runs, mem: MemMap) -> None:
    """GUP's write of the frames `runs` (int64 values, step 1) from index 0, of machine
    `mem`: kept as runs when they fill an array nothing has made or shares yet (the
    entries are made at the first read), else written as `write_pfns()` writes."""
    if pages._pfns is None and pages._base is None and runs.n == pages._size:
        pages._stamp = None
        pages.mem = mem
        pages._runs = runs
    else:
        write_pfns(pages, 0, runs.expand(), mem)


def stamp(pages: PageArray, record: object, n: int) -> None:
    """GUP filled the first `n` entries, `record` being the pin record of that fill: kept
    when that is the whole of an array no one else holds (see the module docstring)."""
    if pages._base is None and not pages._exposed and n == pages._size:
        pages._stamp = record


def stamp_of(pages: PageArray) -> object | None:
    """The record of the fill that wrote every entry of the array, if none changed since."""
    return pages._stamp


def pfns_of(pages: Sequence[Page | None] | PageArray, n: int | None = None) -> np.ndarray:
    """The first `n` entries of a pages array as PFNs (NULL as -1), without copying a
    PageArray: gupsim's own read, not to be written."""
    if isinstance(pages, PageArray):
        entries = pages._entries()
        return entries[:n] if n is not None else entries
    seq = pages if n is None else pages[:n]
    return np.fromiter((NULL if p is None else p.pfn for p in seq), dtype=np.int64,
                       count=len(seq))


def store_pfns(pages: list[Page | None] | PageArray, at: int, pfns: np.ndarray,
               mem: MemMap) -> None:
    """Write PFNs into a caller's pages array starting at index `at` (lists grow as needed)."""
    if isinstance(pages, PageArray):
        write_pfns(pages, at, pfns, mem)
        return
    end = at + len(pfns)
    if len(pages) < end:
        pages.extend([None] * (end - len(pages)))
    for j, pfn in enumerate(pfns.tolist()):
        pages[at + j] = Page(mem, pfn)
