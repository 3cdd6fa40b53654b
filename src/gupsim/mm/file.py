"""What the address-space layer needs from a file it maps (the kernel's file + vm_ops).

`fs/` implements this protocol; `mm/` only calls it, so neither imports the other.
"""

from __future__ import annotations

from typing import Protocol

from ..memory import Kind


class MappableFile(Protocol):
    """A file (or memfd) that `mmap()` can map: its page cache seen from the fault path."""

    # Read-only for mm/: properties here, so that a file system may compute them.

    @property
    def inode_id(self) -> int:
        """Stored in folio->mapping of its page-cache folios."""
        ...

    @property
    def kind(self) -> Kind:
        """FILE (ext4-like), SHMEM, HUGETLBFS, FSDAX or SECRETMEM."""
        ...

    @property
    def fs_name(self) -> str:
        """The file system's name: ext4, tmpfs, hugetlbfs, dax or secretmem."""
        ...

    @property
    def folio_order(self) -> int:
        """Order of the folios it caches (hugetlbfs: 9 or 18; else 0)."""
        ...

    @property
    def needs_writenotify(self) -> bool:
        """Shared writable mappings are write-protected until page_mkwrite."""
        ...

    @property
    def readable(self) -> bool:
        """Opened for reading."""
        ...

    @property
    def writable(self) -> bool:
        """Opened for writing (a shared PROT_WRITE mapping needs it)."""
        ...

    @property
    def size(self) -> int:
        """i_size in bytes."""
        ...

    def get_folio(self, index: int) -> int:
        """Find or create the page-cache folio holding page `index`; its head PFN or -errno.

        -EFAULT means the index lies beyond end of file (the fault path turns it into
        SIGBUS), -ENOMEM that no folio could be allocated. The page cache keeps its own
        reference; the caller takes its own for the mapping.
        """
        ...

    def has_folio(self, index: int) -> bool:
        """Is page `index` in the page cache now? (a lookup that never creates the folio)."""
        ...

    def get_file(self) -> MappableFile:
        """Take a reference for a VMA (mmap, fork, a VMA split)."""
        ...

    def fput(self) -> None:
        """Drop a VMA's reference; the last one may free an unlinked file's pages."""
        ...

    def page_mkwrite(self, head: int) -> int:
        """A shared mapping is about to be written: mark the folio dirty. 0 or -errno."""
        ...
