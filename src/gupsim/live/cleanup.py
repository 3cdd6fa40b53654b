"""Last-resort clean-up for host state that outlives a Python object.

Context managers undo everything on normal exit, exceptions and KeyboardInterrupt. What
they cannot cover is a process that ends without unwinding: `sys.exit()` from a signal
handler, SIGTERM from a test runner, an interpreter shutting down with live objects. For
host *settings* (sysctl and sysfs values) a leak would outlive this process, so every
change is also registered here and undone at exit or on SIGTERM/SIGHUP. Only the process
that registered a callback runs it, so a forked child never restores its parent's state.

What not even this covers is SIGKILL (the OOM killer, a CI timeout, `kill -9`): settings
are therefore journaled (see `settings`), and temporary folders carry the owner's pid in
their name (`temp_dir()`), so that `gupsim.live.repair.repair_dead_runs()` can undo what a
dead run left. `signals_held()` keeps SIGINT/SIGTERM/SIGHUP out of a short critical
section (a journal entry and the write it describes).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

_lock = threading.Lock()
_pending: dict[int, tuple[int, Callable[[], object]]] = {}
_tokens = itertools.count(1)
_installed = False
_previous: dict[int, Any] = {}


def register(callback: Callable[[], object]) -> int:
    """Run `callback` at exit or on SIGTERM/SIGHUP unless `unregister()`ed first."""
    _install()
    with _lock:
        token = next(_tokens)
        _pending[token] = (os.getpid(), callback)
    return token


def unregister(token: int) -> None:
    """Forget a callback (its owner has already cleaned up)."""
    with _lock:
        _pending.pop(token, None)


def run_pending() -> list[BaseException]:
    """Run every pending callback of this process, newest first; return what they raised."""
    with _lock:
        mine = [(t, cb) for t, (pid, cb) in _pending.items() if pid == os.getpid()]
        for t, _ in mine:
            del _pending[t]
    errors: list[BaseException] = []
    for _, cb in sorted(mine, key=lambda item: -item[0]):
        try:
            cb()
        except Exception as exc:  # keep going: the other settings still need restoring
            errors.append(exc)
    return errors


def _on_signal(signum: int, frame: FrameType | None) -> None:
    run_pending()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(run_pending)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still covers us
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            current = signal.getsignal(signum)
            if current in (signal.SIG_IGN,):
                continue
            _previous[signum] = current
            signal.signal(signum, _on_signal)


class LiveStack(contextlib.ExitStack):
    """An ExitStack for host resources that is also closed at exit if never closed.

    Use it to hold several live objects (mappings, rings, settings) with one `with`:
    `with LiveStack() as s: m = s.enter_context(HostMapping(...))`.
    """

    def __enter__(self) -> LiveStack:
        super().__enter__()
        self._token = register(self.close)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        token = getattr(self, "_token", None)
        if token is not None:
            unregister(token)
        return bool(super().__exit__(exc_type, exc, tb))


# -- signals held over a critical section ---------------------------------------------------

HELD_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_hold_depth = 0


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them (once each).

    For a few lines that must not be split, such as journaling a setting and writing it.
    Python runs signal handlers (and raises KeyboardInterrupt) only in the main thread, so
    elsewhere, and when already held, this is a no-op.
    """
    global _hold_depth
    if _hold_depth or threading.current_thread() is not threading.main_thread():
        yield
        return
    _install()                         # our SIGTERM/SIGHUP handlers go in first, not after
    caught: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        if signum not in caught:
            caught.append(signum)

    previous: dict[int, Any] = {}
    for signum in HELD_SIGNALS:
        current = signal.getsignal(signum)
        if current is None or current == signal.SIG_IGN:
            continue                   # not set from Python, or ignored: leave it alone
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, defer)
            previous[signum] = current
    _hold_depth += 1
    try:
        yield
    finally:
        _hold_depth -= 1
        for held, handler in previous.items():
            if signal.getsignal(held) is defer:     # unless the block installed its own
                signal.signal(held, handler)
        for pending in caught:         # now the real handlers run (KeyboardInterrupt, ...)
            signal.raise_signal(pending)


# -- temporary folders that say who owns them -------------------------------------------------

TEMP_NAME = re.compile(r"^gupsim-([a-z]+)-(?:(\d+)-)?[A-Za-z0-9_]+$")
#: Folders made before names carried a pid are judged by whether a process uses them;
#: one this young may be between mkdtemp() and the open() that would show it in use.
LEGACY_MIN_AGE = 60.0


def temp_dir(kind: str, dir: str | None = None, at_exit: bool = True) -> str:  # noqa: A002
    """A new folder `gupsim-<kind>-<pid>-XXXXXXXX` (in `dir`, default the temp dir), removed
    by `repair_dead_runs()` once this process is dead, and at exit if still there (unless
    `at_exit` is False: an owner that makes many and removes each itself)."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"temp_dir kind must be lower-case letters, got {kind!r}")
    path = tempfile.mkdtemp(prefix=f"gupsim-{kind}-{os.getpid()}-", dir=dir)
    if at_exit:
        register(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def temp_bases() -> list[str]:
    """Where gupsim makes temporary folders: the temp dir and /dev/shm."""
    bases = [tempfile.gettempdir(), "/dev/shm", "/var/tmp"]
    return [b for i, b in enumerate(bases) if os.path.isdir(b) and b not in bases[:i]]


def _in_use(paths: list[str]) -> set[str]:
    """Which of `paths` (folders) some process has open, mapped or as its cwd."""
    used: set[str] = set()
    prefixes = tuple(os.path.join(p, "") for p in paths)
    if not prefixes:
        return used

    def note(target: str) -> None:
        if target.startswith(prefixes):
            used.update(p for p, pre in zip(paths, prefixes, strict=True)
                        if target.startswith(pre))
        elif target in paths:
            used.add(target)

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            note(os.readlink(f"/proc/{pid}/cwd"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    note(os.readlink(f"/proc/{pid}/fd/{fd}"))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if "gupsim-" in line:
                    note(line.split(None, 5)[-1].strip().removesuffix(" (deleted)"))
    return used


@contextlib.contextmanager
def _measuring_lock_free(path: str, timeout: float) -> Iterator[bool]:
    """Hold the pin-counters lock that every live HostSystem holds for its whole life, if it
    can be had within `timeout` seconds; yields whether it was (a separate open file, so a
    HostSystem of this very process also counts as holding it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:             # another user's lock file: flock needs no write
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    got = False
                    break
                time.sleep(0.05)
        yield got
    finally:
        os.close(fd)


def remove_dead_temp_dirs(bases: list[str] | None = None, lock_timeout: float = 0.0,
                          measuring_lock: str | None = None) -> list[str]:
    """Remove the temporary folders that dead gupsim processes left; return their paths.

    A folder named with a pid (`temp_dir()`) goes when that pid is dead. Older names carry
    no pid: `gupsim-host-*` (a HostSystem's) goes only while no HostSystem lives anywhere
    (the pin-counters lock is free, waited for up to `lock_timeout` seconds); others go
    when no process has anything in them open, mapped or as its cwd and they are older
    than LEGACY_MIN_AGE seconds.
    """
    if measuring_lock is None:
        from .vmstat import LOCK_PATH
        measuring_lock = LOCK_PATH
    removed: list[str] = []
    legacy_host: list[str] = []
    legacy_other: list[str] = []
    now = time.time()
    for base in temp_bases() if bases is None else bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            m = TEMP_NAME.match(name)
            path = os.path.join(base, name)
            if m is None or os.path.islink(path) or not os.path.isdir(path):
                continue
            if m[2] is not None:
                if not pid_alive(int(m[2])):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            elif m[1] == "host":
                legacy_host.append(path)
            else:
                with contextlib.suppress(OSError):
                    if now - os.stat(path).st_mtime >= LEGACY_MIN_AGE:
                        legacy_other.append(path)
    if legacy_other:
        used = _in_use(legacy_other)
        for path in legacy_other:
            if path not in used:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if legacy_host:
        with _measuring_lock_free(measuring_lock, lock_timeout) as free:
            if free:          # no HostSystem lives, and none can start while we hold it
                for path in legacy_host:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (of any user; a zombie counts): the test
    for "a gupsim run that is gone", whose journal entries and folders may be repaired."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
