"""Hold a real short-term R/O pin open while the process writes: process_vm_readv + uffd.

process_vm_readv() of our own memory pins the source pages (pin_user_pages_remote, R/O,
FOLL_PIN) a chunk at a time, then copies them into the destination buffer. If the first
destination page is a userfaultfd-missing page, the copy stalls on it *after* the whole
chunk is pinned. While it waits we write through our own page tables; then we resolve the
fault and the copy finishes from the pinned pages. The bytes it returns are what the
pinned pages held: the data a R/O pin would see after the write. This is how the
selftests' "R/O pin, write, read through the pin" cases (cow.c, PIN_LONGTERM_TEST_*)
run on a kernel without CONFIG_GUP_TEST, as a short-term analog.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import threading
from collections.abc import Callable

from . import libc
from .errors import HostUnsupported
from .procvm import process_vm_readv

UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_ZEROPAGE = 0xC020AA04
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_MSG_SIZE = 32
# process_vm_rw_single_vec pins at most this many pages before it copies them
PVM_MAX_PAGES_PER_LOOP = 2 * libc.PAGE_SIZE // 8

_ioctl = libc._libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class uffdio_api(ctypes.Structure):  # noqa: N801 - the kernel's name
    """struct uffdio_api: the UFFDIO_API handshake (API version in; features, ioctls out)."""

    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):  # noqa: N801
    """struct uffdio_range: [start, start + len) of the registered or resolved memory."""

    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):  # noqa: N801
    """struct uffdio_register: UFFDIO_REGISTER of a range in a mode (MISSING here)."""

    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class uffdio_zeropage(ctypes.Structure):  # noqa: N801
    """struct uffdio_zeropage: UFFDIO_ZEROPAGE resolves a missing fault with the zero page."""

    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]


def _ioctl_or_raise(fd: int, request: int, arg: ctypes.Structure, what: str) -> None:
    ctypes.set_errno(0)
    if _ioctl(fd, request, ctypes.addressof(arg)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def open_userfaultfd() -> int:
    """A userfaultfd that also handles faults taken by the kernel (copy_to_user)."""
    libc.check_arch()
    try:
        fd = libc.syscall(libc.SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, name="userfaultfd")
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
            raise HostUnsupported(f"userfaultfd is not available: {exc.strerror} (kernel "
                                  "faults need CAP_SYS_PTRACE or "
                                  "vm.unprivileged_userfaultfd=1)") from exc
        raise
    try:
        api = uffdio_api(UFFD_API, 0, 0)
        _ioctl_or_raise(fd, UFFDIO_API, api, "UFFDIO_API")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_pinned_while(addr: int, length: int, during: Callable[[], None],
                      timeout: float = 10.0) -> bytes:
    """Pin [addr, addr+length) of this process R/O (short-term), run `during()` while
    the pins are held, and return what the pinned pages then hold.

    `during` runs in the calling thread (it may take page faults of its own); the copy
    runs in a helper thread that the kernel parks on a userfaultfd page.
    """
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    first = addr & ~(libc.PAGE_SIZE - 1)
    nr = (addr + length - first + libc.PAGE_SIZE - 1) // libc.PAGE_SIZE
    if nr > PVM_MAX_PAGES_PER_LOOP:
        raise ValueError(f"{nr} pages: process_vm_readv pins at most "
                         f"{PVM_MAX_PAGES_PER_LOOP} at a time, so not all would be held")
    page = libc.PAGE_SIZE
    span = (length + page - 1) // page * page
    uffd = open_userfaultfd()
    buf = 0
    try:
        buf = libc.mmap(0, span, libc.PROT_READ | libc.PROT_WRITE,
                        libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        if span > page:
            ctypes.memset(buf + page, 0, span - page)     # only the first page stalls
        reg = uffdio_register(uffdio_range(buf, page), UFFDIO_REGISTER_MODE_MISSING, 0)
        _ioctl_or_raise(uffd, UFFDIO_REGISTER, reg, "UFFDIO_REGISTER")
        copied: list[int] = []               # what the reader thread hands back
        failed: list[BaseException] = []

        def copy() -> None:
            try:
                copied.append(process_vm_readv(os.getpid(), [(buf, length)], [(addr, length)]))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failed.append(exc)

        reader = threading.Thread(target=copy, name="gupsim-pinned-read", daemon=True)
        reader.start()
        stalled = _wait_for_fault(uffd, reader, timeout)
        if not stalled and failed:      # refused before it pinned (EFAULT on secretmem):
            raise failed[0]             # nothing is held, so no write "while pinned"
        try:
            during()
        finally:
            if stalled:
                zp = uffdio_zeropage(uffdio_range(buf, page), 0, 0)
                _ioctl_or_raise(uffd, UFFDIO_ZEROPAGE, zp, "UFFDIO_ZEROPAGE")
            reader.join(timeout)
        if reader.is_alive():
            raise TimeoutError("process_vm_readv did not finish after the fault was resolved")
        if failed:
            raise failed[0]
        if not stalled:
            raise OSError(errno.EIO, "the copy never stalled on the userfaultfd page, so "
                          "the write did not happen while the pages were pinned")
        return ctypes.string_at(buf, copied[0])
    finally:
        if buf:
            libc.munmap(buf, span)
        os.close(uffd)


def _wait_for_fault(uffd: int, reader: threading.Thread, timeout: float) -> bool:
    """True once the reader is parked on our page (its source pages are pinned by then)."""
    poller = select.poll()
    poller.register(uffd, select.POLLIN)
    waited = 0.0
    while waited < timeout:
        if poller.poll(10):
            msg = os.read(uffd, UFFD_MSG_SIZE)
            if len(msg) == UFFD_MSG_SIZE and msg[0] == UFFD_EVENT_PAGEFAULT:
                return True
            raise OSError(errno.EIO, f"unexpected userfaultfd message {msg[:1].hex()}")
        if not reader.is_alive():
            return False
        waited += 0.01
    raise TimeoutError("process_vm_readv never reached the userfaultfd page")
