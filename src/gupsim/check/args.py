"""Checking what a caller passed to a public entry point, before anything changes.

One set of checks for every entry point of the model that is not a GUP call (those are
checked by `gup/entry.py`): the release calls (`unpin_*()`, `put_page()`, ...), device
access (`k.dma_write()`), the process calls (`p.mmap()`, `p.write()`, ...) and the
drivers. A C caller cannot pass a string where the kernel takes an `unsigned long`, nor
a page of another machine; in Python it can, and the model would then take pins, move
vmstat or record a sanitizer event before failing half-way. Every check here raises
`TypeError` (wrong kind of value) or `ValueError` (right kind, impossible value) naming
the call, the argument and what to pass, and changes nothing. Values the kernel itself
answers (an mmap length of 0 is EINVAL, an unpin count that is a -errno warns) are left
to the kernel's code, so its semantics stay.

Usage: `pages = check_pages("unpin_user_pages", "pages", pages, npages, mem)`; `mem` is
the machine the caller is (the `Kernel` facade passes its own), or None to accept any
one machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..lean import lo_hi
from ..memory import Folio, MemMap, Page, PageArray
from ..memory.pagearray import NULL, pfns_of

ULONG_MAX = (1 << 64) - 1
MAX_ERRNO = 4095


def _what(value: object) -> str:
    if isinstance(value, Page | Folio):     # its repr reads the machine: maybe out of range
        return f"{type(value).__name__} pfn {value.pfn:#x}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_int(call: str, name: str, value: object) -> int:
    """An integer argument (Python or numpy int, not a bool): TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{call}(): {name} must be an int, not {_what(value)}")
    return int(value)


def check_ints(call: str, **values: object) -> None:
    """Every keyword is an integer argument of `call` (see `check_int`)."""
    for name, value in values.items():
        check_int(call, name, value)


def check_count(call: str, name: str, value: object, *, limit: int = ULONG_MAX,
                errno_ok: bool = False) -> int:
    """An unsigned count (`unsigned long` unless `limit` says less). A negative value
    is a ValueError, except a -errno when `errno_ok` (the kernel's code warns on it)."""
    n = check_int(call, name, value)
    if errno_ok and ULONG_MAX - MAX_ERRNO < n <= ULONG_MAX:
        n -= ULONG_MAX + 1               # IS_ERR_VALUE() of the unsigned form
    if errno_ok and -MAX_ERRNO <= n < 0:
        return n
    if n < 0 or n > limit:
        raise ValueError(f"{call}(): {name} is an unsigned count, got {n}: pass a number "
                         f"between 0 and {limit}")
    return n


def check_flag(call: str, name: str, value: object) -> bool:
    """A C `bool`: a bool or an int (0 is false); TypeError for anything else."""
    return bool(check_int(call, name, value)) if not isinstance(value, bool) else value


def check_str(call: str, name: str, value: object) -> str:
    """A name (a str)."""
    if not isinstance(value, str):
        raise TypeError(f"{call}(): {name} must be a str, not {_what(value)}")
    return value


def check_bytes(call: str, name: str, value: object) -> bytes:
    """A buffer of bytes (bytes, bytearray, memoryview): not a str, not an int count."""
    if not isinstance(value, bytes | bytearray | memoryview):
        hint = ": encode it first, e.g. text.encode()" if isinstance(value, str) else ""
        raise TypeError(f"{call}(): {name} must be bytes, not {_what(value)}{hint}")
    return bytes(value)


def _machine(call: str, name: str, mem: MemMap | None, got: MemMap) -> None:
    if mem is not None and got is not mem:
        raise ValueError(f"{call}(): {name} belongs to another machine (another "
                         "gupsim.Kernel): pass a page this machine gave you")


def check_page(call: str, name: str, value: object, mem: MemMap | None = None) -> Page:
    """A `struct page *` of machine `mem` (any one machine if None), within its memory."""
    if not isinstance(value, Page):
        hint = (": pass one of the pages GUP filled in (pages[i])" if not
                isinstance(value, Folio) else ": a folio is not a page; pass folio.page(i)")
        raise TypeError(f"{call}(): {name} must be a gupsim.Page, not {_what(value)}{hint}")
    _machine(call, name, mem, value.mem)
    if not 0 <= value.pfn < value.mem.nr_pages:
        raise ValueError(f"{call}(): {name} has pfn {value.pfn:#x}, outside the machine's "
                         f"{value.mem.nr_pages} page frames")
    return value


def check_folio(call: str, name: str, value: object, mem: MemMap | None = None) -> Folio:
    """A `struct folio *` of machine `mem`: a Folio whose pfn is a head page."""
    if not isinstance(value, Folio):
        hint = ": use page.folio()" if isinstance(value, Page) else ""
        raise TypeError(f"{call}(): {name} must be a gupsim.Folio, not {_what(value)}{hint}")
    _machine(call, name, mem, value.mem)
    if not 0 <= value.pfn < value.mem.nr_pages or \
            int(value.mem.head_of(value.pfn)) != value.pfn:
        raise ValueError(f"{call}(): {name} (pfn {value.pfn:#x}) is not the head of a folio "
                         "of this machine")
    return value


def check_pages(call: str, name: str, pages: object, n: int | None,
                mem: MemMap | None = None) -> tuple[MemMap | None, np.ndarray]:
    """A `struct page **` of `n` entries (all if None): a list/tuple of Page or None, or a
    PageArray, all of one machine (`mem` if given). Returns (machine, PFNs with NULL as -1);
    the machine is None when every entry is NULL."""
    if isinstance(pages, PageArray):
        if n is not None and n > len(pages):
            raise ValueError(f"{call}(): {name} holds {len(pages)} entries, not {n}: pass "
                             "the count GUP returned")
        pfns = pfns_of(pages, n)
        got = pages.mem
        if got is None:
            if (pfns != NULL).any():
                raise ValueError(f"{call}(): {name} holds PFNs of no machine")
            return None, pfns
        _machine(call, name, mem, got)
        lo, hi = lo_hi(pfns) if len(pfns) else (0, 0)
        if lo == NULL:                       # NULL entries are skipped: look at the rest
            live = pfns[pfns != NULL]
            lo, hi = lo_hi(live) if len(live) else (0, 0)
        if lo < 0 or hi >= got.nr_pages:
            raise ValueError(f"{call}(): {name} holds a PFN outside the machine")
        return got, pfns
    if not isinstance(pages, list | tuple):
        raise TypeError(f"{call}(): {name} must be a list of pages or a gupsim.PageArray, "
                        f"not {_what(pages)}")
    if n is not None and n > len(pages):
        raise ValueError(f"{call}(): {name} holds {len(pages)} entries, not {n}: pass the "
                         "count GUP returned")
    seq: Sequence[Any] = pages if n is None else pages[:n]
    got = mem
    out: list[int] = []
    for i, p in enumerate(seq):          # no Python call per entry: bulk lists stay cheap
        if p is None:
            out.append(NULL)
        elif type(p) is not Page or p.mem is not got or not 0 <= p.pfn < p.mem.nr_pages:
            if got is None and type(p) is Page:
                got = p.mem
            check_page(call, f"{name}[{i}]", p, got)      # raises, or accepts the first
            out.append(p.pfn)
        else:
            out.append(p.pfn)
    pfns = np.array(out, dtype=np.int64)
    return (got if (pfns != NULL).any() else None), pfns


def check_folios(call: str, name: str, folios: object, n: int | None,
                 mem: MemMap | None = None) -> tuple[MemMap | None, np.ndarray]:
    """A `struct folio **` of `n` entries: a list/tuple of Folio or None, of one machine.
    Returns (machine or None if all NULL, the PFNs of the non-NULL entries)."""
    if not isinstance(folios, list | tuple):
        raise TypeError(f"{call}(): {name} must be a list of folios, not {_what(folios)}")
    if n is not None and n > len(folios):
        raise ValueError(f"{call}(): {name} holds {len(folios)} entries, not {n}")
    got = mem
    pfns: list[int] = []
    for i, f in enumerate(folios if n is None else folios[:n]):
        if f is None:
            continue
        check_folio(call, f"{name}[{i}]", f, got)
        got = f.mem
        pfns.append(f.pfn)
    return (got if pfns else None), np.array(pfns, dtype=np.int64)


def check_owner(call: str, name: str, value: object, kernel: object) -> None:
    """A process (or anything with `.kernel`) that belongs to machine `kernel`."""
    owner = getattr(value, "kernel", None)
    if owner is None:
        raise TypeError(f"{call}(): {name} must be a process (k.spawn()), not {_what(value)}")
    if owner is not kernel:
        raise ValueError(f"{call}(): {name} is a process of another machine")


def check_iovs(call: str, name: str, iovs: object) -> list[tuple[int, int]]:
    """A `struct iovec` array: a list of (address, length) pairs of ints, all checked
    before the first is used."""
    if not isinstance(iovs, list | tuple):
        raise TypeError(f"{call}(): {name} must be a list of (address, length) pairs, not "
                        f"{_what(iovs)}")
    out = []
    for i, iov in enumerate(iovs):
        if not (isinstance(iov, list | tuple) and len(iov) == 2):
            raise TypeError(f"{call}(): {name}[{i}] must be an (address, length) pair, not "
                            f"{_what(iov)}")
        out.append((check_int(call, f"{name}[{i}] address", iov[0]),
                    check_int(call, f"{name}[{i}] length", iov[1])))
    return out


__all__ = ["check_str", "check_iovs", "check_int", "check_ints", "check_count", "check_flag",
           "check_bytes", "check_page", "check_folio", "check_pages", "check_folios", "check_owner",
           "ULONG_MAX"]
