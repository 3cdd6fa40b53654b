"""Case 4 of pin_user_pages.rst: pinning for struct page manipulation only.

Kernel code that needs a user page's `struct page` (its node and zone, whether it is
anonymous, dirty, how often it is mapped), not the memory it tracks, takes plain
references: `get_user_pages_fast()` (FOLL_GET), look, `put_page()`, in chunks of
DO_PAGES_STAT_CHUNK_NR (16) pages as move_pages(2) does for its status query. That is
`page_status_query()`.

`page_status_query_pinned()` is the wrong counterpart, a FOLL_PIN where no data is
touched: the pages look DMA-pinned while held, so a fork() in that window copies them
for the child at once (vmstat fork_copy_pinned) instead of sharing them, and the mm
is marked MMF_HAS_PINNED for the rest of its life, which makes every later fork check
its pages. `while_held` runs in that window (another thread's fork, say).

Simplification: status only (no node migration); a failed chunk ends the query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constants import PAGE_SIZE
from ..memory import Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)

DO_PAGES_STAT_CHUNK_NR = 16


@dataclass(frozen=True)
class PageStatus:
    """What the query reports about one user page (read from struct page / folio)."""

    addr: int
    pfn: int
    zone: str
    anon: bool
    dirty: bool
    mapcount: int


def _status(addr: int, page: Page) -> PageStatus:
    folio = page.folio
    return PageStatus(addr, page.pfn, folio.zone.name, folio.is_anon, folio.dirty,
                      page.mapcount)


def _query(k: Kernel, addr: int, nr: int, pin: bool, current: Process,
           while_held: Callable[[], object] | None) -> list[PageStatus] | int:
    out: list[PageStatus] = []
    done = 0
    while done < nr:
        chunk = min(nr - done, DO_PAGES_STAT_CHUNK_NR)
        pages = PageArray(chunk)
        start = addr + done * PAGE_SIZE
        if pin:
            got = current.pin_user_pages_fast(start, chunk, 0, pages)
        else:
            got = current.get_user_pages_fast(start, chunk, 0, pages)
        if got <= 0:
            return out if out else got
        if while_held is not None and done == 0:
            while_held()
        for i in range(got):
            page = pages[i]
            assert page is not None
            out.append(_status(start + i * PAGE_SIZE, page))
        if pin:
            k.unpin_user_pages(pages, got)
        else:
            for page in pages.filled(got):
                k.put_page(page)
        done += got
        if got < chunk:
            break
    return out


def page_status_query(k: Kernel, addr: int, nr: int, *, current: Process,
                      while_held: Callable[[], object] | None = None
                      ) -> list[PageStatus] | int:
    """The case-4 user, right: FOLL_GET references, put_page(). Statuses or -errno."""
    return _query(k, addr, nr, False, current, while_held)


def page_status_query_pinned(k: Kernel, addr: int, nr: int, *, current: Process,
                             while_held: Callable[[], object] | None = None
                             ) -> list[PageStatus] | int:
    """The wrong counterpart: the same query with FOLL_PIN (see the module docstring)."""
    return _query(k, addr, nr, True, current, while_held)
