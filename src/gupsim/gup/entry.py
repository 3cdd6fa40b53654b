"""Every GUP entry point, declared once: the table `ENTRY_POINTS` and the builder.

Each `EntryPoint` row says what one exported `get_user_pages*()` / `pin_user_pages*()`
does differently from the others: how it reads `nr_pages` (unsigned long or int), which
FOLL_* bits it adds before validation (spec 1.5), which path it takes (the slow path
under the caller's mmap_lock, the slow path taking the lock itself, or GUP-fast with its
fallback), what it answers to invalid arguments (spec 1.4: -EINVAL or 0), and its
argument order. From a row, `entry_function()` builds the module-level function
(`gupsim.pin_user_pages_fast`), `process_method()` the `Process` method that runs it with
that process as `current`, and `kernel_method()` the `Kernel` method of a remote variant.
All three check the caller's argument types before anything changes, share one body
(`gup_call()`: count cast, capacity, `is_valid_gup_args()`, path, sanitizer, path record),
and carry a kernel-doc docstring composed from the row (context, locks, flags, return,
how to release) under a real signature, so `help()` shows both.

How to add a GUP entry point
----------------------------
1. Add an `EntryPoint` row to `ENTRY_POINTS` below: name, count type, the flags it adds,
   path, the answer to invalid arguments, argument order (one of the `*_ARGS` shapes),
   a one-line summary, a note if it has a quirk, and the spec sections it follows; if
   it appeared after the oldest profile, `since=` the era switch (`gupsim.eras`) that
   brought it, so that it is absent on older machines.
   That is all the code: `gup/api.py` exports it as a function, `gup/facade.py` adds it
   to `Process` (or to `Kernel` when it takes `mm`), and `gupsim` re-exports it.
2. A path the table does not have yet: add it to `Path` and to `gup_call()` here, and
   record it in `gup/state.py` (`GUP_PATHS`, `note_gup()`) where the internals take it.
3. Tests: `tests/gup/test_spec2_entry_points.py` checks every row (signature, docstring,
   argument checks, the path record), and tests about every entry point parametrise over
   `ENTRY_POINTS`, so they cover the new row by themselves. Two of them compare the
   table with the spec's own tables, written out in the tests (`SPEC_2_1` there: argument
   order, count type, answer to invalid arguments; `SPEC_1_5` in `test_spec1_flags.py`:
   flags added): they fail for a new row until you add it there from the spec. Add
   tests for what is new about it in the file of its spec section
   (`tests/gup/test_spec<N>_*.py`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..constants import EINVAL
from ..memory import Page, PageArray
from ..memory.pagearray import pfns_of
from ..mm import MM, MMEnv
from .express import gup_fast_express
from .fast import gup_fast_fallback
from .flags import (
    FOLL_FAST_ONLY,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_REMOTE,
    FOLL_TOUCH,
    FOLL_UNLOCKABLE,
    foll_flags_str,
    is_valid_gup_args,
)
from .longterm import __gup_longterm_locked
from .pages import PagesOut
from .slow import mmap_read_lock, mmap_read_unlock
from .state import PATH_FAST, PATH_INVALID, PATH_SLOW, GupCall, current, gup_state, running_as

Pages = list[Page | None] | PageArray | None
Count = Literal["ulong", "int"]
Path = Literal["slow", "unlocked", "fast"]

# Argument orders, with the kernel's parameter names.
ARGS = ("start", "nr_pages", "gup_flags", "pages")
UNLOCKED_ARGS = ("start", "nr_pages", "pages", "gup_flags")      # pages before the flags
REMOTE_ARGS = ("mm", "start", "nr_pages", "gup_flags", "pages", "locked")
ONE_PAGE_ARGS = ("addr", "gup_flags", "pagep")

_ANNOTATIONS: dict[str, Any] = {
    "mm": MM, "start": int, "addr": int, "nr_pages": int, "gup_flags": int, "pages": Pages,
    "pagep": list[Page | None], "locked": list[int] | None,
}


def _source_text(annotation: Any) -> str:
    """An annotation as a stub writes it: `list[Page | None] | PageArray | None`."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)


@dataclass(frozen=True)
class EntryPoint:
    """One exported GUP entry point: what sets it apart from the others (spec 1.4 - 2.3).

    `count` is how nr_pages is read ("ulong": -1 is a huge count; "int": it wraps to 32
    bits), `adds` the FOLL_* bits it sets (is_valid_gup_args' `to_set`), `path` the
    internal route ("slow": the caller holds mmap_lock; "unlocked": the slow path takes
    it; "fast": GUP-fast, then the slow path for the rest unless FOLL_FAST_ONLY),
    `invalid` what it returns for invalid arguments, `params` its argument order.
    Seed-era wrappers name the entry point they stand for in `base` and the flags they
    OR into the caller's in `implies`. `since` names the era switch (`gupsim.eras`)
    that brought it: on an older machine it is absent (AttributeError); None: always.
    """

    name: str
    count: Count
    adds: int
    path: Path
    invalid: int
    params: tuple[str, ...]
    summary: str
    spec: str
    note: str = ""
    implies: int = 0
    base: str | None = None
    since: str | None = None

    @functools.cached_property
    def takes_mm(self) -> bool:
        """A remote variant: it names its mm, so it is a `Kernel` method."""
        return "mm" in self.params

    @functools.cached_property
    def takes_locked(self) -> bool:
        """It takes the `int *locked` pointer (None or a one-element list)."""
        return "locked" in self.params

    @functools.cached_property
    def one_page(self) -> bool:
        """The inline one-page wrapper: (addr, gup_flags, pagep), answers a bool."""
        return self.params == ONE_PAGE_ARGS

    @functools.cached_property
    def pins(self) -> bool:
        """FOLL_PIN (release with unpin_user_page*()) rather than FOLL_GET (put_page())."""
        return bool(self.adds & FOLL_PIN)

    @functools.cached_property
    def fast(self) -> bool:
        """It starts with the lockless GUP-fast walk."""
        return self.path == "fast"

    @functools.cached_property
    def fast_only(self) -> bool:
        """GUP-fast alone: no slow path, no faults."""
        return bool(self.adds & FOLL_FAST_ONLY)

    @functools.cached_property
    def caller_holds_lock(self) -> bool:
        """The kernel contract says the caller holds mmap_lock (the facade takes it)."""
        return self.path == "slow"

    @property
    def signature(self) -> inspect.Signature:
        """The kernel's parameters, in its order (the function's `__signature__`)."""
        return inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation=_ANNOTATIONS[name]) for name in self.params],
            return_annotation=bool if self.one_page else int)

    @property
    def call_shape(self) -> str:
        """`name(arg, ...)`, for error messages."""
        return f"{self.name}({', '.join(self.params)})"

    def invoke(self, p: Any, start: int, nr_pages: int, gup_flags: int, pages: Pages,
               locked: list[int] | None = None) -> int | bool:
        """Call this entry point for process `p` in its own argument order: the process
        method, or the kernel method on `p.mm` for a remote variant (tests and scenarios
        that are about every entry point use this)."""
        if self.one_page:
            if nr_pages != 1:
                raise ValueError(f"{self.call_shape} takes exactly one page, not {nr_pages}")
            return getattr(p, self.name)(start, gup_flags, pages)
        if self.takes_mm:
            return getattr(p.kernel, self.name)(p.mm, start, nr_pages, gup_flags, pages,
                                                locked)
        if locked is not None:
            raise ValueError(f"{self.call_shape} takes no `locked`")
        if self.params == UNLOCKED_ARGS:
            return getattr(p, self.name)(start, nr_pages, pages, gup_flags)
        return getattr(p, self.name)(start, nr_pages, gup_flags, pages)


def _seed_wrapper(base: EntryPoint, name: str, removed: str) -> EntryPoint:
    """A pin_longterm_pages*() wrapper of the v2 - v4 FOLL_PIN series: `base` with
    FOLL_LONGTERM (the review, Jan Kara and Ira Weiny, Nov 2019, dropped these wrappers
    in favour of the flag)."""
    return EntryPoint(
        name, base.count, base.adds, base.path, base.invalid, base.params,
        f"Seed-era wrapper: {base.name}() with FOLL_LONGTERM added to gup_flags.",
        base.spec + ", 10.1",
        f"From v2 - v4 of the FOLL_PIN series, dropped in review for passing FOLL_LONGTERM "
        f"to {base.name}(); {removed}", implies=FOLL_LONGTERM, base=base.name,
        since=base.since)


_LOCKED_NOTE = ("With `locked` (*locked == 1 on entry) faults may drop mmap_lock; without "
                "it they may not, so a fault that would have to (userfaultfd) fails with "
                "-EFAULT.")
_FALLBACK_NOTE = ("The slow path takes over at the first page the lockless walk could "
                  "not take, with mmap_lock taken here and FOLL_TOUCH|FOLL_UNLOCKABLE; if "
                  "it fails after a fast prefix, the prefix is the answer (release it).")

_GET_USER_PAGES = EntryPoint(
    "get_user_pages", "ulong", FOLL_TOUCH, "slow", -EINVAL, ARGS,
    "Take a reference on each page of current->mm in the range, faulting in what is "
    "absent or must be unshared.", "1.4, 1.5, 2.1 - 2.3",
    "With pages=None (and no FOLL_GET) it only faults the pages in: no references.")
_GET_USER_PAGES_REMOTE = EntryPoint(
    "get_user_pages_remote", "ulong", FOLL_TOUCH | FOLL_REMOTE, "slow", -EINVAL,
    REMOTE_ARGS, "get_user_pages() on any mm (ptrace, core dumps of other tasks).",
    "1.4, 1.5, 2.1 - 2.3", _LOCKED_NOTE)
_GET_USER_PAGES_UNLOCKED = EntryPoint(
    "get_user_pages_unlocked", "ulong", FOLL_TOUCH | FOLL_UNLOCKABLE, "unlocked", -EINVAL,
    UNLOCKED_ARGS, "get_user_pages() for a caller that does not hold mmap_lock.",
    "1.4, 1.5, 2.1 - 2.3", "Note the argument order: pages comes before gup_flags.")
_GET_USER_PAGES_FAST = EntryPoint(
    "get_user_pages_fast", "int", FOLL_GET, "fast", -EINVAL, ARGS,
    "Take references with the lockless GUP-fast walk; the slow path does the rest.",
    "1.4, 1.5, 2.1 - 2.3, 7", _FALLBACK_NOTE)
_GET_USER_PAGES_FAST_ONLY = EntryPoint(
    "get_user_pages_fast_only", "int", FOLL_GET | FOLL_FAST_ONLY, "fast", -EINVAL, ARGS,
    "GUP-fast alone: never sleeps, never faults, never falls back; may return fewer "
    "pages than asked, or 0.", "1.4, 1.5, 2.1 - 2.3, 7",
    "References only, no unsharing: a read-only result may later differ from what the "
    "process sees (\"COW may go either way\").")
_GET_USER_PAGE_FAST_ONLY = EntryPoint(
    "get_user_page_fast_only", "int", FOLL_GET | FOLL_FAST_ONLY, "fast", -EINVAL,
    ONE_PAGE_ARGS, "The inline one-page wrapper of get_user_pages_fast_only().",
    "2.1, 2.3, 7", "`pagep` stands for `struct page **pagep`: a one-element list that "
    "receives the page.")
_PIN_USER_PAGES = EntryPoint(
    "pin_user_pages", "ulong", FOLL_PIN, "slow", 0, ARGS,
    "Pin each page of current->mm in the range so that a device or the kernel may "
    "access its data; FOLL_LONGTERM pins are first migrated out of movable memory.",
    "1.4, 1.5, 2.1 - 2.3, 4",
    "Unlike get_user_pages(): FOLL_PIN instead of FOLL_GET, no FOLL_TOUCH, 0 on invalid "
    "arguments, and the FOLL_LONGTERM check-and-migrate loop.", since="foll-pin")
_PIN_USER_PAGES_REMOTE = EntryPoint(
    "pin_user_pages_remote", "ulong", FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE, "slow", 0,
    REMOTE_ARGS, "pin_user_pages() on any mm (process_vm_readv/writev).",
    "1.4, 1.5, 2.1 - 2.3, 4", _LOCKED_NOTE, since="foll-pin")
_PIN_USER_PAGES_UNLOCKED = EntryPoint(
    "pin_user_pages_unlocked", "ulong", FOLL_PIN | FOLL_TOUCH | FOLL_UNLOCKABLE,
    "unlocked", 0, UNLOCKED_ARGS,
    "pin_user_pages() for a caller that does not hold mmap_lock.", "1.4, 1.5, 2.1 - 2.3, 4",
    "Note the argument order: pages comes before gup_flags.", since="foll-pin")
_PIN_USER_PAGES_FAST = EntryPoint(
    "pin_user_pages_fast", "int", FOLL_PIN, "fast", -EINVAL, ARGS,
    "Pin with the lockless GUP-fast walk; the slow path pins the rest.",
    "1.4, 1.5, 2.1 - 2.3, 4, 7", _FALLBACK_NOTE, since="foll-pin")

ENTRY_POINTS: tuple[EntryPoint, ...] = (
    _GET_USER_PAGES, _GET_USER_PAGES_REMOTE, _GET_USER_PAGES_UNLOCKED,
    _GET_USER_PAGES_FAST, _GET_USER_PAGES_FAST_ONLY, _GET_USER_PAGE_FAST_ONLY,
    _PIN_USER_PAGES, _PIN_USER_PAGES_REMOTE, _PIN_USER_PAGES_UNLOCKED, _PIN_USER_PAGES_FAST,
    _seed_wrapper(_PIN_USER_PAGES, "pin_longterm_pages",
                  "the seed version also took `vmas`, omitted here."),
    _seed_wrapper(_PIN_USER_PAGES_FAST, "pin_longterm_pages_fast", "same arguments."),
    _seed_wrapper(_PIN_USER_PAGES_REMOTE, "pin_longterm_pages_remote",
                  "the seed version also took `tsk` and `vmas`, removed upstream in 5.9 "
                  "and 6.5."),
)
"""Every GUP entry point, in the order of spec 2.1, then the seed-era wrappers."""

ENTRY_POINTS_BY_NAME: dict[str, EntryPoint] = {ep.name: ep for ep in ENTRY_POINTS}


# -- checking what the caller passed -------------------------------------------------------


def _integer(ep: EntryPoint, name: str, value: object) -> int:
    if type(value) is int:                      # the common case, bool excluded
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{ep.name}(): {name} must be an int, not {type(value).__name__} "
                        f"(call {ep.call_shape})")
    return int(value)


def _arguments(ep: EntryPoint, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[MM | None, int, int, int, Pages, list[int] | None]:
    """The caller's arguments as (mm, start, nr_pages, gup_flags, pages, locked), each
    checked for its type before anything happens: TypeError says what to pass."""
    if kwargs or len(args) != len(ep.params):
        try:
            args = ep.signature.bind(*args, **kwargs).args
        except TypeError as e:
            raise TypeError(f"{ep.name}(): {e} (call {ep.call_shape})") from None
    a = dict(zip(ep.params, args, strict=True))
    mm = a.get("mm")
    if ep.takes_mm and not isinstance(mm, MM):
        hint = ": pass the process's mm, p.mm" if hasattr(mm, "mm") else ""
        raise TypeError(f"{ep.name}(): mm must be an mm_struct (gupsim.mm.MM), not "
                        f"{type(mm).__name__}{hint}")
    sname, pname = ("addr", "pagep") if ep.one_page else ("start", "pages")
    start = _integer(ep, sname, a[sname])
    nr_pages = 1 if ep.one_page else _integer(ep, "nr_pages", a["nr_pages"])
    gup_flags = _integer(ep, "gup_flags", a["gup_flags"])
    pages = a[pname]
    if pages is not None and not isinstance(pages, list | PageArray):
        raise TypeError(f"{ep.name}(): {pname} must be a list, a gupsim.PageArray or None, "
                        f"not {type(pages).__name__} (call {ep.call_shape})")
    locked = a.get("locked")
    if locked is not None and not (isinstance(locked, list) and len(locked) == 1):
        raise TypeError(f"{ep.name}(): locked stands for `int *locked`: pass None or a "
                        f"one-element list such as [1], not {locked!r}")
    return mm, start, nr_pages, gup_flags, pages, locked


# -- the one body every entry point runs -----------------------------------------------------


def _ulong(nr_pages: int) -> int:
    """`unsigned long nr_pages`: -1 is a huge count."""
    return nr_pages % (1 << 64)


def _int(nr_pages: int) -> int:
    """`int nr_pages`: wraps to 32 bits (sign-extended later in the walk)."""
    return (nr_pages + (1 << 31)) % (1 << 32) - (1 << 31)


def _check_capacity(pages: Pages, nr_pages: int) -> None:
    if isinstance(pages, PageArray) and nr_pages > len(pages):
        raise ValueError(f"PageArray holds {len(pages)} entries but {nr_pages} pages were "
                         f"asked for: allocate gupsim.PageArray({nr_pages})")


def _record(env: MMEnv, mm: MM, out: PagesOut | None, n: int, flags: int, call: str) -> None:
    """Tell the sanitizer which pages a successful call took, and how (with their folio
    runs when GUP-fast took them all: it then never looks the pages up again)."""
    st = gup_state(env.mem)
    if st.sanitizer is None or n <= 0 or out is None or not flags & (FOLL_GET | FOLL_PIN):
        return
    st.sanitizer.on_acquire(pfns_of(out.pages, n).copy(), flags, call, mm, out.folio_runs(n))


def gup_call(ep: EntryPoint, env: MMEnv, mm: MM, start: int, nr_pages: int, gup_flags: int,
             pages: Pages, locked: list[int] | None) -> int:
    """What every entry point does, driven by its row: cast the count, check the pages
    array's capacity, validate (spec 1.4), take the path, tell the sanitizer, and leave a
    `GupCall` record in `k.gup.calls`. Returns the count, -errno, or `ep.invalid`."""
    nr_pages = _ulong(nr_pages) if ep.count == "ulong" else _int(nr_pages)
    _check_capacity(pages, nr_pages)
    call = GupCall(ep.name, start, nr_pages, gup_flags | ep.implies,
                   PATH_FAST if ep.fast else PATH_SLOW)
    if ep.since is not None and not env.era.has(ep.since):
        env.era.require(ep.since, f"{ep.name}()")
    with gup_state(env.mem).recording(call):
        flags = is_valid_gup_args(env.mem.warnings, pages, locked, gup_flags | ep.implies,
                                  ep.adds)
        if flags is None:
            # before is_valid_gup_args() (v6.3) every entry point answered -EINVAL
            invalid = ep.invalid if env.era.has("is-valid-gup-args") else -EINVAL
            call.path, call.ret = PATH_INVALID, invalid
            return invalid
        call.flags = flags
        out = None if pages is None else PagesOut(pages, env.mem)
        if ep.fast:
            n = gup_fast_fallback(env, mm, start, nr_pages, flags, out)
        else:
            # The kernel's get_user_pages*() call __get_user_pages_locked() directly: the
            # same call here, as FOLL_LONGTERM without FOLL_PIN never gets this far.
            n = __gup_longterm_locked(env, mm, start, nr_pages, out,
                                      [0] if ep.path == "unlocked" else locked, flags)
            call.slow = n
        call.ret = n
        got = flags | (FOLL_GET if pages is not None and not flags & FOLL_PIN else 0)
        _record(env, mm, out, n, got, ep.name)
        return n


class _Locked:
    """Hold mmap_lock for read around a call whose caller must hold it."""

    def __init__(self, mm: MM, locked: list[int] | None = None) -> None:
        self.mm = mm
        self.locked = locked
        self.taken = False

    def __enter__(self) -> _Locked:
        if self.locked is None or self.locked[0] == 1:
            mmap_read_lock(self.mm)
            self.taken = True
        return self

    def __exit__(self, *exc: object) -> None:
        # with `locked`, GUP reports through it whether the lock is still held
        if self.taken and (self.locked is None or self.locked[0] == 1):
            mmap_read_unlock(self.mm)


def _as_caller(ep: EntryPoint, mm: MM, locked: list[int] | None
               ) -> contextlib.AbstractContextManager[Any]:
    """What a driver holds around the call: mmap_lock where the contract says so."""
    return _Locked(mm, locked) if ep.caller_holds_lock else contextlib.nullcontext()


# -- kernel-doc ----------------------------------------------------------------------------


_DOC_WIDTH = 88


def _locks(ep: EntryPoint) -> str:
    if ep.fast_only:
        return ("none: it never takes mmap_lock and never sleeps (the lockless walk only), "
                "so it may run where sleeping is not allowed.")
    if ep.fast:
        return ("none needed by the caller: page tables are walked without mmap_lock; "
                "the fallback for the rest takes it itself (killable).")
    if ep.path == "unlocked":
        return "the caller must not hold mmap_lock: GUP takes it and releases it before " \
               "returning; faults may drop and retake it."
    if ep.takes_locked:
        return ("the caller holds mm's mmap_lock (read or write; read with `locked`). "
                "*locked == 0 on return: a fault dropped it and it is no longer held; "
                "*locked == 1: held and never dropped.")
    return "the caller holds current->mm's mmap_lock (read or write); never dropped."


def _returns(ep: EntryPoint) -> str:
    if ep.one_page:
        return "True if exactly the one page was taken; False otherwise, invalid arguments " \
               "included."
    got = "pages pinned" if ep.pins else "pages referenced"
    text = (f"the number of {got} (the lockless walk's prefix of the range), possibly 0"
            if ep.fast_only else
            f"the number of {got} (a prefix of the range), or the -errno of the first "
            "page if none")
    answer = "0" if ep.invalid == 0 else "-EINVAL"
    return f"{text}; {answer} on invalid arguments (spec 1.4)."


def kernel_doc(ep: EntryPoint, called: str) -> str:
    """The docstring of an entry point: the row's summary and note, then context, locks,
    flags, return and release in kernel-doc order, and how the facade calls it."""
    count = ("an unsigned long: -1 is a huge count" if ep.count == "ulong" else
             "an int: it wraps at 32 bits, and a negative count is -EOVERFLOW or -EFAULT")
    flags = f"adds {foll_flags_str(ep.adds | ep.implies)} to gup_flags" + (
        "." if ep.one_page else f"; nr_pages is {count}.")
    if ep.pins:
        release = "unpin_user_page(s)() or unpin_user_pages_dirty_lock(); never put_page()."
    else:
        release = "put_page() on each page" + (
            "." if ep.fast else " (none is taken with pages=None).")
    where = "any mm, named by `mm`" if ep.takes_mm else "current->mm"
    paragraphs = [ep.summary, ep.note] if ep.note else [ep.summary]
    text = [textwrap.fill(para, _DOC_WIDTH) for para in paragraphs]
    sections = [
        ("Context", f"process context; {where}. {called}"),
        ("Locks", _locks(ep)),
        ("Flags", flags),
        ("Return", _returns(ep)),
        ("Release", release),
        ("Spec", f"gup-spec.md {ep.spec}; `k.gup.last_call` says which path it took."),
    ]
    text.append("\n".join(textwrap.fill(body, _DOC_WIDTH, initial_indent=f"{label}:".ljust(10),
                                        subsequent_indent=" " * 10)
                          for label, body in sections))
    return "\n\n".join(text)


# -- the builders ----------------------------------------------------------------------------


def _finish(fn: Callable[..., Any], ep: EntryPoint, owner: str | None, doc: str,
            sig: inspect.Signature, module: str) -> Callable[..., Any]:
    fn.__name__ = ep.name
    fn.__qualname__ = f"{owner}.{ep.name}" if owner else ep.name
    fn.__module__ = module
    fn.__doc__ = doc
    fn.__signature__ = sig      # type: ignore[attr-defined]
    return fn


def entry_function(ep: EntryPoint) -> Callable[..., Any]:
    """The module-level function (`gupsim.<name>`): runs for `current`, or on `mm`."""

    def entry(*args: Any, **kwargs: Any) -> int | bool:
        mm, start, nr_pages, gup_flags, pages, locked = _arguments(ep, args, kwargs)
        if mm is None:
            cur = current()
            env, mm = cur.env, cur.mm
        else:
            env = gup_state(mm.mem).env
        n = gup_call(ep, env, mm, start, nr_pages, gup_flags, pages, locked)
        return n == 1 if ep.one_page else n

    called = ("Call it on the machine: `k.{0}(mm, ...)`." if ep.takes_mm else
              "Call it on a process, `p.{0}(...)`, or inside `running_as()`.")
    return _finish(entry, ep, None, kernel_doc(ep, called.format(ep.name)), ep.signature,
                   "gupsim.gup.api")


def _method_signature(ep: EntryPoint) -> inspect.Signature:
    params = list(ep.signature.parameters.values())
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return ep.signature.replace(parameters=[this, *params])


def process_method(ep: EntryPoint) -> Callable[..., Any]:
    """`Process.<name>`: runs with the process as current, holding its mmap_lock where
    the kernel contract says the caller holds it."""
    if ep.takes_mm:
        raise ValueError(f"{ep.name} names its mm: it is a Kernel method")
    # the common calls go the express way (express.py): GUP-fast, and the *_unlocked
    # slow path of a few pages (arguments: start, nr_pages, pages, gup_flags)
    express = ep.fast and ep.name.endswith("_user_pages_fast")
    unlocked = ep.name in ("pin_user_pages_unlocked", "get_user_pages_unlocked")

    def method(self: Any, *args: Any, **kwargs: Any) -> int | bool:
        if len(args) == 4 and not kwargs and self.alive and (express or unlocked):
            n = gup_fast_express(ep, self, *args) if express else \
                gup_fast_express(ep, self, args[0], args[1], args[3], args[2])
            if n is not None:
                return n
        _, start, nr_pages, gup_flags, pages, locked = _arguments(ep, args, kwargs)
        self._live()
        with running_as(self.kernel.env, self.mm, self), _as_caller(ep, self.mm, locked):
            n = gup_call(ep, self.kernel.env, self.mm, start, nr_pages, gup_flags, pages,
                         locked)
        return n == 1 if ep.one_page else n

    held = " It holds the process's mmap_lock around the call, as the caller must." \
        if ep.caller_holds_lock else ""
    called = f"Runs with this process as current.{held}"
    return _finish(method, ep, "Process", kernel_doc(ep, called), _method_signature(ep),
                   "gupsim.kernel")


def kernel_method(ep: EntryPoint) -> Callable[..., Any]:
    """`Kernel.<name>` of a remote variant: runs on `mm`, holding its mmap_lock unless
    the caller's `locked` says it is not held (then GUP refuses the call)."""
    if not ep.takes_mm:
        raise ValueError(f"{ep.name} runs on current->mm: it is a Process method")

    def method(self: Any, *args: Any, **kwargs: Any) -> int | bool:
        mm, start, nr_pages, gup_flags, pages, locked = _arguments(ep, args, kwargs)
        assert mm is not None
        if mm.mem is not self.mem:
            raise ValueError(f"{ep.name}(): mm belongs to another machine: call it on the "
                             "Kernel that spawned the process")
        with _as_caller(ep, mm, locked):
            n = gup_call(ep, gup_state(mm.mem).env, mm, start, nr_pages, gup_flags, pages,
                         locked)
        return n == 1 if ep.one_page else n

    called = ("It holds mm's mmap_lock around the call, as the caller must (with "
              "`locked`, only when *locked == 1).")
    return _finish(method, ep, "Kernel", kernel_doc(ep, called), _method_signature(ep),
                   "gupsim.kernel")


# -- static declarations for type checkers ---------------------------------------------------

STUBS_PATH = os.path.join(os.path.dirname(__file__), "_entry_stubs.pyi")
REGENERATE = 'python -c "from gupsim.gup.entry import write_stubs; write_stubs()"'


def render_stubs() -> str:
    """The text of `_entry_stubs.pyi`: the entry points that the builders make at import
    time, as plain declarations a type checker can read (the running code never imports
    it). A test fails when it is out of date with the table; `write_stubs()` renews it."""
    def decl(ep: EntryPoint, indent: str, method: bool) -> list[str]:
        params = (["self"] if method else []) + [f"{n}: {_source_text(_ANNOTATIONS[n])}"
                                                    for n in ep.params]
        ret = "bool" if ep.one_page else "int"
        return ([f"{indent}def {ep.name}("] + [f"{indent}    {p}," for p in params]
                + [f"{indent}) -> {ret}: ...", ""])

    out = ["# Generated from gupsim.gup.entry.ENTRY_POINTS; do not edit. Renew with:",
           f"#   {REGENERATE}",
           "# Read by type checkers only (see gup/api.py and gup/facade.py).",
           "",
           "from ..memory import Page, PageArray",
           "from ..mm import MM",
           "",
           "__all__ = ["] + [f'    "{ep.name}",' for ep in ENTRY_POINTS] + ["]", "", ""]
    for ep in ENTRY_POINTS:
        out += decl(ep, "", False)
    for cls, remote in (("ProcessEntryPoints", False), ("KernelEntryPoints", True)):
        out += ["", f"class {cls}:"]
        for ep in ENTRY_POINTS:
            if ep.takes_mm == remote:
                out += decl(ep, "    ", True)
    return "\n".join(out).rstrip() + "\n"


def write_stubs() -> None:
    """Renew `_entry_stubs.pyi` after a change to `ENTRY_POINTS`."""
    with open(STUBS_PATH, "w") as stubs:
        stubs.write(render_stubs())


__all__ = ["ENTRY_POINTS", "ENTRY_POINTS_BY_NAME", "EntryPoint", "entry_function",
           "process_method", "kernel_method", "gup_call", "kernel_doc", "render_stubs",
           "write_stubs"]
