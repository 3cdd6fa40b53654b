"""fs-dax: a file system on persistent memory, mapped without a page cache.

The file's blocks are device frames, allocated when the file is created or extended
and mapped directly into processes; read() and write() copy straight to and from them.
There is no page cache (`page_cache` stays empty) and no folio writeback: `fsync()`
only write-protects the frames written through mappings since the last sync
(dax_writeback_mapping_range() cleans the PTEs so that the next store is seen again),
hence `needs_writenotify`.

Long-term pins of fs-dax memory are refused (spec 4.1, 4.2) because truncation cannot
free a block while DMA may target it: before shrinking, ext4 unmaps the whole file and
sleeps in ext4_break_layouts() until no frame has references beyond the file's own.
The model cannot sleep, so such a truncate fails with EINTR (the kernel's answer when a
signal ends that wait) and leaves the file unchanged.

Simplifications: frames come from ZONE_NORMAL of the model's memory rather than from a
ZONE_DEVICE pgmap; each frame holds one reference of the file while it is allocated to
it (upstream fs-dax folios idle at refcount 0 [since 6.15]); `capacity` bytes is the
size of the pmem device, and running out of frames is ENOSPC.
"""

from __future__ import annotations

import errno
from typing import ClassVar

from ..constants import PAGE_SIZE
from ..memory import PG, Kind, OutOfMemory
from .base import FileSystem, Inode
from .common import folio_put, oserror, pages_for


class DaxInode(Inode):
    """An fs-dax file: device frames allocated with the file, mapped with no page cache."""

    fs_name: ClassVar[str] = "dax"
    kind: ClassVar[Kind] = Kind.FSDAX
    needs_writenotify: ClassVar[bool] = True
    movable: ClassVar[bool] = False
    on_lru: ClassVar[bool] = False
    aops_name: ClassVar[str] = "ext4_dax_aops"

    def __init__(self, fs: FileSystem, name: str) -> None:
        super().__init__(fs, name)
        self.frames: dict[int, int] = {}    # page index -> device frame (PFN)

    # -- blocks are frames -------------------------------------------------------------

    def lookup(self, index: int) -> int | None:
        """The device frame of page `index`, or None for a page the file has no block for."""
        return self.frames.get(index)

    def _ensure_frames(self, first: int, end: int) -> None:
        """Allocate device frames for page indexes [first, end); ENOSPC, all or nothing."""
        want = [i for i in range(first, end) if i not in self.frames]
        self.fs.charge(self, want)
        got: list[int] = []
        try:
            for i in want:
                pfn = self.alloc.alloc_folio(0, Kind.FSDAX, movable=False, mapping=self.ino,
                                             index=i)
                self.mem.set_flag(pfn, PG.uptodate)
                self.frames[i] = pfn
                got.append(i)
        except OutOfMemory:
            for i in got:
                folio_put(self.mem, self.alloc, self.frames.pop(i))
            self.fs.uncharge(self, want)
            raise oserror(errno.ENOSPC, f"the dax device has no free blocks for "
                          f"{len(want)} pages: delete or truncate files") from None

    def _grow(self, old: int, new: int) -> None:
        self._ensure_frames(pages_for(old), pages_for(new))

    def get_folio(self, index: int) -> int:
        """The device frame of page `index` (allocated with the file); -EFAULT past EOF."""
        if index < 0 or index >= pages_for(self.size):
            return -errno.EFAULT
        return self.frames[index]

    def _page_for_read(self, index: int) -> int | None:
        return self.frames.get(index)

    def _page_for_write(self, index: int) -> int:
        self._ensure_frames(index, index + 1)
        return self.frames[index]

    # -- dirty tracking ----------------------------------------------------------------

    def page_mkwrite(self, head: int) -> int:
        """dax_iomap_fault() for a write: mark the entry dirty for the next fsync."""
        index = int(self.mem.index[head])
        if self.mem.mapping[head] != self.ino or self.frames.get(index) != head:
            return -errno.EAGAIN
        self.mem.set_flag(head, PG.dirty)
        return 0

    def writeback(self, wait: bool = True) -> int:
        """dax_writeback_mapping_range(): write-protect and clean dirty frames; no I/O."""
        mem = self.mem
        cleaned = 0
        for index in sorted(self.frames):
            pfn = self.frames[index]
            if mem.test(pfn, PG.dirty):
                mem.rmap.mkclean(pfn)
                mem.clear_flag(pfn, PG.dirty)
                cleaned += 1
        return cleaned

    def end_writeback(self) -> int:
        """No I/O is ever in flight on fs-dax: nothing to complete."""
        return 0

    # -- truncation --------------------------------------------------------------------

    def truncate(self, size: int) -> None:
        """A shrink runs ext4_break_layouts() first: EINTR while a frame is busy (pinned)."""
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < self.size:
            self._break_layouts()
        super().truncate(size)

    def _break_layouts(self) -> None:
        """ext4_break_layouts(): unmap the whole file, then every frame must be idle."""
        if not self.frames:
            return
        self.mem.rmap.unmap_mapping_range(self.ino, 0, max(self.frames))
        busy = [i for i, pfn in sorted(self.frames.items()) if self.mem.refcount[pfn] > 1]
        if busy:
            raise oserror(errno.EINTR, f"truncate would sleep in ext4_break_layouts() until "
                          f"page {busy[0]} of {self.name} is released (it has references "
                          "beyond the file's, e.g. a pin); release the pin, then truncate")

    def _zero_tail(self, size: int) -> None:
        index, poff = divmod(size, PAGE_SIZE)
        pfn = self.frames.get(index)
        if pfn is not None:
            self.mem.write(pfn, poff, bytes(PAGE_SIZE - poff))

    def _truncate_from(self, first: int, old_size: int) -> None:
        """Free the frames at index >= first; at eviction a busy frame is orphaned."""
        mem = self.mem
        gone = sorted(i for i in self.frames if i >= first)
        if gone:
            mem.rmap.unmap_mapping_range(self.ino, first, gone[-1])
        for i in gone:
            pfn = self.frames.pop(i)
            mem.clear_flag(pfn, PG.dirty)
            mem.mapping[pfn] = 0
            folio_put(mem, self.alloc, pfn)
        self.fs.uncharge(self, gone)


class Dax(FileSystem):
    """An fs-dax (ext4 -o dax) mount on a pmem device of `capacity` bytes."""

    name: ClassVar[str] = "dax"
    inode_class: ClassVar[type[Inode]] = DaxInode
