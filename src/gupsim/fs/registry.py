"""The machine's file systems by name, and the system calls that make unnamed files.

`filesystems(mem, alloc)` mounts one of each kind the model knows; memfd_create() and
memfd_secret() live here because they choose among them (MFD_HUGETLB picks a
hugetlbfs mount of the requested huge page size).
"""

from __future__ import annotations

import errno

import numpy as np

from ..constants import MFD_ALLOW_SEALING, MFD_CLOEXEC, MFD_HUGETLB, PMD_ORDER, PUD_ORDER
from ..memory import Allocator, MemMap
from .base import File, FileSystem
from .common import oserror
from .dax import Dax
from .ext4 import Ext4
from .hugetlbfs import Hugetlbfs
from .secretmem import Secretmem
from .tmpfs import Tmpfs

MFD_NOEXEC_SEAL = 0x8     # [since 6.3]
MFD_EXEC = 0x10           # [since 6.3]
MFD_ALL_FLAGS = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC
MFD_HUGE_SHIFT = 26
MFD_HUGE_MASK = 0x3F
MFD_NAME_MAX_LEN = 255 - len("memfd:")   # 249
_HUGE_LOG_TO_ORDER = {21: PMD_ORDER, 30: PUD_ORDER}


class FileSystems(dict[str, FileSystem]):
    """name -> FileSystem for one machine, plus memfd_create() and memfd_secret()."""

    def __init__(self, mem: MemMap, alloc: Allocator, huge_order: int = PMD_ORDER) -> None:
        super().__init__()
        self.mem = mem
        self.alloc = alloc
        self._hugetlbfs = Hugetlbfs(mem, alloc, huge_order=huge_order)
        self._secretmem = Secretmem(mem, alloc)
        self["ext4"] = Ext4(mem, alloc)
        self["tmpfs"] = Tmpfs(mem, alloc)
        self["hugetlbfs"] = self._hugetlbfs
        self["dax"] = Dax(mem, alloc)
        self["secretmem"] = self._secretmem
        self._hugetlb_mounts: dict[int, Hugetlbfs] = {huge_order: self._hugetlbfs}
        self._shm = Tmpfs(mem, alloc)   # the internal shm_mnt: memfds, MAP_SHARED|ANON

    def hugetlbfs_for(self, order: int) -> Hugetlbfs:
        """The (internal) hugetlbfs mount for huge pages of `order`, as hugetlb_file_setup."""
        mnt = self._hugetlb_mounts.get(order)
        if mnt is None:
            mnt = self._hugetlb_mounts[order] = Hugetlbfs(self.mem, self.alloc, huge_order=order)
        return mnt

    def memfd_create(self, name: str, flags: int = 0) -> File:
        """memfd_create(2): an unnamed tmpfs file, or hugetlbfs with MFD_HUGETLB; size 0."""
        if not isinstance(name, str):
            raise TypeError(f"memfd name must be a str, not {type(name).__name__}")
        allowed = MFD_ALL_FLAGS
        if flags & MFD_HUGETLB:
            allowed |= MFD_HUGE_MASK << MFD_HUGE_SHIFT
        if flags & ~allowed:
            raise oserror(errno.EINVAL, f"memfd_create flags {flags:#x} has unknown bits (huge "
                          "page sizes need MFD_HUGETLB)")
        if flags & MFD_EXEC and flags & MFD_NOEXEC_SEAL:
            raise oserror(errno.EINVAL, "MFD_EXEC and MFD_NOEXEC_SEAL exclude each other")
        if len(name.encode()) > MFD_NAME_MAX_LEN:
            raise oserror(errno.EINVAL, f"memfd name longer than {MFD_NAME_MAX_LEN} bytes")
        if flags & MFD_HUGETLB:
            log = (flags >> MFD_HUGE_SHIFT) & MFD_HUGE_MASK
            if log == 0:
                order = self._hugetlbfs.huge_order
            elif log in _HUGE_LOG_TO_ORDER:
                order = _HUGE_LOG_TO_ORDER[log]
            else:
                raise oserror(errno.ENODEV, f"no hugetlb pool of 2**{log}-byte pages: use "
                              "MFD_HUGE_2MB or MFD_HUGE_1GB")
            return self.hugetlbfs_for(order).anon_file("memfd:" + name, 0)
        return self._shm.shmem_file_setup("memfd:" + name, 0)

    def memfd_secret(self, flags: int = 0) -> File:
        """memfd_secret(2): see secretmem.py."""
        return self._secretmem.memfd_secret(flags)

    def shmem_zero_setup(self, size: int) -> File:
        """The shmem file behind a MAP_SHARED|MAP_ANONYMOUS mapping of `size` bytes."""
        return self._shm.shmem_zero_setup(size)

    def _mounts(self) -> list[FileSystem]:
        """Every mount, the internal ones (hugetlbfs per size, shm_mnt) included."""
        return [*self.values(), *self._hugetlb_mounts.values(), self._shm]

    def page_cache_folios(self) -> dict[int, int]:
        """Head PFN -> references the page cache holds on it (folio_nr_pages(), as
        __filemap_add_folio() takes), over every mount: for the refcount invariant."""
        heads = [head for fs in self._mounts() for inode in fs.inodes.values()
                 for head in inode.cache.values()]
        if not heads:
            return {}
        # folio_nr_pages() of all at once: the invariants ask after every fuzz step
        orders = self.mem.order[np.array(heads, dtype=np.int64)].astype(np.int64)
        return dict(zip(heads, np.left_shift(1, orders).tolist(), strict=True))

    def describe_mapping(self, mapping: int) -> tuple[str, int, str] | None:
        """(aops, ino, name) of the inode whose id is `mapping`, for dump_page()."""
        for fs in self._mounts():
            found = fs.describe_mapping(mapping)
            if found is not None:
                return found
        return None

    def migrate_folio(self, old_head: int, new_head: int) -> bool:
        """Migration's page-cache hook for the whole machine: the owning inode's
        migrate_folio(), found by the folio's mapping id, so page cache that no process
        maps (and no pinned file names) can move too. False if no live inode owns it."""
        mapping = int(self.mem.mapping[old_head])
        for fs in self._mounts():
            inode = fs.find_inode(mapping)
            if inode is not None:
                return inode.migrate_folio(old_head, new_head)
        return False


def filesystems(mem: MemMap, alloc: Allocator, huge_order: int = PMD_ORDER) -> FileSystems:
    """Mount ext4, tmpfs, hugetlbfs (default huge page order `huge_order`), dax, secretmem."""
    return FileSystems(mem, alloc, huge_order)


def memfd_create(fss: FileSystems, name: str, flags: int = 0) -> File:
    """memfd_create(2) on the machine whose file systems are `fss`."""
    return fss.memfd_create(name, flags)
