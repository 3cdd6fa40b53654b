"""The plain-int and per-leaf shortcuts (gupsim.lean) change nothing but speed.

GUP-fast checks a short range in plain ints and a huge leaf once, and a call that
touches one folio grabs and releases it in plain ints; the array forms do the same entry
by entry. A random program (maps of anon, shmem, THP, hugetlb, ext4, secretmem,
read-only and PROT_NONE memory; pins with and without FOLL_WRITE / FOLL_LONGTERM,
references, unpins, put_page, writes, fork, exit, munmap) runs twice on a machine of
each era, with the shortcuts and without: every return value, the page-frame arrays,
/proc/vmstat, the warnings and the sanitizer's reports must be identical.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from callcount import python_calls
from gup_helpers import recorded

import gupsim
from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_HUGEPAGE,
    MADV_POPULATE_WRITE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    PageArray,
    lean,
)
from gupsim.gup.grab import folio_runs
from gupsim.gup.state import GupCall

RW = PROT_READ | PROT_WRITE
ERAS = ("5.6", "5.8", "5.11", "5.13", "5.19", "6.2", "6.5", None)
PIN_FLAGS = (FOLL_WRITE | FOLL_LONGTERM, FOLL_WRITE, 0, FOLL_LONGTERM)


def _program(era: str | None, seed: int, steps: int = 250) -> list[Any]:
    """Run a random program; the trace of what it returned and the machine's state."""
    rng = random.Random(seed)
    k = Kernel(memory="256MiB", movable="32MiB", cma="16MiB", nr_hugepages=4, version=era)
    procs = [k.spawn("lean")]
    maps: list[tuple[gupsim.Process, int, int]] = []
    held: list[tuple[bool, PageArray]] = []            # (pinned, pages)
    trace: list[Any] = []
    i_map = 0
    for _ in range(steps):
        p = rng.choice(procs)
        mine = [m for m in maps if m[0] is p]
        op = rng.random()
        if op < 0.15 or not mine:
            pages, kind = rng.choice(((1, "anon"), (4, "anon"), (16, "anon"), (512, "thp"),
                                      (1536, "thp"), (8, "shmem"), (512, "hugetlb"),
                                      (1024, "hugetlb"), (4, "ro"), (2, "none"),
                                      (4, "ext4"), (2, "secretmem")))
            flags = MAP_PRIVATE | MAP_ANONYMOUS
            prot = {"ro": PROT_READ, "none": PROT_NONE}.get(kind, RW)
            if kind == "shmem":
                flags = MAP_SHARED | MAP_ANONYMOUS
            if kind == "hugetlb":
                flags |= MAP_HUGETLB
            if kind != "thp" and rng.random() < 0.6:
                flags |= MAP_POPULATE
            fd = None
            if kind == "ext4":
                fd = k.fs("ext4").create(f"file{i_map}", pages * PAGE_SIZE)
                i_map += 1
            if kind == "secretmem":
                fd = k.filesystems.memfd_secret()
                fd.truncate(pages * PAGE_SIZE)
            if fd is not None:
                flags = MAP_SHARED | (flags & MAP_POPULATE)
            try:
                a = p.mmap(0, pages * PAGE_SIZE, prot, flags, fd=fd)
            except OSError as e:                  # the hugetlb pool is used up
                trace.append(("mmap", e.errno))
                continue
            if kind == "thp":
                p.madvise(a, pages * PAGE_SIZE, MADV_HUGEPAGE)
                if rng.random() < 0.7:
                    p.madvise(a, pages * PAGE_SIZE, MADV_POPULATE_WRITE)
            maps.append((p, a, pages))
            continue
        _, a, pages = rng.choice(mine)
        i = rng.randrange(pages)
        n = rng.choice((1, 1, 2, 3, 16, 17, 600, pages - i, pages))
        i = 0 if n == pages else i
        n = max(1, min(n, pages - i))
        if op < 0.50:
            vec = PageArray(n)
            entry = rng.choice(("pin_user_pages_fast", "pin_user_pages_fast",
                                "get_user_pages_fast", "pin_user_pages_unlocked"))
            flags = rng.choice(PIN_FLAGS)
            if entry == "get_user_pages_fast":
                flags &= ~FOLL_LONGTERM
            if entry == "pin_user_pages_unlocked":
                got = p.pin_user_pages_unlocked(a + i * PAGE_SIZE, n, vec, flags)
            else:
                got = getattr(p, entry)(a + i * PAGE_SIZE, n, flags, vec)
            trace.append((entry, n, flags, got))
            if got > 0:
                held.append((entry != "get_user_pages_fast", vec[:got]))
        elif op < 0.70 and held:
            pinned, vec = held.pop(rng.randrange(len(held)))
            if pinned:
                k.unpin_user_pages(vec)
            else:
                for page in vec.filled():
                    k.put_page(page)
        elif op < 0.80:
            try:
                p.write(a + i * PAGE_SIZE, b"y")
            except Exception as e:                # a PROT_NONE or read-only map: SIGSEGV
                trace.append(("write", type(e).__name__))
        elif op < 0.87 and len(procs) < 4:
            try:
                procs.append(p.fork())
            except OSError as e:                  # no huge page to copy a pinned one into
                trace.append(("fork", e.errno))
                continue
            maps.extend((procs[-1], b, m) for q, b, m in list(maps) if q is p)
        elif op < 0.92 and p is not procs[0]:
            p.exit()
            procs.remove(p)
            maps[:] = [m for m in maps if m[0] is not p]
        else:
            p.munmap(a, pages * PAGE_SIZE)
            maps.remove((p, a, pages))
    mem = k.mem
    state = [getattr(mem, name).copy() for name in
             ("refcount", "pincount", "mapcount", "flags", "kind", "order")]
    return [trace, state, dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports]]


def _thp_range(p: gupsim.Process, size: int, populate: int | None = None) -> int:
    """A 2 MiB-aligned range of `size` bytes under MADV_HUGEPAGE, its first `populate`
    bytes (all by default) faulted in as THPs; returns its address."""
    a = p.mmap(0, size + (2 << 20), RW, MAP_PRIVATE | MAP_ANONYMOUS)
    a = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.madvise(a, size, MADV_HUGEPAGE)
    p.madvise(a, size if populate is None else populate, MADV_POPULATE_WRITE)
    return a


@pytest.mark.parametrize("era", ERAS)
def test_shortcuts_change_nothing(era: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same random program with and without the plain-int and per-leaf paths: same
    results, same machine, on every era whose pinning rules differ."""
    calls: list[GupCall] = []
    for seed in (1, 2):
        with recorded() as (lean_calls, _):
            lean_run = _program(era, seed)
        calls += lean_calls
        monkeypatch.setattr(lean, "ENABLED", False)
        plain = _program(era, seed)
        monkeypatch.setattr(lean, "ENABLED", True)
        assert lean_run[0] == plain[0]
        for a, b in zip(lean_run[1], plain[1], strict=True):
            assert np.array_equal(a, b)
        assert lean_run[2:] == plain[2:]
        assert any(t[0] != "write" and t[-1] > 0 for t in lean_run[0])   # something was pinned
    assert any(c.leaves for c in calls)         # GUP-fast took huge leaves whole
    expressed = [c.nr_pages for c in calls if c.express]
    if era is None:                             # express.py: one page, and a few
        assert {n > 1 for n in expressed} == {True, False}
    else:                                       # it runs on the newest era only
        assert not expressed


def _thp_program(era: str | None) -> list[Any]:
    """Pins of 2 MiB THP leaves that pass, that are refused before the grab (absent,
    read-only) and after it (a shared anon leaf must be unshared first), across fork."""
    k = Kernel(memory="256MiB", movable="64MiB", version=era)
    p = k.spawn("thp")
    size = 8 << 20
    a = _thp_range(p, size, size * 3 // 4)                  # the last 2 MiB stay absent
    trace: list[Any] = []
    held = []
    for q in (p.fork(), p):                 # the leaves are shared until unshared
        for off, n, flags in ((4096, 300, 0), (0, 1536, 0), (0, 1024, FOLL_LONGTERM),
                              (0, 1024, FOLL_WRITE | FOLL_LONGTERM), (0, 2048, FOLL_WRITE),
                              (8192, 1500, FOLL_WRITE | FOLL_LONGTERM)):
            vec = PageArray(n)
            got = q.pin_user_pages_fast(a + off, n, flags, vec)
            last = k.gup.last_call
            trace.append((off, n, flags, got, last.fast if last else None))
            if got > 0:
                held.append(vec[:got])
    for vec in held:
        k.unpin_user_pages(vec)
    mem = k.mem
    return [trace, [getattr(mem, f).copy() for f in ("refcount", "pincount", "flags")],
            dict(k.vmstat), [str(w) for w in k.warnings]]


@pytest.mark.parametrize("era", ERAS)
def test_leaf_walks_change_nothing(era: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """GUP-fast over huge leaves: what it takes and what it refuses, per leaf, is what
    the walk entry by entry takes and refuses."""
    lean_run = _thp_program(era)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _thp_program(era)
    assert lean_run[0] == plain[0]
    for x, y in zip(lean_run[1], plain[1], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[2:] == plain[2:]
    assert {t[3] for t in lean_run[0]} != {lean_run[0][0][3]}   # some took less


def _pud_program() -> list[Any]:
    """Pins of a 1 GiB hugetlb page, a PUD leaf whose PMD-sized parts are one folio:
    the whole page, a range from inside one part into the next ones, ranges that start
    or end on a part's boundary; the pages arrays are read after the pins."""
    from gupsim import MAP_HUGE_1GB
    k = Kernel(memory="2GiB", nr_hugepages_1g=1)
    p = k.spawn("pud")
    a = p.mmap(0, 1 << 30, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB
               | MAP_POPULATE)
    trace: list[Any] = []
    held = []
    for off, n in ((0, 1 << 18), (1000, 5000), (512, 1024), (300, 213 + 512 * 3), (0, 513)):
        vec = PageArray(n)
        got = p.pin_user_pages_fast(a + off * PAGE_SIZE, n, FOLL_WRITE | FOLL_LONGTERM, vec)
        trace.append((off, n, got, vec.pfns[[0, -1]].tolist()))
        held.append(vec)
    for vec in held:
        k.unpin_user_pages(vec)
    mem = k.mem
    return [trace, [getattr(mem, f).copy() for f in ("refcount", "pincount", "flags")],
            dict(k.vmstat), [str(w) for w in k.warnings], [str(r) for r in k.sanitizer.reports],
            [c.express for c in k.gup.calls]]


def test_pud_leaf_parts_count_as_one_folio(monkeypatch: pytest.MonkeyPatch) -> None:
    lean_run = _pud_program()
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _pud_program()
    assert lean_run[0] == plain[0] and all(t[2] == t[1] for t in lean_run[0])
    for x, y in zip(lean_run[1], plain[1], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[2:5] == plain[2:5] and lean_run[4] == []
    assert lean_run[5][-5:] == [True] * 5         # each call went the express way


def _twice_mapped(dup: tuple[int, int]) -> list[Any]:
    """Four pages of one VMA where entry dup[1] maps the page of entry dup[0], as KSM
    leaves two addresses of one VMA (the model does not merge; the test makes the
    entries so): a short pin counts that page twice, the unpin releases it twice."""
    k = Kernel(memory="64MiB")
    p = k.spawn("ksm")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    vma = p.mm.find_vma(a)
    j, m = vma.idx(a) + dup[0], vma.idx(a) + dup[1]
    page = int(vma.pfn[j])
    vma.pfn[m] = page
    k.mem.refcount[page] += 1
    k.mem.mapcount[page] += 1
    vec = PageArray(4)
    got = p.pin_user_pages_fast(a, 4, FOLL_WRITE | FOLL_LONGTERM, vec)
    mem = k.mem
    rec = list(k.sanitizer._live.values())[-1]
    runs = [r.tolist() for r in rec.folio_runs] if rec.folio_runs is not None else None
    state = [got, vec.pfns.tolist(), int(mem.refcount[page]), runs,
             bool(k.gup.calls[-1].express)]
    k.unpin_user_pages(vec)
    return [state, [getattr(mem, f).copy() for f in ("refcount", "pincount", "flags")],
            dict(k.vmstat), [str(w) for w in k.warnings], [str(r) for r in k.sanitizer.reports]]


@pytest.mark.parametrize("dup", [(0, 2), (1, 2)], ids=["apart", "adjacent"])
def test_a_page_mapped_twice_is_counted_twice(dup: tuple[int, int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lean_run = _twice_mapped(dup)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _twice_mapped(dup)
    assert lean_run[0][:3] == plain[0][:3] and lean_run[0][4]    # the express way took it
    pfns = np.array(lean_run[0][1], dtype=np.int64)             # its record's folio runs:
    assert lean_run[0][3] == [r.tolist() for r in folio_runs(None, pfns, pfns)]   # maximal
    assert lean_run[0][2] == 2 + 2 * 1024                        # two maps, two pins
    for x, y in zip(lean_run[1], plain[1], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[2:] == plain[2:] and lean_run[4] == []


def test_one_page_pin_is_lean() -> None:
    """A one-page pin and its unpin run a bounded number of Python calls (the issue's
    profile counted about 400; the express path, express.py, about 25)."""
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, 64 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    vec = PageArray(1)
    p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, vec)   # warm caches
    k.unpin_user_pages(vec)
    pin, _, got = python_calls(lambda: p.pin_user_pages_fast(a + PAGE_SIZE, 1,
                                                              FOLL_WRITE | FOLL_LONGTERM, vec))
    unpin, _, _ = python_calls(lambda: k.unpin_user_pages(vec))
    assert got == 1
    assert pin <= 40 and unpin <= 40, (pin, unpin)


def _pinned_thp() -> tuple[Kernel, gupsim.Process, int, int, PageArray]:
    """A machine whose process has 4 MiB of THP leaves pinned by one GUP-fast call:
    (kernel, process, address, size, the pages array)."""
    k = Kernel(memory="64MiB")
    p = k.spawn("thp")
    size = 4 << 20
    a = _thp_range(p, size)
    vec = PageArray(size // PAGE_SIZE)
    assert p.pin_user_pages_fast(a, len(vec), FOLL_WRITE, vec) == len(vec)
    return k, p, a, size, vec


def _misused_thp_unpin() -> tuple[list[Any], list[bool]]:
    """GUP-fast pins 4 MiB of THP leaves (the record keeps their folio runs); a misuse
    (put_page() of every pinned page, then munmap) frees the folios and small pages
    reuse the frames; then the pages array is unpinned."""
    k, p, a, size, vec = _pinned_thp()
    trusted: list[bool] = []
    check = k.sanitizer.folios_unchanged
    k.sanitizer.folios_unchanged = lambda rec: trusted.append(check(rec)) or trusted[-1]
    for page in vec.filled():
        k.put_page(page)
    p.munmap(a, size)
    p.mmap(0, 2 * size, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    k.unpin_user_pages(vec)
    mem = k.mem
    return [[getattr(mem, f).copy() for f in ("refcount", "pincount", "order", "kind")],
            dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports]], trusted


def test_unpin_rechecks_folios_a_misuse_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unpin of an array that one held record took reuses the record's folio runs
    only while those folios are as they were: after a misuse freed them it looks every
    page up again, and ends exactly as the entry-by-entry unpin does."""
    lean_run, trusted = _misused_thp_unpin()
    monkeypatch.setattr(lean, "ENABLED", False)
    plain, _ = _misused_thp_unpin()
    assert trusted and not any(trusted)         # the runs were offered and refused
    for x, y in zip(lean_run[0], plain[0], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[1:] == plain[1:]
    assert any("put_page_on_pin" in r for r in lean_run[3])


def test_unpin_reuses_the_runs_of_an_intact_pin() -> None:
    """Without a misuse, the unpin of a THP pin takes the record's folio runs (no page
    lookups) and leaves the folios unpinned."""
    k, _, _, _, vec = _pinned_thp()
    rec = k.sanitizer.records[-1]
    assert rec.folio_runs is not None and len(rec.folio_runs[1]) == 2
    assert k.sanitizer.folios_unchanged(rec)
    k.unpin_user_pages(vec)
    heads = rec.folio_runs[1]
    assert not k.mem.pincount[heads].any() and k.vmstat["nr_foll_pin_released"] == len(vec)


def test_the_random_program_takes_every_express_path() -> None:
    """The comparison above means something only if the program reaches the express
    paths: a one-page pin, a pin of a few pages, and the unpin of one page and of a few
    (huge leaves: `test_leaf_pins_change_nothing`)."""
    with recorded() as (calls, kernels):
        _program(None, 1)
        _program(None, 2)
    pins = [c.ret for c in calls if c.express]
    unpins = [n for k in kernels for n in k.gup.express_unpins]
    assert len(kernels) == 2
    assert {min(n, 2) for n in pins} == {1, 2}          # a page, and a few
    assert {n > 1 for n in unpins} == {True, False}


def _leaf_program(era: str | None) -> tuple[list[Any], list[int]]:
    """Pins of ranges that THP and hugetlb leaves map whole, with and without
    FOLL_WRITE / FOLL_LONGTERM, references, a fork between (shared leaves), unpins;
    and the sizes of the calls the express path took."""
    k = Kernel(memory="256MiB", movable="64MiB", nr_hugepages=8, version=era)
    p = k.spawn("leaves")
    taken: list[int] = []
    size = 8 << 20
    thp = _thp_range(p, size)
    huge = p.mmap(0, size, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE)
    trace: list[Any] = []
    held: list[tuple[bool, PageArray]] = []
    plan = [(thp, 0, 2048, FOLL_WRITE | FOLL_LONGTERM), (thp, 4096, 1500, FOLL_WRITE),
            (thp, 0, 1024, FOLL_LONGTERM), (huge, 0, 2048, FOLL_WRITE | FOLL_LONGTERM),
            (huge, 8192, 1000, 0)]
    for rnd in range(2):
        for base, off, n, flags in plan:
            for entry_name in ("pin_user_pages_fast", "get_user_pages_fast"):
                f = flags & ~FOLL_LONGTERM if entry_name.startswith("get") else flags
                vec = PageArray(n)
                before = k.gup.last_call
                got = getattr(p, entry_name)(base + off, n, f, vec)
                trace.append((rnd, off, n, f, entry_name, got))
                if got > 0:
                    held.append((entry_name.startswith("pin"), vec[:got]))
                call = k.gup.last_call
                if call is not before and call is not None and call.express:
                    taken.append(n)
        if rnd == 0:
            child = p.fork()                    # the leaves are shared until unshared
            trace.append(("fork", child.pid))
    for pinned, vec in held:
        if pinned:
            k.unpin_user_pages(vec)
        else:
            for page in vec.filled():
                k.put_page(page)
    mem = k.mem
    state = [getattr(mem, f).copy() for f in ("refcount", "pincount", "flags")]
    return [trace, state, dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports]], taken


@pytest.mark.parametrize("era", (None, "6.2"))
def test_leaf_pins_change_nothing(era: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins of whole THP and hugetlb leaves, by the express path (newest era) and by
    the general walk: the same answers, the same machine."""
    lean_run, taken = _leaf_program(era)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain, _ = _leaf_program(era)
    assert lean_run[0] == plain[0]
    for x, y in zip(lean_run[1], plain[1], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[2:] == plain[2:]
    if era is None:                     # leaves of both kinds went the express way
        assert {1000, 1500, 2048} <= set(taken)
    else:
        assert not taken


def test_leaf_pin_records_know_their_frames() -> None:
    """A pin of huge leaves hands the sanitizer its frames as runs (a leaf maps
    consecutive frames): they expand to exactly the pages the call returned, and the
    released record in the history gives them back."""
    k = Kernel(memory="128MiB", nr_hugepages=4)
    p = k.spawn("runs")
    a = p.mmap(0, 8 << 20, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE)
    vec = PageArray(1500)
    assert p.pin_user_pages_fast(a + 4096, 1500, FOLL_WRITE | FOLL_LONGTERM, vec) == 1500
    rec = k.sanitizer.records[-1]
    assert rec.pfn_runs is not None and len(rec.pfn_runs) == 3       # three leaves
    assert np.array_equal(rec.pfn_runs.expand(), vec.pfns)
    k.unpin_user_pages(vec)
    old = k.sanitizer.released[-1]
    assert np.array_equal(old.expand().pfns, vec.pfns)


def _unpin_after_munmap(gone: str) -> list[Any]:
    """Pins of small pages and of THP leaves, their memory then unmapped in part or in
    whole, then the arrays unpinned: the pins held the last references of what went."""
    k = Kernel(memory="128MiB")
    p = k.spawn("freeing")
    small = p.mmap(0, 16 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    thp = _thp_range(p, 4 << 20)
    vecs = [PageArray(8), PageArray(1024)]
    assert p.pin_user_pages_fast(small, 8, FOLL_WRITE, vecs[0]) == 8
    assert p.pin_user_pages_fast(thp, 1024, FOLL_WRITE, vecs[1]) == 1024
    if gone == "one page and one leaf":
        p.munmap(small + 3 * PAGE_SIZE, PAGE_SIZE)
        p.munmap(thp, 2 << 20)
    else:
        p.munmap(small, 16 * PAGE_SIZE)
        p.munmap(thp, 4 << 20)
    before = dict(k.gup.express_unpins)
    for vec in vecs:
        k.unpin_user_pages(vec)
    mem = k.mem
    return [[getattr(mem, f).copy() for f in ("refcount", "pincount", "kind", "order")],
            dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports], k.alloc.nr_free_pages(),
            sum(k.gup.express_unpins.values()) - sum(before.values())]


@pytest.mark.parametrize("gone", ["one page and one leaf", "all"])
def test_an_unpin_that_frees_ends_as_the_general_one(gone: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The express unpin frees what the pin held last, one folio or several, as the
    general path does: the same counts, kinds, free memory and counters."""
    lean_run = _unpin_after_munmap(gone)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _unpin_after_munmap(gone)
    for x, y in zip(lean_run[0], plain[0], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[1:5] == plain[1:5]
    assert lean_run[5] == 2 and plain[5] == 0          # both arrays went the express way
    assert lean_run[1]["pgfree"] > 0


def _many_large_folios(unmap: bool) -> list[Any]:
    """Arrays of more large folios than `lean.SHORT`: 70 THP leaves, 100 mTHPs of
    16 KiB (PTE-mapped: the general GUP-fast took them), and 100 mTHPs with an order-0
    page among them; each pinned, the memory unmapped if asked (the pins then hold the
    last references), then unpinned."""
    k = Kernel(memory="512MiB")
    p = k.spawn("many")
    k.thp.set("always", size_kb=16)
    thp = _thp_range(p, 70 << 21)
    mthp = p.mmap(0, 400 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    mixed = p.mmap(0, 400 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    k.thp.set("never", size_kb=16)
    p.madvise(mixed, PAGE_SIZE, MADV_POPULATE_WRITE)          # one order-0 page first
    k.thp.set("always", size_kb=16)
    p.madvise(mixed, 400 * PAGE_SIZE, MADV_POPULATE_WRITE)
    ranges = [(thp, 70 * 512), (mthp, 400), (mixed, 400)]
    vecs = [PageArray(n) for _, n in ranges]
    for (a, n), vec in zip(ranges, vecs, strict=True):
        assert p.pin_user_pages_fast(a, n, FOLL_WRITE | FOLL_LONGTERM, vec) == n
    if unmap:
        p.munmap(thp, 70 << 21)
        p.munmap(mthp, 400 * PAGE_SIZE)
    took = []
    free = k.alloc.nr_free_pages()
    for vec in vecs:
        before = sum(k.gup.express_unpins.values())
        k.unpin_user_pages(vec)
        took.append(sum(k.gup.express_unpins.values()) - before)
    mem = k.mem
    return [[getattr(mem, f).copy() for f in ("refcount", "pincount", "kind", "order")],
            dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports], k.alloc.nr_free_pages() - free, took,
            sorted({int(o) for o in mem.order[mem.head_of(vecs[2].pfns)]})]


@pytest.mark.parametrize("unmap", [False, True], ids=["mapped", "unmapped"])
def test_many_large_folios_unpin_by_folio(unmap: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The express unpin takes any number of large folios (one update per folio, as
    the kernel's one atomic per folio) and ends as the general path does; with an
    order-0 folio among many it leaves them to the general path."""
    lean_run = _many_large_folios(unmap)
    monkeypatch.setattr(lean, "ENABLED", False)
    plain = _many_large_folios(unmap)
    for x, y in zip(lean_run[0], plain[0], strict=True):
        assert np.array_equal(x, y)
    assert lean_run[1:5] == plain[1:5] and lean_run[3] == []
    assert lean_run[5] == [1, 1, 0] and plain[5] == [0, 0, 0]
    assert lean_run[6] == [0, 2]                    # the mixed array was mixed
    assert lean_run[4] == (70 * 512 + 400 if unmap else 0)     # the pins held the last refs
