"""Small helpers the tests of the pinning layer share: counters, page-table lookups, the
memory shapes most tests start from, and the table of entry points as test parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gupsim import (
    ENTRY_POINTS,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    Page,
    Process,
)
from gupsim.gup.state import GupCall, gup_state
from gupsim.memory import Kind
from gupsim.mm import MMF, PTE, VM, VMA
from gupsim.observe import Observer, observing

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
ACQ = "nr_foll_pin_acquired"
REL = "nr_foll_pin_released"


def counters(k: Kernel) -> tuple[int, int]:
    """(nr_foll_pin_acquired, nr_foll_pin_released) now."""
    return k.vmstat[ACQ], k.vmstat[REL]


def delta(k: Kernel, before: tuple[int, int]) -> tuple[int, int]:
    """How much the pin counters moved since `before`."""
    acq, rel = counters(k)
    return acq - before[0], rel - before[1]


def net_pins(k: Kernel) -> int:
    """Pins outstanding on the machine, as /proc/vmstat would show them."""
    return k.vmstat[ACQ] - k.vmstat[REL]


def has_pinned(p: Process) -> bool:
    return bool(p.mm.flags & MMF.HAS_PINNED)


def pte_of(p: Process, addr: int) -> tuple[int, int]:
    """(PTE bits, PFN) of the entry mapping `addr` in `p`."""
    vma = p.mm.find_vma(addr)
    assert vma is not None, f"{addr:#x} is not in any VMA"
    i = vma.idx(addr)
    return int(vma.pte[i]), int(vma.pfn[i])


def mapped_pfn(p: Process, addr: int) -> int:
    bits, pfn = pte_of(p, addr)
    assert bits & PTE.PRESENT, f"{addr:#x} is not mapped"
    return pfn


def anon_rw(p: Process, npages: int = 1, touch: bool = False) -> int:
    """Private anonymous memory; `touch` writes page i with the byte i + 1."""
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    if touch:
        for i in range(npages):
            p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    return a


def thp_region(k: Kernel, p: Process) -> int:
    """A PMD-aligned 2 MiB private anonymous range backed by one PMD-mapped THP."""
    a = p.mmap(0, PMD_SIZE, RW, ANON)
    p.madvise(a, PMD_SIZE, MADV_HUGEPAGE)
    p.write(a, b"thp")
    bits, pfn = pte_of(p, a)
    assert bits & PTE.PMD and k.page(pfn).folio.order == 9, "expected a PMD-mapped THP"
    return a


def special_vma(k: Kernel, p: Process, extra: int, at: int | None = None) -> int:
    """Install a device mapping (what remap_pfn_range / vm_insert_mixed leave): special PTEs
    onto a kernel-reserved frame, at `at` or at a free address."""
    frame = k.alloc.alloc_folio(0, Kind.RESERVED, movable=False)
    if at is None:
        at = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
        p.munmap(at, 2 * PAGE_SIZE)
    vma = VMA(at, at + 2 * PAGE_SIZE, VM.READ | VM.WRITE | VM.SHARED | VM.MAYREAD
              | VM.MAYWRITE | VM.MAYSHARE | extra)
    vma.pfn[:] = frame
    vma.pte[:] = PTE.PRESENT | PTE.SPECIAL | PTE.WRITE | PTE.YOUNG
    p.mm.insert_vma(vma)
    return at


# -- the table of entry points as test parameters ------------------------------------------

BY_NAME = {ep.name: ep for ep in ENTRY_POINTS}
"""Rows of the table of entry points by name."""

COUNTED = tuple(ep for ep in ENTRY_POINTS if ep.base is None and not ep.one_page)
"""The kernel's current entry points that return a count (not the one-page wrapper, not
the seed-era pin_longterm_pages*() wrappers)."""


def entries(*names: str, where: Callable[[EntryPoint], bool] | None = None) -> list[Any]:
    """Rows of the table as pytest parameters, each with its name as id: the rows named,
    in that order, else the `COUNTED` ones for which `where` holds (all if no `where`)."""
    if names:
        rows = [next(ep for ep in ENTRY_POINTS if ep.name == name) for name in names]
    else:
        rows = [ep for ep in COUNTED if where is None or where(ep)]
    return [pytest.param(ep, id=ep.name) for ep in rows]


def release(k: Kernel, ep: EntryPoint, pages: list[Page | None]) -> None:
    """Give back what a successful call of `ep` took, with the matching release call."""
    if ep.pins:
        k.unpin_user_pages(pages)
    else:
        for pg in pages:
            if pg is not None:
                k.put_page(pg)


@contextlib.contextmanager
def recorded() -> Iterator[tuple[list[GupCall], list[Kernel]]]:
    """The path record of every GUP call made in the block, and the machines built in
    it (whose `k.gup.express_unpins` count the unpins that went the express way): read
    through the observer hook the pictures use, not by spying on the internals."""
    calls: list[GupCall] = []
    kernels: list[Kernel] = []

    def on_gup(mem: Any) -> None:
        call = gup_state(mem).last_call
        assert call is not None
        calls.append(call)

    with observing(Observer(on_kernel=kernels.append, on_gup=on_gup,
                            on_step=lambda step: None)):
        yield calls, kernels
