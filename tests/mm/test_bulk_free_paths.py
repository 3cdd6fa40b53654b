"""The allocator's bulk free (free_folios(), aligned_blocks()) against the page-by-page
path and against the definition of a buddy block: the fast forms must free the same
frames into the same free lists and forget exactly the freed frames' contents."""

from __future__ import annotations

import numpy as np
import pytest

import gupsim
from gupsim.constants import MAX_PAGE_ORDER
from gupsim.memory import Kind
from gupsim.memory.alloc import aligned_blocks


def _by_definition(pfns: np.ndarray) -> list[tuple[int, int]]:
    """Every naturally aligned block inside the set whose parent block is not (or that
    is of MAX_PAGE_ORDER already): the buddy allocator's maximal free blocks."""
    have = set(pfns.tolist())
    out = []
    for order in range(MAX_PAGE_ORDER + 1):
        size = 1 << order
        for start in sorted({p - p % size for p in have}):
            if all(start + j in have for j in range(size)):
                parent = start - start % (size * 2)
                if order == MAX_PAGE_ORDER or not all(
                        parent + j in have for j in range(size * 2)):
                    out.append((start, order))
    return sorted(out)


@pytest.mark.parametrize("seed", range(6))
def test_aligned_blocks_are_the_maximal_buddy_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    keep = rng.random(n) < (0.5, 0.9, 0.99, 0.999, 1.0, 0.7)[seed]
    pfns = np.flatnonzero(keep).astype(np.int64) + (0, 1, 3, 1024, 7, 0)[seed]
    blocks = aligned_blocks(pfns)
    assert sorted(blocks) == _by_definition(pfns)
    assert sum(1 << order for _, order in blocks) == len(pfns)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 65])
@pytest.mark.parametrize("seed", range(4))
def test_a_few_frames_make_the_maximal_buddy_blocks(n: int, seed: int) -> None:
    """Up to 64 frames (most frees) the runs are found in plain ints: the same blocks."""
    rng = np.random.default_rng(seed)
    base = int(rng.integers(0, 4096))
    pfns = np.unique(base + rng.choice(np.arange(0, 2 * n + (0, 0, 64, 1024)[seed]), n,
                                       replace=False)).astype(np.int64)
    if seed == 0:
        pfns = np.arange(base, base + n, dtype=np.int64)      # one run
    blocks = aligned_blocks(pfns)
    assert sorted(blocks) == _by_definition(pfns)
    assert sum(1 << order for _, order in blocks) == len(pfns)


def _machine() -> tuple[gupsim.Kernel, np.ndarray]:
    k = gupsim.Kernel(memory="64MiB")
    pfns = k.alloc.alloc_bulk_order0(3000, Kind.ANON, True, 0, np.zeros(3000, np.int64))
    return k, pfns


@pytest.mark.parametrize("which", ["one run", "two runs", "scattered"])
def test_bulk_free_matches_one_free_per_page(which: str) -> None:
    """A contiguous run (freed through slices), two runs and a scattered set: the same
    buddy lists, counters and contents as one free_folio() per page."""
    k1, pfns = _machine()
    k2, same = _machine()
    assert (pfns == same).all()
    chosen = {"one run": pfns[100:2600], "two runs": np.concatenate([pfns[5:900],
                                                                        pfns[1500:2999]]),
              "scattered": pfns[::3]}[which]
    for k in (k1, k2):
        for pfn in pfns[::7].tolist():          # a seventh of the frames hold data
            k.mem.write(pfn, 0, b"data")
        k.mem.refcount[chosen] = 0
    for pfn in chosen.tolist():
        k1.alloc.free_folio(pfn)
    k2.alloc.free_folios(chosen.copy())
    for r1, r2 in ((k1.alloc.normal, k2.alloc.normal), (k1.alloc.movable, k2.alloc.movable)):
        assert r1.nr_free == r2.nr_free
        assert [sorted(f) for f in r1.free] == [sorted(f) for f in r2.free]
    assert k2.alloc.region_of(int(pfns[0])).free[0] or which == "one run"
    assert sorted(k1.mem.content) == sorted(k2.mem.content)
    freed = set(chosen.tolist())
    assert not freed & set(k2.mem.content)
    assert set(k2.mem.content) == set(pfns[::7].tolist()) - freed
    assert (k2.mem.kind[chosen] == 0).all() and (k2.mem.kind[np.setdiff1d(pfns, chosen)]
                                                 == Kind.ANON).all()
    assert [k1.alloc.alloc_frames(0, True) for _ in range(40)] == \
        [k2.alloc.alloc_frames(0, True) for _ in range(40)]
