"""fork()'s short path for plain VMAs of small pages (`_copy_small_pages`) against the
general one (vma_needs_copy() then copy_page_range() with every pass): each scenario
runs twice on fresh machines, once as is and once with every VMA sent down the general
path, and what the processes read, the page state, the counters and the entries must
come out the same."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import gupsim
import gupsim.mm.fork as fork
from gupsim import (
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.constants import MADV_DONTFORK, MADV_HUGEPAGE, MADV_POPULATE_WRITE, MADV_WIPEONFORK
from gupsim.gup import FOLL_LONGTERM, FOLL_WRITE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
N = 64


def _scenario(version: str | None) -> Callable[[], tuple[object, ...]]:
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="256MiB", version=version)
        p = k.spawn("parent")
        full = p.mmap(0, N * PAGE_SIZE, RW, ANON | MAP_POPULATE)
        part = p.mmap(0, N * PAGE_SIZE, RW, ANON)
        for j in (1, 2, 3, 30, 63):
            p.write(part + j * PAGE_SIZE, bytes([j]) * 8)
        p.read(part + 40 * PAGE_SIZE, 2 * PAGE_SIZE)              # zero page: special
        f = k.fs("ext4").create("file", N * PAGE_SIZE)
        f.pwrite(0, b"\x11" * (N * PAGE_SIZE))
        ro = p.mmap(0, N * PAGE_SIZE, RW, MAP_PRIVATE, fd=f)
        p.read(ro, N * PAGE_SIZE)                                 # page cache only
        cow = p.mmap(0, N * PAGE_SIZE, RW, MAP_PRIVATE, fd=f)
        p.read(cow, N * PAGE_SIZE)
        p.write(cow + 5 * PAGE_SIZE, b"anon copy")                # cache and anon pages
        shared = p.mmap(0, N * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE)
        kept = p.mmap(0, 8 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
        p.madvise(kept, 8 * PAGE_SIZE, MADV_DONTFORK)
        wiped = p.mmap(0, 8 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
        p.madvise(wiped, 8 * PAGE_SIZE, MADV_WIPEONFORK)
        thp = p.mmap(0, 4 << 20, RW, ANON)
        thp = (thp + (2 << 20) - 1) // (2 << 20) * (2 << 20)
        p.madvise(thp, 2 << 20, MADV_HUGEPAGE)
        p.madvise(thp, 2 << 20, MADV_POPULATE_WRITE)
        vec = gupsim.PageArray(16)
        assert p.pin_user_pages_fast(full + 8 * PAGE_SIZE, 16, FOLL_WRITE | FOLL_LONGTERM,
                                     vec) == 16
        child = p.fork()
        grandchild = child.fork()
        for q, tag in ((p, b"P"), (child, b"C"), (grandchild, b"G")):
            for a in (full, part, cow, shared):
                q.write(a + 9 * PAGE_SIZE, tag * 4)
        k.dma_write(vec[1], 0, b"dma")
        procs = (p, child, grandchild)
        reads = [q.read(a + j * PAGE_SIZE, 8) for q in procs for a in (full, part, cow, shared)
                 for j in (1, 5, 9, 30, 40)]
        ptes = [[(v.start, v.pte.tolist()) for v in q.mm.vmas] for q in procs]
        mem = k.mem
        state = (reads, ptes, [q.mm.rss for q in procs], sorted(mem.vmstat.items()),
                 mem.mapcount[:mem.nr_pages].tobytes(), mem.refcount[:mem.nr_pages].tobytes(),
                 mem.flags[:mem.nr_pages].tobytes(), k.check())
        k.unpin_user_pages(vec)
        grandchild.exit()
        child.exit()
        return (*state, k.check(), k.alloc.nr_free_pages())
    return run


@pytest.mark.parametrize("version", [None, "5.11", "5.8"])
def test_the_short_fork_path_leaves_what_the_general_one_leaves(
        monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    run = _scenario(version)
    taken: list[int] = []
    real, real_batch = fork._copy_small_pages, fork._copy_small_batch

    def counted(*args: object) -> None:
        taken.append(1)
        real(*args)             # type: ignore[arg-type]

    def counted_batch(env: object, src_mm: object, dst_mm: object, batch: list[object]) -> None:
        taken.extend([1] * len(batch))
        real_batch(env, src_mm, dst_mm, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(fork, "_copy_small_pages", counted)
    monkeypatch.setattr(fork, "_copy_small_batch", counted_batch)
    fast = run()
    monkeypatch.setattr(fork, "_NOT_SMALL", 0xFFFF)      # every VMA: the general path
    general = run()
    assert fast == general
    assert fast[-2] == [] and fast[7] == []
    assert len(taken) >= 4, "the short path was never taken: the test compares nothing"
    assert np.frombuffer(fast[4], dtype=np.int32).max() >= 3    # pages of three processes


def test_a_batched_fork_that_runs_out_of_memory_leaves_the_parent_as_the_per_vma_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """VMAs with pinned pages to copy between plain ones (in address order: plain, one page
    to copy, plain, four to copy, plain) with three free frames: the second copy runs out of
    memory. Batched (gupsim.lean on) or VMA by VMA, the parent ends the same: the VMAs
    before it write-protected and shared, the rest untouched, every count restored."""
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="64MiB")
        p = k.spawn("parent")
        areas = [p.mmap(0, 16 * PAGE_SIZE, RW, ANON | MAP_POPULATE) for _ in range(5)]
        vecs = []
        for a in (areas[3], areas[1]):          # mmap goes down: areas[4] is the lowest
            vec = gupsim.PageArray(4 if a == areas[1] else 1)
            assert p.pin_user_pages_fast(a, len(vec), FOLL_WRITE | FOLL_LONGTERM, vec) \
                == len(vec)
            vecs.append(vec)
        free = k.alloc.nr_free_pages()
        hog = [k.alloc.alloc_frames(0, movable=False) for _ in range(free - 3)]
        with pytest.raises(OSError) as e:
            p.fork()
        mem = k.mem
        state = (e.value.errno, [v.pte.tolist() for v in p.mm.vmas], p.mm.rss,
                 sorted(mem.vmstat.items()), mem.mapcount[:mem.nr_pages].tobytes(),
                 mem.refcount[:mem.nr_pages].tobytes(), mem.flags[:mem.nr_pages].tobytes(),
                 len(k.processes), k.check())
        for pfn in hog:
            k.alloc.free_folio(pfn)
        for vec in vecs:
            k.unpin_user_pages(vec)
        return state

    batched = run()
    monkeypatch.setattr(gupsim.lean, "ENABLED", False)
    per_vma = run()
    assert batched == per_vma
    ptes = batched[1]
    assert isinstance(ptes, list)
    writable = [sum(1 for e in vma if e & int(fork.PTE.WRITE)) for vma in ptes]
    # write-protected before the failing VMA (but the pinned pages, which the child got
    # copies of), the failing one as far as it got (its pinned pages), the last untouched
    assert writable == [0, 1, 0, 4, 16]

