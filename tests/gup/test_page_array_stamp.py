"""A PageArray that GUP filled whole remembers the fill's pin record (memory/pagearray.py):
its unpin then finds the record without comparing every entry. Any write to the array
must make the unpin look at the entries again; these tests write the array every way a
user or gupsim can, after the pin, and compare the outcome with the unpin that never
trusts a fill (the express paths off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_HUGEPAGE,
    MADV_POPULATE_WRITE,
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    PageArray,
    Process,
    lean,
)
from gupsim.memory.pagearray import NULL, pfns_of, stamp_of

RW = PROT_READ | PROT_WRITE
FLAGS = FOLL_WRITE | FOLL_LONGTERM
SIZES = (1, 8, 1024)            # GUP-fast's one-page, few-page and huge-leaf fills


def _mapping(p: Process, n: int) -> int:
    """The address of `n` populated pages (THP leaves for a large `n`, else small
    pages), with a populated page before them."""
    if n < 512:
        a = p.mmap(0, 64 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
        return a + PAGE_SIZE
    a = p.mmap(0, (n + 1024) * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    a = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.madvise(a, (n + 512) * PAGE_SIZE, MADV_HUGEPAGE)
    p.madvise(a, (n + 512) * PAGE_SIZE, MADV_POPULATE_WRITE)
    return a + (2 << 20)


def _machine(n: int) -> tuple[Kernel, Process, int]:
    """A machine, a process and the address of `n` populated pages (see `_mapping`)."""
    k = Kernel(memory="64MiB")
    p = k.spawn("stamp")
    return k, p, _mapping(p, n)


def _other(k: Kernel, p: Process, a: int) -> int:
    """A PFN this process pinned by another call (the page after the range)."""
    other = PageArray(1)
    assert p.pin_user_pages_fast(a - PAGE_SIZE, 1, FLAGS, other) == 1
    return other[0].pfn  # type: ignore[union-attr]


# each write: (the array before the pin, the array after it, the kernel, the process,
# the range's address) -> None; `before` is what the write held on to before the pin
Write = Callable[[dict[str, Any], PageArray, Kernel, Process, int], None]

WRITES: dict[str, tuple[Callable[[PageArray], dict[str, Any]], Write]] = {
    "setitem NULL": (lambda v: {}, lambda b, v, k, p, a: v.__setitem__(0, None)),
    "setitem page": (lambda v: {},
                     lambda b, v, k, p, a: v.__setitem__(0, k.page(_other(k, p, a)))),
    ".pfns after": (lambda v: {}, lambda b, v, k, p, a: v.pfns.__setitem__(0, NULL)),
    ".pfns before": (lambda v: {"arr": v.pfns},
                     lambda b, v, k, p, a: b["arr"].__setitem__(0, NULL)),
    "slice setitem": (lambda v: {"s": v[0:]},
                      lambda b, v, k, p, a: b["s"].__setitem__(0, None)),
    "slice .pfns before": (lambda v: {"arr": v[0:].pfns},
                           lambda b, v, k, p, a: b["arr"].__setitem__(0, NULL)),
    "GUP into a slice": (lambda v: {}, lambda b, v, k, p, a:
                         p.pin_user_pages_fast(a - PAGE_SIZE, 1, FLAGS, v[0:])),
}


def _run(n: int, how: str | None, user_array: bool = False) -> list[Any]:
    """Pin `n` pages into an array of exactly `n` entries, write it `how` (None: not at
    all), unpin it; the machine's counts, vmstat, warnings and reports."""
    k, p, a = _machine(n)
    arr = np.full(n, NULL, dtype=np.int64)
    vec = PageArray(arr) if user_array else PageArray(n)
    before, write = WRITES[how] if how is not None else (lambda v: {}, None)
    held = before(vec)
    assert p.pin_user_pages_fast(a, n, FLAGS, vec) == n
    filled = stamp_of(vec)
    if user_array:
        arr[0] = NULL                           # the caller's own array, written directly
    elif write is not None:
        write(held, vec, k, p, a)
    after = stamp_of(vec)
    k.unpin_user_pages(vec)
    mem = k.mem
    return [filled is not None, after is not None,
            [getattr(mem, f).copy() for f in ("refcount", "pincount", "flags")],
            dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports]]


def _same(x: list[Any], y: list[Any]) -> None:
    for u, v in zip(x[2], y[2], strict=True):
        assert np.array_equal(u, v)
    assert x[3:] == y[3:]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("how", sorted(WRITES))
def test_a_write_after_the_pin_drops_the_fill(n: int, how: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After any write the unpin ends exactly as the unpin that compares every entry."""
    trusted = _run(n, how)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _run(n, how)
    filled_before, filled_after = trusted[:2]
    expected_before = how not in (".pfns before", "slice .pfns before")
    assert filled_before == expected_before     # an array handed out is never trusted
    assert not filled_after
    _same(trusted, plain)


@pytest.mark.parametrize("n", SIZES)
def test_a_callers_own_array_is_never_trusted(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PageArray over an array the caller made: the caller may write it at any time."""
    trusted = _run(n, None, user_array=True)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _run(n, None, user_array=True)
    assert trusted[:2] == [False, False]
    _same(trusted, plain)


@pytest.mark.parametrize("n", SIZES)
def test_an_unwritten_array_is_unpinned_by_its_fill(n: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No write: the unpin takes the fill's record and ends as the comparing unpin."""
    trusted = _run(n, None)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _run(n, None)
    assert trusted[:2] == [True, True]
    _same(trusted, plain)
    assert trusted[5] == []


def test_the_unpin_trusts_the_fill_without_reading_the_entries() -> None:
    """What the stamp buys: the unpin does not read the entries. Shown by a write that
    goes around PageArray's methods (only gupsim's own code could make it): the unpin
    still releases what the fill pinned."""
    k, p, a = _machine(1024)
    vec = PageArray(1024)
    assert p.pin_user_pages_fast(a, 1024, FLAGS, vec) == 1024
    pinned = pfns_of(vec).copy()
    pfns_of(vec)[:] = pinned[::-1]              # the same pages, in another order
    k.unpin_user_pages(vec)
    assert k.sanitizer.reports == [] and not k.mem.pincount[pinned].any()
    assert k.vmstat["nr_foll_pin_released"] == 1024
    assert k.sanitizer.released[-1].expand().pfns.tolist() == pinned.tolist()


def _released_twice(n: int) -> list[Any]:
    """The fill's pages unpinned through a list of the same pages first, then the
    untouched array unpinned: a double unpin, whatever the array remembers."""
    k, p, a = _machine(n)
    vec = PageArray(n)
    assert p.pin_user_pages_fast(a, n, FLAGS, vec) == n
    k.unpin_user_pages(list(vec))
    k.unpin_user_pages(vec)
    mem = k.mem
    return [[getattr(mem, f).copy() for f in ("refcount", "pincount")], dict(k.vmstat),
            [str(w) for w in k.warnings], [r.kind for r in k.sanitizer.reports]]


@pytest.mark.parametrize("n", SIZES)
def test_a_fill_released_another_way_is_not_trusted(n: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of the fill no longer holds the pages: the sanitizer reports the
    double unpin as it does when the express paths are off."""
    trusted = _released_twice(n)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _released_twice(n)
    for u, v in zip(trusted[0], plain[0], strict=True):
        assert np.array_equal(u, v)
    assert trusted[1:] == plain[1:]
    assert "double_unpin" in trusted[3]


# A PageArray's numpy array is made when first needed: all NULL for a read or a partial
# write, or as a copy of the frames when GUP fills it whole first (no NULLs written).


def test_an_array_nothing_wrote_reads_null() -> None:
    vec = PageArray(100)
    assert len(vec) == 100 and vec[5] is None and list(vec) == [None] * 100
    assert repr(vec) == "<PageArray 0/100 filled>" and pfns_of(vec, 3).tolist() == [NULL] * 3
    assert (vec.pfns == NULL).all() and len(vec[10:20]) == 10


@pytest.mark.parametrize("n", SIZES)
def test_a_slice_taken_before_the_fill_sees_it(n: int) -> None:
    """A slice shares the array: a whole fill after it writes into that array."""
    k, p, a = _machine(n)
    vec = PageArray(n)
    tail = vec[n // 2:]
    assert p.pin_user_pages_fast(a, n, FLAGS, vec) == n
    assert [pg.pfn for pg in tail.filled()] == [pg.pfn for pg in vec.filled()[n // 2:]]
    assert tail[0] is not None
    k.unpin_user_pages(vec)
    assert k.sanitizer.reports == [] and k.vmstat["nr_foll_pin_released"] == n


@pytest.mark.parametrize("n", [8, 1024])         # small pages, huge leaves
def test_a_partial_fill_leaves_the_rest_null(n: int) -> None:
    k, p, a = _machine(n)
    vec = PageArray(n + 8)
    assert p.pin_user_pages_fast(a, n, FLAGS, vec) == n
    assert len(vec) == n + 8 and all(vec[i] is not None for i in range(n))
    assert [vec[i] for i in range(n, n + 8)] == [None] * 8 and len(vec.pfns) == n + 8
    k.unpin_user_pages(vec[:n])
    assert k.sanitizer.reports == []


# A fill by huge leaves keeps its frames as runs until something reads an entry
# (`fill_runs()`): every way to read must see the frames the general path writes.

LEAF_RANGES = ((0, 1024), (100, 1500), (511, 1025))     # (first page, pages): aligned or not


def _leaf_fill(off: int, n: int) -> tuple[Kernel, PageArray]:
    k, p, a = _machine(2048)
    vec = PageArray(n)
    assert p.pin_user_pages_fast(a + off * PAGE_SIZE, n, FLAGS, vec) == n
    return k, vec


@pytest.mark.parametrize(("off", "n"), LEAF_RANGES)
def test_a_leaf_fill_reads_as_the_general_path_writes(off: int, n: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    k, vec = _leaf_fill(off, n)
    assert vec._runs is not None and vec._pfns is None     # kept as runs: nothing read yet
    monkeypatch.setattr(lean, "ENABLED", False)
    _, plain = _leaf_fill(off, n)
    expected = plain.pfns.tolist()
    assert len(set(k.mem.head_of(np.array(expected)).tolist())) > 1   # several folios
    assert [pg.pfn for pg in vec] == expected                  # item by item, first read
    assert vec.pfns.tolist() == expected and pfns_of(vec, 3).tolist() == expected[:3]
    assert [pg.pfn for pg in vec[n // 3:].filled()] == expected[n // 3:]
    assert repr(vec) == f"<PageArray {n}/{n} filled>"


@pytest.mark.parametrize("read", ["item", "slice", "pfns_of", "repr"])
def test_each_first_read_of_a_leaf_fill_makes_the_entries(read: str) -> None:
    k, vec = _leaf_fill(100, 1500)
    first = {"item": lambda: vec[7], "slice": lambda: vec[5:9], "pfns_of": lambda: pfns_of(vec),
             "repr": lambda: repr(vec)}[read]
    first()
    assert vec._runs is None and vec._pfns is not None
    expected = pfns_of(vec).tolist()
    assert expected == list(range(expected[0], expected[0] + 412)) + expected[412:]
    assert NULL not in expected and len(expected) == 1500
    k.unpin_user_pages(vec)
    assert k.sanitizer.reports == [] and k.vmstat["nr_foll_pin_released"] == 1500


def test_the_unpin_of_a_leaf_fill_makes_no_entries() -> None:
    """What the runs buy: pinned and unpinned through the same array, no entry is made."""
    k, vec = _leaf_fill(0, 1024)
    k.unpin_user_pages(vec)
    assert vec._pfns is None and k.sanitizer.reports == []
    assert k.vmstat["nr_foll_pin_released"] == 1024 and not k.mem.pincount.any()


@pytest.mark.parametrize("second", ["small pages", "leaves"])
def test_a_second_fill_replaces_runs_nothing_read(second: str) -> None:
    """Pinned by leaves, unpinned, then filled whole again (by small pages or other
    leaves) before anything read it: the entries are the second fill's."""
    k, p, a = _machine(2048)
    vec = PageArray(1024)
    assert p.pin_user_pages_fast(a, 1024, FLAGS, vec) == 1024
    k.unpin_user_pages(vec)
    assert vec._runs is not None
    b = a + 1024 * PAGE_SIZE if second == "leaves" else \
        p.mmap(0, 1024 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    assert p.pin_user_pages_fast(b, 1024, FLAGS, vec) == 1024
    vma = p.mm.find_vma(b)
    assert [pg.pfn for pg in vec] == vma.pfn[vma.idx(b):vma.idx(b) + 1024].tolist()
    k.unpin_user_pages(vec)
    assert k.sanitizer.reports == [] and not k.mem.pincount.any()


def test_a_write_into_a_leaf_fill_keeps_the_other_entries() -> None:
    k, vec = _leaf_fill(0, 1024)
    runs = vec._runs
    assert runs is not None
    vec[3] = None
    expected = runs.expand().tolist()
    expected[3] = NULL
    assert vec.pfns.tolist() == expected and stamp_of(vec) is None
