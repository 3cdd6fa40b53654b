"""The reverse-map hook: how memory-level code reaches the page tables that map a folio.

Migration (here) and writeback (in `fs/`) must find and change every PTE that maps a
folio, but page tables belong to `mm/`, which sits beside them, not below. As the
kernel does with `rmap_walk()`, the lower layers call through this interface and `mm/`
installs the implementation on the MemMap when the machine is built.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RmapWalker(Protocol):
    """What memory-level code may ask of the page tables (`mm.rmap.MMRmap` answers it)."""

    def mkclean(self, head: int) -> int:
        """page_mkclean(): write-protect and clean every PTE mapping the folio; return how many."""
        ...

    def try_to_unmap(self, head: int) -> bool:
        """Unmap the folio everywhere (for swap-out); False if a pinned exclusive page refuses."""
        ...

    def remap(self, old_heads: np.ndarray, new_heads: np.ndarray) -> None:
        """Point every PTE of each old folio at the same page of the matching new folio."""
        ...

    def mapcount_expected_refs(self, head: int) -> int:
        """References the folio's mappings account for (one per PTE, one per PMD mapping)."""
        ...

    def unmap_mapping_range(self, mapping: int, first_index: int, last_index: int) -> None:
        """Zap every PTE that maps file pages [first_index, last_index] of `mapping` (truncate)."""
        ...

    def try_to_migrate(self, head: int) -> None:
        """Migration's unmap step: invalidate every mapping (MMU notifiers) before the move."""
        ...


class NoRmap:
    """The walker of a machine with no address spaces yet: nothing maps anything."""

    def mkclean(self, head: int) -> int:
        """No PTE to clean: 0 cleaned."""
        return 0

    def try_to_unmap(self, head: int) -> bool:
        """Nothing maps the folio, so it is unmapped already."""
        return True

    def remap(self, old_heads: np.ndarray, new_heads: np.ndarray) -> None:
        """No PTE points at the old folios: nothing to redirect."""
        return None

    def mapcount_expected_refs(self, head: int) -> int:
        """No mapping holds a reference."""
        return 0

    def unmap_mapping_range(self, mapping: int, first_index: int, last_index: int) -> None:
        """No PTE maps the file: nothing to zap."""
        return None

    def try_to_migrate(self, head: int) -> None:
        """Nothing maps the folio: no migration entries to install."""
        return None
