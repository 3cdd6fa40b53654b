"""Direct IO (case 1 of pin_user_pages.rst): short-term FOLL_PIN pins around a transfer.

The block layer extracts the user pages with iov_iter_extract_pages(), which pins them
with pin_user_pages_fast() (FOLL_WRITE when the device writes into memory, i.e. a read
from the file), transfers, and releases them with unpin_user_pages(), dirtying the
pages first for reads. Buffer and length must be aligned to the logical block size.

Simplification: one bio of the whole range; the kernel splits large I/O into several
bios, which pins and releases the same pages in the same totals.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..check.args import check_ints, check_owner
from ..constants import FOLL_WRITE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..fs import File
from ..memory import Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

LOGICAL_BLOCK = 512


def _pin(proc: Process, addr: int, length: int, write_to_memory: bool) -> tuple[PageArray, int]:
    if addr % LOGICAL_BLOCK or length % LOGICAL_BLOCK:
        raise OSError(errno.EINVAL, f"O_DIRECT needs {LOGICAL_BLOCK}-byte aligned buffers "
                                    "and lengths")
    start = addr & PAGE_MASK
    nr = ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)
    pages = PageArray(nr)
    got = proc.pin_user_pages_fast(start, nr, FOLL_WRITE if write_to_memory else 0, pages)
    if got <= 0:
        raise OSError(errno.EFAULT if got == 0 else -got, "O_DIRECT: no page could be pinned")
    return pages, got


def _chunks(pages: PageArray, got: int, addr: int,
            length: int) -> Iterator[tuple[Page, int, int]]:
    """(page, offset in it, bytes) of each pinned page the transfer touches, in order."""
    off = addr & ~PAGE_MASK
    left = min(length, got * PAGE_SIZE - off)
    for i in range(got):
        n = min(PAGE_SIZE - off, left)
        if n <= 0:
            break
        page = pages[i]
        assert page is not None, "GUP filled the first `got` entries"
        yield page, off, n
        left -= n
        off = 0


def dio_write(kernel: Kernel, proc: Process, file: File, addr: int, length: int,
              pos: int = 0) -> int:
    """pwrite(O_DIRECT): memory -> file. Returns the bytes written (short if pins fell short)."""
    check_owner("dio_write", "proc", proc, kernel)
    check_ints("dio_write", addr=addr, length=length, pos=pos)
    if length == 0:         # generic_write_checks(): nothing to write, before any pin
        return 0
    pages, got = _pin(proc, addr, length, write_to_memory=False)
    data = b"".join(kernel.dma_read(page, off, n) for page, off, n in
                    _chunks(pages, got, addr, length))
    kernel.unpin_user_pages(pages[:got])
    file.pwrite(pos, data)
    return len(data)


def dio_read(kernel: Kernel, proc: Process, file: File, addr: int, length: int,
             pos: int = 0, while_held: Callable[[], object] | None = None) -> int:
    """pread(O_DIRECT): file -> memory. Returns the bytes read. `while_held` runs while
    the I/O is in flight (pages pinned, data not yet transferred): another thread's fork."""
    check_owner("dio_read", "proc", proc, kernel)
    check_ints("dio_read", addr=addr, length=length, pos=pos)
    if length == 0:         # ext4_file_read_iter() returns 0 for an empty request first
        return 0
    pages, got = _pin(proc, addr, length, write_to_memory=True)
    if while_held is not None:
        while_held()
    data = file.pread(pos, length)
    done = 0
    for page, off, n in _chunks(pages, got, addr, length):
        kernel.dma_write(page, off, data[done:done + n])
        done += n
    kernel.unpin_user_pages_dirty_lock(pages[:got], True)
    return done
