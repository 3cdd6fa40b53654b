"""AF_XDP user memory (UMEM) registration: a long-term pin on the GUP slow path.

`setsockopt(SOL_XDP, XDP_UMEM_REG)` pins the area with
pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) under mmap_lock and charges RLIMIT_MEMLOCK
unless we hold CAP_IPC_LOCK. Closing the socket releases the pins, possibly later from
a workqueue, so measure releases with `vmstat.wait_outstanding()`.
"""

from __future__ import annotations

import errno
import socket
import struct

from .errors import HostUnsupported

AF_XDP = 44
SOL_XDP = 283
XDP_UMEM_REG = 4
XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1


def umem_reg(addr: int, length: int, chunk_size: int = 4096, headroom: int = 0,
             flags: int = 0, tx_metadata_len: int = 0) -> bytes:
    """Pack struct xdp_umem_reg (addr, len, chunk_size, headroom, flags, tx_metadata_len)."""
    return struct.pack("=QQIIII", addr, length, chunk_size, headroom, flags, tx_metadata_len)


class XdpUmem:
    """An AF_XDP socket with `length` bytes at `addr` registered as its UMEM."""

    def __init__(self, addr: int, length: int, chunk_size: int = 4096) -> None:
        if chunk_size < 2048 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two >= 2048, got {chunk_size}")
        self.addr, self.length, self.chunk_size = addr, length, chunk_size
        self.sock: socket.socket | None = None

    def __enter__(self) -> XdpUmem:
        self.sock = open_xdp_socket()
        try:
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG,
                                 umem_reg(self.addr, self.length, self.chunk_size))
        except OSError as exc:
            self.close()
            raise OSError(exc.errno, f"XDP_UMEM_REG of [{self.addr:#x}, +{self.length}): "
                          f"{exc.strerror}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket, which releases the UMEM pins (maybe asynchronously)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def open_xdp_socket() -> socket.socket:
    """socket(AF_XDP, SOCK_RAW, 0), or HostUnsupported saying why it is not available."""
    try:
        return socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as exc:
        why = {errno.EAFNOSUPPORT: "the kernel has no AF_XDP (CONFIG_XDP_SOCKETS=n)",
               errno.EPERM: "AF_XDP sockets need CAP_NET_RAW",
               errno.EACCES: "AF_XDP sockets need CAP_NET_RAW"}
        raise HostUnsupported(why.get(exc.errno or 0, f"AF_XDP socket: {exc}")) from exc
