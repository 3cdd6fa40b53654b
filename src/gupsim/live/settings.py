"""Temporarily change a /proc/sys or /sys value, and always put it back.

Used for nr_hugepages and the transparent_hugepage knobs. The original value is
restored on leaving the `with` block, and also from atexit and SIGTERM/SIGHUP handlers
(see `cleanup`), because a changed sysctl outlives the process that changed it.
"""

from __future__ import annotations

import errno
import re

from . import cleanup
from .errors import HostUnsupported

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_size_enabled(size_kb: int) -> str:
    """Path of the per-size (mTHP) `enabled` knob, e.g. size_kb=2048."""
    return f"/sys/kernel/mm/transparent_hugepage/hugepages-{size_kb}kB/enabled"


_SELECTED = re.compile(r"\[([^\]]+)\]")


def read_setting(path: str) -> str:
    """Current value; for choice files ("always [madvise] never") the selected word."""
    with open(path) as f:
        text = f.read().strip()
    m = _SELECTED.search(text)
    return m[1] if m else text


def write_setting(path: str, value: str) -> None:
    """Write `value`; HostUnsupported if the file is missing or not writable here."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError as exc:
        raise HostUnsupported(f"{path} does not exist on this kernel") from exc
    except PermissionError as exc:
        raise HostUnsupported(f"{path} is not writable (need root)") from exc
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise HostUnsupported(f"{path} is not writable: {exc.strerror}") from exc
        raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from exc


class Setting:
    """`with Setting(path, value) as s:` writes `value`, restores the original on exit.

    `s.actual` is what the file reads back after writing: the kernel may grant less
    than asked (nr_hugepages under fragmentation), so callers check it.
    """

    def __init__(self, path: str, value: str | int) -> None:
        self.path = path
        self.value = str(value)
        self.original: str | None = None
        self.actual: str | None = None
        self._token: int | None = None

    def __enter__(self) -> Setting:
        try:
            self.original = read_setting(self.path)
        except FileNotFoundError as exc:
            raise HostUnsupported(f"{self.path} does not exist on this kernel") from exc
        self._token = cleanup.register(self.restore)
        try:
            write_setting(self.path, self.value)
            self.actual = read_setting(self.path)
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Write the original value back (once)."""
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
            if self.original is not None and read_setting(self.path) != self.original:
                write_setting(self.path, self.original)


def hugepages(count: int) -> Setting:
    """A Setting that makes `count` 2 MiB huge pages available (check `.actual`)."""
    if count < 0:
        raise ValueError(f"huge page count must be >= 0, got {count}")
    return Setting(NR_HUGEPAGES, count)
