"""Page frames: state arrays by PFN, folio views, zones, the allocator and migration."""

from .alloc import Allocator, OutOfMemory
from .memmap import PG, Kind, MemMap, MigrateType, Zone
from .page import (
    GUP_PIN_COUNTING_BIAS,
    Folio,
    Page,
    folio_maybe_dma_pinned,
    page_maybe_dma_pinned,
)
from .pagearray import PageArray

__all__ = ["Allocator", "OutOfMemory", "PG", "Kind", "MemMap", "MigrateType", "Zone",
           "GUP_PIN_COUNTING_BIAS", "Folio", "Page", "folio_maybe_dma_pinned",
           "page_maybe_dma_pinned", "PageArray"]
