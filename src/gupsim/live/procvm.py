"""process_vm_readv / process_vm_writev through ctypes.

The kernel copies through the *target's* pages, pinning them short-term with
pin_user_pages_remote() a chunk at a time, so these calls are a pin source on another
process's memory (or our own, with pid = os.getpid()).
"""

from __future__ import annotations

import ctypes
import os

from . import libc


def _rw(number: int, name: str, pid: int, local: list[tuple[int, int]],
        remote: list[tuple[int, int]]) -> int:
    libc.check_arch()
    if pid <= 0:
        raise ValueError(f"pid must be a process id > 0, got {pid}")
    lv, rv = libc.iovecs(local), libc.iovecs(remote)
    return libc.syscall(number, pid, lv, len(local), rv, len(remote), 0, name=name)


def process_vm_readv(pid: int, local: list[tuple[int, int]],
                     remote: list[tuple[int, int]]) -> int:
    """Copy from `remote` ranges of `pid` into our `local` ranges; bytes copied."""
    return _rw(libc.SYS_process_vm_readv, "process_vm_readv", pid, local, remote)


def process_vm_writev(pid: int, local: list[tuple[int, int]],
                      remote: list[tuple[int, int]]) -> int:
    """Copy from our `local` ranges into `remote` ranges of `pid`; bytes copied."""
    return _rw(libc.SYS_process_vm_writev, "process_vm_writev", pid, local, remote)


def read_remote(pid: int, addr: int, length: int) -> bytes:
    """Read `length` bytes at `addr` of process `pid` (a short read returns fewer)."""
    buf = ctypes.create_string_buffer(length)
    n = process_vm_readv(pid, [(ctypes.addressof(buf), length)], [(addr, length)])
    return buf.raw[:n]


def write_remote(pid: int, addr: int, data: bytes) -> int:
    """Write `data` at `addr` of process `pid`; bytes written."""
    buf = ctypes.create_string_buffer(data, len(data))
    return process_vm_writev(pid, [(ctypes.addressof(buf), len(data))], [(addr, len(data))])


def self_pid() -> int:
    """Our pid (process_vm_* want a real pid, not "self")."""
    return os.getpid()
