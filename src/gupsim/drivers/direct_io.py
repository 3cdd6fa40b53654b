"""Direct IO (case 1 of pin_user_pages.rst): short-term FOLL_PIN pins around a transfer.

The block layer extracts the user pages with iov_iter_extract_pages(), which pins them
with pin_user_pages_fast() (FOLL_WRITE when the device writes into memory, i.e. a read
from the file), transfers, and releases them with unpin_user_pages(), dirtying the
pages first for reads. Buffer and length must be aligned to the logical block size.

The pages are extracted as bio_iov_iter_get_pages() does: one pin_user_pages_fast() call
per round, each asking for as many pages as the bio has bvecs left (BIO_MAX_VECS, 256,
in a new bio; physically contiguous pages merge into one bvec, so a huge folio takes one),
and a full bio starts a new one where the last ended (a page there, if the request is not
page aligned, is pinned once per bio). Per-call effects differ from one call for the
range: a GUP-fast grab that is dropped again (a page to unshare after fork) counts once
per round. Simplification: the file's extents do not split the request (iomap does,
per extent), and bios are not limited by the queue's max_sectors.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..check.args import check_ints, check_owner
from ..constants import FOLL_WRITE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..fs import File
from ..memory import Page, PageArray

if TYPE_CHECKING:
    from ..kernel import Kernel, Process

LOGICAL_BLOCK = 512


BIO_MAX_VECS = 256

Round = tuple[int, int, int, int]   # (first index in the pages array, pages, addr, bytes)


def _pin(proc: Process, addr: int, length: int, write_to_memory: bool
         ) -> tuple[PageArray, int, list[Round]]:
    """Pin the buffer round by round as the bios extract it: the pages array (every pin,
    a page at a bio boundary twice), how many, and the rounds."""
    if addr % LOGICAL_BLOCK or length % LOGICAL_BLOCK:
        raise OSError(errno.EINVAL, f"O_DIRECT needs {LOGICAL_BLOCK}-byte aligned buffers "
                                    "and lengths")
    end = addr + length
    nr = ((end + PAGE_SIZE - 1) >> PAGE_SHIFT) - (addr >> PAGE_SHIFT)
    pages = PageArray(nr + nr // (BIO_MAX_VECS - 1) + 2)
    flags = FOLL_WRITE if write_to_memory else 0
    rounds: list[Round] = []
    got, pos, vecs, last_end = 0, addr, BIO_MAX_VECS, -1   # last_end: physical, of a bvec
    while pos < end:
        if vecs >= BIO_MAX_VECS:                      # a full bio: the next one starts
            vecs, last_end = 0, -1
        first = pos & PAGE_MASK
        want = min(BIO_MAX_VECS - vecs, ((end - first + PAGE_SIZE - 1) >> PAGE_SHIFT))
        n = proc.pin_user_pages_fast(first, want, flags, pages[got:])
        if n <= 0:
            if not rounds:
                raise OSError(errno.EFAULT if n == 0 else -n,
                              "O_DIRECT: no page could be pinned")
            break
        pfns = pages.pfns[got:got + n]
        off = pos - first
        nbytes = min(end, first + n * PAGE_SIZE) - pos
        vecs += 1 + int(np.count_nonzero(pfns[1:] != pfns[:-1] + 1))
        if last_end == (int(pfns[0]) << PAGE_SHIFT) + off:
            vecs -= 1                                 # merged into the bio's last bvec
        last_end = (int(pfns[-1]) << PAGE_SHIFT) + ((pos + nbytes - 1) & ~PAGE_MASK) + 1
        rounds.append((got, n, pos, nbytes))
        got += n
        pos += nbytes
        if n < want:
            break
    return pages, got, rounds


def _chunks(pages: PageArray, rounds: list[Round]) -> Iterator[tuple[Page, int, int]]:
    """(page, offset in it, bytes) of each pinned page the transfer touches, in order."""
    for at, n, addr, length in rounds:
        off = addr & ~PAGE_MASK
        left = length
        for i in range(at, at + n):
            size = min(PAGE_SIZE - off, left)
            if size <= 0:
                break
            page = pages[i]
            assert page is not None, "GUP filled the first `got` entries"
            yield page, off, size
            left -= size
            off = 0


def _pieces(pos: int, addr: int, length: int,
            extent_ends: Sequence[int]) -> list[tuple[int, int, int]]:
    """(file offset, buffer address, bytes) of each iomap iteration: the request split
    where one extent of the file ends and the next begins."""
    cuts = sorted(e for e in extent_ends if pos < e < pos + length)
    out, start = [], pos
    for cut in [*cuts, pos + length]:
        out.append((start, addr + start - pos, cut - start))
        start = cut
    return out


def dio_write(kernel: Kernel, proc: Process, file: File, addr: int, length: int,
              pos: int = 0, extent_ends: Sequence[int] = (),
              mapped: Callable[[int, int], object] | None = None) -> int:
    """pwrite(O_DIRECT): memory -> file. Returns the bytes written (short if pins fell short).

    iomap writes extent by extent (`extent_ends`: file offsets where one ends; `mapped`
    is told each piece the file system maps, before its alignment check), so a
    misaligned piece after an aligned one fails the request with EINVAL after the
    earlier piece was pinned and written."""
    check_owner("dio_write", "proc", proc, kernel)
    check_ints("dio_write", addr=addr, length=length, pos=pos)
    if length == 0:         # generic_write_checks(): nothing to write, before any pin
        return 0
    written = 0
    for fpos, at, n in _pieces(pos, addr, length, extent_ends):
        if mapped is not None:
            mapped(fpos, n)
        try:
            if fpos % LOGICAL_BLOCK:
                raise OSError(errno.EINVAL, f"O_DIRECT at file offset {fpos} is not "
                                            f"{LOGICAL_BLOCK}-byte aligned")
            pages, got, rounds = _pin(proc, at, n, write_to_memory=False)
        except OSError as exc:
            if written and exc.errno != errno.EINVAL:
                break               # pins fell short in a later extent: a short write
            raise
        data = b"".join(kernel.dma_read(page, off, size)
                        for page, off, size in _chunks(pages, rounds))
        kernel.unpin_user_pages(pages[:got])
        file.pwrite(fpos, data)
        written += len(data)
        if len(data) < n:
            break
    return written


def dio_read(kernel: Kernel, proc: Process, file: File, addr: int, length: int,
             pos: int = 0, while_held: Callable[[], object] | None = None) -> int:
    """pread(O_DIRECT): file -> memory. Returns the bytes read. `while_held` runs while
    the I/O is in flight (pages pinned, data not yet transferred): another thread's fork."""
    check_owner("dio_read", "proc", proc, kernel)
    check_ints("dio_read", addr=addr, length=length, pos=pos)
    if length == 0:         # ext4_file_read_iter() returns 0 for an empty request first
        return 0
    pages, got, rounds = _pin(proc, addr, length, write_to_memory=True)
    if while_held is not None:
        while_held()
    data = file.pread(pos, length)
    done = 0
    for page, off, n in _chunks(pages, rounds):
        kernel.dma_write(page, off, data[done:done + n])
        done += n
    kernel.unpin_user_pages_dirty_lock(pages[:got], True)
    return done
