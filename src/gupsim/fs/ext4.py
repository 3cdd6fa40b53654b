"""ext4-like: a dirty-tracking, disk-backed page-cache file system.

Shared writable mappings are write-notified (`vma_wants_writenotify()` is true because
the file system has `page_mkwrite` and dirty accounting): PTEs start read-only, the
first write faults into `page_mkwrite`, which waits for writeback of the folio to end
(stable pages, `folio_wait_stable()`), allocates blocks, and dirties the folio.
Writeback cleans PTEs again with `folio_mkclean()`. This is the mapping kind that
long-term writable pins are refused for [since 6.5] (spec 4.1): a pin holder's DMA
bypasses `page_mkwrite`.

Simplification: blocks are reserved when a page is first written (delayed allocation's
reservation), one per page, and `capacity` bytes is the size of the device.
"""

from __future__ import annotations

import errno
from typing import ClassVar

from ..memory import Kind
from .base import FileSystem, Inode
from .common import EXT4_MAX_FILESIZE, pages_for


class Ext4Inode(Inode):
    """An ext4 file: disk-backed, write-notified, blocks reserved at the first write."""

    fs_name: ClassVar[str] = "ext4"
    kind: ClassVar[Kind] = Kind.FILE
    needs_writenotify: ClassVar[bool] = True
    has_backing: ClassVar[bool] = True
    read_populates_cache: ClassVar[bool] = True
    aops_name: ClassVar[str] = "ext4_da_aops"

    @property
    def max_size(self) -> int:
        """ext4_max_size() for extents and 4 KiB blocks."""
        return EXT4_MAX_FILESIZE

    def _charge_write(self, index: int) -> None:
        self.fs.charge(self, [index])

    def _mkwrite_prepare(self, head: int, fidx: int) -> int:
        """ext4_page_mkwrite(): wait for stable pages, then allocate the folio's blocks."""
        self._wait_writeback(head)
        last = min(fidx + self.mem.nr_pages_of(head), pages_for(self.size))
        try:
            self.fs.charge(self, range(fidx, last))
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0


class Ext4(FileSystem):
    """An ext4 file system on a block device of `capacity` bytes (None: unlimited)."""

    name: ClassVar[str] = "ext4"
    inode_class: ClassVar[type[Inode]] = Ext4Inode
