"""Design principle 3 (fast by design): bulk pinning and unpinning run no per-page Python.

Pinning a prefaulted 1 GiB range into a `PageArray` runs the same Python code as pinning
1024 pages, through GUP-fast and through the slow path alike; unpinning likewise. The
Python calls are counted, so "vectorised" is a test and not a hope.
"""

from __future__ import annotations

import numpy as np
import pytest
from callcount import python_calls
from gup_helpers import counters, entries

from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    PageArray,
)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.mark.parametrize("entry", entries("pin_user_pages_fast", "pin_user_pages",
                                           "pin_user_pages_remote"))
def test_vectorised_1gib_pin_and_unpin(entry: EntryPoint) -> None:
    """Pinning a prefaulted 1 GiB range into a PageArray runs the same Python code as
    pinning 1024 pages, through GUP-fast and through the slow path alike: no per-page
    work (numpy does the pages). Unpinning likewise."""
    k = Kernel(memory="2GiB")
    p = k.spawn("app")
    n = 262144
    big = p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    small = p.mmap(0, 1024 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    flags = FOLL_WRITE | FOLL_LONGTERM
    vec, few = PageArray(n), PageArray(1024)
    assert entry.invoke(p, small, 1024, flags, few) == 1024    # warm-up: first-call
    k.unpin_user_pages(few)                                    # imports and caches
    calls_small, _, got_small = python_calls(lambda: entry.invoke(p, small, 1024, flags, few))
    calls_big, secs, got = python_calls(lambda: entry.invoke(p, big, n, flags, vec))
    assert (got_small, got) == (1024, n)
    assert calls_big <= calls_small + 50 and calls_big < 2000, (calls_small, calls_big)
    assert secs < 2.0
    assert np.array_equal(vec.pfns, p.mm.find_vma(big).pfn)
    assert counters(k) == (n + 2048, 1024)
    un_small, _, _ = python_calls(lambda: k.unpin_user_pages(few))
    un_big, secs, _ = python_calls(lambda: k.unpin_user_pages(vec))
    assert un_big <= un_small + 50 and un_big < 2000, (un_small, un_big)
    assert secs < 2.0
    assert counters(k) == (n + 2048, n + 2048)
    assert int(k.mem.refcount[vec.pfns].max()) == 1
