"""The slow path's grab of a few order-0 pages in one array update (grab.py,
`_grab_short_order0`) leaves what the per-folio form leaves: pins (with and without the
bias, by era), references, the zero page (never pin-counted from 5.19), a refcount near
the 32-bit edge (the general form wraps it), and a page that appears twice."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from callcount import python_calls

import gupsim
from gupsim import (
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_WRITE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    lean,
)
from gupsim.gup import grab

RW = PROT_READ | PROT_WRITE
N = 8


def _state(k: gupsim.Kernel) -> tuple[object, ...]:
    mem = k.mem
    return (mem.refcount[:mem.nr_pages].tobytes(), mem.pincount[:mem.nr_pages].tobytes(),
            sorted(mem.vmstat.items()), dict(mem.warnings.hits))


def _run(version: str | None, body: Callable[[gupsim.Kernel, gupsim.Process, int], object]
         ) -> tuple[object, ...]:
    k = gupsim.Kernel(memory="64MiB", version=version)
    p = k.spawn("short")
    a = p.mmap(0, N * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    got = body(k, p, a)
    return (got, *_state(k))


def _both(version: str | None, body: Callable[[gupsim.Kernel, gupsim.Process, int], object],
          monkeypatch: pytest.MonkeyPatch) -> tuple[object, ...]:
    short = _run(version, body)
    monkeypatch.setattr(lean, "ENABLED", False)
    general = _run(version, body)
    monkeypatch.setattr(lean, "ENABLED", True)
    assert short == general
    return short


def _fault_then(flags: int, how: str) -> Callable[[gupsim.Kernel, gupsim.Process, int], object]:
    """Fault the range in through the slow path (the pages are not there yet), then grab."""
    def body(k: gupsim.Kernel, p: gupsim.Process, a: int) -> object:
        vec = gupsim.PageArray(N)
        if how == "pin":
            got = p.pin_user_pages_unlocked(a, N, vec, flags)
        else:
            got = p.get_user_pages_unlocked(a, N, vec, flags)
        return got, vec.pfns.tolist()
    return body


@pytest.mark.parametrize("version", ["5.6", "5.8", "5.19", None])
@pytest.mark.parametrize("how,flags", [("pin", FOLL_WRITE | FOLL_LONGTERM), ("pin", FOLL_WRITE),
                                       ("get", FOLL_WRITE), ("pin", 0)])
def test_a_few_order0_pages_are_grabbed_as_the_general_form_grabs_them(
        version: str | None, how: str, flags: int, monkeypatch: pytest.MonkeyPatch) -> None:
    got = _both(version, _fault_then(flags, how), monkeypatch)
    count = got[0]
    assert isinstance(count, tuple) and count[0] == N


@pytest.mark.parametrize("version", ["5.8", None])
def test_the_zero_page_in_the_range_goes_the_general_way(
        version: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    def body(k: gupsim.Kernel, p: gupsim.Process, a: int) -> object:
        p.read(a, N * PAGE_SIZE)                   # read faults map the zero page
        vec = gupsim.PageArray(N)
        return p.pin_user_pages_unlocked(a, N, vec, 0), vec.pfns.tolist()
    got = _both(version, body, monkeypatch)
    assert got[0][0] == N                          # type: ignore[index]


def test_a_refcount_at_the_32_bit_edge_wraps_as_the_general_form_wraps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def body(k: gupsim.Kernel, p: gupsim.Process, a: int) -> object:
        p.write(a, b"x")
        vma = p.mm.find_vma(a)
        assert vma is not None
        pfn = int(vma.pfn[0])
        k.mem.refcount[pfn] = (1 << 31) - 10              # one more pin wraps it
        vec = gupsim.PageArray(N)
        return p.pin_user_pages_unlocked(a, N, vec, FOLL_WRITE), int(k.mem.refcount[pfn])
    got = _both(None, body, monkeypatch)
    assert got[0][1] < 0                           # type: ignore[index]


def test_the_short_grab_costs_fewer_python_calls() -> None:
    """It is there for speed: with it, the grab of eight fresh pages makes fewer calls."""
    def grab_once(enabled: bool) -> int:
        k = gupsim.Kernel(memory="64MiB")
        p = k.spawn("short")
        a = p.mmap(0, N * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
        p.write(a, b"\0" * (N * PAGE_SIZE))
        vma = p.mm.find_vma(a)
        assert vma is not None
        pfns = vma.pfn.astype(np.int64)
        lean.ENABLED = enabled
        try:
            calls, _, got = python_calls(lambda: grab.try_grab_pfns(k.mem, pfns,
                                                                    FOLL_PIN))
        finally:
            lean.ENABLED = True
        assert got == N
        return calls
    assert grab_once(True) < grab_once(False)
