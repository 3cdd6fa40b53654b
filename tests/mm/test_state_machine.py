"""Random sequences of mmap/munmap/mprotect/madvise/read/write/fork/exit on the model.

The machine runs in debug mode, so the invariants (no negative counts, every mapped
page allocated, refcounts covering mappings, rss equal to the page tables) are checked
after every step; on top, a reference of what each process must read back (private
memory diverges at fork, shared memory does not) is compared on every read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import gupsim
from gupsim import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)

RW = PROT_READ | PROT_WRITE


@dataclass
class Region:
    """One mapping as a process sees it: page contents it must read back."""

    addr: int
    pages: int
    shared: bool
    data: dict[int, int] = field(default_factory=dict)   # page index -> byte at offset 0
    writable: bool = True


@dataclass
class Proc:
    p: gupsim.Process
    regions: list[Region] = field(default_factory=list)


class MMMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = gupsim.Kernel(memory="64MiB", swap="16MiB", debug=True)
        self.k.thp.set("always", size_kb=16)
        self.procs = [Proc(self.k.spawn("init"))]

    def _proc(self, i: int) -> Proc:
        return self.procs[i % len(self.procs)]

    @rule(i=st.integers(0, 7), pages=st.integers(1, 600), shared=st.booleans(),
          huge=st.booleans())
    def mmap(self, i, pages, shared, huge):
        pr = self._proc(i)
        flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS
        a = pr.p.mmap(0, pages * PAGE_SIZE, RW, flags)
        if huge:
            pr.p.madvise(a, pages * PAGE_SIZE, MADV_HUGEPAGE)
        pr.regions.append(Region(a, pages, shared))

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), page=st.integers(0, 599),
          val=st.integers(1, 255))
    def write(self, i, r, page, val):
        pr = self._proc(i)
        if not pr.regions:
            return
        reg = pr.regions[r % len(pr.regions)]
        page %= reg.pages
        if not reg.writable:
            try:
                pr.p.write(reg.addr + page * PAGE_SIZE, bytes([val]))
            except gupsim.SegmentationFault:
                return
            raise AssertionError("write to a read-only mapping succeeded")
        pr.p.write(reg.addr + page * PAGE_SIZE, bytes([val]))
        reg.data[page] = val

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), page=st.integers(0, 599))
    def read(self, i, r, page):
        pr = self._proc(i)
        if not pr.regions:
            return
        reg = pr.regions[r % len(pr.regions)]
        page %= reg.pages
        got = pr.p.read(reg.addr + page * PAGE_SIZE, 1)[0]
        assert got == reg.data.get(page, 0), (
            f"pid {pr.p.pid} read {got} at page {page} of {reg}, expected {reg.data.get(page, 0)}")

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7))
    def munmap(self, i, r):
        pr = self._proc(i)
        if not pr.regions:
            return
        reg = pr.regions.pop(r % len(pr.regions))
        pr.p.munmap(reg.addr, reg.pages * PAGE_SIZE)

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), writable=st.booleans())
    def mprotect(self, i, r, writable):
        pr = self._proc(i)
        if not pr.regions:
            return
        reg = pr.regions[r % len(pr.regions)]
        pr.p.mprotect(reg.addr, reg.pages * PAGE_SIZE, RW if writable else PROT_READ)
        reg.writable = writable

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 599),
          n=st.integers(1, 64), pageout=st.booleans())
    def discard_or_pageout(self, i, r, first, n, pageout):
        pr = self._proc(i)
        if not pr.regions:
            return
        reg = pr.regions[r % len(pr.regions)]
        first %= reg.pages
        n = min(n, reg.pages - first)
        advice = MADV_PAGEOUT if pageout else MADV_DONTNEED
        pr.p.madvise(reg.addr + first * PAGE_SIZE, n * PAGE_SIZE, advice)
        if advice == MADV_DONTNEED and not reg.shared:
            for pg in range(first, first + n):
                reg.data.pop(pg, None)

    @precondition(lambda self: len(self.procs) < 6)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        pr = self._proc(i)
        child = pr.p.fork()
        # shared memory shares its contents, private memory gets a snapshot; each process
        # has its own protections
        regions = [Region(reg.addr, reg.pages, reg.shared,
                          reg.data if reg.shared else dict(reg.data), reg.writable)
                   for reg in pr.regions]
        self.procs.append(Proc(child, regions))

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        pr = self.procs.pop(i % len(self.procs))
        pr.p.exit()

    @invariant()
    def consistent(self):
        assert self.k.check() == []

    def teardown(self):
        free_before = None
        for pr in self.procs:
            pr.p.exit()
        free_before = self.k.alloc.nr_free_pages()
        # after every process exits, nothing but boot pages and the hugetlb pool is in use
        used = self.k.mem.nr_pages - free_before
        assert used <= 1 + 512, f"{used} pages still allocated after every process exited"


MMMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50,
                                       deadline=None)
TestMM = MMMachine.TestCase
