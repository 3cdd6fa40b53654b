"""Property: whatever a random sequence of mmap/munmap/mprotect/madvise/mremap/fork/
write/read/exit/compaction does, every interval subscription whose range holds a PTE
that was removed, re-pointed, split or write-protected saw, during that step, an
invalidation covering that address; readers retry exactly when their subscription was
invalidated; and the mm is idle (even seq, no active range) between steps.

PTE changes are found from the model's page tables, snapshotted before and after each
step. Installing a PTE where there was none, and setting accessed/dirty/writable bits,
needs no notification (the kernel sends none), so only losses are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
import numpy as np
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import gupsim
from gupsim import (
    MADV_COLD,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    MMAP_BASE,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
)
from gupsim.mm import PTE
from gupsim.mm.mm_struct import MM
from gupsim.mm.reclaim import compact_range

RW = PROT_READ | PROT_WRITE
P = PAGE_SIZE
WINDOW = 64 << 20                   # mmap() hands out addresses just below MMAP_BASE
LOST = PTE.PRESENT | PTE.WRITE | PTE.DIRTY | PTE.PMD | PTE.PUD
ADVICE = (MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT, MADV_COLD)


@dataclass
class Recorder:
    """Interval ops: remember (step, start, end) of each call, store the seq."""

    step: list[int]
    seen: list[tuple[int, int, int]] = field(default_factory=list)

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        assert cur_seq % 2 == 1
        self.seen.append((self.step[0], rng.start, rng.end))
        mmu_interval_set_seq(sub, cur_seq)
        return True


@dataclass
class Watch:
    sub: MmuIntervalNotifier
    rec: Recorder
    seq: int = 0


@dataclass
class Proc:
    p: gupsim.Process
    regions: list[tuple[int, int]] = field(default_factory=list)   # (addr, pages)
    watches: list[Watch] = field(default_factory=list)


def snapshot(mm: MM) -> dict[int, tuple[int, int]]:
    """address -> (pfn, bits) of every present PTE of the mm."""
    out: dict[int, tuple[int, int]] = {}
    for vma in mm.vmas:
        idx = np.flatnonzero(vma.pte & PTE.PRESENT)
        addrs = vma.start + idx * P
        out.update(zip(addrs.tolist(), zip(vma.pfn[idx].tolist(), vma.pte[idx].tolist(),
                                           strict=True), strict=True))
    return out


def changed(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> list[int]:
    """Addresses whose present PTE went away, changed frame, or lost a permission bit."""
    out = []
    for addr, (pfn, bits) in before.items():
        now = after.get(addr)
        if now is None or now[0] != pfn or bits & ~now[1] & LOST:
            out.append(addr)
    return sorted(out)


class NotifierMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = gupsim.Kernel(memory="64MiB", swap="16MiB", debug=True)
        self.k.thp.set("always", size_kb=16)
        self.step = [0]
        self.procs = [Proc(self.k.spawn("init"))]
        self._default_watches(self.procs[0])
        # start from populated memory, so that every rule has PTEs to change
        pr = self.procs[0]
        for pages, flags, huge in ((64, MAP_PRIVATE, False), (16, MAP_SHARED, False),
                                   (600, MAP_PRIVATE, True)):
            a = pr.p.mmap(0, pages * P, RW, flags | MAP_ANONYMOUS)
            if huge:
                pr.p.madvise(a, pages * P, MADV_HUGEPAGE)
            for pg in range(0, pages, 3):
                pr.p.write(a + pg * P, b"i")
            pr.regions.append((a, pages))

    # -- subscriptions ------------------------------------------------------------------------

    def _watch(self, pr: Proc, start: int, length: int) -> None:
        w = Watch(MmuIntervalNotifier(), Recorder(self.step))
        assert mmu_interval_notifier_insert(w.sub, pr.p.mm, start, length, w.rec) == 0
        pr.watches.append(w)

    def _default_watches(self, pr: Proc) -> None:
        top = MMAP_BASE
        self._watch(pr, top - WINDOW, WINDOW)                 # everything
        for i in range(4):                                    # a few pages here and there
            self._watch(pr, top - (1 + 37 * i) * P, P)
        self._watch(pr, top - (2 << 20), 1 << 20)             # a MiB

    @rule(i=st.integers(0, 7), first=st.integers(1, 4096), pages=st.integers(1, 700))
    def subscribe(self, i, first, pages):
        pr = self.procs[i % len(self.procs)]
        self._watch(pr, MMAP_BASE - first * P, pages * P)

    # -- the checked step --------------------------------------------------------------------

    def _do(self, fn) -> None:
        self.step[0] += 1
        before = {id(pr.p.mm): snapshot(pr.p.mm) for pr in self.procs}
        for pr in self.procs:
            for w in pr.watches:
                w.seq = mmu_interval_read_begin(w.sub)
        try:
            fn()
        except (OSError, gupsim.SegmentationFault, gupsim.BusError):
            pass                               # what changed before the error is checked
        for pr in list(self.procs) + getattr(self, "_gone", []):
            mm = pr.p.mm
            lost = changed(before.get(id(mm), {}), snapshot(mm))
            for w in pr.watches:
                mine = [a for a in lost if w.sub.start <= a <= w.sub.last]
                ranges = [(s, e) for step, s, e in w.rec.seen if step == self.step[0]]
                for a in mine:
                    assert any(s <= a < e for s, e in ranges), (
                        f"PTE at {a:#x} changed in step {self.step[0]} but {w.sub} saw only "
                        f"{[(hex(s), hex(e)) for s, e in ranges]}")
                assert mmu_interval_read_retry(w.sub, w.seq) == bool(ranges), w.sub
        self._gone = []

    def _region(self, i: int, r: int) -> tuple[Proc, int, int] | None:
        pr = self.procs[i % len(self.procs)]
        if not pr.regions:
            return None
        addr, pages = pr.regions[r % len(pr.regions)]
        return pr, addr, pages

    # -- operations -----------------------------------------------------------------------------

    @rule(i=st.integers(0, 7), pages=st.integers(1, 600), shared=st.booleans(),
          huge=st.booleans())
    def mmap(self, i, pages, shared, huge):
        pr = self.procs[i % len(self.procs)]
        flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS

        def op():
            a = pr.p.mmap(0, pages * P, RW, flags)
            pr.regions.append((a, pages))
            if huge:
                pr.p.madvise(a, pages * P, MADV_HUGEPAGE)
        self._do(op)

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), page=st.integers(0, 599),
          n=st.integers(1, 40), write=st.booleans())
    def touch(self, i, r, page, n, write):
        got = self._region(i, r)
        if got is None:
            return
        pr, addr, pages = got
        page %= pages

        def op():
            for pg in range(page, min(pages, page + n)):
                if write:
                    pr.p.write(addr + pg * P, b"w")
                else:
                    pr.p.read(addr + pg * P, 1)
        self._do(op)

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 599),
          n=st.integers(1, 600), whole=st.booleans())
    def munmap(self, i, r, first, n, whole):
        got = self._region(i, r)
        if got is None:
            return
        pr, addr, pages = got
        if whole:
            pr.regions.remove((addr, pages))
            self._do(lambda: pr.p.munmap(addr, pages * P))
        else:
            first %= pages
            self._do(lambda: pr.p.munmap(addr + first * P, min(n, pages - first) * P))

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 599),
          n=st.integers(1, 600), writable=st.booleans())
    def mprotect(self, i, r, first, n, writable):
        got = self._region(i, r)
        if got is None:
            return
        pr, addr, pages = got
        first %= pages
        self._do(lambda: pr.p.mprotect(addr + first * P, min(n, pages - first) * P,
                                       RW if writable else PROT_READ))

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 599),
          n=st.integers(1, 600), advice=st.sampled_from(ADVICE))
    def madvise(self, i, r, first, n, advice):
        got = self._region(i, r)
        if got is None:
            return
        pr, addr, pages = got
        first %= pages
        self._do(lambda: pr.p.madvise(addr + first * P, min(n, pages - first) * P, advice))

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), new_pages=st.integers(1, 700))
    def mremap(self, i, r, new_pages):
        got = self._region(i, r)
        if got is None:
            return
        pr, addr, pages = got

        def op():
            new = pr.p.mremap(addr, pages * P, new_pages * P, MREMAP_MAYMOVE)
            pr.regions.remove((addr, pages))
            pr.regions.append((new, new_pages))
        self._do(op)

    @precondition(lambda self: len(self.procs) < 5)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        pr = self.procs[i % len(self.procs)]
        box: list[gupsim.Process] = []
        self._do(lambda: box.append(pr.p.fork()))
        child = Proc(box[0], list(pr.regions))
        self.procs.append(child)
        self._default_watches(child)

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        pr = self.procs.pop(i % len(self.procs))
        self._gone = [pr]
        self._do(pr.p.exit)

    @rule(first=st.integers(0, 16383), n=st.integers(1, 512))
    def compact(self, first, n):
        self._do(lambda: compact_range(self.k.env, first, first + n))

    # -- between steps ------------------------------------------------------------------------

    @invariant()
    def idle(self):
        for pr in self.procs:
            subs = pr.p.mm.notifier_subscriptions
            assert subs.invalidate_seq % 2 == 0 and subs.active_invalidate_ranges == 0
            assert subs.deferred_list == []
        assert self.k.check() == []


NotifierMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                             deadline=None)
TestNotifierCoverage = NotifierMachine.TestCase
