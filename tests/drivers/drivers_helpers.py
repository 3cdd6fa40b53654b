"""Helpers shared by the driver tests: pin counters, mapped frames, call counting."""

from __future__ import annotations

import inspect
from typing import Any

from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, Kernel, Process

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def held(k: Kernel) -> int:
    """Pins outstanding: nr_foll_pin_acquired - nr_foll_pin_released."""
    return k.vmstat["nr_foll_pin_acquired"] - k.vmstat["nr_foll_pin_released"]


def mapped_pfn(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None, f"{addr:#x} is not mapped"
    return int(vma.pfn[vma.idx(addr)])


def anon_buffer(p: Process, npages: int, fill: bytes = b"u") -> int:
    """A private anonymous buffer with every page written (so every page is present)."""
    a = p.mmap(0, npages * PAGE_SIZE, RW, ANON)
    p.write(a, fill * (npages * PAGE_SIZE // len(fill)))
    return a


def line_in(module: Any, func: Any, text: str) -> int:
    """The line number of the first line of `func` (in `module`) containing `text`."""
    lines, first = inspect.getsourcelines(func)
    for i, line in enumerate(lines):
        if text in line:
            return first + i
    raise AssertionError(f"{text!r} not found in {func.__name__} of {module.__name__}")

