"""Spec 2.1 and 2.3: the GUP entry points, each declared once in the table.

Every row of `gupsim.ENTRY_POINTS` becomes a function (`gupsim.<name>`) and a method
(`Process.<name>`, or `Kernel.<name>` for a remote variant) with the kernel's name,
argument order, return type and a kernel-doc docstring; argument orders and answers to
invalid arguments are checked against the spec's own tables, not against the table.
Every entry point checks the caller's argument types before anything changes, records
the path each call took (`k.gup.last_call`), and the seed-era names still work.
"""

from __future__ import annotations

import inspect
import pydoc
from typing import Any

import numpy as np
import pytest
from gup_helpers import (
    BY_NAME,
    anon_rw,
    counters,
    has_pinned,
    mapped_pfn,
    pte_of,
)

import gupsim
from gupsim import (
    EFAULT,
    EINVAL,
    ENTRY_POINTS,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_TRIED,
    FOLL_WRITE,
    GUP_PATHS,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
    Kernel,
    Page,
    PageArray,
    Process,
)
from gupsim.gup.api import running_as
from gupsim.gup.state import GUP_CALLS_KEPT
from gupsim.memory import PG, Zone

RW = PROT_READ | PROT_WRITE
ROWS = [pytest.param(ep, id=ep.name) for ep in ENTRY_POINTS]
COUNT_ROWS = [pytest.param(ep, id=ep.name) for ep in ENTRY_POINTS if not ep.one_page]

# Spec 2.1, as written there: each entry point's parameters, in order.
SPEC_2_1 = {
    "get_user_pages": "start, nr_pages, gup_flags, pages",
    "get_user_pages_remote": "mm, start, nr_pages, gup_flags, pages, locked",
    "get_user_pages_unlocked": "start, nr_pages, pages, gup_flags",
    "get_user_pages_fast": "start, nr_pages, gup_flags, pages",
    "get_user_pages_fast_only": "start, nr_pages, gup_flags, pages",
    "get_user_page_fast_only": "addr, gup_flags, pagep",
    "pin_user_pages": "start, nr_pages, gup_flags, pages",
    "pin_user_pages_remote": "mm, start, nr_pages, gup_flags, pages, locked",
    "pin_user_pages_unlocked": "start, nr_pages, pages, gup_flags",
    "pin_user_pages_fast": "start, nr_pages, gup_flags, pages",
}
INT_COUNT = {"get_user_pages_fast", "get_user_pages_fast_only", "pin_user_pages_fast"}
# Spec 1.4: the entry points that answer invalid arguments with 0 (the others: -EINVAL).
ZERO_ON_INVALID = {"pin_user_pages", "pin_user_pages_remote", "pin_user_pages_unlocked"}
# The seed-era wrappers (spec 10.1) and the entry point each stands for.
SEED_ERA = {"pin_longterm_pages": "pin_user_pages",
            "pin_longterm_pages_fast": "pin_user_pages_fast",
            "pin_longterm_pages_remote": "pin_user_pages_remote"}


# == 2.1 one row per entry point ===================================================================


def test_2_1_the_table_is_the_spec() -> None:
    """The table has a row for every entry point of spec 2.1 and every seed-era wrapper,
    each with the spec's argument order, count type and answer to invalid arguments."""
    assert {ep.name for ep in ENTRY_POINTS} == set(SPEC_2_1) | set(SEED_ERA)
    for ep in ENTRY_POINTS:
        base = SEED_ERA.get(ep.name, ep.name)
        assert ", ".join(ep.params) == SPEC_2_1[base], ep.name
        assert ep.invalid == (0 if base in ZERO_ON_INVALID else -EINVAL), ep.name
        assert ep.base == (base if ep.name in SEED_ERA else None)
        if not ep.one_page:
            assert ep.count == ("int" if base in INT_COUNT else "ulong"), ep.name


@pytest.mark.parametrize("entry", ROWS)
def test_2_1_each_row_is_a_function_and_one_method(entry: EntryPoint) -> None:
    """`gupsim.<name>` has the kernel's parameters; the remote variants are Kernel methods
    and the others Process methods, never both, with the same parameters after self."""
    params = SPEC_2_1[SEED_ERA.get(entry.name, entry.name)].split(", ")
    fn = getattr(gupsim, entry.name)
    sig = inspect.signature(fn)
    assert list(sig.parameters) == params
    assert sig.return_annotation is (bool if entry.one_page else int)
    owner, other = (Kernel, Process) if entry.takes_mm else (Process, Kernel)
    assert not hasattr(other, entry.name)
    method = getattr(owner, entry.name)
    assert list(inspect.signature(method).parameters) == ["self", *params]
    assert (fn.__name__, method.__name__) == (entry.name, entry.name)


def _sections(doc: str) -> dict[str, str]:
    """The kernel-doc sections of a docstring ("Return:   ...", continued on indented
    lines), by label, each as one line of text."""
    sections: dict[str, str] = {}
    label = ""
    for line in inspect.cleandoc(doc).splitlines():
        head, sep, rest = line.partition(":")
        if sep and head.isalpha() and head[0].isupper() and rest.startswith("  "):
            label = head
            sections[label] = rest.strip()
        elif label and line.startswith(" "):
            sections[label] += " " + line.strip()
        else:
            label = ""
    return sections


@pytest.mark.parametrize("entry", ROWS)
def test_2_1_kernel_doc_of_every_entry_point(entry: EntryPoint) -> None:
    """The docstring says, as kernel-doc does, the context, the locks, the flags added,
    what it returns (with the answer to invalid arguments) and how to release."""
    owner = Kernel if entry.takes_mm else Process
    for doc in (getattr(gupsim, entry.name).__doc__, getattr(owner, entry.name).__doc__):
        assert doc is not None and doc.startswith(entry.summary[:40])
        sections = _sections(doc)
        assert set(sections) >= {"Context", "Locks", "Flags", "Return", "Release", "Spec"}
        if entry.one_page:
            assert "False otherwise, invalid arguments included" in sections["Return"]
        else:
            assert ("0 on invalid arguments" in doc) == (entry.invalid == 0)
            assert ("-EINVAL on invalid arguments" in doc) == (entry.invalid == -EINVAL)
        assert ("unpin_user_page" in sections["Release"]) == entry.pins
        assert ("put_page() on each page" in sections["Release"]) == (not entry.pins)
        assert "mmap_lock" in sections["Locks"]


def test_2_1_help_shows_the_signature_and_the_kernel_doc(p: Process) -> None:
    """`help()` on a generated method shows the real parameters and the kernel-doc."""
    text = pydoc.render_doc(Kernel.pin_user_pages_remote, renderer=pydoc.plaintext)
    assert "pin_user_pages_remote(self, mm: " in text
    assert "locked: list[int] | None) -> int" in text
    assert "Return:   the number of pages pinned" in text and "0 on invalid arguments" in text
    assert "Release:  unpin_user_page(s)()" in text
    bound = inspect.signature(p.pin_user_pages_unlocked)
    assert list(bound.parameters) == ["start", "nr_pages", "pages", "gup_flags"]


def test_2_1_module_functions_run_for_current(k: Kernel, p: Process) -> None:
    """The module-level functions need a current task (a process method provides one, or
    running_as()); without one the error says what to do."""
    a = anon_rw(p, touch=True)
    with pytest.raises(RuntimeError, match="no current task"):
        gupsim.pin_user_pages_fast(a, 1, FOLL_WRITE, [])
    pages: list[Page | None] = []
    with running_as(k.env, p.mm, p):
        assert gupsim.pin_user_pages_fast(a, 1, FOLL_WRITE, pages) == 1
    assert k.gup.last_call.entry == "pin_user_pages_fast"
    k.unpin_user_pages(pages)


def test_2_1_keywords_and_numpy_integers(k: Kernel, p: Process) -> None:
    """The real signature takes keyword arguments, and numpy integers count as ints."""
    a = anon_rw(p, 2, touch=True)
    first: list[Page | None] = []
    second: list[Page | None] = []
    assert p.pin_user_pages_unlocked(start=a, nr_pages=1, gup_flags=FOLL_WRITE,
                                     pages=first) == 1
    assert p.pin_user_pages_fast(np.uint64(a + PAGE_SIZE), np.int32(1), np.uint32(FOLL_WRITE),
                                 second) == 1
    assert k.gup.last_call.start == a + PAGE_SIZE and counters(k) == (2, 0)
    assert [pg.pfn for pg in first + second] == [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    k.unpin_user_pages(first + second)
    assert counters(k) == (2, 2) and k.sanitizer.reports == []


# == 2.1 what the caller passes is checked before anything happens ================================


def _snapshot(k: Kernel, p: Process, absent: int, present: int) -> tuple[Any, ...]:
    """Everything a GUP call could change: counters, references, faults, records, locks."""
    return (dict(k.vmstat), k.page(mapped_pfn(p, present)).refcount, pte_of(p, absent),
            len(k.gup.calls), k.warnings.sites(), has_pinned(p), p.mm.mmap_lock.readers,
            len(k.sanitizer.outstanding()))


def _call(entry: EntryPoint, k: Kernel, p: Process, *args: Any) -> Any:
    """Call the process or kernel method with exactly these arguments (mm first for a
    remote variant), wrong ones included."""
    if entry.takes_mm:
        return getattr(k, entry.name)(p.mm, *args)
    return getattr(p, entry.name)(*args)


def _args(entry: EntryPoint, start: Any, nr_pages: Any, gup_flags: Any, pages: Any,
          locked: Any = None) -> tuple[Any, ...]:
    """The arguments in the entry point's own order (without mm)."""
    values = {"start": start, "addr": start, "nr_pages": nr_pages, "gup_flags": gup_flags,
              "pages": pages, "pagep": pages, "locked": locked}
    return tuple(values[name] for name in entry.params if name != "mm")


@pytest.mark.parametrize("bad", ["tuple", "dict", "int", "page"])
@pytest.mark.parametrize("entry", ROWS)
def test_2_1_pages_of_the_wrong_type_pins_nothing(k: Kernel, p: Process, entry: EntryPoint,
                                                 bad: str) -> None:
    """A pages argument that is not a list, a PageArray or None is a TypeError raised before
    any pin is taken, any page faulted, any counter moved or any lock taken."""
    absent, present = anon_rw(p), anon_rw(p, touch=True)
    value = {"tuple": (), "dict": {}, "int": FOLL_WRITE,
             "page": k.page(mapped_pfn(p, present))}[bad]
    before = _snapshot(k, p, absent, present)
    for start in (absent, present):
        with pytest.raises(TypeError, match=r"must be a list, a gupsim.PageArray or None"):
            _call(entry, k, p, *_args(entry, start, 1, FOLL_WRITE, value))
    assert _snapshot(k, p, absent, present) == before


@pytest.mark.parametrize("bad", [1.0, "1", None, True])
@pytest.mark.parametrize("entry", COUNT_ROWS)
def test_2_1_nr_pages_must_be_an_int(k: Kernel, p: Process, entry: EntryPoint,
                                     bad: Any) -> None:
    """nr_pages that is not an int (a float, a string, None, a bool) is a TypeError before
    anything changes; so is a start or gup_flags that is not an int."""
    absent, present = anon_rw(p), anon_rw(p, touch=True)
    before = _snapshot(k, p, absent, present)
    with pytest.raises(TypeError, match=rf"{entry.name}\(\): nr_pages must be an int"):
        _call(entry, k, p, *_args(entry, present, bad, FOLL_WRITE, []))
    with pytest.raises(TypeError, match=rf"{entry.name}\(\): start must be an int"):
        _call(entry, k, p, *_args(entry, str(present), 1, FOLL_WRITE, []))
    with pytest.raises(TypeError, match=rf"{entry.name}\(\): gup_flags must be an int"):
        _call(entry, k, p, *_args(entry, present, 1, bad, []))
    assert _snapshot(k, p, absent, present) == before


@pytest.mark.parametrize("bad", [1, (1,), [1, 1], []], ids=repr)
@pytest.mark.parametrize("entry", [pytest.param(ep, id=ep.name) for ep in ENTRY_POINTS
                                   if ep.takes_locked])
def test_2_1_locked_is_none_or_one_int(k: Kernel, p: Process, entry: EntryPoint,
                                       bad: Any) -> None:
    """`locked` stands for `int *locked`: None or a one-element list; anything else is a
    TypeError, and the caller's mm is left as it was (no lock taken either)."""
    absent, present = anon_rw(p), anon_rw(p, touch=True)
    before = _snapshot(k, p, absent, present)
    with pytest.raises(TypeError, match=r"locked stands for `int \*locked`"):
        _call(entry, k, p, *_args(entry, present, 1, FOLL_WRITE, [], bad))
    assert _snapshot(k, p, absent, present) == before


@pytest.mark.parametrize("entry", [pytest.param(ep, id=ep.name) for ep in ENTRY_POINTS
                                   if ep.takes_mm])
def test_2_1_remote_needs_an_mm(k: Kernel, p: Process, entry: EntryPoint) -> None:
    """The remote variants name an mm_struct; passing the process is a TypeError that
    says to pass p.mm."""
    absent, present = anon_rw(p), anon_rw(p, touch=True)
    before = _snapshot(k, p, absent, present)
    with pytest.raises(TypeError, match=r"pass the process's mm, p\.mm"):
        getattr(k, entry.name)(p, present, 1, FOLL_WRITE, [], None)
    with pytest.raises(TypeError, match=r"mm must be an mm_struct"):
        getattr(gupsim, entry.name)(None, present, 1, FOLL_WRITE, [], None)
    assert _snapshot(k, p, absent, present) == before


def test_2_1_wrong_argument_count_or_order_says_the_call(k: Kernel, p: Process) -> None:
    """Too few arguments, or the flags and pages of a *_unlocked call swapped, are a
    TypeError that shows the entry point's argument order; nothing is pinned."""
    absent, present = anon_rw(p), anon_rw(p, touch=True)
    before = _snapshot(k, p, absent, present)
    pages: list[Page | None] = []
    with pytest.raises(TypeError, match=r"missing a required argument: 'pages' "
                                        r"\(call pin_user_pages\(start, nr_pages, "):
        p.pin_user_pages(present, 1, FOLL_WRITE)          # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"pin_user_pages_unlocked\(start, nr_pages, pages, "
                                        r"gup_flags\)"):
        p.pin_user_pages_unlocked(present, 1, FOLL_WRITE, pages)
    with pytest.raises(TypeError, match=r"takes 4 positional arguments but 5 were given|"
                                        r"too many positional arguments"):
        p.get_user_pages_fast(present, 1, FOLL_WRITE, pages, None)
    assert pages == [] and _snapshot(k, p, absent, present) == before


def test_2_1_pagearray_too_small_is_refused_before_anything(k: Kernel, p: Process) -> None:
    """A PageArray with fewer entries than pages asked for is a ValueError that says what
    size to allocate, raised before any pin is taken."""
    absent, present = anon_rw(p), anon_rw(p, 2, touch=True)
    before = _snapshot(k, p, absent, present)
    with pytest.raises(ValueError, match=r"allocate gupsim.PageArray\(2\)"):
        p.pin_user_pages_fast(present, 2, FOLL_WRITE, PageArray(1))
    assert _snapshot(k, p, absent, present) == before


def test_2_1_pagearray_filled_through_a_slice(k: Kernel, p: Process) -> None:
    """`vec[n:]` is the kernel's `pages + n`: filling it must fill `vec`, machine included."""
    a = anon_rw(p, 2, touch=True)
    vec = PageArray(2)
    assert p.pin_user_pages_fast(a, 1, 0, vec[0:1]) == 1
    assert p.pin_user_pages_fast(a + PAGE_SIZE, 1, 0, vec[1:2]) == 1
    assert [pg.pfn for pg in vec] == [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    k.unpin_user_pages(vec)


# == 2.3 which path a call took ====================================================================


def _path(k: Kernel) -> tuple[Any, ...]:
    call = k.gup.last_call
    return call.entry, call.path, call.fast, call.slow, call.migrate_rounds, call.ret


def test_2_3_every_path_is_recorded(k: Kernel, p: Process) -> None:
    """Each call leaves one record: the slow path alone, GUP-fast alone, GUP-fast then the
    slow path for the rest, or refused arguments (no walk at all)."""
    a = anon_rw(p, 2, touch=True)
    hole = anon_rw(p, 2)
    pins: list[list[Page | None]] = [[] for _ in range(4)]
    gets: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE, pins[0]) == 2
    assert _path(k) == ("pin_user_pages", "slow", None, 2, 0, 2)
    assert p.get_user_pages_unlocked(a, 2, gets, 0) == 2
    assert _path(k) == ("get_user_pages_unlocked", "slow", None, 2, 0, 2)
    assert p.pin_user_pages_fast(a, 2, FOLL_WRITE, pins[1]) == 2
    assert _path(k) == ("pin_user_pages_fast", "fast", 2, None, 0, 2)
    assert p.pin_user_pages_fast(hole, 2, FOLL_WRITE, pins[2]) == 2
    assert _path(k) == ("pin_user_pages_fast", "fast+slow fallback", 0, 2, 0, 2)
    assert k.pin_user_pages_remote(p.mm, hole, 2, FOLL_WRITE, pins[3], None) == 2
    assert _path(k) == ("pin_user_pages_remote", "slow", None, 2, 0, 2)
    assert p.pin_user_pages_fast(a, 1, FOLL_TRIED, []) == -EINVAL
    assert _path(k) == ("pin_user_pages_fast", "invalid", None, None, 0, -EINVAL)
    assert p.pin_user_pages(a, 1, FOLL_GET, []) == 0
    assert _path(k) == ("pin_user_pages", "invalid", None, None, 0, 0)
    assert {c.path for c in k.gup.calls} == set(GUP_PATHS) and len(k.gup.calls) == 7
    assert str(k.gup.calls[3]) == (f"pin_user_pages_fast({hole:#x}, 2, FOLL_WRITE|FOLL_PIN): "
                                   "fast+slow fallback (fast 0, slow 2) -> 2")
    for taken in pins:
        k.unpin_user_pages(taken)
    for pg in gets:
        k.put_page(pg)
    assert counters(k) == (8, 8) and k.sanitizer.outstanding() == []


def test_2_3_longterm_migration_rounds_are_recorded() -> None:
    """A FOLL_LONGTERM pin of movable memory drops its pins, migrates and pins again: one
    round, on whichever path; memfd_pin_folios() is recorded the same way."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = anon_rw(p, 3, touch=True)
    assert k.page(mapped_pfn(p, a)).folio.zone == Zone.MOVABLE
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM, pages) == 2
    assert _path(k) == ("pin_user_pages", "slow", None, 2, 1, 2)
    assert p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM, pages) == 2
    assert _path(k) == ("pin_user_pages", "slow", None, 2, 0, 2), "migrated already"
    assert p.pin_user_pages_fast(a, 3, FOLL_WRITE | FOLL_LONGTERM, pages) == 3
    assert _path(k) == ("pin_user_pages_fast", "fast+slow fallback", 2, 1, 1, 3)
    k.unpin_user_pages(pages)
    fd = p.memfd_create("buf")
    fd.truncate(2 * PAGE_SIZE)
    m = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=fd)
    p.write(m, b"x")
    p.write(m + PAGE_SIZE, b"y")
    assert k.page(mapped_pfn(p, m)).folio.zone == Zone.MOVABLE
    folios: list[Any] = [None] * 2
    assert k.memfd_pin_folios(fd, 0, 2 * PAGE_SIZE - 1, folios, 2, [0]) == 2
    call = k.gup.last_call
    assert (call.entry, call.path, call.migrate_rounds, call.ret) == ("memfd_pin_folios",
                                                                      "slow", 1, 2)
    assert all(f.zone == Zone.NORMAL for f in folios)
    k.unpin_folios(folios)


def test_2_3_a_call_made_inside_another_gets_its_own_record(k: Kernel, p: Process) -> None:
    """A GUP call run from a race point in the middle of another call is recorded on its
    own; the outer call's record is not mixed up with it."""
    q = k.spawn("other")
    a = anon_rw(p, 2)
    b = anon_rw(q, touch=True)
    inner: list[Page | None] = []
    k.gup.on_race("gup_slow:before_fault",
                  lambda **_: q.get_user_pages_fast(b, 1, FOLL_WRITE, inner))
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 2, FOLL_WRITE, pages) == 2
    first, second = k.gup.calls
    assert (first.entry, first.path, first.fast, first.ret) == ("get_user_pages_fast", "fast",
                                                                 1, 1)
    assert (second.entry, second.path, second.fast, second.slow, second.ret) == (
        "pin_user_pages", "slow", None, 2, 2)
    k.unpin_user_pages(pages)
    k.put_page(inner[0])


def test_2_3_the_record_keeps_the_last_calls(k: Kernel, p: Process) -> None:
    """`k.gup.calls` keeps the most recent calls (a bounded list); `last_call` is the newest."""
    assert k.gup.last_call is None
    a = anon_rw(p, touch=True)
    for i in range(GUP_CALLS_KEPT + 5):
        assert p.get_user_pages(a, 1, 0, None) == 1, i
    assert p.pin_user_pages_fast(a, 1, FOLL_TRIED, []) == -EINVAL
    assert len(k.gup.calls) == GUP_CALLS_KEPT
    assert k.gup.last_call is k.gup.calls[-1] and k.gup.last_call.path == "invalid"


# == seed-era names ================================================================================


def test_aliases_put_user_pages(k: Kernel, p: Process) -> None:
    """put_user_page(s) and put_user_pages_dirty_lock are the v5.2 - v5.6 unpin names."""
    a = anon_rw(p, 3, touch=True)
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, 3, FOLL_WRITE, pages) == 3
    k.put_user_page(pages[0])
    assert counters(k) == (3, 1) and pages[0].refcount == 1
    k.mem.clear_flag(pages[1].folio.pfn, PG.dirty)
    k.put_user_pages_dirty_lock(pages[1:2], 1, True)
    assert pages[1].folio.dirty and pages[1].refcount == 1
    k.put_user_pages(pages[2:])
    assert counters(k) == (3, 3) and pages[2].refcount == 1
    assert gupsim.put_user_page is not gupsim.unpin_user_page
    assert k.sanitizer.reports == []


def test_aliases_pin_longterm_pages() -> None:
    """The v2 - v4 pin_longterm_pages*() wrappers are pin_user_pages*() | FOLL_LONGTERM:
    they migrate out of ZONE_MOVABLE and answer invalid arguments like their base."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = k.spawn("app")
    a = anon_rw(p, 3, touch=True)
    assert all(k.page(mapped_pfn(p, a + i * PAGE_SIZE)).folio.zone == Zone.MOVABLE
               for i in range(3))
    pages = PageArray(3, k.mem)
    assert p.pin_longterm_pages(a, 1, FOLL_WRITE, pages[0:1]) == 1
    assert p.pin_longterm_pages_fast(a + PAGE_SIZE, 1, FOLL_WRITE, pages[1:2]) == 1
    assert k.pin_longterm_pages_remote(p.mm, a + 2 * PAGE_SIZE, 1, FOLL_WRITE, pages[2:3],
                                       None) == 1
    assert all(pg.folio.zone == Zone.NORMAL for pg in pages)
    assert [pg.pfn for pg in pages] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(3)]
    assert [c.entry for c in k.gup.calls] == ["pin_longterm_pages", "pin_longterm_pages_fast",
                                              "pin_longterm_pages_remote"]
    assert all(c.migrate_rounds == 1 for c in k.gup.calls)
    assert sorted(h.call for h in k.sanitizer.outstanding()) == sorted(SEED_ERA)
    k.unpin_user_pages(pages)
    assert p.pin_longterm_pages(a, 1, FOLL_GET, []) == 0
    assert p.pin_longterm_pages_fast(a, 1, FOLL_GET, []) == -EINVAL
    f = k.fs("ext4").create("db", PAGE_SIZE)
    m = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.pin_longterm_pages(m, 1, FOLL_WRITE, []) == -EFAULT
    assert BY_NAME["pin_longterm_pages"].implies == FOLL_LONGTERM


def test_type_checker_stubs_match_the_table() -> None:
    """The generated `_entry_stubs.pyi` (what mypy sees of the built entry points) is the
    table's current rendering, and declares every entry point with its real signature."""
    import inspect as _inspect

    from gupsim.gup import entry

    with open(entry.STUBS_PATH) as f:
        on_disk = f.read()
    assert on_disk == entry.render_stubs(), (
        f"gup/_entry_stubs.pyi is out of date with ENTRY_POINTS: run {entry.REGENERATE}")
    for ep in entry.ENTRY_POINTS:
        params = "".join(f"    {name}: {entry._source_text(p.annotation)},\n"
                         for name, p in ep.signature.parameters.items())
        ret = "bool" if ep.one_page else "int"
        assert f"def {ep.name}(\n{params}) -> {ret}: ..." in on_disk, ep.name
        assert _inspect.signature(getattr(gupsim, ep.name)) == ep.signature
