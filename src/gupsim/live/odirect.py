"""O_DIRECT I/O between a file on the disk file system and any address of this process.

Direct I/O skips the page cache: the block layer pins the user pages for the length of
the request (short-term FOLL_PIN, via the GUP-fast path first) and the device DMAs into
or out of them. A write from user memory pins R/O, a read into it pins R/W.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import weakref

from . import cleanup, libc
from .errors import HostUnsupported


def user_buffer(addr: int, length: int) -> memoryview:
    """A writable memoryview of `length` bytes at address `addr` of this process.

    The caller guarantees the range is mapped; touching unmapped memory kills the process.
    """
    if addr <= 0 or length < 0:
        raise ValueError(f"buffer address {addr:#x} must be > 0 and length {length} >= 0")
    return memoryview((ctypes.c_ubyte * length).from_address(addr)).cast("B")


def _cleanup(fd: int, tmpdir: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    shutil.rmtree(tmpdir, ignore_errors=True)


class DirectFile:
    """A new file in a temp dir of the disk file system, opened with O_DIRECT.

    Offsets, lengths and buffer addresses must be multiples of `align` (the file
    system's logical block size; 4096 is always safe). The file is removed on close.
    """

    def __init__(self, size: int = 1 << 20, *, dir: str | None = None,  # noqa: A002
                 align: int = 4096) -> None:
        if size < 0 or size % align:
            raise ValueError(f"size {size} must be a multiple of {align}")
        self.size = size
        self.align = align
        self._dir = dir
        self.fd = -1
        self.path = ""
        self._finalizer: weakref.finalize | None = None

    def __enter__(self) -> DirectFile:
        tmpdir = cleanup.temp_dir("dio", dir=self._dir, at_exit=False)
        self.path = os.path.join(tmpdir, "data")
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT
                              | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            shutil.rmtree(tmpdir, ignore_errors=True)
            if exc.errno == errno.EINVAL:
                raise HostUnsupported(f"{libc.fs_type(tmpdir.rsplit('/', 1)[0])} at "
                                      f"{tmpdir} does not support O_DIRECT") from exc
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self.fd, tmpdir)
        if self.size:
            os.posix_fallocate(self.fd, 0, self.size)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close and delete the file; idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        self.fd = -1

    @property
    def fs(self) -> str:
        """File system the file lives on."""
        return libc.fs_type(os.path.dirname(self.path) or ".")

    def _check(self, addr: int, length: int, offset: int) -> None:
        if self.fd < 0:
            raise ValueError("the file is closed; use it inside its `with` block")
        bad = [f"{n}={v:#x}" for n, v in (("address", addr), ("length", length),
                                          ("offset", offset)) if v % self.align]
        if bad:
            raise ValueError(f"O_DIRECT needs {self.align}-byte alignment; not aligned: "
                             f"{', '.join(bad)}")

    def write_from(self, addr: int, length: int, offset: int = 0) -> int:
        """pwrite `length` bytes from user address `addr`; return bytes written."""
        self._check(addr, length, offset)
        return os.pwritev(self.fd, [user_buffer(addr, length)], offset)

    def read_into(self, addr: int, length: int, offset: int = 0) -> int:
        """pread `length` bytes into user address `addr`; return bytes read."""
        self._check(addr, length, offset)
        return os.preadv(self.fd, [user_buffer(addr, length)], offset)

    def contents(self, offset: int, length: int) -> bytes:
        """Read file bytes through a separate buffered descriptor (for checking)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)
