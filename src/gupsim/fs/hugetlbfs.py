"""hugetlbfs: files whose page cache holds huge folios from the hugetlb pool.

Every folio has order 9 (2 MiB) or 18 (1 GiB), taken from the pool the administrator
reserved (`Allocator.reserve_hugetlb`, vm.nr_hugepages); an empty pool makes
`get_folio()` answer -ENOMEM. Sizes are in whole huge pages: ftruncate() to any other
size is EINVAL, as hugetlbfs_setattr() answers. hugetlbfs has read() but no write():
pwrite() is EINVAL, data gets in through mmap. There is no writeback.

Simplification: the kernel reserves huge pages at mmap() time (hugetlb_reserve_pages,
mmap fails with ENOMEM) and a fault beyond the reservation gets SIGBUS; the model has
no reservations and reports exhaustion at fault time. `create()` rounds the size up to
the huge page size for convenience (a model-only call).
"""

from __future__ import annotations

import errno
from typing import ClassVar

from ..constants import PAGE_SIZE, PMD_ORDER, PUD_ORDER
from ..memory import Allocator, Kind, MemMap
from .base import File, FileSystem, Inode
from .common import oserror


class HugetlbInode(Inode):
    """A hugetlbfs file: its folios are the mount's huge page size, from the hugetlb pool."""

    fs_name: ClassVar[str] = "hugetlbfs"
    kind: ClassVar[Kind] = Kind.HUGETLBFS
    movable: ClassVar[bool] = False
    on_lru: ClassVar[bool] = False     # hugetlb folios are never on the LRU
    aops_name: ClassVar[str] = "hugetlbfs_aops"
    fs: Hugetlbfs

    def __init__(self, fs: FileSystem, name: str) -> None:
        if not isinstance(fs, Hugetlbfs):
            raise TypeError(f"a hugetlbfs inode needs a Hugetlbfs mount, not {fs!r}")
        super().__init__(fs, name)

    @property
    def folio_order(self) -> int:
        """The mount's huge page order: 9 (2 MiB) or 18 (1 GiB)."""
        return self.fs.huge_order

    def _alloc_folio(self, fidx: int) -> int:
        return self.alloc.alloc_hugetlb_folio(self.folio_order, self.kind, self.ino, fidx)

    def _check_new_size(self, size: int) -> None:
        hsize = PAGE_SIZE << self.folio_order
        if size % hsize:
            raise oserror(errno.EINVAL, f"hugetlbfs sizes are multiples of the huge page "
                          f"size ({hsize} bytes), not {size}")

    def pwrite(self, off: int, data: bytes) -> int:
        """EINVAL: hugetlbfs has no write() file operation."""
        raise oserror(errno.EINVAL, "hugetlbfs has no write(): mmap the file and write "
                      "through the mapping")


class Hugetlbfs(FileSystem):
    """A hugetlbfs mount with `pagesize` 2 MiB (huge_order=9) or 1 GiB (huge_order=18)."""

    name: ClassVar[str] = "hugetlbfs"
    inode_class: ClassVar[type[Inode]] = HugetlbInode

    def __init__(self, mem: MemMap, alloc: Allocator, huge_order: int = PMD_ORDER,
                 capacity: int | None = None) -> None:
        if huge_order not in (PMD_ORDER, PUD_ORDER):
            raise ValueError(f"huge_order must be {PMD_ORDER} (2 MiB) or {PUD_ORDER} (1 GiB), "
                             f"not {huge_order}")
        super().__init__(mem, alloc, capacity)
        self.huge_order = huge_order

    @property
    def huge_page_size(self) -> int:
        """The mount's `pagesize` option, in bytes."""
        return PAGE_SIZE << self.huge_order

    def round_size(self, size: int) -> int:
        """`size` rounded up to whole huge pages, the only sizes hugetlbfs files can have."""
        hs = self.huge_page_size
        return -(-size // hs) * hs if size > 0 else size

    def create(self, name: str, size: int = 0) -> File:
        """A new file of `size` bytes rounded up to whole huge pages."""
        return super().create(name, self.round_size(size))

    def anon_file(self, name: str, size: int = 0) -> File:
        """An unnamed file of `size` bytes rounded up to whole huge pages (MFD_HUGETLB)."""
        return super().anon_file(name, self.round_size(size))
