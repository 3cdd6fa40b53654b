"""Temporarily change a /proc/sys or /sys value, and always put it back.

Used for nr_hugepages and the transparent_hugepage knobs. The original value is
restored on leaving the `with` block, and also from atexit and SIGTERM/SIGHUP handlers
(see `cleanup`), because a changed sysctl outlives the process that changed it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

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


def hugepages(count: int) -> ExtraHugepages:
    """Make `count` more 2 MiB huge pages available for a `with` block, and give them back
    after; `.actual` is nr_hugepages once raised (the kernel may grant fewer, so callers
    check it). Added and removed by delta under a lock, so overlapping gupsim processes
    cannot leave the pool changed (see ExtraHugepages)."""
    if count < 0:
        raise ValueError(f"huge page count must be >= 0, got {count}")
    return ExtraHugepages(2048, grow_on_enter=count)


# -- settings shared with other gupsim processes ---------------------------------------------
#
# `Setting` saves a value and writes it back: right for one process, wrong for two that
# overlap (A raises nr_hugepages 0 -> 2, B 2 -> 4, A restores 0, B restores 2: the machine
# keeps 2 huge pages for good). The two helpers below are safe when several gupsim
# processes (parallel test runs, `gupsim live` beside pytest) change the same knob: every
# read-modify-write happens under one lock file, counts are changed by deltas, and a
# choice knob is restored only when its last user leaves.

LOCK_DIR = os.environ.get("GUPSIM_LOCK_DIR", tempfile.gettempdir())


@contextmanager
def _locked(name: str) -> Iterator[None]:
    fd = os.open(os.path.join(LOCK_DIR, f"gupsim-{name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hugepages_path(size_kb: int = 2048) -> str:
    """The nr_hugepages file of one huge page size."""
    return f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/nr_hugepages"


class ExtraHugepages:
    """Huge pages added to the pool by this process: `grow(n)` raises nr_hugepages by n
    (the kernel may give fewer), `restore()` lowers it by what was added, however much
    other processes changed it meanwhile. Restored at exit too (see `cleanup`)."""

    def __init__(self, size_kb: int = 2048, grow_on_enter: int = 0) -> None:
        self.path = hugepages_path(size_kb)
        self.added = 0
        self.actual: str | None = None      # nr_hugepages after the last grow()
        self._grow_on_enter = grow_on_enter
        self._token: int | None = None

    def grow(self, count: int) -> int:
        """Add `count` huge pages; return how many the kernel gave."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if not os.path.exists(self.path):
            raise HostUnsupported(f"{self.path} does not exist on this kernel")
        with _locked("hugepages"):
            if self._token is None:
                self._token = cleanup.register(self.restore)
            before = int(read_setting(self.path))
            write_setting(self.path, str(before + count))
            self.actual = read_setting(self.path)
            got = max(int(self.actual) - before, 0)
            self.added += got
        return got

    def restore(self) -> None:
        """Give back every page added (idempotent)."""
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
        if self.added:
            with _locked("hugepages"):
                now = int(read_setting(self.path))
                write_setting(self.path, str(max(now - self.added, 0)))
                self.added = 0

    def __enter__(self) -> ExtraHugepages:
        if self._grow_on_enter:
            try:
                self.grow(self._grow_on_enter)
            except BaseException:
                self.restore()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class SharedSetting:
    """`Setting` for a choice knob (THP per-size `enabled`) that several gupsim processes
    may want at once: the first user saves the original, the last one puts it back.
    Users are tracked by pid in a state file next to the lock, so a user that died
    without cleaning up is dropped the next time anyone enters or leaves."""

    def __init__(self, path: str, value: str) -> None:
        self.path = path
        self.value = value
        self._token: int | None = None

    @staticmethod
    def _state_file() -> str:
        return os.path.join(LOCK_DIR, "gupsim-settings.json")

    @classmethod
    def _load(cls) -> dict[str, dict]:
        try:
            with open(cls._state_file()) as f:
                state = json.load(f)
        except (FileNotFoundError, ValueError):
            return {}
        for entry in state.values():
            entry["users"] = [p for p in entry["users"] if _pid_alive(p)]
        return state

    @classmethod
    def _save(cls, state: dict[str, dict]) -> None:
        if not state:                   # nothing held: leave no state file behind
            with contextlib.suppress(FileNotFoundError):
                os.remove(cls._state_file())
            return
        tmp = cls._state_file() + f".{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, cls._state_file())

    def __enter__(self) -> SharedSetting:
        with _locked("settings"):
            state = self._load()
            entry = state.get(self.path)
            if entry is not None and not entry["users"]:
                _put_back(self.path, entry)     # its users died without restoring it
                entry = None
            if entry is None:
                try:
                    original = read_setting(self.path)
                except FileNotFoundError as exc:
                    raise HostUnsupported(f"{self.path} does not exist on this kernel") from exc
                entry = {"original": original, "value": self.value, "users": []}
            elif entry["value"] != self.value:
                raise HostUnsupported(f"{self.path} is held at {entry['value']!r} by gupsim "
                                      f"processes {entry['users']}; wanted {self.value!r}")
            if read_setting(self.path) != self.value:
                write_setting(self.path, self.value)
            entry["users"].append(os.getpid())
            state[self.path] = entry
            self._save(state)
            self._token = cleanup.register(self.restore)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Leave; the last user writes the original value back (idempotent)."""
        if self._token is None:
            return
        cleanup.unregister(self._token)
        self._token = None
        with _locked("settings"):
            state = self._load()
            entry = state.get(self.path)
            if entry is None:
                return
            if os.getpid() in entry["users"]:
                entry["users"].remove(os.getpid())
            if not entry["users"]:
                _put_back(self.path, entry)
                del state[self.path]
            self._save(state)


def _put_back(path: str, entry: dict) -> None:
    if read_setting(path) != entry["original"]:
        write_setting(path, entry["original"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
