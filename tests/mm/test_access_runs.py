"""Multi-page CPU loads and stores (`ready_run`): pages that need no fault are walked as a
run; the result must be that of one page-table walk per page.

Each scenario runs twice on fresh machines, once as is and once with the run path
switched off (every page then goes through resolve()), and the data, the entries, the
counters and the signal raised must come out the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from shortcut import both_ways

import gupsim
import gupsim.mm.access as access
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE
from gupsim.constants import MADV_POPULATE_WRITE, MAP_FIXED
from gupsim.memory import PG

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
COUNTERS = ("pgfault", "cow_fault", "pgreuse")


def _scenario(thp: str) -> Callable[[], tuple[object, ...]]:
    def run() -> tuple[object, ...]:
        k = gupsim.Kernel(memory="128MiB", thp=thp)
        p = k.spawn("p")
        a = p.mmap(0, 256 * PAGE_SIZE, RW, ANON)
        p.madvise(a, 40 * PAGE_SIZE, MADV_POPULATE_WRITE)     # present, writable
        p.write(a + 50 * PAGE_SIZE, b"x")                      # one more, after a gap
        p.read(a + 60 * PAGE_SIZE, 3 * PAGE_SIZE)              # zero page: read-only
        f = p.memfd_create("m")
        f.truncate(32 * PAGE_SIZE)
        b = p.mmap(a + 256 * PAGE_SIZE, 32 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED, fd=f)
        g = k.fs("ext4").create("runs", 16 * PAGE_SIZE)       # needs write notification:
        c = p.mmap(0, 16 * PAGE_SIZE, RW, MAP_SHARED, fd=g)   # read faults map read-only
        p.read(c, 16 * PAGE_SIZE)
        child = p.fork()                                       # COW: write-protected
        p.write(a + 10 * PAGE_SIZE, b"before")
        signals = []
        for who, addr, data in ((p, a + 100, bytes(range(256)) * 300),     # ~19 pages
                                (p, a + 30 * PAGE_SIZE + 7, b"\x05" * (40 * PAGE_SIZE)),
                                (child, a + 5 * PAGE_SIZE, b"kid" * 5000),
                                (p, b - 3 * PAGE_SIZE, b"\x09" * (10 * PAGE_SIZE)),
                                (p, b + 30 * PAGE_SIZE, b"\x0a" * (4 * PAGE_SIZE)),
                                (p, c + 100, b"\x0b" * (12 * PAGE_SIZE))):
            try:
                who.write(addr, data)
            except Exception as exc:   # noqa: BLE001 - which signal, compared below
                signals.append(type(exc).__name__)
        data = [p.read(a + 2000, 80 * PAGE_SIZE), child.read(a, 30 * PAGE_SIZE),
                p.read(b, 32 * PAGE_SIZE), g.pread(0, 16 * PAGE_SIZE)]
        try:
            p.read(b + 20 * PAGE_SIZE, 16 * PAGE_SIZE)          # runs past the mapping
        except Exception as exc:       # noqa: BLE001
            signals.append(type(exc).__name__)
        ptes = [np.concatenate([v.pte for v in q.mm.vmas]).tolist() for q in (p, child)]
        dirty = [k.mem.test(pfn, PG.dirty) for pfn in p.mm.find_vma(c).pfn.tolist()]
        return (signals, data, ptes, dirty, [k.mem.vmstat.count(n) for n in COUNTERS],
                p.mm.rss, child.mm.rss, k.check())
    return run


@pytest.mark.parametrize("thp", ["never", "always"])
def test_a_multi_page_access_walks_as_one_walk_per_page(monkeypatch: pytest.MonkeyPatch,
                                                        thp: str) -> None:
    fast, slow, walked = both_ways(monkeypatch, access, "ready_run", _scenario(thp), 0)
    assert fast == slow
    assert fast[0] == ["SegmentationFault", "SegmentationFault"]
    assert fast[-1] == []
    assert max(walked) > 8, "no run was taken: the test compares nothing"
