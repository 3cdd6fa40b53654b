"""The sanitizer's history keeps large released records as runs (check/runs.py): the
runs give back exactly the arrays, and a misuse report read from a packed record names
the same call sites as one read from the arrays."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from gupsim import (
    FOLL_WRITE,
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    PageArray,
)
from gupsim.check.runs import Runs
from gupsim.check.sanitizer import PackedRecord


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8])
@pytest.mark.parametrize("step", [0, 1])
def test_runs_give_back_the_array(dtype: type, step: int) -> None:
    """Random arrays made of runs (and of single entries) survive the round trip, dtype
    included; fewer runs than entries where the values run."""
    rng = np.random.default_rng(13)
    for _ in range(50):
        parts = [np.arange(int(rng.integers(1, 9))) * step + int(rng.integers(-50, 100))
                 for _ in range(int(rng.integers(1, 12)))]
        a = np.concatenate(parts).astype(dtype)
        runs = Runs.of(a, step)
        back = runs.expand()
        assert back.dtype == a.dtype and np.array_equal(back, a)
        assert len(runs) <= len(parts)


def next_line() -> str:
    """The call site the sanitizer names for a call on the caller's next line."""
    f = inspect.currentframe().f_back  # type: ignore[union-attr]
    assert f is not None
    return f"{f.f_code.co_filename}:{f.f_lineno + 1} in {f.f_code.co_name}"


def test_double_unpin_from_a_packed_record_names_both_sites() -> None:
    """A 1024-page pin released whole goes to the history as runs; unpinning one of its
    pages again is still a double_unpin naming where it was pinned and first released."""
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    n = 1024
    a = p.mmap(0, n * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
               | MAP_POPULATE)
    vec = PageArray(n)
    taken = next_line()
    assert p.pin_user_pages_fast(a, n, FOLL_WRITE, vec) == n
    first = next_line()
    k.unpin_user_pages(vec)
    [packed] = k.sanitizer.released
    assert isinstance(packed, PackedRecord), "contiguous pages are kept as runs"
    assert np.array_equal(packed.expand().pfns, vec.pfns)
    again = next_line()
    k.unpin_user_page(vec[700])
    [r] = k.sanitizer.reports
    assert r.kind == "double_unpin" and r.pfn == vec[700].pfn
    assert r.taken_at == taken and r.released_at == again and first in r.message
