"""process_vm_readv/writev (mm/process_vm_access.c): remote short-term pins, 16 at a time.

Each chunk of up to PVM_MAX_PP_ARRAY_COUNT pages of the target is pinned with
pin_user_pages_remote() under the target's mmap_lock, copied, and unpinned (dirtied
first for writes). A failure after some bytes were copied returns the partial count.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..check.args import check_bytes, check_count, check_ints, check_owner
from ..constants import FOLL_WRITE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..memory import Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

PVM_MAX_PP_ARRAY_COUNT = 16


def _page(pages: PageArray, i: int) -> Page:
    """Entry `i` of a pages array that GUP filled at least that far."""
    page = pages[i]
    assert page is not None, "GUP filled the first `got` entries"
    return page


def _rw(kernel: Kernel, target: Process, addr: int, length: int,
        data: bytes | None) -> tuple[int, bytes]:
    """Copy to (`data` given) or from the target in pinned chunks: (bytes done, bytes read)."""
    write = data is not None
    out = bytearray()
    done = 0
    pos = addr
    while done < length:
        start = pos & PAGE_MASK
        nr = min(PVM_MAX_PP_ARRAY_COUNT,
                 ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT))
        pages = PageArray(nr)
        locked = [1]
        got = kernel.pin_user_pages_remote(target.mm, start, nr, FOLL_WRITE if write else 0,
                                           pages, locked)
        if got <= 0:
            if done:
                break
            raise OSError(errno.EFAULT if got == 0 else -got,
                          "process_vm: the remote range is not accessible")
        for i in range(got):
            off = pos & ~PAGE_MASK
            n = min(PAGE_SIZE - off, length - done)
            if n <= 0:
                break
            if data is not None:
                kernel.dma_write(_page(pages, i), off, data[done:done + n])
            else:
                out += kernel.dma_read(_page(pages, i), off, n)
            done += n
            pos += n
        if write:
            kernel.unpin_user_pages_dirty_lock(pages[:got], True)
        else:
            kernel.unpin_user_pages(pages[:got])
        if got < nr:
            break
    return done, bytes(out)


def process_vm_readv(kernel: Kernel, reader: Process, target: Process, addr: int,
                     length: int) -> bytes:
    """The bytes of `target` at [addr, addr+length) as `reader` would receive them."""
    check_owner("process_vm_readv", "reader", reader, kernel)
    check_owner("process_vm_readv", "target", target, kernel)
    check_count("process_vm_readv", "length", length)
    check_ints("process_vm_readv", addr=addr)
    if not target.alive:
        raise OSError(errno.ESRCH, "the target process has exited")
    return _rw(kernel, target, addr, length, None)[1]


def process_vm_writev(kernel: Kernel, writer: Process, target: Process, addr: int,
                      data: bytes) -> int:
    """Write `data` into `target` at `addr` through short-term pins; bytes written."""
    check_owner("process_vm_writev", "writer", writer, kernel)
    check_owner("process_vm_writev", "target", target, kernel)
    check_ints("process_vm_writev", addr=addr)
    data = check_bytes("process_vm_writev", "data", data)
    if not target.alive:
        raise OSError(errno.ESRCH, "the target process has exited")
    return _rw(kernel, target, addr, len(data), bytes(data))[0]


# process_vm_rw_single_vec pins up to this many pages before copying (two pages' worth of
# page pointers); the host probe that stalls the copy relies on one chunk holding them all.
PVM_MAX_PAGES_PER_LOOP = 2 * PAGE_SIZE // 8


def read_pinned_while(kernel: Kernel, reader: Process, target: Process, addr: int, length: int,
                      during: Callable[[], object]) -> bytes:
    """process_vm_readv whose copy is held up after pinning (the host parks it on a
    userfaultfd page): pin the target's range R/O with pin_user_pages_remote(), run
    `during()` (the target writing through its page tables), then copy out of the pinned
    pages and unpin. Returns what the pins saw."""
    if not target.alive:
        raise OSError(errno.ESRCH, "the target process has exited")
    start = addr & PAGE_MASK
    nr = ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)
    if not 0 < nr <= PVM_MAX_PAGES_PER_LOOP:
        raise ValueError(f"{nr} pages: one process_vm_readv chunk holds 1.."
                         f"{PVM_MAX_PAGES_PER_LOOP}")
    pages = PageArray(nr)
    got = kernel.pin_user_pages_remote(target.mm, start, nr, 0, pages, [1])
    if got <= 0:
        raise OSError(errno.EFAULT if got == 0 else -got,
                      "process_vm: the remote range is not accessible")
    try:
        during()
        out = bytearray()
        pos, done = addr, 0
        for i in range(got):
            off = pos & ~PAGE_MASK
            n = min(PAGE_SIZE - off, length - done)
            if n <= 0:
                break
            out += kernel.dma_read(_page(pages, i), off, n)
            done += n
            pos += n
    finally:
        kernel.unpin_user_pages(pages[:got])
    return bytes(out)
