"""vmsplice(2) into a pipe: page references without a pin (FOLL_GET), as cow.c uses it.

vmsplice() of user memory into a pipe takes the pages with get_user_pages_fast() and no
FOLL_WRITE (iov_iter_get_pages2 on a source iterator): plain references, which the
pin counters never see. The pipe buffers keep those pages until read; the cow.c
vmsplice tests check that such a reference cannot observe a later write by another
process (the write must copy, not reuse, a page someone else holds a reference to).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..constants import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..memory import Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

PIPE_DEF_BUFFERS = 16


class Pipe:
    """A pipe's buffers: (page, offset, length) slices holding one reference each.

    A pipe has PIPE_DEF_BUFFERS slots unless resized; vmsplice() fills the free ones and
    returns what it spliced (cow.c splices a 2 MiB THP and gets 64 KiB)."""

    def __init__(self, kernel: Kernel, slots: int = PIPE_DEF_BUFFERS) -> None:
        self.kernel = kernel
        self.slots = slots
        self.bufs: list[tuple[Page, int, int]] = []

    def vmsplice(self, proc: Process, addr: int, length: int) -> int:
        """Splice [addr, addr+length) of `proc` into the pipe's free slots; bytes spliced
        (EAGAIN when the pipe is full, as a non-blocking vmsplice). An empty range
        splices nothing and returns 0 before the pipe is even looked at (do_vmsplice)."""
        if length == 0:
            return 0
        free = self.slots - len(self.bufs)
        if free <= 0:
            raise OSError(errno.EAGAIN, "vmsplice: the pipe is full")
        start = addr & PAGE_MASK
        nr = ((addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)
        nr = min(nr, free)
        length = min(length, nr * PAGE_SIZE - (addr - start))
        pages = PageArray(nr)
        got = proc.get_user_pages_fast(start, nr, 0, pages)
        if got <= 0:
            raise OSError(errno.EFAULT if got == 0 else -got, "vmsplice: bad address")
        done, pos = 0, addr
        for i in range(got):
            off = pos & ~PAGE_MASK
            n = min(PAGE_SIZE - off, length - done)
            page = pages[i]
            assert page is not None, "GUP filled the first `got` entries"
            self.bufs.append((page, off, n))
            done += n
            pos += n
        return done

    def read(self, n: int) -> bytes:
        """Read up to n bytes, dropping the reference of every buffer emptied."""
        out = bytearray()
        while self.bufs and len(out) < n:
            page, off, length = self.bufs[0]
            take = min(length, n - len(out))
            out += self.kernel.dma_read(page, off, take)
            if take == length:
                self.bufs.pop(0)
                self.kernel.put_page(page)
            else:
                self.bufs[0] = (page, off + take, length - take)
        return bytes(out)

    def close(self) -> None:
        """Release every buffer still in the pipe."""
        for page, _, _ in self.bufs:
            self.kernel.put_page(page)
        self.bufs = []
