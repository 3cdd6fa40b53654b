"""A temporary swap file for a host run, added with swapon(2) and always taken away.

MADV_PAGEOUT only swaps anonymous pages out when the machine has swap; a host without
any gets a small swap file for the run, as the kernel's mm selftests do. Like the
settings of `settings.py`, the file is journaled (gupsim-swap.json, under its lock)
BEFORE it is created or activated, with SIGINT/SIGTERM/SIGHUP held, so a run killed even
by SIGKILL is undone by the next one: `repair_dead_swapfiles()` (called by
`repair.repair_dead_runs()`) runs swapoff(2) on the file and deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import struct

from . import cleanup, libc
from .errors import HostUnsupported
from .settings import JournaledChange, _journal, _write_journal

SWAP_DIR = os.environ.get("GUPSIM_SWAP_DIR", "/var/tmp")
PAGE_SIZE = 4096
SWAP_MAGIC = b"SWAPSPACE2"
SYS_SWAPON = 167      # x86-64
SYS_SWAPOFF = 168

_keys = itertools.count(1)


def active_swaps() -> list[str]:
    """Paths of the active swap areas, as /proc/swaps lists them."""
    with open("/proc/swaps") as f:
        return [line.split()[0] for line in f.read().splitlines()[1:] if line.strip()]


def swapon(path: str, flags: int = 0) -> None:
    """swapon(2); OSError with the errno."""
    try:
        libc.syscall(SYS_SWAPON, ctypes.create_string_buffer(path.encode()), flags)
    except OSError as exc:
        raise OSError(exc.errno, f"swapon {path}: {exc.strerror}") from None


def swapoff(path: str) -> None:
    """swapoff(2); OSError with the errno."""
    try:
        libc.syscall(SYS_SWAPOFF, ctypes.create_string_buffer(path.encode()))
    except OSError as exc:
        raise OSError(exc.errno, f"swapoff {path}: {exc.strerror}") from None


def write_swap_header(fd: int, size: int) -> None:
    """What mkswap writes: version 1, the last usable page, no bad pages, a zero uuid and
    label, and the "SWAPSPACE2" magic in the last bytes of the first page."""
    header = bytearray(PAGE_SIZE)
    struct.pack_into("<III", header, 1024, 1, size // PAGE_SIZE - 1, 0)
    header[PAGE_SIZE - len(SWAP_MAGIC):] = SWAP_MAGIC
    if os.pwrite(fd, bytes(header), 0) != PAGE_SIZE:
        raise OSError(errno.EIO, "short write of the swap header")
    os.fsync(fd)


class SwapFile(JournaledChange):
    """`with SwapFile(size) as s:` adds a swap file of `size` bytes (in SWAP_DIR) with
    swapon, then swapoff and deletes it on leaving, at exit, or, if this process is
    killed, at the next `repair_dead_swapfiles()`. HostUnsupported says why a host cannot
    (not root, a file system that cannot hold swap, no space)."""

    def __init__(self, size: int = 64 << 20, directory: str | None = None) -> None:
        if size < 16 * PAGE_SIZE or size % PAGE_SIZE:
            raise ValueError(f"swap file size must be a multiple of {PAGE_SIZE} bytes and at "
                             f"least {16 * PAGE_SIZE}, got {size}")
        self.size = size
        self.dir = directory or SWAP_DIR
        self.path = os.path.join(self.dir, f"gupsim-swap-{os.getpid()}-{next(_keys)}")
        self._key: str | None = None
        self._token: int | None = None

    def _enter(self) -> None:
        if os.geteuid() != 0:
            raise HostUnsupported("not root: swapon(2) needs CAP_SYS_ADMIN")
        with _journal("swap") as state:
            _repair_swap(state, [])
            self._key = self.path
            state[self.path] = {"pid": os.getpid()}
            _write_journal("swap", state)          # journaled before the file exists
        self._token = cleanup.register(self.remove)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HostUnsupported(f"cannot create a swap file in {self.dir}: "
                                  f"{exc.strerror}") from exc
        try:
            os.posix_fallocate(fd, 0, self.size)
            write_swap_header(fd, self.size)
        except OSError as exc:
            raise HostUnsupported(f"cannot make a {self.size >> 20} MiB swap file in "
                                  f"{self.dir}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        try:
            swapon(self.path)
        except OSError as exc:
            why = {errno.EPERM: "not permitted (need CAP_SYS_ADMIN, or too many swap areas)",
                   errno.EINVAL: f"the file system of {self.dir} cannot hold swap",
                   errno.ENOMEM: "out of memory"}.get(exc.errno or 0, exc.strerror)
            raise HostUnsupported(f"swapon {self.path}: {why}") from exc

    def remove(self) -> None:
        """swapoff (if on), delete the file, then forget the journal entry (idempotent)."""
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
        if self._key is None:
            return
        with cleanup.signals_held(), _journal("swap") as state:
            _take_down(self.path)
            state.pop(self._key, None)
            self._key = None

    undo = remove


def _take_down(path: str) -> bool:
    """swapoff `path` if it is active and delete it; True if there was anything."""
    did = False
    if path in active_swaps():
        swapoff(path)
        did = True
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        did = True
    return did


def _strays(state: dict) -> dict[str, dict]:
    """Swap files in SWAP_DIR of dead gupsim processes that no journal lists (a journal
    lost with its temp folder at a reboot): their pid is in the name."""
    found: dict[str, dict] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(SWAP_DIR):
            m = _NAME.fullmatch(name)
            path = os.path.join(SWAP_DIR, name)
            if m and path not in state and not cleanup.pid_alive(int(m[1])):
                found[path] = {"pid": int(m[1])}
    return found


_NAME = re.compile(r"gupsim-swap-(\d+)-\d+")


def _repair_swap(state: dict, done: list[str]) -> None:
    """swapoff and delete the swap files of gupsim processes that died."""
    state.update(_strays(state))
    for path, entry in list(state.items()):
        if cleanup.pid_alive(int(entry["pid"])):
            continue
        try:
            was_on = path in active_swaps()
            if _take_down(path):
                done.append(f"{path}: {'swapoff and ' if was_on else ''}removed the swap "
                            f"file a dead gupsim run (pid {entry['pid']}) added")
        except OSError as exc:
            done.append(f"could not remove the swap file {path} of dead gupsim run "
                        f"(pid {entry['pid']}): {exc.strerror}")
            continue
        del state[path]


def repair_dead_swapfiles() -> list[str]:
    """Take away every swap file journaled by a gupsim process that is no longer alive;
    one line per file."""
    from .settings import journal_path
    if not os.path.exists(journal_path("swap")) and not _strays({}):
        return []
    done: list[str] = []
    with cleanup.signals_held(), _journal("swap") as state:
        _repair_swap(state, done)
    return done
