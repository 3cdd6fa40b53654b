"""Write-protect faults over runs (`wp_copy_run`): the same result as one fault per page.

Each scenario runs twice on fresh machines, once as is and once with the run path
switched off (GUP then faults page by page through handle_mm_fault()), and everything
a process, the counters and the page state can show must come out the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from shortcut import both_ways

import gupsim
import gupsim.gup.slow as slow
import gupsim.mm.access as access
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from gupsim.constants import MADV_HUGEPAGE, MADV_POPULATE_WRITE
from gupsim.gup import FOLL_LONGTERM, FOLL_WRITE

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
N = 96
COUNTERS = ("pgfault", "cow_fault", "pgreuse", "nr_foll_pin_acquired")


def _scenario(version: str | None, pin_flags: int, thp: bool
              ) -> Callable[[], tuple[object, ...]]:
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="128MiB", thp="always" if thp else "never", version=version)
        p = k.spawn("parent")
        size = 2 << 20 if thp else N * PAGE_SIZE
        a = p.mmap(0, 2 * size, RW, ANON)
        a = (a + size - 1) // size * size if thp else a
        if thp:
            p.madvise(a, size, MADV_HUGEPAGE)
        p.madvise(a, N * PAGE_SIZE, MADV_POPULATE_WRITE)
        for j in (0, 7, 40, 41, 90):
            p.write(a + j * PAGE_SIZE, bytes([j + 1]) * 16)
        p.read(a + N * PAGE_SIZE, 1)                 # a zero-page entry after the run
        child = p.fork()
        p.write(a + 20 * PAGE_SIZE, b"parent")        # one page copied before GUP
        vec = gupsim.PageArray(N + 8)
        got = p.pin_user_pages_fast(a, N + 8, pin_flags, vec)
        data = [p.read(a + j * PAGE_SIZE, 16) for j in range(N + 8)]
        kid = [child.read(a + j * PAGE_SIZE, 16) for j in range(N + 8)]
        pfns = vec.pfns[:max(got, 0)].copy()
        state = (got, data, kid, [k.mem.vmstat.count(c) for c in COUNTERS],
                 p.mm.rss, child.mm.rss, int(k.mem.mapcount[pfns].sum()),
                 int(k.mem.refcount[k.mem.head_of(pfns)].astype(np.int64).sum()),
                 k.check())
        k.unpin_user_pages(vec[:max(got, 0)])
        child.exit()
        p.munmap(a, size)
        return (*state, k.check(), k.alloc.nr_free_pages())
    return run


@pytest.mark.parametrize("version", [None, "5.19", "5.11", "5.8", "5.6"])
@pytest.mark.parametrize("pin_flags", [FOLL_WRITE | FOLL_LONGTERM, FOLL_LONGTERM])
@pytest.mark.parametrize("thp", [False, True])
def test_a_run_of_cow_faults_leaves_what_one_fault_per_page_leaves(
        monkeypatch: pytest.MonkeyPatch, version: str | None, pin_flags: int,
        thp: bool) -> None:
    fast, slow_, calls = both_ways(monkeypatch, slow, "wp_copy_run",
                                   _scenario(version, pin_flags, thp), 0)
    assert fast == slow_
    assert fast[0] == N + 8 and fast[8] == [] and fast[9] == []
    if pin_flags & FOLL_WRITE or version is None:
        assert max(calls) > 1, "the runs were never taken: the test compares nothing"



def _write_scenario(version: str | None, thp: bool) -> Callable[[], tuple[object, ...]]:
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="128MiB", thp="always" if thp else "never", version=version)
        p = k.spawn("parent")
        a = p.mmap(0, 4 << 20, RW, ANON)
        a = (a + (2 << 20) - 1) // (2 << 20) * (2 << 20)
        p.munmap(a + (1 << 20), PAGE_SIZE)            # a hole: the store stops there
        p.madvise(a, 64 * PAGE_SIZE, MADV_POPULATE_WRITE)
        for j in (3, 9, 70):
            p.write(a + j * PAGE_SIZE, bytes([j]) * 8)
        p.read(a + 100 * PAGE_SIZE, 1)                  # the zero page
        child = p.fork()
        child.write(a + 9 * PAGE_SIZE, b"child")
        raised = ""
        try:
            p.write(a + 2 * PAGE_SIZE + 100, bytes(range(256)) * 1100)   # ~69 pages
            p.write(a + 200 * PAGE_SIZE, b"\\x07" * ((1 << 20) - 200 * PAGE_SIZE + 50))
        except Exception as exc:      # noqa: BLE001 - which signal, compared below
            raised = type(exc).__name__
        data = [p.read(a + j * PAGE_SIZE, 64) for j in range(256)]
        kid = [child.read(a + j * PAGE_SIZE, 8) for j in range(80)]
        vma = p.mm.find_vma(a)
        assert vma is not None
        return (raised, data, kid, [k.mem.vmstat.count(c) for c in COUNTERS], p.mm.rss,
                child.mm.rss, vma.pte[:256].tolist(), k.check())
    return run


@pytest.mark.parametrize("version", [None, "5.11", "5.6"])
@pytest.mark.parametrize("thp", [False, True])
def test_a_store_over_many_pages_faults_as_one_store_per_page_would(
        monkeypatch: pytest.MonkeyPatch, version: str | None, thp: bool) -> None:
    run = _write_scenario(version, thp)
    fast = run()
    monkeypatch.setattr(access, "prefault_write", lambda *args: None)
    assert run() == fast
    assert fast[0] == "SegmentationFault" and fast[-1] == []


def _read_scenario(thp: bool) -> Callable[[], tuple[object, ...]]:
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="64MiB", thp="always" if thp else "never")
        p = k.spawn("reader")
        a = p.mmap(0, 64 * PAGE_SIZE, RW, ANON)
        p.mprotect(a + 48 * PAGE_SIZE, PAGE_SIZE, 0)      # PROT_NONE: the load stops
        for j in (1, 2, 30):
            p.write(a + j * PAGE_SIZE, bytes([j]) * 8)
        raised = ""
        try:
            p.read(a + 100, 60 * PAGE_SIZE)
        except Exception as exc:      # noqa: BLE001 - which signal, compared below
            raised = type(exc).__name__
        got = p.read(a, 48 * PAGE_SIZE)
        vmas = [(v.pte.tolist(), v.pfn.tolist()) for v in p.mm.vmas]
        return (raised, got, vmas, k.mem.vmstat.count("pgfault"), p.mm.rss, k.check())
    return run


@pytest.mark.parametrize("thp", [False, True])
def test_a_load_over_many_pages_faults_as_one_load_per_page_would(
        monkeypatch: pytest.MonkeyPatch, thp: bool) -> None:
    run = _read_scenario(thp)
    fast = run()
    monkeypatch.setattr(access, "prefault_read", lambda *args: None)
    assert run() == fast
    assert fast[0] == "SegmentationFault" and fast[-1] == []
