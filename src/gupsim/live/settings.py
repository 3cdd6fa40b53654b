"""Temporarily change a /proc/sys or /sys value, and always put it back.

Used for nr_hugepages and the transparent_hugepage knobs. The original value is
restored on leaving the `with` block, and also from atexit and SIGTERM/SIGHUP handlers
(see `cleanup`), because a changed sysctl outlives the process that changed it.

A process killed with SIGKILL runs none of that, so every change is first written to a
journal (a small JSON file beside the lock files, under the same lock), and only then to
the kernel: whatever instant the process dies at, the journal knows what to undo.
`repair_dead_settings()` (called by `gupsim.live.repair.repair_dead_runs()` when a host run
starts, and whenever a knob is taken) undoes the changes of gupsim processes that died.
SIGINT, SIGTERM and SIGHUP are held while a journal entry and its write happen together
(`cleanup.signals_held()`), so a Ctrl-C lands before or after, never between.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

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


class JournaledChange:
    """A change to the host that is journaled before it is made, so that a run killed at
    any point is repaired by the next one: entering runs `_enter()` (journal, then
    change) with SIGINT/SIGTERM/SIGHUP held, so the two are never split, and undoes what
    was done if it fails; leaving undoes the change. Subclasses give `_enter` and `undo`."""

    def _enter(self) -> None:
        raise NotImplementedError

    def undo(self) -> None:
        """Put the host back as it was before entering (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            with cleanup.signals_held():
                self._enter()
        except BaseException:
            self.undo()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


class Setting(JournaledChange):
    """`with Setting(path, value) as s:` writes `value`, restores the original on exit.

    `s.actual` is what the file reads back after writing: the kernel may grant less
    than asked (nr_hugepages under fragmentation), so callers check it. The original is
    journaled before the write, so a process killed meanwhile is repaired later.
    """

    def __init__(self, path: str, value: str | int) -> None:
        self.path = path
        self.value = str(value)
        self.original: str | None = None
        self.actual: str | None = None
        self._token: int | None = None
        self._key: str | None = None

    def _enter(self) -> None:
        with _journal("saved") as saved:
            _repair_saved(saved, [])
            try:
                self.original = read_setting(self.path)
            except FileNotFoundError as exc:
                raise HostUnsupported(f"{self.path} does not exist on this kernel") from exc
            self._key = f"{os.getpid()}.{next(_keys)}"
            saved[self._key] = {"pid": os.getpid(), "path": self.path,
                                "original": self.original}
        self._token = cleanup.register(self.restore)
        write_setting(self.path, self.value)
        self.actual = read_setting(self.path)

    def restore(self) -> None:
        """Write the original value back (once), then forget the journal entry."""
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
        if self._key is None:
            return
        with cleanup.signals_held():
            if self.original is not None and read_setting(self.path) != self.original:
                write_setting(self.path, self.original)
            with _journal("saved") as saved:
                saved.pop(self._key, None)
            self._key = None

    undo = restore


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
#
# Journals, one JSON file per lock (the file goes away when nothing is recorded):
#   gupsim-settings.json   path -> {"original", "value", "users": [pid, ...]}   (SharedSetting)
#   gupsim-hugepages.json  path -> {pid: {"added": n, "growing"?: [before, asked],
#                                         "shrinking"?: from}}              (ExtraHugepages)
#   gupsim-saved.json      key -> {"pid", "path", "original"}                   (Setting)

LOCK_DIR = os.environ.get("GUPSIM_LOCK_DIR", tempfile.gettempdir())

_keys = itertools.count(1)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    fd = os.open(os.path.join(LOCK_DIR, f"gupsim-{name}.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def journal_path(name: str) -> str:
    """The journal file of one lock ("settings", "hugepages" or "saved")."""
    return os.path.join(LOCK_DIR, f"gupsim-{name}.json")


def read_journal(name: str) -> dict:
    """The journal `name` as a dict: {} when it is missing, unreadable or not an object."""
    try:
        with open(journal_path(name)) as f:
            state = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_journal(name: str, state: dict) -> None:
    path = journal_path(name)
    if not state:                   # nothing recorded: leave no journal behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _journal(name: str) -> Iterator[dict]:
    """Hold the lock of `name`, yield its journal, and write it back when the block ends
    (also when it raises: what was recorded before the error is still true)."""
    with _locked(name):
        state = read_journal(name)
        try:
            yield state
        finally:
            _write_journal(name, state)


def hugepages_path(size_kb: int = 2048) -> str:
    """The nr_hugepages file of one huge page size."""
    return f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/nr_hugepages"


class ExtraHugepages:
    """Huge pages added to the pool by this process: `grow(n)` raises nr_hugepages by n
    (the kernel may give fewer), `restore()` lowers it by what was added, however much
    other processes changed it meanwhile. Restored at exit too (see `cleanup`), and by
    `repair_dead_settings()` if this process is killed."""

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
        me = str(os.getpid())
        with cleanup.signals_held(), _journal("hugepages") as state:
            _repair_hugepages(state, [])
            if self._token is None:
                self._token = cleanup.register(self.restore)
            before = int(read_setting(self.path))
            mine = state.setdefault(self.path, {}).setdefault(me, {"added": self.added})
            mine["growing"] = [before, count]           # journaled before the write
            _write_journal("hugepages", state)
            try:
                write_setting(self.path, str(before + count))
            finally:
                self.actual = read_setting(self.path)
                got = min(max(int(self.actual) - before, 0), count)
                self.added += got
                mine["added"] = self.added
                del mine["growing"]
                if not self.added:                      # nothing to give back: no entry
                    del state[self.path][me]
                    if not state[self.path]:
                        del state[self.path]
        return got

    def restore(self) -> None:
        """Give back every page added (idempotent)."""
        if self._token is not None:
            cleanup.unregister(self._token)
            self._token = None
        if not self.added:
            return
        me = str(os.getpid())
        with cleanup.signals_held(), _journal("hugepages") as state:
            now = int(read_setting(self.path))
            mine = state.setdefault(self.path, {}).setdefault(me, {"added": self.added})
            mine["shrinking"] = now                     # journaled before the write
            _write_journal("hugepages", state)
            write_setting(self.path, str(max(now - self.added, 0)))
            self.added = 0
            del state[self.path][me]
            if not state[self.path]:
                del state[self.path]

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


class SharedSetting(JournaledChange):
    """`Setting` for a choice knob (THP per-size `enabled`) that several gupsim processes
    may want at once: the first user saves the original, the last one puts it back.
    Users are tracked by pid in a journal next to the lock, written before the knob is,
    so a user that died without cleaning up (even by SIGKILL) is undone the next time
    anyone enters or leaves, or by `repair_dead_settings()`."""

    def __init__(self, path: str, value: str) -> None:
        self.path = path
        self.value = value
        self._token: int | None = None

    @staticmethod
    def _state_file() -> str:
        return journal_path("settings")

    @classmethod
    def _load(cls) -> dict[str, dict]:
        """The journal, without the users that are no longer alive."""
        state = read_journal("settings")
        _drop_dead_users(state)
        return state

    @classmethod
    def _save(cls, state: dict[str, dict]) -> None:
        _write_journal("settings", state)

    def _enter(self) -> None:
        with _journal("settings") as state:
            _repair_shared(state, [], only=self.path)   # its users died without restoring
            entry = state.get(self.path)
            if entry is None:
                try:
                    original = read_setting(self.path)
                except FileNotFoundError as exc:
                    raise HostUnsupported(f"{self.path} does not exist on this kernel") from exc
                entry = {"original": original, "value": self.value, "users": []}
            elif entry["value"] != self.value:
                raise HostUnsupported(f"{self.path} is held at {entry['value']!r} by gupsim "
                                      f"processes {entry['users']}; wanted {self.value!r}")
            entry["users"].append(os.getpid())
            state[self.path] = entry
            self._token = cleanup.register(self.restore)
            _write_journal("settings", state)           # journaled before the write
            if read_setting(self.path) != self.value:
                write_setting(self.path, self.value)

    def restore(self) -> None:
        """Leave; the last user writes the original value back (idempotent)."""
        if self._token is None:
            return
        cleanup.unregister(self._token)
        self._token = None
        with cleanup.signals_held(), _journal("settings") as state:
            _drop_dead_users(state)
            entry = state.get(self.path)
            if entry is None:
                return
            if os.getpid() in entry["users"]:
                entry["users"].remove(os.getpid())
            if not entry["users"]:
                _put_back(self.path, entry)
                del state[self.path]

    undo = restore


def _put_back(path: str, entry: dict) -> bool:
    """Write a shared knob's original value back; True if it had to be written."""
    if read_setting(path) != entry["original"]:
        write_setting(path, entry["original"])
        return True
    return False


# -- repair: undo what dead gupsim processes left ---------------------------------------------

def _drop_dead_users(state: dict) -> None:
    for entry in state.values():
        entry["users"] = [p for p in entry.get("users", []) if cleanup.pid_alive(p)]


def _repair_shared(state: dict, done: list[str], only: str | None = None) -> None:
    """Put back every shared knob whose users have all died (only `only` if given)."""
    _drop_dead_users(state)
    for path in [p for p, e in state.items() if not e["users"] and only in (None, p)]:
        entry = state[path]
        now = read_setting(path) if os.path.exists(path) else None
        if now is not None and _put_back(path, entry):
            done.append(f"{path}: put back {entry['original']!r} (a dead gupsim run left "
                        f"{now!r})")
        del state[path]


def _repair_hugepages(state: dict, done: list[str]) -> None:
    """Give back the huge pages that dead gupsim processes added (the caller holds the
    lock, so no gupsim process wrote nr_hugepages since the dead one's last journal entry)."""
    for path, users in list(state.items()):
        for pid, mine in list(users.items()):
            if cleanup.pid_alive(int(pid)):
                continue
            del users[pid]
            if not os.path.exists(path):
                continue
            now = int(read_setting(path))
            added = int(mine.get("added", 0))
            if "growing" in mine:                   # died around its write: what did it get?
                before, asked = mine["growing"]
                added += min(max(now - int(before), 0), int(asked))
            if "shrinking" in mine:                 # died around its give-back
                if now != int(mine["shrinking"]):
                    added = 0                       # the give-back was written
            if added > 0:
                write_setting(path, str(max(now - added, 0)))
                done.append(f"{path}: gave back {added} huge page(s) a dead gupsim run "
                            f"(pid {pid}) added ({now} -> {max(now - added, 0)})")
        if not users:
            del state[path]


def _repair_saved(saved: dict, done: list[str]) -> None:
    """Write back the originals of `Setting`s whose process died, newest first."""
    dead = [(k, e) for k, e in saved.items() if not cleanup.pid_alive(int(e["pid"]))]
    for key, entry in reversed(dead):
        path, original = entry["path"], entry["original"]
        if os.path.exists(path):
            now = read_setting(path)
            if now != original:
                write_setting(path, original)
                done.append(f"{path}: put back {original!r} (a dead gupsim run, pid "
                            f"{entry['pid']}, left {now!r})")
        del saved[key]


def remove_dead_journal_copies(name: str) -> list[str]:
    """Remove `gupsim-NAME.json.PID`, the copy `_write_journal` renames into place, of
    processes that died before the rename (SIGKILL): the setting it was about to change
    was not written yet (that waits for the rename), so the copy records nothing true."""
    prefix = os.path.basename(journal_path(name)) + "."
    removed = []
    for entry in os.listdir(LOCK_DIR):
        pid = entry[len(prefix):]
        if entry.startswith(prefix) and pid.isdigit() and not cleanup.pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(LOCK_DIR, entry))
                removed.append(os.path.join(LOCK_DIR, entry))
    return removed


def repair_dead_settings(names: tuple[str, ...] = ("settings", "hugepages", "saved", "swap")
                         ) -> list[str]:
    """Undo every setting change journaled by a gupsim process that is no longer alive
    (the swap journal's are swapfile.py's: here only its half-written copies go);
    return one line per repair. A repair this host does not allow (not root) is reported
    as a line saying what is left and why, not raised."""
    done: list[str] = []
    repairs = {"settings": _repair_shared, "hugepages": _repair_hugepages,
               "saved": _repair_saved}
    for name in names:
        copies = remove_dead_journal_copies(name)
        if copies:
            done.append(f"removed {len(copies)} half-written journal(s) of dead gupsim "
                        f"runs: {', '.join(copies)}")
        if not os.path.exists(journal_path(name)) or name not in repairs:
            continue
        try:
            with cleanup.signals_held(), _journal(name) as state:
                repairs[name](state, done)
        except HostUnsupported as exc:
            done.append(f"could not repair {journal_path(name)}: {exc}")
    return done
