"""The exported GUP/PUP entry points, with the kernel's names and argument order.

`current` is implicit, as in the kernel: the facade's process methods
(`p.pin_user_pages_fast(...)`) run these with that process as `current`; the `*_remote`
calls name their mm. Each entry point validates its arguments with
`is_valid_gup_args()` and returns what the kernel returns: a count, a -errno, or 0 for
the `pin_user_pages{,_remote,_unlocked}()` invalid-argument path (spec 1.4, 2.1 - 2.3).

Seed-era names are kept as aliases: `put_user_page()`, `put_user_pages()` and
`put_user_pages_dirty_lock()` (v5.2 - v5.6, renamed `unpin_*` in the v5.6 merge window),
and the `pin_longterm_pages*()` wrappers of the v2 - v4 FOLL_PIN series, which the
review replaced by passing FOLL_LONGTERM to `pin_user_pages*()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..constants import EINVAL
from ..memory import (
    Folio,
    Page,
    PageArray,
    folio_maybe_dma_pinned,
    page_maybe_dma_pinned,
)
from ..memory.pagearray import pfns_of
from ..mm import MM, VMA, MMEnv
from ..mm.fork import folio_needs_cow_for_dma as fork_needs_cow_for_dma
from .fast import gup_fast_fallback
from .flags import (
    FOLL_FAST_ONLY,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_REMOTE,
    FOLL_TOUCH,
    FOLL_UNLOCKABLE,
    is_valid_gup_args,
)
from .grab import (
    folio_add_pin,
    folio_add_pins,
    get_page,
    put_page,
    unpin_folio,
    unpin_folios,
    unpin_user_folio,
    unpin_user_page,
    unpin_user_page_range_dirty_lock,
    unpin_user_pages,
    unpin_user_pages_dirty_lock,
)
from .longterm import __gup_longterm_locked, folio_is_longterm_pinnable
from .longterm import memfd_pin_folios as _memfd_pin_folios
from .pages import PagesOut
from .slow import __get_user_pages_locked
from .state import gup_state

Pages = list[Page | None] | PageArray | None


class Current:
    """What `current` means to GUP: the task's mm and the machine it runs on."""

    def __init__(self, env: MMEnv, mm: MM, task: Any = None) -> None:
        self.env = env
        self.mm = mm
        self.task = task


_current: ContextVar[Current | None] = ContextVar("gupsim_current", default=None)


@contextlib.contextmanager
def running_as(env: MMEnv, mm: MM, task: Any = None) -> Iterator[Current]:
    """Run kernel code with `current` set to a task (the facade's process methods use it)."""
    token = _current.set(Current(env, mm, task))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def current() -> Current:
    cur = _current.get()
    if cur is None:
        raise RuntimeError("no current task: call this through a process, e.g. "
                           "p.pin_user_pages_fast(...), or use the *_remote variant")
    return cur


def _env_of(mm: MM) -> MMEnv:
    return gup_state(mm.mem).env


def _ulong(nr_pages: int) -> int:
    """The slow-path entry points take `unsigned long nr_pages`: -1 is a huge count."""
    return nr_pages % (1 << 64)


def _int(nr_pages: int) -> int:
    """The fast entry points take `int nr_pages` (sign-extended later in the walk)."""
    return (nr_pages + (1 << 31)) % (1 << 32) - (1 << 31)


def _check_capacity(pages: Pages, nr_pages: int) -> None:
    if isinstance(pages, PageArray) and nr_pages > len(pages):
        raise ValueError(f"PageArray holds {len(pages)} entries but {nr_pages} pages were "
                         f"asked for: allocate gupsim.PageArray({nr_pages})")


def _record(env: MMEnv, mm: MM, pages: Pages, n: int, flags: int, call: str) -> None:
    """Tell the sanitizer which pages a successful call took, and how."""
    st = gup_state(env.mem)
    if st.sanitizer is None or n <= 0 or pages is None or not flags & (FOLL_GET | FOLL_PIN):
        return
    st.sanitizer.on_acquire(pfns_of(pages, n).copy(), flags, call, mm)


def _out(env: MMEnv, pages: Pages) -> PagesOut | None:
    return None if pages is None else PagesOut(pages, env.mem)


# -- get_user_pages* ------------------------------------------------------------------


def get_user_pages_remote(mm: MM, start: int, nr_pages: int, gup_flags: int, pages: Pages,
                          locked: list[int] | None) -> int:
    """GUP on any mm; the caller holds its mmap_lock (see spec 2.3 for `locked`)."""
    env = _env_of(mm)
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(env.mem.warnings, pages, locked, gup_flags,
                              FOLL_TOUCH | FOLL_REMOTE)
    if flags is None:
        return -EINVAL
    n = __get_user_pages_locked(env, mm, start, nr_pages, _out(env, pages), locked, flags)
    _record(env, mm, pages, n, flags | (FOLL_GET if pages is not None else 0),
            "get_user_pages_remote")
    return n


def get_user_pages(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """GUP on current->mm with mmap_lock held; `pages=None` only faults pages in."""
    cur = current()
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags, FOLL_TOUCH)
    if flags is None:
        return -EINVAL
    n = __get_user_pages_locked(cur.env, cur.mm, start, nr_pages, _out(cur.env, pages), None,
                                flags)
    _record(cur.env, cur.mm, pages, n, flags | (FOLL_GET if pages is not None else 0),
            "get_user_pages")
    return n


def get_user_pages_unlocked(start: int, nr_pages: int, pages: Pages, gup_flags: int) -> int:
    """GUP on current->mm taking mmap_lock internally (note: pages before flags)."""
    cur = current()
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    locked = [0]
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags,
                              FOLL_TOUCH | FOLL_UNLOCKABLE)
    if flags is None:
        return -EINVAL
    n = __get_user_pages_locked(cur.env, cur.mm, start, nr_pages, _out(cur.env, pages),
                                locked, flags)
    _record(cur.env, cur.mm, pages, n, flags | (FOLL_GET if pages is not None else 0),
            "get_user_pages_unlocked")
    return n


def get_user_pages_fast(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """GUP-fast with FOLL_GET, then the slow path for the rest."""
    cur = current()
    nr_pages = _int(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags, FOLL_GET)
    if flags is None:
        return -EINVAL
    n = gup_fast_fallback(cur.env, cur.mm, start, nr_pages, flags, pages)
    _record(cur.env, cur.mm, pages, n, flags, "get_user_pages_fast")
    return n


def get_user_pages_fast_only(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """GUP-fast only: never sleeps, never falls back; may return fewer pages, or 0."""
    cur = current()
    nr_pages = _int(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags,
                              FOLL_GET | FOLL_FAST_ONLY)
    if flags is None:
        return -EINVAL
    n = gup_fast_fallback(cur.env, cur.mm, start, nr_pages, flags, pages)
    _record(cur.env, cur.mm, pages, n, flags, "get_user_pages_fast_only")
    return n


def get_user_page_fast_only(addr: int, gup_flags: int, pagep: list[Page | None]) -> bool:
    """The inline wrapper: one page through GUP-fast only; True iff exactly one was taken.

    `pagep` stands for `struct page **pagep`: a one-element list that receives the page.
    """
    return get_user_pages_fast_only(addr, 1, gup_flags, pagep) == 1


# -- pin_user_pages* --------------------------------------------------------------------


def pin_user_pages_fast(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """Pin with GUP-fast, slow path for the rest; -EINVAL on invalid arguments."""
    cur = current()
    nr_pages = _int(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags, FOLL_PIN)
    if flags is None:
        return -EINVAL
    n = gup_fast_fallback(cur.env, cur.mm, start, nr_pages, flags, pages)
    _record(cur.env, cur.mm, pages, n, flags, "pin_user_pages_fast")
    return n


def pin_user_pages_remote(mm: MM, start: int, nr_pages: int, gup_flags: int, pages: Pages,
                          locked: list[int] | None) -> int:
    """Pin pages of any mm (caller holds its mmap_lock); 0 on invalid arguments."""
    env = _env_of(mm)
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(env.mem.warnings, pages, locked, gup_flags,
                              FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE)
    if flags is None:
        return 0
    n = __gup_longterm_locked(env, mm, start, nr_pages, _out(env, pages), locked, flags)
    _record(env, mm, pages, n, flags, "pin_user_pages_remote")
    return n


def pin_user_pages(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """Pin pages of current->mm with mmap_lock held (no FOLL_TOUCH); 0 on invalid args."""
    cur = current()
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags, FOLL_PIN)
    if flags is None:
        return 0
    n = __gup_longterm_locked(cur.env, cur.mm, start, nr_pages, _out(cur.env, pages), None,
                              flags)
    _record(cur.env, cur.mm, pages, n, flags, "pin_user_pages")
    return n


def pin_user_pages_unlocked(start: int, nr_pages: int, pages: Pages, gup_flags: int) -> int:
    """Pin pages of current->mm, taking mmap_lock internally; 0 on invalid arguments."""
    cur = current()
    nr_pages = _ulong(nr_pages)
    _check_capacity(pages, nr_pages)
    locked = [0]
    flags = is_valid_gup_args(cur.env.mem.warnings, pages, None, gup_flags,
                              FOLL_PIN | FOLL_TOUCH | FOLL_UNLOCKABLE)
    if flags is None:
        return 0
    n = __gup_longterm_locked(cur.env, cur.mm, start, nr_pages, _out(cur.env, pages), locked,
                              flags)
    _record(cur.env, cur.mm, pages, n, flags, "pin_user_pages_unlocked")
    return n


def memfd_pin_folios(memfd: Any, start: int, end: int, folios: list[Folio | None],
                     max_folios: int, offset: list[int]) -> int:
    """Pin the folios of a memfd (shmem or hugetlbfs) covering bytes [start, end]."""
    inode = getattr(memfd, "inode", None)
    if inode is None:
        return -EINVAL
    env = gup_state(inode.mem).env
    n = _memfd_pin_folios(env, memfd, start, end, folios, max_folios, offset)
    st = gup_state(env.mem)
    if n > 0 and st.sanitizer is not None:
        st.sanitizer.on_acquire(np.array([f.pfn for f in folios[:n]], dtype=np.int64),
                                FOLL_PIN | FOLL_LONGTERM, "memfd_pin_folios", None)
    return n


# -- queries --------------------------------------------------------------------------


def folio_needs_cow_for_dma(vma: VMA, folio: Folio) -> bool:
    """Must fork copy this folio for the child? Only if the VMA's mm ever pinned."""
    env = gup_state(folio.mem).env
    mm = next((m for m in env.mms if vma in m.vmas), None)    # the VMA's vm_mm
    if mm is None:
        return False
    return bool(fork_needs_cow_for_dma(env, mm, np.array([folio.pfn], dtype=np.int64))[0])


# -- seed-era names -------------------------------------------------------------------


def put_user_page(page: Page) -> None:
    """v5.2 - v5.6 name of unpin_user_page()."""
    unpin_user_page(page)


def put_user_pages(pages: Pages, npages: int | None = None) -> None:
    """v5.2 - v5.6 name of unpin_user_pages()."""
    unpin_user_pages(pages, npages)


def put_user_pages_dirty_lock(pages: Pages, npages: int, make_dirty: bool) -> None:
    """v5.2 - v5.6 name of unpin_user_pages_dirty_lock()."""
    unpin_user_pages_dirty_lock(pages, npages, make_dirty)


def pin_longterm_pages(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """v2 - v4 FOLL_PIN series wrapper: pin_user_pages() with FOLL_LONGTERM.

    The review (Jan Kara, Ira Weiny, Nov 2019) dropped these wrappers in favour of the
    flag; the seed version also took `vmas`, omitted here.
    """
    return pin_user_pages(start, nr_pages, gup_flags | FOLL_LONGTERM, pages)


def pin_longterm_pages_fast(start: int, nr_pages: int, gup_flags: int, pages: Pages) -> int:
    """v2 - v4 wrapper: pin_user_pages_fast() with FOLL_LONGTERM (dropped in review)."""
    return pin_user_pages_fast(start, nr_pages, gup_flags | FOLL_LONGTERM, pages)


def pin_longterm_pages_remote(mm: MM, start: int, nr_pages: int, gup_flags: int,
                              pages: Pages, locked: list[int] | None) -> int:
    """v2 - v4 wrapper: pin_user_pages_remote() with FOLL_LONGTERM (dropped in review).

    The seed version also took `tsk` and `vmas`, removed upstream in 5.9 and 6.5.
    """
    return pin_user_pages_remote(mm, start, nr_pages, gup_flags | FOLL_LONGTERM, pages,
                                 locked)


__all__ = [
    "get_user_pages", "get_user_pages_remote", "get_user_pages_unlocked",
    "get_user_pages_fast", "get_user_pages_fast_only", "get_user_page_fast_only",
    "pin_user_pages",
    "pin_user_pages_remote", "pin_user_pages_unlocked", "pin_user_pages_fast",
    "unpin_user_page", "unpin_user_pages", "unpin_user_pages_dirty_lock",
    "unpin_user_page_range_dirty_lock", "unpin_folio", "unpin_folios", "unpin_user_folio",
    "folio_add_pin", "folio_add_pins", "memfd_pin_folios", "put_page", "get_page",
    "page_maybe_dma_pinned", "folio_maybe_dma_pinned", "folio_needs_cow_for_dma",
    "folio_is_longterm_pinnable", "put_user_page", "put_user_pages",
    "put_user_pages_dirty_lock", "pin_longterm_pages", "pin_longterm_pages_fast",
    "pin_longterm_pages_remote", "running_as", "current",
]
