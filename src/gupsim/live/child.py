"""Run Python code in a forked child: one call, or a child that stays until told to go.

Pinning behaviour depends on who else maps a page (fork, COW) and on privileges
(CAP_IPC_LOCK lifts RLIMIT_MEMLOCK), so host probes need a second process. The child is
a fork of this one (closures and mappings come along), reports results back as pickles
over a pipe, and is always reaped: killed on timeout, error or interrupt. An exception
in the child is re-raised in the parent with the child's traceback attached.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from . import libc
from .errors import ChildError

_LEN = struct.Struct("<Q")


def _write_frame(fd: int, obj: object) -> None:
    data = pickle.dumps(obj)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - len(chunks))
        if not chunk:
            raise EOFError
        chunks += chunk
    return bytes(chunks)


def _read_frame(fd: int, deadline: float | None) -> Any:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    return pickle.loads(_read_exact(fd, n, deadline))


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any, str]:
    """Run fn; return ("ok", value, "") or ("err", exception-or-repr, traceback text)."""
    try:
        value = fn(*args)
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise TypeError(f"the child's result ({type(value).__name__}) cannot be pickled: "
                            f"{exc}; return plain data") from None
        return "ok", value, ""
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
            return "err", exc, tb
        except Exception:
            return "err", f"{type(exc).__name__}: {exc}", tb


def _restrict(drop_cap_ipc_lock: bool, memlock: int | None, uid: int | None) -> None:
    if memlock is not None:
        libc.set_memlock_limit(memlock)
    if drop_cap_ipc_lock:
        libc.drop_capability(libc.CAP_IPC_LOCK)
    if uid is not None:  # a uid of its own: fresh per-user locked_vm, no capabilities
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


class Child:
    """A forked child that runs `target(*args)`, reports it, then serves `commands`.

    with Child(setup, commands={"read": lambda off: m.read(off, 4)}) as c:
        c.result              # what setup() returned in the child
        c.call("read", 0)     # run a named command in the child, get its result
    # leaving the block tells the child to exit, and reaps it (killing it if it hangs)

    `drop_cap_ipc_lock` and `memlock` (bytes) make the child behave like an
    unprivileged process for RLIMIT_MEMLOCK accounting. The kernel charges io_uring and
    AF_XDP pins to the *user* (all processes of a uid together) and uncharges a closed
    ring later, from a worker; `uid` runs the child as that uid (and so without any
    capability), which gives it a charge count of its own.
    """

    def __init__(self, target: Callable[..., Any] | None = None, *args: Any,
                 commands: Mapping[str, Callable[..., Any]] | None = None,
                 timeout: float = 10.0, drop_cap_ipc_lock: bool = False,
                 memlock: int | None = None, uid: int | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.target = target
        self.args = args
        self.commands = dict(commands or {})
        self.timeout = timeout
        self.drop_cap_ipc_lock = drop_cap_ipc_lock
        self.memlock = memlock
        self.uid = uid
        self.pid = 0
        self.result: Any = None
        self.exit_status: int | None = None
        self._to_child = -1
        self._from_child = -1

    # -- parent side ----------------------------------------------------------------------
    def __enter__(self) -> Child:
        self.start()
        try:
            self.result = self._receive(self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Fork; the child runs the target and reports before serving commands."""
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            os.close(down_w)
            os.close(up_r)
            self._child_main(down_r, up_w)
        os.close(down_r)
        os.close(up_w)
        self.pid, self._to_child, self._from_child = pid, down_w, up_r

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Run command `name` in the child and return its result (or re-raise its error)."""
        if name not in self.commands:
            raise ValueError(f"no command {name!r}; known: {sorted(self.commands)}")
        if not self.pid:
            raise ValueError("the child is not running; use it inside its `with` block")
        _write_frame(self._to_child, (name, args))
        return self._receive(self.timeout if timeout is None else timeout)

    def _receive(self, timeout: float) -> Any:
        try:
            status, value, tb = _read_frame(self._from_child, time.monotonic() + timeout)
        except TimeoutError:
            pid = self.pid
            self.stop(grace=0)
            raise TimeoutError(f"child {pid} did not answer within {timeout} s; "
                               "it was killed (raise timeout= if the work is slow)") from None
        except EOFError:
            self.stop()
            raise ChildError(f"child {self.pid} died without answering "
                             f"(exit status {self.exit_status})", "") from None
        if status == "ok":
            return value
        if isinstance(value, BaseException):
            value.add_note(f"--- raised in child {self.pid} ---\n{tb}")
            raise value
        raise ChildError(f"child {self.pid} raised {value}", tb)

    def stop(self, grace: float = 2.0) -> None:
        """Tell the child to exit, wait up to `grace` seconds, then kill; always reap."""
        if not self.pid:
            return
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)  # EOF on the command pipe is "exit now"
            except OSError:
                pass
        self._to_child = self._from_child = -1
        deadline = time.monotonic() + grace
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        while pid == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
        self.exit_status = os.waitstatus_to_exitcode(status)
        self.pid = 0

    # -- child side -----------------------------------------------------------------------
    def _child_main(self, cmd_fd: int, out_fd: int) -> None:
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the parent
            _restrict(self.drop_cap_ipc_lock, self.memlock, self.uid)
            if self.target is None:
                _write_frame(out_fd, ("ok", None, ""))
            else:
                _write_frame(out_fd, _outcome(self.target, self.args))
            while True:
                try:
                    name, args = _read_frame(cmd_fd, None)
                except EOFError:
                    break
                _write_frame(out_fd, _outcome(self.commands[name], args))
        except BaseException:  # noqa: BLE001 - report what we can, then exit
            code = 70
            try:
                _write_frame(out_fd, ("err", "child set-up failed", traceback.format_exc()))
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)  # no atexit, no parent finalizers, no pytest teardown


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float = 10.0,
                 drop_cap_ipc_lock: bool = False, memlock: int | None = None,
                 uid: int | None = None) -> Any:
    """Run `fn(*args)` in a forked child and return its (picklable) result."""
    with Child(fn, *args, timeout=timeout, drop_cap_ipc_lock=drop_cap_ipc_lock,
               memlock=memlock, uid=uid) as c:
        return c.result
