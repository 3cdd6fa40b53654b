"""File systems: the page cache, ext4-like, tmpfs/shmem, hugetlbfs, fs-dax, secretmem.

Files here implement `gupsim.mm.file.MappableFile`, so `mm/` can map them without
importing this package. See base.py for the page cache and its simplifications.
"""

from .base import File, FileSystem, Inode
from .common import folio_put
from .dax import Dax, DaxInode
from .ext4 import Ext4, Ext4Inode
from .hugetlbfs import Hugetlbfs, HugetlbInode
from .registry import (
    MFD_EXEC,
    MFD_NOEXEC_SEAL,
    FileSystems,
    filesystems,
    memfd_create,
)
from .secretmem import Secretmem, SecretmemInode, folio_is_secretmem
from .tmpfs import ShmemInode, Tmpfs

__all__ = ["File", "FileSystem", "Inode", "folio_put", "Dax", "DaxInode", "Ext4",
           "Ext4Inode", "HugetlbInode", "Hugetlbfs", "MFD_EXEC", "MFD_NOEXEC_SEAL",
           "FileSystems", "filesystems", "memfd_create", "Secretmem", "SecretmemInode",
           "folio_is_secretmem", "ShmemInode", "Tmpfs"]
