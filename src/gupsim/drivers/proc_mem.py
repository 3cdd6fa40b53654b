"""/proc/PID/mem reads (fs/proc/base.c mem_rw -> mm/memory.c access_remote_vm).

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
from ..constants import FOLL_FORCE, PAGE_MASK, PAGE_SIZE
from ..memory import PageArray

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
