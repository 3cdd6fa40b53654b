"""Last-resort clean-up for host state that outlives a Python object.

Context managers undo everything on normal exit, exceptions and KeyboardInterrupt. What
they cannot cover is a process that ends without unwinding: `sys.exit()` from a signal
handler, SIGTERM from a test runner, an interpreter shutting down with live objects. For
host *settings* (sysctl and sysfs values) a leak would outlive this process, so every
change is also registered here and undone at exit or on SIGTERM/SIGHUP. Only the process
that registered a callback runs it, so a forked child never restores its parent's state.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import threading
from collections.abc import Callable
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
