"""`Page` and `Folio`: thin, readable views onto the page-state arrays.

A view holds only (mem_map, pfn); every attribute is read from the arrays at the time
of access, so a view never goes stale. Two views of the same frame compare equal.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .memmap import PG, Kind, MemMap, Zone

GUP_PIN_COUNTING_BIAS = 1 << 10


class Page:
    """One `struct page` of the model."""

    __slots__ = ("mem", "pfn")

    def __init__(self, mem: MemMap, pfn: int) -> None:
        self.mem = mem
        self.pfn = int(pfn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Page) and other.mem is self.mem and other.pfn == self.pfn

    def __hash__(self) -> int:
        return hash(self.pfn)

    def __repr__(self) -> str:
        return f"<Page pfn={self.pfn:#x} folio={self.folio.pfn:#x}>"

    @property
    def folio(self) -> Folio:
        """page_folio(): the folio this page belongs to (itself for an order-0 page)."""
        return Folio(self.mem, int(self.mem.head_of(self.pfn)))

    @property
    def refcount(self) -> int:
        """page_ref_count(): the refcount of the page's folio (kept on the head)."""
        return int(self.mem.refcount[self.mem.head_of(self.pfn)])

    @property
    def mapcount(self) -> int:
        """page_mapcount(): PTE mappings of this page plus PMD mappings of its folio."""
        head = self.mem.head_of(self.pfn)
        return int(self.mem.mapcount[self.pfn]) + int(self.mem.entire_mapcount[head])

    @property
    def anon_exclusive(self) -> bool:
        """PageAnonExclusive(); a PMD-mapped THP uses its head page's bit."""
        return self.mem.test(self.pfn, PG.anon_exclusive)

    @property
    def hwpoison(self) -> bool:
        """PageHWPoison(): the frame had an uncorrectable memory error and is never used again."""
        return self.mem.test(self.pfn, PG.hwpoison)

    @property
    def index_in_folio(self) -> int:
        """folio_page_idx(): which page of its folio this is (0 for the head)."""
        return int(self.mem.head_off[self.pfn])

    def read(self, offset: int = 0, n: int = 4096) -> bytes:
        """The frame's bytes as a device doing DMA would see them (no fault, no PTE)."""
        return self.mem.read(self.pfn, offset, n)

    @property
    def flags(self) -> list[str]:
        """Names of the PG_* bits set on this very page (tails have their own bits)."""
        return pg_flag_names(int(self.mem.flags[self.pfn]))


class Folio:
    """One folio (order 0, mTHP, PMD THP or hugetlb) of the model, seen through its head."""

    __slots__ = ("mem", "pfn")

    def __init__(self, mem: MemMap, head_pfn: int) -> None:
        self.mem = mem
        self.pfn = int(head_pfn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folio) and other.mem is self.mem and other.pfn == self.pfn

    def __hash__(self) -> int:
        return hash(("folio", self.pfn))

    def __repr__(self) -> str:
        return (f"<Folio pfn={self.pfn:#x} order={self.order} {self.kind.name.lower()} "
                f"ref={self.refcount} pin={self.pincount}>")

    def page(self, i: int = 0) -> Page:
        """folio_page(): the `i`-th page of the folio; IndexError beyond its end."""
        if not 0 <= i < self.nr_pages:
            raise IndexError(f"folio has {self.nr_pages} pages, no page {i}")
        return Page(self.mem, self.pfn + i)

    @property
    def order(self) -> int:
        """folio_order(): log2 of its pages (0, an mTHP order, 9 for a PMD, 18 for a PUD)."""
        return int(self.mem.order[self.pfn])

    @property
    def nr_pages(self) -> int:
        """folio_nr_pages(): 2**order."""
        return 1 << self.order

    @property
    def refcount(self) -> int:
        """folio_ref_count(): references of every kind (GUP_PIN_COUNTING_BIAS per small pin)."""
        return int(self.mem.refcount[self.pfn])

    @property
    def pincount(self) -> int:
        """folio->_pincount for large folios; 0 for small ones, which have no such field."""
        return int(self.mem.pincount[self.pfn]) if self.order > 0 else 0

    @property
    def mapcount(self) -> int:
        """folio_mapcount(): PTE mappings of all pages plus PMD/PUD mappings."""
        n = self.nr_pages
        return int(self.mem.mapcount[self.pfn:self.pfn + n].sum()) + self.entire_mapcount

    @property
    def entire_mapcount(self) -> int:
        """folio_entire_mapcount(): how many PMD or PUD entries map the whole folio."""
        return int(self.mem.entire_mapcount[self.pfn])

    @property
    def kind(self) -> Kind:
        """Who owns the folio (anon, page cache, shmem, zero page, ...), see `Kind`."""
        return Kind(int(self.mem.kind[self.pfn]))

    @property
    def zone(self) -> Zone:
        """folio_zonenum(): ZONE_MOVABLE folios must be migrated before a long-term pin."""
        return self.mem.zone_of(self.pfn)

    @property
    def is_cma(self) -> bool:
        """folio_is_cma(): in a CMA pageblock, where long-term pins are not allowed either."""
        return bool(self.mem.is_cma(self.pfn))

    @property
    def is_anon(self) -> bool:
        """folio_test_anon(): anonymous memory, KSM folios included."""
        return self.kind in (Kind.ANON, Kind.KSM)

    @property
    def is_hugetlb(self) -> bool:
        """folio_test_hugetlb(): from the hugetlb pool, freed back to it."""
        return self.mem.test(self.pfn, PG.hugetlb)

    @property
    def is_zero(self) -> bool:
        """is_zero_folio(): the shared zero page, which GUP may return but never pin-counts."""
        return self.kind == Kind.ZERO

    @property
    def dirty(self) -> bool:
        """folio_test_dirty(): its contents must reach the file before it may be dropped."""
        return self.mem.test(self.pfn, PG.dirty)

    @property
    def writeback(self) -> bool:
        """folio_test_writeback(): being written to its file now."""
        return self.mem.test(self.pfn, PG.writeback)

    @property
    def locked(self) -> bool:
        """folio_test_locked(): PG_locked, held across I/O and truncation of the folio."""
        return self.mem.test(self.pfn, PG.locked)

    @property
    def mapping(self) -> int:
        """Id of the address_space (page cache) or anon_vma the folio belongs to; 0 for none."""
        return int(self.mem.mapping[self.pfn])

    @property
    def index(self) -> int:
        """folio->index: the page offset in its file (or anon index) of the folio's first page."""
        return int(self.mem.index[self.pfn])

    @property
    def flags(self) -> list[str]:
        """Names of the PG_* bits set on the folio's head, as dump_page() lists them."""
        return pg_flag_names(int(self.mem.flags[self.pfn]))


def pg_flag_names(bits: int) -> list[str]:
    """The names of the PG bits set in a flags word, in bit order."""
    return [f.name for f in PG if bits & f]


def folio_maybe_dma_pinned(folio: Folio) -> bool:
    """Exact `_pincount > 0` for large folios; refcount >= 1024 (unsigned) for small ones.

    False is authoritative; True may be a false positive for small folios with 1024 or
    more ordinary references, and is kept so, as in the kernel.
    """
    mem = folio.mem
    if mem.has_pincount(folio.pfn):
        return int(mem.pincount[folio.pfn]) > 0
    return (int(mem.refcount[folio.pfn]) & 0xFFFFFFFF) >= GUP_PIN_COUNTING_BIAS


def page_maybe_dma_pinned(page: Page) -> bool:
    """folio_maybe_dma_pinned() of the page's folio: pins are counted per folio."""
    return folio_maybe_dma_pinned(page.folio)


def maybe_dma_pinned_pfns(mem: MemMap, heads: np.ndarray) -> NDArray[np.bool_]:
    """Vectorised folio_maybe_dma_pinned() over an array of head PFNs; always false in
    5.6, where FOLL_PIN did not count pins yet (`pin-counting-bias`)."""
    if not mem.era.has("pin-counting-bias"):
        return np.zeros(len(heads), dtype=bool)
    large = mem.order[heads] > 0
    small_pinned = mem.refcount[heads].view(np.uint32) >= GUP_PIN_COUNTING_BIAS
    if not np.count_nonzero(large):
        return small_pinned
    return (large & (mem.pincount[heads] > 0)) | (~large & small_pinned)
