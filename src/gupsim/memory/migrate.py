"""Isolation and migration of one folio (isolate_lru_folio(), migrate_pages() for one folio).

Migration first isolates a folio: it leaves the LRU (or, for hugetlb, the active list)
and the isolating caller holds one reference, so nothing can free it meanwhile;
`nr_isolated_anon` / `nr_isolated_file` count such pages. `migrate_folio()` then
allocates the target, copies contents, flags, mapping and index, points every PTE at
the new folio through the rmap hook, and frees the old folio. A folio with references
beyond its mappings, its page-cache entry and the isolation reference (a pin, a GET
reference) cannot be moved, as the kernel's refcount freeze fails; page-cache folios
need their file system to replace the cache entry, through `replace_cache`.

Targets: long-term pinning asks for unmovable memory (GFP_USER, the default here);
compaction and alloc_contig_range() ask for movable memory outside the range they are
clearing (`movable_target`, `avoid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..constants import EAGAIN, EBUSY, ENOMEM
from .alloc import Allocator, BuddyRegion, OutOfMemory
from .memmap import PG, Kind, MemMap

ReplaceCache = Callable[[int, int], bool]   # (old head, new head) -> replaced?

_UNMOVABLE_KINDS = (Kind.FSDAX, Kind.ZERO, Kind.HUGE_ZERO, Kind.RESERVED, Kind.SECRETMEM)


@dataclass(frozen=True)
class MigrateResult:
    """The new head PFN on success (`rc == 0`), else `rc` (-errno) and why, for a human.

    `new == -1` with `rc == 0`: the folio was freed under us (only the isolation
    reference was left), so there was nothing to move.
    """

    rc: int
    new: int = -1
    reason: str = ""


def _isolated_stat(mem: MemMap, head: int) -> str:
    anon = mem.kind[head] in (Kind.ANON, Kind.KSM) or mem.test(head, PG.swapbacked)
    return "nr_isolated_anon" if anon else "nr_isolated_file"


def isolate_folio(mem: MemMap, head: int) -> bool:
    """isolate_lru_folio() / isolate_hugetlb(): take the folio off its list, with a reference.

    False if it is not on a list that migration can take it from (not on the LRU, or
    already isolated by someone else): the caller must leave it alone.
    """
    if mem.kind[head] == Kind.FREE or mem.test(head, PG.isolated) or mem.refcount[head] <= 0:
        return False
    if mem.test(head, PG.hugetlb):
        mem.set_flag(head, PG.isolated)
    elif mem.test(head, PG.lru):
        mem.clear_flag(head, PG.lru)
        mem.set_flag(head, PG.isolated)
        mem.vmstat[_isolated_stat(mem, head)] += mem.nr_pages_of(head)
    else:
        return False
    mem.refcount[head] += 1
    return True


def putback_folio(alloc: Allocator, head: int) -> None:
    """putback_movable_pages() for one folio: back on its list, isolation reference dropped."""
    mem = alloc.mem
    if not mem.test(head, PG.isolated):
        return
    mem.clear_flag(head, PG.isolated)
    if not mem.test(head, PG.hugetlb):
        mem.set_flag(head, PG.lru)
        mem.vmstat[_isolated_stat(mem, head)] -= mem.nr_pages_of(head)
    mem.refcount[head] -= 1
    if mem.refcount[head] == 0:
        alloc.free_folio(head)


def expected_refs(alloc: Allocator, head: int) -> int:
    """References a movable folio may hold: one per mapping, plus the page cache's."""
    mem = alloc.mem
    n = mem.nr_pages_of(head)
    refs = int(mem.mapcount[head:head + n].sum()) + int(mem.entire_mapcount[head])
    if mem.kind[head] not in (Kind.ANON, Kind.KSM) and mem.mapping[head]:
        refs += n
    return refs


def _alloc_target(alloc: Allocator, head: int, movable: bool,
                  avoid: tuple[int, int] | None) -> int:
    """The migration target (alloc_migration_target()); raises OutOfMemory.

    Frames inside `avoid` (the range being cleared: isolated pageblocks in the kernel)
    are never handed out: a region that lies wholly inside it is skipped, blocks found
    inside it are held back while searching and returned afterwards.
    """
    mem = alloc.mem
    order = int(mem.order[head])
    kind = Kind(int(mem.kind[head]))
    mapping, index = int(mem.mapping[head]), int(mem.index[head])
    if mem.test(head, PG.hugetlb):
        return alloc.alloc_hugetlb_folio(order, kind, mapping, index)
    if avoid is None:
        return alloc.alloc_folio(order, kind, movable=movable, mapping=mapping, index=index)
    lo, hi = avoid
    held: list[tuple[BuddyRegion, int]] = []
    try:
        for region in alloc.regions(movable):
            if lo <= region.start and region.end <= hi:
                continue
            while (pfn := region.alloc(order)) is not None:
                if lo <= pfn < hi:
                    held.append((region, pfn))
                    continue
                alloc.prep_folio(pfn, order, kind, mapping, index)
                return pfn
    finally:
        for region, pfn in held:
            region.release(pfn, order)
    raise OutOfMemory(f"no free block of order {order} outside PFNs [{lo:#x}, {hi:#x})")


def migrate_folio(alloc: Allocator, head: int, replace_cache: ReplaceCache | None = None,
                  *, isolated: bool = False, movable_target: bool = False,
                  avoid: tuple[int, int] | None = None) -> MigrateResult:
    """Move the folio at `head` to a new frame; see the module docstring.

    `isolated`: the caller isolated the folio (`isolate_folio()`) and its reference is
    part of the count. On success the old folio is freed and the new one is on the
    LRU; on failure an isolated folio stays isolated (put it back). Failures count
    in `pgmigrate_fail`, successes in `pgmigrate_success` (pages).
    """
    mem = alloc.mem
    n = mem.nr_pages_of(head)
    kind = int(mem.kind[head])
    iso = 1 if isolated else 0
    if isolated and int(mem.refcount[head]) == 1:
        putback_folio(alloc, head)          # freed under us: nothing left to move
        return MigrateResult(0, -1, f"folio {head:#x} was freed before it could be moved")
    if kind not in _UNMOVABLE_KINDS:
        mem.rmap.try_to_migrate(head)   # the unmap, and its MMU notifiers, precede the ref test
    res = _check_movable(alloc, head, kind, iso, replace_cache)
    if res is not None:
        mem.vmstat["pgmigrate_fail"] += n
        return res
    try:
        new = _alloc_target(alloc, head, movable_target, avoid)
    except OutOfMemory as e:
        mem.vmstat["pgmigrate_fail"] += n
        return MigrateResult(-ENOMEM, reason=f"no memory for the target of folio {head:#x} "
                                             f"({e})")
    file_backed = kind not in (Kind.ANON, Kind.KSM) and bool(mem.mapping[head])
    if file_backed and replace_cache is not None and not replace_cache(head, new):
        alloc.free_folio(new)
        mem.vmstat["pgmigrate_fail"] += n
        return MigrateResult(-EBUSY, reason=f"the file system refused to replace folio "
                                            f"{head:#x} in its page cache")
    mem.copy_frames(new, head, n)
    mem.flags[new:new + n] = mem.flags[head:head + n]
    if isolated:
        mem.clear_flag(new, PG.isolated)
        if not mem.test(head, PG.hugetlb):
            mem.set_flag(new, PG.lru)
            mem.vmstat[_isolated_stat(mem, head)] -= n
    mem.private[new] = mem.private[head]
    mem.refcount[new] = int(mem.refcount[head]) - iso
    mem.rmap.remap(_arr(head), _arr(new))          # PTEs and mapcounts move to the new folio
    mem.refcount[head] = 0
    alloc.free_folio(head)
    mem.vmstat["pgmigrate_success"] += n
    return MigrateResult(0, new)


def _check_movable(alloc: Allocator, head: int, kind: int, iso: int,
                   replace_cache: ReplaceCache | None) -> MigrateResult | None:
    """None if the folio can be moved now, else the failure (the refcount freeze test)."""
    mem = alloc.mem
    if kind in _UNMOVABLE_KINDS:
        return MigrateResult(-EBUSY, reason=f"{Kind(kind).name} folios do not migrate")
    extra = int(mem.refcount[head]) - iso - expected_refs(alloc, head)
    if extra:
        return MigrateResult(-EAGAIN, reason=f"folio {head:#x} has {extra} references beyond "
                                             "its mappings (pinned or held by GUP)")
    if kind not in (Kind.ANON, Kind.KSM) and mem.mapping[head] and replace_cache is None:
        return MigrateResult(-EBUSY, reason=f"page cache of mapping {int(mem.mapping[head])} "
                                            "offers no migration hook")
    return None


def _arr(x: int) -> np.ndarray:
    return np.array([x], dtype=np.int64)
