"""Migration of one folio to a new frame (migrate_pages() for a single folio).

Used by long-term pinning to move folios out of ZONE_MOVABLE and CMA: the target is
allocated unmovable (GFP_USER), contents, flags, mapping and index are copied, every
PTE is pointed at the new folio through the rmap hook, and the old folio is freed.
A folio with references beyond its mappings and its page-cache entry (a pin, a GET
reference) cannot be moved, as the kernel's refcount freeze would fail; page-cache
folios need their file system to replace the cache entry, through `replace_cache`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..constants import EAGAIN, EBUSY, ENOMEM
from .alloc import Allocator, OutOfMemory
from .memmap import PG, Kind

ReplaceCache = Callable[[int, int], bool]   # (old head, new head) -> replaced?


@dataclass(frozen=True)
class MigrateResult:
    """The new head PFN on success (`rc == 0`), else `rc` (-errno) and why, for a human."""

    rc: int
    new: int = -1
    reason: str = ""


def expected_refs(alloc: Allocator, head: int) -> int:
    """References a movable folio may hold: one per mapping, plus the page cache's."""
    mem = alloc.mem
    n = mem.nr_pages_of(head)
    refs = int(mem.mapcount[head:head + n].sum()) + int(mem.entire_mapcount[head])
    if mem.kind[head] not in (Kind.ANON, Kind.KSM) and mem.mapping[head]:
        refs += n
    return refs


def migrate_folio(alloc: Allocator, head: int, replace_cache: ReplaceCache | None = None
                  ) -> MigrateResult:
    """Move the folio at `head` to an unmovable frame; see the module docstring."""
    mem = alloc.mem
    order = int(mem.order[head])
    n = 1 << order
    kind = int(mem.kind[head])
    extra = int(mem.refcount[head]) - expected_refs(alloc, head)
    if extra:
        return MigrateResult(-EAGAIN, reason=f"folio {head:#x} has {extra} references beyond "
                                             "its mappings (pinned or held by GUP)")
    file_backed = kind not in (Kind.ANON, Kind.KSM) and bool(mem.mapping[head])
    if kind in (Kind.FSDAX, Kind.ZERO, Kind.HUGE_ZERO, Kind.RESERVED, Kind.SECRETMEM):
        return MigrateResult(-EBUSY, reason=f"{Kind(kind).name} folios do not migrate")
    if file_backed and replace_cache is None:
        return MigrateResult(-EBUSY, reason=f"page cache of mapping {int(mem.mapping[head])} "
                                            "offers no migration hook")
    try:
        if mem.test(head, PG.hugetlb):
            new = alloc.alloc_hugetlb_folio(order, Kind(kind), int(mem.mapping[head]),
                                            int(mem.index[head]))
        else:
            new = alloc.alloc_folio(order, Kind(kind), movable=False,
                                    mapping=int(mem.mapping[head]), index=int(mem.index[head]))
    except OutOfMemory as e:
        return MigrateResult(-ENOMEM, reason=f"no unmovable memory for the target ({e})")
    if file_backed and not replace_cache(head, new):
        alloc.free_folio(new)
        return MigrateResult(-EBUSY, reason="the file system refused to replace the folio")
    mem.copy_frames(new, head, n)
    mem.flags[new:new + n] = mem.flags[head:head + n]
    mem.private[new] = mem.private[head]
    mem.refcount[new] = mem.refcount[head]
    mem.rmap.remap(_arr(head), _arr(new))          # PTEs and mapcounts move to the new folio
    mem.refcount[head] = 0
    alloc.free_folio(head)
    mem.vmstat["pgmigrate_success"] += n
    return MigrateResult(0, new)


def _arr(x: int) -> np.ndarray:
    return np.array([x], dtype=np.int64)
