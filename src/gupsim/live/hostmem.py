"""Memory areas of this process on the host, mapped the way pinning tests need them.

`HostMapping` maps anonymous, shmem, memfd, tmpfs, disk-file, hugetlb and THP areas with
raw mmap(2), so that the address handed to io_uring, O_DIRECT or process_vm_readv is
exactly the one we populate and inspect. `pagemap()` tells which physical frame backs an
address, which is how a test sees copy-on-write and unsharing happen.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import struct
import tempfile
import weakref
from dataclasses import dataclass
from typing import Literal

from ..memory.units import thp_area
from . import cleanup, libc
from .errors import HostUnsupported

Kind = Literal["anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb", "thp", "mthp",
               "mthp-16k", "mthp-32k", "mthp-128k", "mthp-256k", "mthp-512k", "mthp-1024k",
               "secretmem"]
HUGE_2M = 2 << 20
MTHP_64K = 64 << 10
# anonymous mTHP kinds by folio size: "mthp" is 64 KiB, "mthp-<N>k" is N KiB
MTHP_SIZES: dict[str, int] = {"mthp-16k": 16 << 10, "mthp-32k": 32 << 10, "mthp": MTHP_64K,
                              "mthp-128k": 128 << 10, "mthp-256k": 256 << 10,
                              "mthp-512k": 512 << 10, "mthp-1024k": 1024 << 10}
KINDS: tuple[str, ...] = ("anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb", "thp",
                          *MTHP_SIZES, "secretmem")
SYS_memfd_secret = 447     # x86-64


def _release(addr: int, length: int, fd: int, path: str | None, tmpdir: str | None) -> None:
    """Undo a mapping; safe to call twice and from a finalizer (plain values only)."""
    with contextlib.suppress(OSError):
        if addr:
            libc.munmap(addr, length)
    with contextlib.suppress(OSError):
        if fd >= 0:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        if path:
            os.unlink(path)
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


class HostMapping:
    """An mmap()ed area of this process, unmapped (and its file removed) on close.

    kind: "anon" (MAP_ANONYMOUS; `shared=True` gives shmem), "memfd", "tmpfs" (a file in
    /dev/shm), "file" (a file in a new temp dir on the disk file system, `dir=` to choose
    where), "hugetlb" (MAP_HUGETLB 2 MiB), "memfd-hugetlb" (MFD_HUGETLB 2 MiB), "thp"
    (anon private, 2 MiB aligned, MADV_HUGEPAGE), "mthp" (the same, 64 KiB aligned: a
    64 KiB folio if hugepages-64kB/enabled allows it when the pages fault in).
    `populate` writes `fill` to every page (reads them if the mapping is not writable),
    so that the pages exist before a pin.
    """

    def __init__(self, length: int, kind: Kind = "anon", *, shared: bool = False,
                 prot: int = libc.PROT_READ | libc.PROT_WRITE, populate: bool = True,
                 fill: int = 0, dir: str | None = None) -> None:  # noqa: A002 - as tempfile
        if kind not in KINDS:
            raise ValueError(f"unknown mapping kind {kind!r}; use one of {', '.join(KINDS)}")
        if length <= 0 or length % libc.PAGE_SIZE:
            raise ValueError(f"length {length} must be a positive multiple of "
                             f"{libc.PAGE_SIZE} (the page size)")
        if kind in ("hugetlb", "memfd-hugetlb", "thp") and length % HUGE_2M:
            raise ValueError(f"a {kind} mapping needs a multiple of 2 MiB, got {length}")
        if not 0 <= fill <= 255:
            raise ValueError(f"fill must be a byte value 0..255, got {fill}")
        if kind in MTHP_SIZES and length % MTHP_SIZES[kind]:
            raise ValueError(f"an {kind} mapping needs a multiple of "
                             f"{MTHP_SIZES[kind] >> 10} KiB, got {length}")
        if (kind == "thp" or kind in MTHP_SIZES) and shared:
            raise ValueError(f"kind {kind!r} is anonymous private memory; use shared=False")
        self.length = length
        self.kind = kind
        self.shared = shared
        self.prot = prot
        self.fd = -1
        self.path: str | None = None
        self.addr = 0
        self._tmpdir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._dir = dir
        self._populate = populate
        self._fill = fill

    # -- life cycle -----------------------------------------------------------------------
    def __enter__(self) -> HostMapping:
        try:
            self._map()
            if self._populate:
                self.populate(self._fill)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the area and remove its file; idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        else:
            _release(self.addr, self.length, self.fd, self.path, self._tmpdir)
        self.addr, self.fd, self.path, self._tmpdir = 0, -1, None, None

    def _track(self, length: int) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _release, self.addr, length, self.fd,
                                           self.path, self._tmpdir)

    def _map(self) -> None:
        share = libc.MAP_SHARED if self.shared else libc.MAP_PRIVATE
        kind = self.kind
        if kind == "anon":
            self.addr = libc.mmap(0, self.length, self.prot, share | libc.MAP_ANONYMOUS)
        elif kind == "hugetlb":
            flags = share | libc.MAP_ANONYMOUS | libc.MAP_HUGETLB | libc.MAP_HUGE_2MB
            self.addr = self._map_huge(flags, -1)
        elif kind == "thp":
            self._map_thp(HUGE_2M)
        elif kind in MTHP_SIZES:
            self._map_thp(MTHP_SIZES[kind])
        else:
            self._open_file()
            self._track(0)
            if kind == "memfd-hugetlb":
                self.addr = self._map_huge(share, self.fd)
            else:
                self.addr = libc.mmap(0, self.length, self.prot, share, self.fd, 0)
        self._track(self.length)

    def _map_huge(self, flags: int, fd: int) -> int:
        try:
            return libc.mmap(0, self.length, self.prot, flags, fd, 0)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}: no 2 MiB huge pages for {self.length} "
                          "bytes; raise /proc/sys/vm/nr_hugepages first (gupsim.live.Setting)"
                          ) from exc

    def _map_thp(self, align: int) -> None:
        """An anonymous area aligned for THP of `align` bytes; an mTHP area (below 2 MiB)
        starts `align` past a 2 MiB boundary, so that whether a PMD THP fits in it (and
        takes the place of the mTHP folios) does not depend on where mmap() put it."""
        span, _ = thp_area(0, self.length, align)      # the model's rule too
        raw = libc.mmap(0, span, self.prot, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        _, start = thp_area(raw, self.length, align)
        if start > raw:
            libc.munmap(raw, start - raw)
        tail = raw + span - (start + self.length)
        if tail:
            libc.munmap(start + self.length, tail)
        self.addr = start
        self._track(self.length)
        libc.madvise(start, self.length, libc.MADV_HUGEPAGE)

    def _open_file(self) -> None:
        kind = self.kind
        if kind == "secretmem":
            try:
                self.fd = libc.syscall(SYS_memfd_secret, os.O_CLOEXEC, name="memfd_secret")
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM):
                    raise HostUnsupported(f"memfd_secret is not available here: {exc} "
                                          "(secretmem.enable=0, or a kernel before 5.14)"
                                          ) from exc
                raise
            os.ftruncate(self.fd, self.length)
            return          # secretmem has no fallocate: its pages come at the first fault
        if kind == "memfd":
            self.fd = os.memfd_create("gupsim-live", libc.MFD_CLOEXEC)
        elif kind == "memfd-hugetlb":
            self.fd = os.memfd_create("gupsim-live-huge",
                                      libc.MFD_CLOEXEC | libc.MFD_HUGETLB | libc.MFD_HUGE_2MB)
        else:
            if kind == "tmpfs":
                base = self._dir or "/dev/shm"
                if libc.fs_type(base) != "tmpfs":
                    raise HostUnsupported(f"{base} is not tmpfs; pass dir= a tmpfs mount")
            else:
                base = self._dir or tempfile.gettempdir()
            self._tmpdir = cleanup.temp_dir("live", dir=base, at_exit=False)
            self.path = os.path.join(self._tmpdir, "backing")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o600)
        os.ftruncate(self.fd, self.length)
        # the selftests fallocate every backing file: the pages then exist in the page
        # cache, so a private read fault maps them (for hugetlb, a hole would instead get
        # a private anon page at once)
        os.posix_fallocate(self.fd, 0, self.length)

    # -- access ---------------------------------------------------------------------------
    @property
    def fs(self) -> str:
        """File system of the backing file ("anon" for anonymous memory)."""
        if self.kind == "secretmem":
            return "secretmem"
        if self.kind in ("anon", "thp") or self.kind in MTHP_SIZES:
            return "shmem" if self.shared else "anon"
        if self.kind in ("memfd",):
            return "tmpfs"
        if self.kind in ("hugetlb", "memfd-hugetlb"):
            return "hugetlbfs"
        return libc.fs_type(self.path or "/")

    @property
    def nr_pages(self) -> int:
        """Number of base pages in the area."""
        return self.length // libc.PAGE_SIZE

    def _check(self, offset: int, n: int) -> int:
        if not self.addr:
            raise ValueError("the mapping is closed; use it inside its `with` block")
        if offset < 0 or n < 0 or offset + n > self.length:
            raise ValueError(f"range [{offset}, {offset + n}) is outside the mapping "
                             f"of {self.length} bytes")
        return self.addr + offset

    def read(self, offset: int, n: int) -> bytes:
        """Read through this process's page tables (faults as a CPU access would)."""
        return ctypes.string_at(self._check(offset, n), n)

    def write(self, offset: int, data: bytes) -> None:
        """Write through this process's page tables."""
        ctypes.memmove(self._check(offset, len(data)), data, len(data))

    def memset(self, value: int, offset: int = 0, n: int | None = None) -> None:
        """Fill a range with one byte value."""
        n = self.length - offset if n is None else n
        ctypes.memset(self._check(offset, n), value, n)

    def populate(self, fill: int = 0) -> None:
        """Fault every page in: write `fill` to it, or read it if the area is read-only."""
        if self.prot & libc.PROT_WRITE:
            self.memset(fill)
        else:
            for off in range(0, self.length, libc.PAGE_SIZE):
                self.read(off, 1)

    def madvise(self, advice: int, offset: int = 0, length: int | None = None) -> None:
        """madvise() a sub-range (default: the whole area)."""
        length = self.length - offset if length is None else length
        libc.madvise(self._check(offset, length), length, advice)

    def mprotect(self, prot: int, offset: int = 0, length: int | None = None) -> None:
        """mprotect() a sub-range (default: the whole area)."""
        length = self.length - offset if length is None else length
        libc.mprotect(self._check(offset, length), length, prot)
        if offset == 0 and length == self.length:
            self.prot = prot

    def munmap(self, offset: int = 0, length: int | None = None) -> None:
        """Unmap a sub-range now; the rest is unmapped by close()."""
        length = self.length - offset if length is None else length
        libc.munmap(self._check(offset, length), length)

    def folio_problem(self, offset: int, size: int) -> str:
        """Why [offset, offset+size) is not one naturally aligned large folio ("" if it
        is, or if frame numbers cannot be read here). A THP fault may quietly fall back
        to small pages; a test that needs the folio checks this first."""
        first = self.pagemap(offset)
        if not first.present or first.pfn == 0:
            return "" if first.present else "the first page is not present"
        nr = size // libc.PAGE_SIZE
        last = self.pagemap(offset + size - libc.PAGE_SIZE)
        try:
            flags = kpageflags(first.pfn)
        except OSError:
            return ""
        if "compound_head" not in flags or "thp" not in flags or first.pfn % nr:
            return f"the kernel gave small pages, not a {size >> 10} KiB folio"
        if last.pfn != first.pfn + nr - 1 or "compound_tail" not in kpageflags(last.pfn):
            return f"the range is not one {size >> 10} KiB folio"
        return ""

    def pagemap(self, offset: int = 0, pid: int | str = "self") -> PagemapEntry:
        """What /proc/<pid>/pagemap says about the page at `offset`."""
        return pagemap(self._check(offset, 0), pid)

    def __repr__(self) -> str:
        share = "shared" if self.shared else "private"
        return f"<HostMapping {self.kind} {share} {self.length:#x} bytes at {self.addr:#x}>"


@dataclass(frozen=True)
class PagemapEntry:
    """One /proc/<pid>/pagemap entry. `pfn` is 0 unless we hold CAP_SYS_ADMIN."""

    pfn: int
    present: bool
    swapped: bool
    exclusive: bool  # bit 56: the page is mapped by this process only
    soft_dirty: bool
    file_or_shared_anon: bool
    uffd_wp: bool
    raw: int


def pagemap(addr: int, pid: int | str = "self") -> PagemapEntry:
    """Read the pagemap entry for virtual address `addr` of process `pid`."""
    if addr < 0:
        raise ValueError(f"address {addr:#x} must be >= 0")
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        f.seek(addr // libc.PAGE_SIZE * 8)
        data = f.read(8)
    if len(data) != 8:
        raise OSError(f"short read of /proc/{pid}/pagemap at {addr:#x}")
    (raw,) = struct.unpack("<Q", data)
    present = bool(raw >> 63 & 1)
    return PagemapEntry(
        pfn=raw & ((1 << 55) - 1) if present else 0,
        present=present,
        swapped=bool(raw >> 62 & 1),
        exclusive=bool(raw >> 56 & 1),
        soft_dirty=bool(raw >> 55 & 1),
        file_or_shared_anon=bool(raw >> 61 & 1),
        uffd_wp=bool(raw >> 57 & 1),
        raw=raw,
    )


KPF = {"locked": 0, "dirty": 4, "lru": 5, "anon": 12, "swapcache": 13, "compound_head": 15,
       "compound_tail": 16, "huge": 17, "thp": 22, "zero_page": 24, "ksm": 21}


def kpageflags(pfn: int) -> set[str]:
    """Named /proc/kpageflags bits of frame `pfn` (root only)."""
    with open("/proc/kpageflags", "rb", buffering=0) as f:
        f.seek(pfn * 8)
        (raw,) = struct.unpack("<Q", f.read(8))
    return {name for name, bit in KPF.items() if raw >> bit & 1}


def kpagecount(pfn: int) -> int:
    """How many times frame `pfn` is mapped (/proc/kpagecount, root only)."""
    with open("/proc/kpagecount", "rb", buffering=0) as f:
        f.seek(pfn * 8)
        (raw,) = struct.unpack("<Q", f.read(8))
    return raw
