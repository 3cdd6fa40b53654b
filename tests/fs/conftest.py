"""Fixtures for the file-system tests: a small machine and a recording rmap walker."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gupsim.fs import FileSystems, filesystems
from gupsim.memory import Allocator, MemMap
from gupsim.memory.rmap import NoRmap


@dataclass
class RecordingRmap(NoRmap):
    """The empty walker, recording what the file systems ask of the page tables."""

    mkclean_calls: list[int] = field(default_factory=list)
    unmap_calls: list[tuple[int, int, int]] = field(default_factory=list)

    def mkclean(self, head: int) -> int:
        self.mkclean_calls.append(int(head))
        return 0

    def unmap_mapping_range(self, mapping: int, first_index: int, last_index: int) -> None:
        self.unmap_calls.append((int(mapping), int(first_index), int(last_index)))


@dataclass
class Machine:
    mem: MemMap
    alloc: Allocator
    rmap: RecordingRmap
    fss: FileSystems


def make_machine(nr_pages: int = 1 << 14, movable_pages: int = 0, cma_pages: int = 0,
                 hugetlb_2m: int = 0) -> Machine:
    mem = MemMap(nr_pages=nr_pages, movable_pages=movable_pages, cma_pages=cma_pages)
    alloc = Allocator(mem)
    rmap = RecordingRmap()
    mem.rmap = rmap
    if hugetlb_2m:
        assert alloc.reserve_hugetlb(9, hugetlb_2m) == hugetlb_2m
    return Machine(mem, alloc, rmap, filesystems(mem, alloc))


@pytest.fixture
def m() -> Machine:
    return make_machine()
