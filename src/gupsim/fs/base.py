"""Files, inodes and the page cache: what every file system of the model shares.

An `Inode` holds a file's state (i_size, the page cache, the blocks "on disk"); a
`File` is one open file description onto it (`struct file`: the inode plus the access
mode) and is what `mm/` maps: it implements `mm.file.MappableFile`. A `FileSystem`
names inodes and hands out inode numbers, which are also the `mapping` identifiers
stored in the page-state arrays of their page-cache folios.

The generic inode here is a page-cache file system; ext4, tmpfs, hugetlbfs and
secretmem specialise it through class attributes and a few hooks, fs-dax replaces the
page cache altogether (see `dax.py`).

Simplifications, on purpose:

* One thread: nothing waits. Where the kernel would sleep until I/O ends (stable pages
  in `page_mkwrite`, truncate, fsync), the model completes that I/O then and there.
  Writeback may be left in flight (`writeback(wait=False)`) to open the window in
  which a pin holder's DMA changes a folio that is being written out.
* Page contents past EOF in the last page are zeroed at truncate, as
  `truncate_inode_partial_folio()` / `block_truncate_page()` do.
* No readahead, no buffer heads, no inode eviction on memory pressure.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..constants import O_ACCMODE, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, PAGE_SIZE
from ..memory import PG, Allocator, Kind, MemMap, OutOfMemory
from .common import MAX_LFS_FILESIZE, check_offset, folio_put, oserror, pages_for

NAME_MAX = 255
O_EXCL = 0o200   # open(2), x86-64 value (not in constants.py yet)


class Inode:
    """A page-cache file: i_size, the page cache (folio index -> head PFN), blocks.

    Class attributes select the behaviour of each file system; subclasses override
    the `_hook` methods only where the kernel's file system really differs.
    """

    fs_name: ClassVar[str] = "generic"
    kind: ClassVar[Kind] = Kind.FILE
    needs_writenotify: ClassVar[bool] = False   # shared writable PTEs start read-only
    has_backing: ClassVar[bool] = False         # contents persist in `backing` via writeback
    read_populates_cache: ClassVar[bool] = False  # pread of an uncached page reads it in
    charge_on_cache: ClassVar[bool] = False     # a cached folio uses a block (tmpfs)
    movable: ClassVar[bool] = True              # GFP_HIGHUSER_MOVABLE page cache
    on_lru: ClassVar[bool] = True
    swapbacked: ClassVar[bool] = False
    unevictable: ClassVar[bool] = False
    rw_supported: ClassVar[bool] = True         # read()/write() file operations exist
    is_secretmem: ClassVar[bool] = False
    aops_name: ClassVar[str] = "generic_aops"   # for dump_page()'s "aops:" line

    def __init__(self, fs: FileSystem, name: str) -> None:
        self.fs = fs
        self.mem: MemMap = fs.mem
        self.alloc: Allocator = fs.alloc
        self.name = name
        self.ino = self.mem.new_mapping_id()
        self._size = 0
        self.cache: dict[int, int] = {}       # folio index (in pages) -> head PFN
        self.backing: dict[int, bytes] = {}   # page index -> bytes written back ("disk")
        self.blocks: set[int] = set()         # page indexes that own a block
        self.nlink = 1
        self.nr_open = 0

    # -- geometry ----------------------------------------------------------------------

    @property
    def folio_order(self) -> int:
        """Order of every folio of this file's page cache (0 here; hugetlbfs overrides)."""
        return 0

    @property
    def max_size(self) -> int:
        """The largest file the file system allows (s_maxbytes); beyond it EFBIG."""
        return MAX_LFS_FILESIZE

    @property
    def size(self) -> int:
        """i_size in bytes; change it with `truncate()`."""
        return self._size

    def folio_index(self, index: int) -> int:
        """The index of the first page of the folio that holds page `index`."""
        return index & ~((1 << self.folio_order) - 1)

    # -- the page cache ----------------------------------------------------------------

    def lookup(self, index: int) -> int | None:
        """filemap_get_folio() without creation: the head PFN, or None."""
        return self.cache.get(self.folio_index(index))

    def has_folio(self, index: int) -> bool:
        """Is page `index` cached now? A lookup that never creates the folio."""
        return self.lookup(index) is not None

    def _alloc_folio(self, fidx: int) -> int:
        """Allocate a folio for the cache; raises OutOfMemory."""
        return self.alloc.alloc_folio(self.folio_order, self.kind, movable=self.movable,
                                      mapping=self.ino, index=fidx)

    def _folio_flags(self) -> int:
        flags = int(PG.uptodate)
        if self.on_lru:
            flags |= PG.lru
        if self.swapbacked:
            flags |= PG.swapbacked
        if self.unevictable:
            flags |= PG.unevictable
        return flags

    def _add_to_cache(self, fidx: int) -> int:
        """Create the folio at `fidx`: allocate, fill from the backing store, insert.

        The cache holds folio_nr_pages() references, as __filemap_add_folio() takes.
        Raises OutOfMemory, or OSError(ENOSPC) when the file system is full.
        """
        nr = 1 << self.folio_order
        if self.charge_on_cache:
            self.fs.charge(self, range(fidx, fidx + nr))
        try:
            head = self._alloc_folio(fidx)
        except OutOfMemory:
            if self.charge_on_cache:
                self.fs.uncharge(self, range(fidx, fidx + nr))
            raise
        mem = self.mem
        mem.set_flag(head, self._folio_flags())
        mem.refcount[head] = nr
        for i in range(nr):
            data = self.backing.get(fidx + i)
            if data is not None:
                mem.write(head + i, 0, data)
        self.cache[fidx] = head
        return head

    def _cache_run(self, first: int, last: int) -> None:
        """Create the missing page-cache folios of pages [first, last) at once, before a
        write walks them page by page (a model shortcut: the same folios, flags, data
        and references as one _add_to_cache() per page, allocated in blocks).

        Only where that is exactly what the walk would do: order-0 folios from the base
        allocation, no block charged per cached page, and room for every block the
        write will charge, so the write cannot stop short of a folio made here; if
        memory runs out the first pages get theirs and the walk fails where it would.
        """
        cls = type(self)
        if (last - first < 2 or self.folio_order or self.charge_on_cache
                or cls._alloc_folio is not Inode._alloc_folio
                or cls._page_for_write is not Inode._page_for_write):
            return
        missing = [i for i in range(first, last) if i not in self.cache]
        cap = self.fs.capacity_pages
        if len(missing) < 2 or (cap is not None and self.fs.used_pages + sum(
                1 for i in range(first, last) if i not in self.blocks) > cap):
            return
        heads = self.alloc.alloc_bulk_order0(len(missing), self.kind, self.movable, self.ino,
                                             np.array(missing, dtype=np.int64))
        mem = self.mem
        mem.set_flag(heads, self._folio_flags())
        for fidx, head in zip(missing, heads.tolist(), strict=False):
            data = self.backing.get(fidx)
            if data is not None:
                mem.write(head, 0, data)
            self.cache[fidx] = head

    def migrate_folio(self, old_head: int, new_head: int) -> bool:
        """The address_space migrate_folio step: point the cache entry at the new folio.

        Migration copies a cached folio elsewhere and only the inode knows where its
        cache keeps it; the swap happens only if the entry still holds `old_head`
        (truncated or replaced meanwhile: refuse, and migration fails for this folio).
        """
        fidx = int(self.mem.index[old_head])
        if self.cache.get(fidx) != old_head:
            return False
        self.cache[fidx] = new_head
        return True

    def find_or_create(self, index: int) -> int:
        """__filemap_get_folio(FGP_CREAT) ignoring EOF: head PFN; raises as _add_to_cache."""
        fidx = self.folio_index(index)
        head = self.cache.get(fidx)
        if head is None:
            head = self._add_to_cache(fidx)
        return head

    def get_folio(self, index: int) -> int:
        """The fault path's lookup: head PFN, -EFAULT past EOF, -ENOMEM, -ENOSPC."""
        if index < 0 or index >= pages_for(self._size):
            return -errno.EFAULT
        try:
            return self.find_or_create(index)
        except OutOfMemory:
            return -errno.ENOMEM
        except OSError as e:
            return -(e.errno or errno.EIO)

    # -- dirty state and writeback -----------------------------------------------------

    def _wait_writeback(self, head: int) -> None:
        """folio_wait_writeback(): nothing can wait in the model, so finish the I/O now."""
        if self.mem.test(head, PG.writeback):
            self._end_writeback(head)

    def _end_writeback(self, head: int) -> None:
        """I/O completion (folio_end_writeback): the device read the folio's bytes now."""
        mem = self.mem
        fidx = int(mem.index[head])
        nr = mem.nr_pages_of(head)
        if self.has_backing and mem.mapping[head] == self.ino:
            eof_pages = pages_for(self._size)
            for i in range(nr):
                if fidx + i < eof_pages:
                    self.backing[fidx + i] = mem.read(head + i, 0, PAGE_SIZE)
        mem.clear_flag(head, PG.writeback)
        mem.vmstat["nr_written"] += nr

    def writeback(self, wait: bool = True) -> int:
        """Write every dirty folio back; return how many folios were submitted.

        Per folio: lock, folio_mkclean() (write-protect every PTE, so the next CPU write
        faults into page_mkwrite and redirties), clear dirty, set writeback, I/O, end
        writeback, unlock. Maybe-pinned folios are written like any other and nothing
        warns: core writeback does not consult folio_maybe_dma_pinned() (spec 6.6), so
        a pin holder's later DMA leaves the folio clean but changed. With `wait=False`
        the I/O stays in flight (PG_writeback set) until `end_writeback()`, and the
        bytes reaching the disk are those the folio holds at completion. A folio that
        is already locked by someone else is skipped (left dirty) rather than waited on.
        """
        if not self.has_backing:
            return 0
        mem = self.mem
        submitted = 0
        for fidx in sorted(self.cache):
            head = self.cache[fidx]
            if mem.test(head, PG.writeback):
                if not wait:
                    continue        # WB_SYNC_NONE skips folios already under I/O
                self._end_writeback(head)
            if not mem.test(head, PG.dirty) or mem.test(head, PG.locked):
                continue
            mem.set_flag(head, PG.locked)
            mem.rmap.mkclean(head)
            mem.clear_flag(head, PG.dirty)
            mem.set_flag(head, PG.writeback)
            if wait:
                self._end_writeback(head)
            mem.clear_flag(head, PG.locked)
            submitted += 1
        return submitted

    def end_writeback(self) -> int:
        """Complete all writeback in flight; return how many folios completed."""
        done = 0
        for head in list(self.cache.values()):
            if self.mem.test(head, PG.writeback):
                self._end_writeback(head)
                done += 1
        return done

    def mark_dirty(self, head: int) -> None:
        """folio_mark_dirty() for a folio of this file."""
        self.mem.set_flag(head, PG.dirty)

    def page_mkwrite(self, head: int) -> int:
        """A shared mapping is about to write the folio: 0, or -errno for SIGBUS.

        -EAGAIN: the folio was truncated away meanwhile (the kernel answers
        VM_FAULT_NOPAGE and the fault is retried, finding a new folio or SIGBUS).
        """
        mem = self.mem
        fidx = int(mem.index[head])
        if mem.mapping[head] != self.ino or self.cache.get(fidx) != head:
            return -errno.EAGAIN
        if fidx >= pages_for(self._size):
            return -errno.EAGAIN
        rc = self._mkwrite_prepare(head, fidx)
        if rc:
            return rc
        self.mark_dirty(head)
        return 0

    def _mkwrite_prepare(self, head: int, fidx: int) -> int:
        """File-system work before the folio is dirtied (block allocation, stable pages)."""
        return 0

    # -- read and write ----------------------------------------------------------------

    def _page_for_read(self, index: int) -> int | None:
        """The PFN holding page `index` for a read, or None to read zeros (a hole)."""
        head = self.lookup(index)
        if head is None:
            if not self.read_populates_cache:
                return None
            try:
                head = self.find_or_create(index)
            except OutOfMemory:
                raise oserror(errno.ENOMEM, "out of memory reading the file into the page "
                              "cache: free memory or make the machine larger") from None
        return head + (index - self.folio_index(index))

    def _page_for_write(self, index: int) -> int:
        try:
            head = self.find_or_create(index)
        except OutOfMemory:
            raise oserror(errno.ENOMEM, "out of memory allocating page cache for the "
                          "write: free memory or make the machine larger") from None
        self._wait_writeback(head)    # stable pages: never change a folio under I/O
        self._charge_write(index)
        self.mark_dirty(head)
        return head + (index - self.folio_index(index))

    def _charge_write(self, index: int) -> None:
        """Block allocation at write time (delayed allocation reserves it here)."""

    def pread(self, off: int, n: int) -> bytes:
        """read() through the page cache: up to `n` bytes from `off`, short at EOF."""
        check_offset(off)
        if n < 0:
            raise oserror(errno.EINVAL, f"count {n} is negative")
        if not self.rw_supported:
            raise oserror(errno.EINVAL, f"{self.fs_name} files cannot be read with read(); "
                          "mmap them instead")
        end = min(off + n, self._size)
        out = bytearray()
        pos = off
        while pos < end:
            index, poff = divmod(pos, PAGE_SIZE)
            chunk = min(PAGE_SIZE - poff, end - pos)
            pfn = self._page_for_read(index)
            out += bytes(chunk) if pfn is None else self.mem.read(pfn, poff, chunk)
            pos += chunk
        return bytes(out)

    def pwrite(self, off: int, data: bytes) -> int:
        """write() through the page cache, dirtying folios; bytes written (short on late errors)."""
        check_offset(off)
        if not self.rw_supported:
            raise oserror(errno.EINVAL, f"{self.fs_name} files cannot be written with write(); "
                          "mmap them instead")
        data = bytes(data)
        if not data:
            return 0
        if off >= self.max_size:
            raise oserror(errno.EFBIG, f"offset {off} is past the largest {self.fs_name} file "
                          f"({self.max_size} bytes)")
        data = data[:self.max_size - off]
        self._cache_run(off // PAGE_SIZE, (off + len(data) - 1) // PAGE_SIZE + 1)
        pos, done = off, 0
        while done < len(data):
            index, poff = divmod(pos, PAGE_SIZE)
            chunk = min(PAGE_SIZE - poff, len(data) - done)
            try:
                pfn = self._page_for_write(index)
            except OSError:
                if done:
                    break   # a short write, as write(2) reports partial progress
                raise
            self.mem.write(pfn, poff, data[done:done + chunk])
            pos += chunk
            done += chunk
            self._size = max(self._size, pos)
        return done

    # -- size changes ------------------------------------------------------------------

    def _check_new_size(self, size: int) -> None:
        """File-system specific refusals of a size change (raise OSError)."""

    def truncate(self, size: int) -> None:
        """Set i_size; on shrink drop the page cache past EOF (truncate_pagecache()).

        Removed folios are unmapped from every process (unmap_mapping_range), lose
        their `mapping` and the cache's references; one still referenced elsewhere, for
        instance pinned, stays allocated and orphaned: DMA continues into memory the
        file no longer has (spec 6.4).
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size < 0:
            raise oserror(errno.EINVAL, f"size {size} is negative")
        if size > self.max_size:
            raise oserror(errno.EFBIG, f"size {size} is larger than the largest "
                          f"{self.fs_name} file ({self.max_size} bytes)")
        self._check_new_size(size)
        old = self._size
        if size >= old:
            self._grow(old, size)
            self._size = size
            return
        self._size = size
        if size % PAGE_SIZE:
            self._zero_tail(size)
        self._truncate_from(pages_for(size), old)

    def _grow(self, old: int, new: int) -> None:
        """Extend the file (sparse: no blocks or folios until written or faulted)."""

    def _zero_tail(self, size: int) -> None:
        index, poff = divmod(size, PAGE_SIZE)
        head = self.lookup(index)
        if head is not None:
            self.mem.write(head + index - self.folio_index(index), poff, bytes(PAGE_SIZE - poff))
        if index in self.backing:
            self.backing[index] = self.backing[index][:poff] + bytes(PAGE_SIZE - poff)

    def _truncate_from(self, first: int, old_size: int) -> None:
        """Drop folios, backing pages and blocks at page index >= `first`."""
        mem = self.mem
        last = pages_for(old_size) - 1
        if self.cache:
            top = max(self.cache)
            last = max(last, top + (1 << self.folio_order) - 1)
        if last >= first:
            mem.rmap.unmap_mapping_range(self.ino, first, last)
        for fidx in sorted(k for k in self.cache if k >= first):
            self._delete_from_cache(fidx)
        for index in [i for i in self.backing if i >= first]:
            del self.backing[index]
        gone = [i for i in self.blocks if i >= first]
        if gone:
            self.fs.uncharge(self, gone)

    def _delete_from_cache(self, fidx: int) -> None:
        """filemap_remove_folio() then the cache's folio_put(): mapping becomes NULL."""
        mem = self.mem
        head = self.cache.pop(fidx)
        self._wait_writeback(head)
        mem.clear_flag(head, PG.dirty)          # folio_cancel_dirty()
        mem.mapping[head] = 0
        folio_put(mem, self.alloc, head, mem.nr_pages_of(head))

    def invalidate_mapping_pages(self) -> int:
        """Drop clean, idle folios from the cache (drop_caches); return how many.

        A folio is kept if it is dirty, under writeback, locked, or has references
        beyond the cache's own (mapped, pinned): mapping_evict_folio() refuses those.
        """
        mem = self.mem
        dropped = 0
        for fidx in sorted(self.cache):
            head = self.cache[fidx]
            busy = int(mem.flags[head]) & (PG.dirty | PG.writeback | PG.locked)
            if busy or int(mem.refcount[head]) != mem.nr_pages_of(head):
                continue
            if not self.has_backing:
                continue        # shmem/hugetlbfs contents live only in the cache
            self._delete_from_cache(fidx)
            dropped += 1
        return dropped

    def evict(self) -> None:
        """The last link and the last open file are gone: free everything (iput_final)."""
        self._truncate_from(0, self._size)
        self._size = 0
        self.fs.forget(self)


class File:
    """An open file (`struct file`): an inode plus its access mode. mm/ maps these.

    Implements `gupsim.mm.file.MappableFile`; the I/O methods raise OSError with the
    errno the system call would return.
    """

    def __init__(self, inode: Inode, readable: bool = True, writable: bool = True) -> None:
        self.inode = inode
        self.readable = readable
        self.writable = writable
        self.closed = False        # the descriptor was closed (I/O through it is EBADF)
        self.f_count = 1           # references: the descriptor, plus one per VMA mapping it
        inode.nr_open += 1

    def __repr__(self) -> str:
        mode = ("r" if self.readable else "") + ("w" if self.writable else "")
        return (f"<File {self.inode.fs_name}:{self.inode.name} ino={self.inode.ino} "
                f"size={self.size} {mode}>")

    # -- MappableFile ------------------------------------------------------------------

    @property
    def inode_id(self) -> int:
        """The inode's number, which its page-cache folios hold in `mapping`."""
        return self.inode.ino

    @property
    def kind(self) -> Kind:
        """The Kind its page-cache folios get (FILE, SHMEM, HUGETLBFS, FSDAX, SECRETMEM)."""
        return self.inode.kind

    @property
    def fs_name(self) -> str:
        """The name of the file system the inode lives on: ext4, tmpfs, hugetlbfs, ..."""
        return self.inode.fs_name

    @property
    def folio_order(self) -> int:
        """Order of the inode's page-cache folios (hugetlbfs: 9 or 18; else 0)."""
        return self.inode.folio_order

    @property
    def needs_writenotify(self) -> bool:
        """Shared writable mappings start read-only so that writes reach page_mkwrite."""
        return self.inode.needs_writenotify

    @property
    def is_secretmem(self) -> bool:
        """A memfd_secret() file: GUP and device access must refuse its pages."""
        return self.inode.is_secretmem

    @property
    def size(self) -> int:
        """i_size in bytes."""
        return self.inode.size

    @property
    def name(self) -> str:
        """The file's name on its file system ("memfd:NAME" for a memfd)."""
        return self.inode.name

    def get_folio(self, index: int) -> int:
        """The fault path's page-cache lookup: head PFN, or -EFAULT past EOF, -ENOMEM, -ENOSPC."""
        return self.inode.get_folio(index)

    def has_folio(self, index: int) -> bool:
        """Is page `index` cached now? A lookup that never creates the folio."""
        return self.inode.has_folio(index)

    def page_mkwrite(self, head: int) -> int:
        """vm_ops->page_mkwrite(): a shared mapping is about to write; 0 or -errno (SIGBUS)."""
        return self.inode.page_mkwrite(head)

    # -- the page cache, for inspection ------------------------------------------------

    @property
    def page_cache(self) -> Mapping[int, int]:
        """Read-only view: folio index (in pages) -> head PFN."""
        return MappingProxyType(self.inode.cache)

    @property
    def nrpages(self) -> int:
        """Pages in the page cache (mapping->nrpages)."""
        return sum(self.inode.mem.nr_pages_of(h) for h in self.inode.cache.values())

    @property
    def backing(self) -> Mapping[int, bytes]:
        """What is on disk: page index -> bytes, for pages ever written back."""
        return MappingProxyType(self.inode.backing)

    # -- system calls ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise oserror(errno.EBADF, "the file is closed: open it again")

    def pread(self, off: int, n: int) -> bytes:
        """pread(2): EBADF unless open for reading; see Inode.pread."""
        self._check_open()
        if not self.readable:
            raise oserror(errno.EBADF, "file not open for reading: open it O_RDONLY or O_RDWR")
        return self.inode.pread(off, n)

    def pwrite(self, off: int, data: bytes) -> int:
        """pwrite(2): EBADF unless open for writing; see Inode.pwrite."""
        self._check_open()
        if not self.writable:
            raise oserror(errno.EBADF, "file not open for writing: open it O_WRONLY or O_RDWR")
        return self.inode.pwrite(off, data)

    def truncate(self, size: int) -> None:
        """ftruncate(2): shrink or grow to `size` bytes."""
        self._check_open()
        if not self.writable:
            raise oserror(errno.EINVAL, "ftruncate needs a file open for writing")
        self.inode.truncate(size)

    ftruncate = truncate

    def fsync(self) -> int:
        """Write back this file's dirty folios and wait for them; 0 as fsync(2)."""
        self._check_open()
        self.inode.writeback(wait=True)
        return 0

    def writeback(self, wait: bool = True) -> int:
        """Writeback of this file (see Inode.writeback); returns folios submitted."""
        return self.inode.writeback(wait=wait)

    def end_writeback(self) -> int:
        """Complete the writeback left in flight by `writeback(wait=False)`; folios completed."""
        return self.inode.end_writeback()

    def mark_dirty(self, head: int) -> None:
        """folio_mark_dirty() (what unpin_user_pages_dirty_lock() does for a file folio)."""
        self.inode.mark_dirty(head)

    def drop_caches(self) -> int:
        """echo 1 > drop_caches for this file: clean idle folios leave the page cache."""
        return self.inode.invalidate_mapping_pages()

    def get_file(self) -> File:
        """get_file(): take a reference, as mmap() does for vma->vm_file (and fork, split)."""
        if self.f_count <= 0:
            raise oserror(errno.EBADF, "get_file() on a file whose last reference is gone")
        self.f_count += 1
        return self

    def fput(self) -> None:
        """Drop a reference; the last one releases the file, and an unlinked or unnamed
        inode (memfd, MAP_SHARED|MAP_ANONYMOUS) with no open file left frees its pages."""
        if self.f_count <= 0:
            raise oserror(errno.EBADF, "fput() of a file with no references left")
        self.f_count -= 1
        if self.f_count:
            return
        inode = self.inode
        inode.nr_open -= 1
        if inode.nr_open == 0 and inode.nlink == 0:
            inode.evict()

    def close(self) -> None:
        """close(2): drop the descriptor's reference (mappings keep theirs)."""
        if self.closed:
            return
        self.closed = True
        self.fput()


class FileSystem:
    """One mounted file system: a namespace of inodes, block accounting, inode numbers."""

    name: ClassVar[str] = "generic"
    inode_class: ClassVar[type[Inode]] = Inode

    def __init__(self, mem: MemMap, alloc: Allocator, capacity: int | None = None) -> None:
        if alloc.mem is not mem:
            raise ValueError("the allocator belongs to another MemMap: pass the machine's pair")
        self.mem = mem
        self.alloc = alloc
        self.capacity_pages = None if capacity is None else capacity // PAGE_SIZE
        self.files: dict[str, Inode] = {}
        self.inodes: dict[int, Inode] = {}
        self.used_pages = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} files={len(self.files)}>"

    # -- blocks ------------------------------------------------------------------------

    def charge(self, inode: Inode, indexes: range | list[int]) -> None:
        """Give `inode` a block for each page index that has none; ENOSPC when full."""
        new = [i for i in indexes if i not in inode.blocks]
        if self.capacity_pages is not None and self.used_pages + len(new) > self.capacity_pages:
            raise oserror(errno.ENOSPC, f"no space left on {self.name} "
                          f"({self.capacity_pages} pages): delete or truncate files")
        inode.blocks.update(new)
        self.used_pages += len(new)

    def uncharge(self, inode: Inode, indexes: range | list[int]) -> None:
        """Give back the blocks of those page indexes that `inode` holds (truncate, evict)."""
        gone = [i for i in indexes if i in inode.blocks]
        inode.blocks.difference_update(gone)
        self.used_pages -= len(gone)

    # -- namespace ---------------------------------------------------------------------

    def _new_inode(self, name: str) -> Inode:
        inode = self.inode_class(self, name)
        self.inodes[inode.ino] = inode
        return inode

    def forget(self, inode: Inode) -> None:
        """Drop an evicted inode from the inode table (its number no longer resolves)."""
        self.inodes.pop(inode.ino, None)

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"file name must be a str, not {type(name).__name__}")
        if not name:
            raise oserror(errno.ENOENT, "empty file name: give the file a name")
        if "/" in name:
            raise oserror(errno.EINVAL, f"{name!r}: file systems here are flat, use a name "
                          "without '/'")
        if len(name.encode()) > NAME_MAX:
            raise oserror(errno.ENAMETOOLONG, f"file name longer than {NAME_MAX} bytes")

    def create(self, name: str, size: int = 0) -> File:
        """open(name, O_CREAT|O_EXCL|O_RDWR) then ftruncate(size): a new file, open R/W."""
        self._check_name(name)
        if name in self.files:
            raise oserror(errno.EEXIST, f"{self.name}:{name} exists: open() it or unlink() "
                          "it first")
        inode = self._new_inode(name)
        f = File(inode)
        try:
            f.truncate(size)
        except BaseException:
            f.close()
            inode.nlink = 0
            inode.evict()
            raise
        self.files[name] = inode
        return f

    def open(self, name: str, flags: int = O_RDWR) -> File:
        """open(2) of an existing file (O_CREAT creates it, O_TRUNC empties it)."""
        self._check_name(name)
        acc = flags & O_ACCMODE
        if acc not in (O_RDONLY, O_WRONLY, O_RDWR):
            raise oserror(errno.EINVAL, f"access mode {acc:#o} is not O_RDONLY, O_WRONLY or "
                          "O_RDWR")
        inode = self.files.get(name)
        if inode is None:
            if not flags & O_CREAT:
                raise oserror(errno.ENOENT, f"{self.name}:{name} does not exist: create() it "
                              "or pass O_CREAT")
            return self.create(name, 0) if acc == O_RDWR else self._open_new(name, acc)
        if flags & O_CREAT and flags & O_EXCL:
            raise oserror(errno.EEXIST, f"{self.name}:{name} exists and O_EXCL was given")
        f = File(inode, readable=acc != O_WRONLY, writable=acc != O_RDONLY)
        if flags & O_TRUNC and f.writable:
            inode.truncate(0)
        return f

    def _open_new(self, name: str, acc: int) -> File:
        f = self.create(name, 0)
        f.readable, f.writable = acc != O_WRONLY, acc != O_RDONLY
        return f

    def unlink(self, name: str) -> None:
        """unlink(2): remove the name; the pages go with the last close."""
        self._check_name(name)
        inode = self.files.pop(name, None)
        if inode is None:
            raise oserror(errno.ENOENT, f"{self.name}:{name} does not exist")
        inode.nlink = 0
        if inode.nr_open == 0:
            inode.evict()

    def anon_file(self, name: str, size: int = 0) -> File:
        """An open file with no name in the namespace (memfd, shmem_zero_setup)."""
        inode = self._new_inode(name)
        inode.nlink = 0
        f = File(inode)
        try:
            f.truncate(size)
        except BaseException:
            f.close()
            raise
        return f

    def find_inode(self, mapping: int) -> Inode | None:
        """The live inode whose id is `mapping` (a folio's `mapping` field), or None."""
        return self.inodes.get(mapping)

    def describe_mapping(self, mapping: int) -> tuple[str, int, str] | None:
        """(aops name, inode number, dentry name) for dump_page(), or None if not ours."""
        inode = self.inodes.get(mapping)
        if inode is None:
            return None
        return inode.aops_name, inode.ino, inode.name
