"""The pieces issue 13's speed work added: each does the same work as what it replaced."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from gupsim.gup import FOLL_LONGTERM, FOLL_WRITE
from gupsim.memory.alloc import increasing
from gupsim.memory.memmap import add_at


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("vals", [1, -3, np.array([2, 5, 7, 1], dtype=np.int64)])
def test_add_at_counts_every_repeat_whatever_the_value_type(dtype: type, vals: object) -> None:
    arr = np.zeros(8, dtype=dtype)
    idx = np.array([3, 1, 3, 6])
    add_at(arr, idx, vals)
    want = np.zeros(8, dtype=np.int64)
    for j, i in enumerate(idx.tolist()):
        want[i] += vals if np.isscalar(vals) else vals[j]     # type: ignore[index]
    assert arr.dtype == dtype and arr.tolist() == want.tolist()


@pytest.mark.parametrize("a, want", [([], True), ([4], True), ([1, 2, 9], True),
                                     ([1, 1, 2], False), ([3, 2], False)])
def test_increasing_means_sorted_and_distinct(a: list[int], want: bool) -> None:
    assert increasing(np.array(a, dtype=np.int64)) is want


def test_a_batch_of_one_page_pins_is_matched_through_the_index(k: gupsim.Kernel,
                                                               p: gupsim.Process) -> None:
    """More live records than pages released: the release finds its records by page;
    the pins it did not name stay outstanding and a second release is a double unpin."""
    a = p.mmap(0, 10 * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    pages = []
    for i in range(10):
        one: list = []
        assert p.pin_user_pages_fast(a + i * PAGE_SIZE, 1, FOLL_WRITE | FOLL_LONGTERM, one) == 1
        pages += one
    k.unpin_user_pages([pages[2], pages[7], pages[4]])
    held = sorted(int(o.pfns[0]) for o in k.sanitizer.outstanding())
    assert held == sorted(pg.pfn for i, pg in enumerate(pages) if i not in (2, 4, 7))
    assert k.sanitizer.reports == []
    k.unpin_user_pages([pages[7]])
    assert [r.kind for r in k.sanitizer.reports] == ["double_unpin"]
    k.unpin_user_pages([pg for i, pg in enumerate(pages) if i not in (2, 4, 7)])
    assert k.sanitizer.outstanding() == []


@pytest.mark.parametrize("opt_out", [True, False])
def test_the_heap_is_tuned_once_unless_opted_out(opt_out: bool) -> None:
    code = ("import gupsim, gupsim.heap as h; first = h.tune(); gupsim.Kernel(memory='64MiB');"
            " print(first, h.tune())")
    env = dict(os.environ, GUPSIM_MALLOC_DEFAULTS="1" if opt_out else "0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.split() == (["False", "False"] if opt_out else ["True", "False"])


@pytest.mark.parametrize("a", [[], [5], [512 * j for j in range(32)], [3, 1, 2],
                               [512 * j for j in range(32)][::-1], [1, 2, 2, 3], [4, 1, 4],
                               [7, 7]])
def test_distinct_means_no_value_repeats(a: list[int]) -> None:
    from gupsim.lean import distinct
    assert distinct(a) is (len(set(a)) == len(a))


@pytest.mark.parametrize("a", [[5], [512 * j for j in range(200)],
                               [512 * j for j in range(200)][::-1],
                               [512 * j for j in range(100)] + [0],
                               list(range(99)) + [50], [3, 1, 2], [7, 7]])
def test_distinct_array_means_no_value_repeats(a: list[int]) -> None:
    """Long arrays (beyond lean.SHORT) as well as short ones, increasing or not."""
    from gupsim.lean import distinct_array
    assert distinct_array(np.array(a, dtype=np.int64)) is (len(set(a)) == len(a))
