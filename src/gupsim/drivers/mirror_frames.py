"""The notifier drivers' invariant: no device mapping points at a frame the process no
longer maps.

A driver that mirrors process memory without pinning it (HMM, RDMA ODP) or that pins it
but lets invalidations take its mapping away (the userptr variant) promises what
include/linux/hmm.h states: at any time a virtual address translates, in the CPU and in
the device page table, either to the same frame, or one of the two has no entry. And
the device may not write where the CPU may not: a writable device entry needs a
writable CPU PTE (fork's write-protection must reach the device too).

`MirrorWatch.watch(holder)` registers anything with an `mm` and a `device_mappings()`
returning (virtual addresses, frames, writable) arrays (Dmirror, OdpMr, UserptrObject);
`violations()` lists, for a human, every device entry that breaks the promise; an
empty list means the invariant holds. Checked per VMA with numpy, no per-entry Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..memory import Kind
from ..mm.vma import PTE

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..mm import MM


class MirrorHolder(Protocol):
    """A driver object whose device page table mirrors part of `mm`."""

    @property
    def mm(self) -> MM:
        """The address space the device mirrors."""
        ...

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(virtual addresses, frames, writable) of every device entry."""
        ...


@dataclass
class _Watched:
    holder: MirrorHolder
    name: str


class MirrorWatch:
    """Holders of device mappings, checked against their process's page tables."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self._watched: list[_Watched] = []

    def watch(self, holder: MirrorHolder, name: str | None = None) -> None:
        """Check `holder`'s device mappings from now on."""
        self._watched.append(_Watched(holder, name or type(holder).__name__))

    def violations(self) -> list[str]:
        """Every device entry whose frame the process no longer maps there (or not writable)."""
        bad: list[str] = []
        for w in self._watched:
            bad += check_device_mappings(self.k, w.holder, w.name)
        return bad


def check_device_mappings(k: Kernel, holder: MirrorHolder, name: str) -> list[str]:
    """The invariant for one holder (see the module docstring)."""
    va, pfns, writable = holder.device_mappings()
    va = np.asarray(va, dtype=np.int64)
    pfns = np.asarray(pfns, dtype=np.int64)
    writable = np.asarray(writable, dtype=bool)
    if len(va) == 0:
        return []
    mm = holder.mm
    cpu_pfn = np.full(len(va), -1, dtype=np.int64)
    cpu_w = np.zeros(len(va), dtype=bool)
    if not mm.dead:
        for vma in mm.vmas:
            m = (va >= vma.start) & (va < vma.end)
            if not m.any():
                continue
            idx = (va[m] - vma.start) >> 12
            pte = vma.pte[idx]
            present = (pte & PTE.PRESENT) != 0
            cpu_pfn[m] = np.where(present, vma.pfn[idx], -1)
            cpu_w[m] = present & ((pte & PTE.WRITE) != 0)
    out: list[str] = []
    mem = k.mem
    freed = mem.kind[np.asarray(mem.head_of(pfns), dtype=np.int64)] == Kind.FREE
    for what, mask in (
            ("points at a frame the process no longer maps there", cpu_pfn != pfns),
            ("points at a freed frame", freed),
            ("is writable where the CPU PTE is not", (cpu_pfn == pfns) & writable & ~cpu_w)):
        if mask.any():
            i = int(np.nonzero(mask)[0][0])
            out.append(f"{name}: device entry {int(va[i]):#x} -> pfn {int(pfns[i]):#x} {what} "
                       f"(CPU: {'none' if cpu_pfn[i] < 0 else hex(int(cpu_pfn[i]))}; "
                       f"{int(mask.sum())} entries)")
    return out


__all__ = ["MirrorHolder", "MirrorWatch", "check_device_mappings"]
