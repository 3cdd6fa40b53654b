"""/proc/PID/mem reads and writes (fs/proc/base.c mem_rw -> mm/memory.c access_remote_vm).

A read of another process's memory through /proc/PID/mem takes one page at a time with
get_user_pages_remote(FOLL_FORCE): an ordinary reference (FOLL_GET), never a pin, so the
nr_foll_pin_* counters do not move. The page is copied through a kernel mapping and the
reference dropped. When no byte at all could be read (the range is unmapped, or GUP
refuses it, as it refuses a memfd_secret() mapping), the read answers EIO; after some
bytes it returns the short count.

Simplification: the ptrace access check (PTRACE_MODE_ATTACH) is not modelled: the
reader is taken to be allowed, as root is.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..check.args import check_count, check_ints, check_owner
from ..constants import FOLL_FORCE, FOLL_WRITE, PAGE_MASK, PAGE_SIZE
from ..memory import PageArray
from .kernel_write import set_page_dirty_lock

if TYPE_CHECKING:
    from ..kernel import Kernel, Process


def proc_mem_read(kernel: Kernel, reader: Process, target: Process, addr: int,
                  length: int) -> bytes:
    """The bytes of `target` at [addr, addr+length) as a pread() of /proc/PID/mem
    returns them (possibly short); OSError(EIO) when not one byte was readable."""
    check_owner("proc_mem_read", "reader", reader, kernel)
    check_owner("proc_mem_read", "target", target, kernel)
    check_count("proc_mem_read", "length", length)
    check_ints("proc_mem_read", addr=addr)
    if not target.alive:
        raise OSError(errno.ESRCH, "the target process has exited")
    out = bytearray()
    while len(out) < length:
        pos = addr + len(out)
        pages = PageArray(1)
        got = kernel.get_user_pages_remote(target.mm, pos & PAGE_MASK, 1, FOLL_FORCE, pages,
                                           None)
        if got != 1:
            break
        page = pages[0]
        assert page is not None, "GUP filled the entry it counted"
        off = pos & ~PAGE_MASK
        n = min(PAGE_SIZE - off, length - len(out))
        out += kernel.dma_read(page, off, n)
        kernel.put_page(page)
    if length and not out:
        raise OSError(errno.EIO, "/proc/PID/mem: nothing readable at this address")
    return bytes(out)


def proc_mem_write(kernel: Kernel, writer: Process, target: Process, addr: int,
                   data: bytes) -> int:
    """pwrite() of /proc/PID/mem of `target`: a FOLL_FORCE | FOLL_WRITE reference per
    page (so a read-only private mapping is written through a COW copy, never the file
    behind it), the bytes copied in, the page dirtied and released; the count written
    (possibly short), OSError(EIO) when not one byte could be written."""
    check_owner("proc_mem_write", "writer", writer, kernel)
    check_owner("proc_mem_write", "target", target, kernel)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"proc_mem_write: data must be bytes, got {type(data).__name__}")
    check_ints("proc_mem_write", addr=addr)
    if not target.alive:
        raise OSError(errno.ESRCH, "the target process has exited")
    done = 0
    while done < len(data):
        pos = addr + done
        pages = PageArray(1)
        got = kernel.get_user_pages_remote(target.mm, pos & PAGE_MASK, 1,
                                           FOLL_FORCE | FOLL_WRITE, pages, None)
        if got != 1:
            break
        page = pages[0]
        assert page is not None, "GUP filled the entry it counted"
        off = pos & ~PAGE_MASK
        n = min(PAGE_SIZE - off, len(data) - done)
        kernel.dma_write(page, off, bytes(data[done:done + n]))
        set_page_dirty_lock(page)
        kernel.put_page(page)
        done += n
    if data and not done:
        raise OSError(errno.EIO, "/proc/PID/mem: nothing writable at this address")
    return done
