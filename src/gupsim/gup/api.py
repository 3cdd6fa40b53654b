"""The exported GUP/PUP entry points, with the kernel's names and argument order.

The `get_user_pages*()` / `pin_user_pages*()` functions are built here from the table in
`gup/entry.py` (one row per entry point; see there how to add one), so each is declared
once and the `Process` / `Kernel` methods are built from the same row. `current` is
implicit, as in the kernel: the facade's process methods (`p.pin_user_pages_fast(...)`)
run these with that process as `current`; the `*_remote` calls name their mm. Each
returns what the kernel returns: a count, a -errno, or 0 for the
`pin_user_pages{,_remote,_unlocked}()` invalid-argument path (spec 1.4, 2.1 - 2.3), and
leaves a record of the path it took in `k.gup.calls`.

Seed-era names are kept as aliases: `put_user_page()`, `put_user_pages()` and
`put_user_pages_dirty_lock()` (v5.2 - v5.6, renamed `unpin_*` in the v5.6 merge window),
and the `pin_longterm_pages*()` wrappers of the v2 - v4 FOLL_PIN series (rows of the
table), which the review replaced by passing FOLL_LONGTERM to `pin_user_pages*()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..check.args import check_count, check_ints
from ..constants import EINVAL
from ..memory import (
    Folio,
    MemMap,
    Page,
    PageArray,
    folio_maybe_dma_pinned,
    page_maybe_dma_pinned,
)
from ..mm import VMA
from ..mm.fork import folio_needs_cow_for_dma as fork_needs_cow_for_dma
from .entry import ENTRY_POINTS, entry_function
from .flags import FOLL_LONGTERM, FOLL_PIN
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
from .longterm import folio_is_longterm_pinnable
from .longterm import memfd_pin_folios as _memfd_pin_folios
from .state import PATH_SLOW, GupCall, current, gup_state, running_as

# get_user_pages(), pin_user_pages_fast(), ... : one function per row of the table.
for _ep in ENTRY_POINTS:
    globals()[_ep.name] = entry_function(_ep)
if TYPE_CHECKING:      # what a type checker sees of them (generated from the same table)
    from ._entry_stubs import *  # noqa: F403


def memfd_pin_folios(memfd: Any, start: int, end: int, folios: list[Folio | None],
                     max_folios: int, offset: list[int], *,
                     machine: MemMap | None = None) -> int:
    """Pin the folios of a memfd (shmem or hugetlbfs) covering bytes [start, end]."""
    call = "memfd_pin_folios"
    check_ints(call, start=start, end=end)
    max_folios = check_count(call, "max_folios", max_folios, limit=(1 << 32) - 1)
    if not isinstance(folios, list):
        raise TypeError(f"{call}(): folios must be a list (filled in), not "
                        f"{type(folios).__name__}")
    if not (isinstance(offset, list) and len(offset) >= 1):
        raise TypeError(f"{call}(): offset stands for `pgoff_t *offset`: pass a one-element "
                        f"list such as [0], not {offset!r}")
    inode = getattr(memfd, "inode", None)
    if inode is None:
        return -EINVAL
    if machine is not None and inode.mem is not machine:
        raise ValueError(f"{call}(): memfd belongs to another machine")
    env = gup_state(inode.mem).env
    env.era.require("memfd-pin-folios", f"{call}()")
    st = gup_state(env.mem)
    with st.recording(GupCall("memfd_pin_folios", start, max_folios,
                              FOLL_PIN | FOLL_LONGTERM, PATH_SLOW)) as call_rec:
        n = call_rec.slow = call_rec.ret = _memfd_pin_folios(env, memfd, start, end, folios,
                                                             max_folios, offset)
    if n > 0 and st.sanitizer is not None:
        pfns = []
        for f in folios[:n]:
            assert f is not None, "memfd_pin_folios() fills the first n entries it returns"
            pfns.append(f.pfn)
        st.sanitizer.on_acquire(np.array(pfns, dtype=np.int64),
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


def put_user_pages(pages: Sequence[Page | None] | PageArray, npages: int | None = None) -> None:
    """v5.2 - v5.6 name of unpin_user_pages()."""
    unpin_user_pages(pages, npages)


def put_user_pages_dirty_lock(pages: Sequence[Page | None] | PageArray, npages: int,
                              make_dirty: bool) -> None:
    """v5.2 - v5.6 name of unpin_user_pages_dirty_lock()."""
    unpin_user_pages_dirty_lock(pages, npages, make_dirty)


__all__ = [
    "unpin_user_page", "unpin_user_pages", "unpin_user_pages_dirty_lock",
    "unpin_user_page_range_dirty_lock", "unpin_folio", "unpin_folios", "unpin_user_folio",
    "folio_add_pin", "folio_add_pins", "memfd_pin_folios", "put_page", "get_page",
    "page_maybe_dma_pinned", "folio_maybe_dma_pinned", "folio_needs_cow_for_dma",
    "folio_is_longterm_pinnable", "put_user_page", "put_user_pages",
    "put_user_pages_dirty_lock", "running_as", "current",
]
__all__ += [ep.name for ep in ENTRY_POINTS]
