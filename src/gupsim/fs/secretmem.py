"""secretmem: memfd_secret() files, whose pages leave the kernel's direct map.

The pages of a secretmem file are reachable only through the owner's mapping: the
kernel removes them from its direct map, so it cannot read them itself. Hence read()
and write() do not exist on the file (EINVAL, as for any file without them), GUP
refuses secretmem VMAs and folios (spec 4.1: GUP-fast falls back, the slow path
fails), and a device or kernel access (`dma_read`) should be refused: upper layers ask
`is_secretmem` / `folio_is_secretmem()`. The size can be set once, from 0
(secretmem_setattr() refuses later changes with EINVAL). Folios are unmovable and
unevictable.

Simplification: the direct map is not modelled; "removed from the direct map" is the
folio's kind, SECRETMEM.
"""

from __future__ import annotations

import errno
from typing import ClassVar

from ..memory import Kind, MemMap
from .base import File, FileSystem, Inode
from .common import oserror

O_CLOEXEC = 0o2000000   # x86-64 value (not in constants.py yet)


class SecretmemInode(Inode):
    """A memfd_secret() file: no read()/write(), size set once, unmovable unevictable folios."""

    fs_name: ClassVar[str] = "secretmem"
    kind: ClassVar[Kind] = Kind.SECRETMEM
    movable: ClassVar[bool] = False
    unevictable: ClassVar[bool] = True
    rw_supported: ClassVar[bool] = False
    is_secretmem: ClassVar[bool] = True
    aops_name: ClassVar[str] = "secretmem_aops"

    def _check_new_size(self, size: int) -> None:
        if self.size:
            raise oserror(errno.EINVAL, "a secretmem file's size can be set only once, "
                          "from 0: create a new one with memfd_secret()")


class Secretmem(FileSystem):
    """The internal secretmem mount behind memfd_secret()."""

    name: ClassVar[str] = "secretmem"
    inode_class: ClassVar[type[Inode]] = SecretmemInode

    def memfd_secret(self, flags: int = 0) -> File:
        """memfd_secret(2): an unnamed, empty secretmem file; set its size with ftruncate."""
        if flags & ~O_CLOEXEC:
            raise oserror(errno.EINVAL, f"memfd_secret flags {flags:#x}: only O_CLOEXEC is "
                          "allowed")
        return self.anon_file("secretmem", 0)


def folio_is_secretmem(mem: MemMap, head: int) -> bool:
    """True if the folio's pages are gone from the direct map (a secretmem folio)."""
    return int(mem.kind[head]) == Kind.SECRETMEM
