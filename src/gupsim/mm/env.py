"""Machine-wide settings and services that the address-space code needs.

One `MMEnv` per machine: the page allocator, the THP knobs of
/sys/kernel/mm/transparent_hugepage/, the swap device, whether the task on whose
behalf memory is being allocated is in a PF_MEMALLOC_PIN section, and the two page-walk
entry points that mm/ borrows from the pinning layer (populate, see `MMEnv.mm_populate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..constants import PAGE_SIZE, PMD_ORDER
from ..eras import Era
from ..memory import Allocator, MemMap
from .file import MappableFile

if TYPE_CHECKING:
    from .mm_struct import MM

# (env, mm, start, len, ignore_errors) -> 0 or -errno: the kernel's __mm_populate()
PopulateHook = Callable[["MMEnv", "MM", int, int, bool], int]
# (env, mm, start, end, write, locked) -> pages faulted in or -errno: faultin_page_range()
FaultinHook = Callable[["MMEnv", "MM", int, int, bool, "list[int] | None"], int]

THP_SETTINGS = ("always", "madvise", "never")
MTHP_ORDERS = (2, 3, 4, 5, 6, 7, 8, PMD_ORDER)   # 16 KiB .. 2 MiB, as on this machine


@dataclass
class ThpSettings:
    """transparent_hugepage/enabled, hugepages-<size>kB/enabled and use_zero_page."""

    enabled: str = "madvise"
    per_order: dict[int, str] = field(default_factory=lambda: {
        o: ("inherit" if o == PMD_ORDER else "never") for o in MTHP_ORDERS})
    use_zero_page: bool = True

    def set(self, value: str, size_kb: int | None = None) -> None:
        """Write a knob the way `echo value > .../enabled` does; ValueError on a bad value."""
        if size_kb is None:
            if value not in THP_SETTINGS:
                raise ValueError(f"transparent_hugepage/enabled takes one of {THP_SETTINGS}, "
                                 f"not {value!r}")
            self.enabled = value
            return
        order = (size_kb * 1024 // PAGE_SIZE).bit_length() - 1
        if order not in self.per_order or (PAGE_SIZE << order) != size_kb * 1024:
            sizes = sorted((PAGE_SIZE << o) // 1024 for o in self.per_order)
            raise ValueError(f"no THP size of {size_kb} kB: this machine has {sizes} kB")
        if value not in THP_SETTINGS + ("inherit",):
            raise ValueError(f"hugepages-{size_kb}kB/enabled takes always, madvise, never or "
                             f"inherit, not {value!r}")
        self.per_order[order] = value

    def orders_for(self, madvised: bool, forbidden: bool) -> list[int]:
        """Folio orders a fault in such a VMA may try, largest first."""
        if forbidden:
            return []
        out = []
        for order, setting in self.per_order.items():
            if setting == "inherit":
                setting = self.enabled
            if setting == "always" or (setting == "madvise" and madvised):
                out.append(order)
        return sorted(out, reverse=True)


@dataclass
class SwapDevice:
    """A swap area: slots holding page contents (None for a zero page), with use counts."""

    nr_slots: int
    slots: dict[int, bytes | None] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    next_slot: int = 1

    def alloc(self, data: bytes | None) -> int | None:
        """get_swap_page(): a free slot holding `data` with one user, or None if swap is full."""
        if len(self.slots) >= self.nr_slots:
            return None
        slot = self.next_slot
        while slot in self.slots:
            slot += 1
        self.next_slot = slot + 1
        self.slots[slot] = data
        self.counts[slot] = 1
        return slot

    def dup(self, slots: np.ndarray) -> None:
        """swap_duplicate(): one more user per entry (fork copying swap PTEs)."""
        for s in slots.tolist():
            self.counts[s] += 1

    def free_entries(self, slots: np.ndarray) -> None:
        """swap_free(): one user less per entry; a slot nobody uses is freed."""
        for s in slots.tolist():
            self.counts[s] -= 1
            if self.counts[s] == 0:
                del self.counts[s]
                del self.slots[s]

    def used(self) -> int:
        """Slots in use (SwapTotal - SwapFree, in pages)."""
        return len(self.slots)


@dataclass
class MMEnv:
    """What mm/ code needs from the machine, gathered so functions take one argument."""

    mem: MemMap
    alloc: Allocator
    thp: ThpSettings = field(default_factory=ThpSettings)
    swap: SwapDevice | None = None
    shmem_file: Callable[[int], MappableFile] | None = None  # backs MAP_SHARED|MAP_ANONYMOUS
    hugetlb_file: Callable[[int, int], MappableFile] | None = None  # (size, order) for MAP_HUGETLB
    mms: list[MM] = field(default_factory=list)   # every live mm, for rmap walks
    # migration's page-cache hook (old head, new head) -> replaced?, from the file systems
    replace_cache: Callable[[int, int], bool] | None = None
    # The page walk populate uses is GUP's (mm/gup.c), which mm/ may not import: the
    # pinning layer installs these when it registers the machine (gup.state).
    populate_hook: PopulateHook | None = None
    faultin_hook: FaultinHook | None = None
    # race points inside mm/ (fork), run by the pinning layer's hooks (`k.gup.on_race`)
    race_hook: Callable[..., bool] | None = None
    race_pending: Callable[[str], bool] | None = None   # a callback waits at this point?

    @property
    def era(self) -> Era:
        """The machine's kernel release (`env.era.has("switch-name")`)."""
        return self.mem.era

    def _hook(self, hook: Callable[..., int] | None, name: str) -> Callable[..., int]:
        if hook is None:
            raise RuntimeError(f"{name}() needs the pinning layer's page walk: build the "
                               "machine with gupsim.Kernel(), which registers it")
        return hook

    def mm_populate(self, mm: MM, start: int, length: int, ignore_errors: bool = True) -> int:
        """__mm_populate(): fault in [start, start+length) through GUP, pinning nothing.

        mmap(MAP_POPULATE / MAP_LOCKED) ignores errors, mlock() does not. 0 or -errno.
        """
        return self._hook(self.populate_hook, "mm_populate")(self, mm, start, length,
                                                             ignore_errors)

    def faultin_page_range(self, mm: MM, start: int, end: int, write: bool,
                           locked: list[int] | None) -> int:
        """faultin_page_range() for MADV_POPULATE_(READ|WRITE): pages done, or -errno."""
        return self._hook(self.faultin_hook, "faultin_page_range")(self, mm, start, end,
                                                                   write, locked)

    @property
    def memalloc_pin(self) -> bool:
        """Is the current task in a PF_MEMALLOC_PIN section? (kept by the allocator)."""
        return self.alloc.memalloc_pin

    @memalloc_pin.setter
    def memalloc_pin(self, on: bool) -> None:
        self.alloc.memalloc_pin = on

    @property
    def movable_alloc(self) -> bool:
        """User pages are movable unless the current task pins long-term (PF_MEMALLOC_PIN)."""
        return not self.memalloc_pin
