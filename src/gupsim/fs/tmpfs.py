"""tmpfs / shmem: a page-cache file system with no disk behind it.

Contents live only in the page cache (swap is not modelled), so there is no writeback
and no write-notify: shared writable mappings map the folio writable at once. The same
file system backs memfd_create() and MAP_SHARED|MAP_ANONYMOUS (shmem_zero_setup()).
Folios are swap-backed and count against the mount's size (default: half of RAM, as
tmpfs's default `size=50%`); a fault that cannot get a block returns -ENOSPC, which
the kernel turns into SIGBUS. Reading a hole returns zeros without allocating.
"""

from __future__ import annotations

from typing import ClassVar

from ..constants import PAGE_SIZE
from ..memory import Allocator, Kind, MemMap
from .base import File, FileSystem, Inode


class ShmemInode(Inode):
    """A tmpfs/shmem file: swap-backed page cache, a block charged per cached page."""

    fs_name: ClassVar[str] = "tmpfs"
    kind: ClassVar[Kind] = Kind.SHMEM
    charge_on_cache: ClassVar[bool] = True
    swapbacked: ClassVar[bool] = True
    aops_name: ClassVar[str] = "shmem_aops"


class Tmpfs(FileSystem):
    """A tmpfs mount of `capacity` bytes (default: half of the machine's memory)."""

    name: ClassVar[str] = "tmpfs"
    inode_class: ClassVar[type[Inode]] = ShmemInode

    def __init__(self, mem: MemMap, alloc: Allocator, capacity: int | None = None) -> None:
        if capacity is None:
            capacity = mem.nr_pages // 2 * PAGE_SIZE
        super().__init__(mem, alloc, capacity)

    def shmem_zero_setup(self, size: int) -> File:
        """The unnamed file behind a MAP_SHARED|MAP_ANONYMOUS mapping ("dev/zero")."""
        return self.anon_file("dev/zero", size)

    def shmem_file_setup(self, name: str, size: int = 0) -> File:
        """An unnamed tmpfs file, as memfd_create() gets from shmem_file_setup()."""
        return self.anon_file(name, size)
