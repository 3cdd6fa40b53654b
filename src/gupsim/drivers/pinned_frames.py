"""The drivers' invariant: no pinned frame is ever freed or migrated.

A driver that pins memory for a device hands the device PFNs; the device keeps using
them until the driver unpins. Whatever the memory manager does meanwhile (fork,
copy-on-write, compaction, swap-out, munmap, truncation, process exit), each frame a
driver holds pinned must still be the same allocated folio (same kind, file mapping and
index as when it was pinned: not freed, not migrated, not reused), must still look
pinned (`folio_maybe_dma_pinned()`), and its folio's pins must cover the driver's.

`PinnedFrameWatch.watch(holder)` snapshots a holder, anything with a `pinned_pfns()`
method (IbUmem, VfioContainer, HostRegion, ...); `violations()` lists what broke, for
a human; an empty list means the invariant holds. To extend it to a new driver, give
the driver's pinning object a `pinned_pfns()` returning the frames it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..memory import GUP_PIN_COUNTING_BIAS, Kind
from ..memory.page import maybe_dma_pinned_pfns

if TYPE_CHECKING:
    from ..kernel import Kernel



class PinHolder(Protocol):
    """A driver object that holds pins (an ib_umem, a VFIO mapping, a GPU region)."""

    def pinned_pfns(self) -> np.ndarray:
        """The frames it holds pinned now; empty once it released them."""
        ...


@dataclass
class _Snapshot:
    holder: PinHolder
    name: str
    pfns: np.ndarray
    kind: np.ndarray
    mapping: np.ndarray
    index: np.ndarray


class PinnedFrameWatch:
    """Snapshots of what drivers hold pinned, checked later (see the module docstring)."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self._snaps: list[_Snapshot] = []

    def watch(self, holder: PinHolder, name: str | None = None) -> None:
        """Remember the frames `holder` pins now and what they hold."""
        mem = self.k.mem
        pfns = np.asarray(holder.pinned_pfns(), dtype=np.int64).copy()
        heads = np.asarray(mem.head_of(pfns), dtype=np.int64)
        self._snaps.append(_Snapshot(holder, name or type(holder).__name__, pfns,
                                     mem.kind[heads].copy(), mem.mapping[heads].copy(),
                                     mem.index[pfns].copy()))

    def violations(self) -> list[str]:
        """Every pinned frame that was freed, migrated, reused or lost its pin."""
        mem = self.k.mem
        bad: list[str] = []
        need: dict[int, int] = {}
        for s in self._snaps:
            now = np.asarray(s.holder.pinned_pfns(), dtype=np.int64)
            if len(now) == 0:
                continue            # released: the watch ends with the driver's hold
            if not np.array_equal(now, s.pfns):
                bad.append(f"{s.name}: the frames it holds changed under it")
                continue
            heads = np.asarray(mem.head_of(now), dtype=np.int64)
            freed = (mem.kind[heads] == Kind.FREE) | (mem.refcount[heads] <= 0)
            changed = (mem.kind[heads] != s.kind) | (mem.mapping[heads] != s.mapping) | \
                (mem.index[now] != s.index)
            unpinned = ~maybe_dma_pinned_pfns(mem, heads)
            for what, mask in (("was freed", freed), ("was reused or migrated", changed),
                               ("no longer looks pinned", unpinned)):
                if mask.any():
                    p = int(now[mask][0])
                    bad.append(f"{s.name}: pinned pfn {p:#x} {what} "
                               f"({int(mask.sum())} frames)")
            for h, c in zip(*np.unique(heads, return_counts=True), strict=True):
                need[int(h)] = need.get(int(h), 0) + int(c)
        for h, c in need.items():
            large = int(mem.order[h]) > 0
            have = int(mem.pincount[h]) if large else int(mem.refcount[h]) // \
                GUP_PIN_COUNTING_BIAS
            if have < c:
                bad.append(f"folio {h:#x} holds {have} pins but drivers hold {c}")
        return bad
