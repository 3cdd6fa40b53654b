"""Case 5 of pin_user_pages.rst: pinning in order to write to the data in the page.

No device and no Direct IO: kernel code takes the user's pages, writes into them
through a kernel mapping (kmap_local_page() + memcpy; in the model `k.dma_write()`,
which likewise writes the frame with no page tables and no dirty tracking), and
releases them. The documentation's rule: this needs FOLL_PIN, released with the pages
dirtied: `pin_user_pages()`, write, `unpin_user_pages_dirty_lock(pages, n, true)`.

`pin_and_write()` is that pattern. `get_and_write_incorrect()` is the one the
documentation calls INCORRECT: `get_user_pages()`, write, `put_page()`. What the model
shows goes wrong with it (tests/drivers/test_kernel_write.py, drivers/cases.py):

* file pages: writeback may clean the folio between the get and the write (it does
  not consult folio_maybe_dma_pinned(), in the model as in mainline); put_page() does
  not redirty it, so the write never reaches the file and is gone once the clean page
  cache is dropped. unpin_user_pages_dirty_lock(..., true) redirties it.
* anonymous pages: fork() during the window shares a FOLL_GET page copy-on-write (it
  copies only folios that folio_maybe_dma_pinned() reports), so after the parent's
  next write the kernel's write lands in the page only the child maps.

`while_held` runs between taking the pages and writing (another thread's fork, a
writeback pass), so the window can be shown deterministically.

Simplification: one short-term call over a few pages; no iov_iter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..constants import EFAULT, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..gup import FOLL_WRITE
from ..memory import PG, Kind, Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)


def set_page_dirty_lock(page: Page) -> None:
    """set_page_dirty_lock(): mark the page's folio dirty (the FOLL_GET user's duty)."""
    mem = page.mem
    head = int(mem.head_of(page.pfn))
    if mem.kind[head] not in (Kind.ZERO, Kind.HUGE_ZERO):
        mem.set_flag(head, PG.dirty)


def _write(k: Kernel, pages: PageArray, addr: int, data: bytes) -> None:
    off = addr & ~PAGE_MASK
    done = 0
    i = 0
    while done < len(data):
        n = min(PAGE_SIZE - off, len(data) - done)
        page = pages[i]
        assert page is not None, "the caller got every page before writing"
        k.dma_write(page, off, data[done:done + n])
        done += n
        off = 0
        i += 1


def _span(addr: int, length: int) -> tuple[int, int]:
    start = addr & PAGE_MASK
    return start, ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)


def pin_and_write(k: Kernel, addr: int, data: bytes, *, current: Process,
                  while_held: Callable[[], object] | None = None) -> int:
    """The correct case-5 pattern: bytes written, or -errno (nothing written)."""
    start, n = _span(addr, len(data))
    pages = PageArray(n)
    got = current.pin_user_pages(start, n, FOLL_WRITE, pages)
    if got != n:
        if got > 0:
            k.unpin_user_pages(pages, got)
        return got if got < 0 else -EFAULT
    if while_held is not None:
        while_held()
    _write(k, pages, addr, data)
    k.unpin_user_pages_dirty_lock(pages, n, True)
    return len(data)


def get_and_write_incorrect(k: Kernel, addr: int, data: bytes, *, current: Process,
                            while_held: Callable[[], object] | None = None) -> int:
    """The INCORRECT pattern the documentation names (get_user_pages, write, put_page):
    bytes written, or -errno."""
    start, n = _span(addr, len(data))
    pages = PageArray(n)
    got = current.get_user_pages(start, n, FOLL_WRITE, pages)
    if got != n:
        for page in pages.filled(max(got, 0)):
            k.put_page(page)
        return got if got < 0 else -EFAULT
    if while_held is not None:
        while_held()
    _write(k, pages, addr, data)
    for page in pages.filled():
        k.put_page(page)
    return len(data)
