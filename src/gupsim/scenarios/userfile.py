"""A user's scenario file (`gupsim run FILE`): loading it, and telling its own errors.

A scenario's own error (a syntax error, an exception its code raises, a protocol misuse)
is the user's to fix, so it is told as one line, `FILE:LINE: ExceptionType: message`,
with the scenario's frames only (not gupsim's, not click's) under it. A step that fails
(a fault or a refusal the step recorded) is not an error: the runner records it as that
back-end's outcome and compares it with the other back-end's.
"""

from __future__ import annotations

import os
import runpy
import traceback
from collections.abc import Callable
from typing import Any

from .records import ProtocolError, Trace
from .runner import Case

_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))   # gupsim/


class ScenarioError(Exception):
    """A scenario raised (on `backend`, whose `trace` it leaves; or while loading when
    `backend` is ""): its own error, or gupsim's (see `is_users()`)."""

    def __init__(self, exc: BaseException, file: str, backend: str = "",
                 trace: Trace | None = None, line: int = 0) -> None:
        super().__init__(f"{backend or 'loading'}: {type(exc).__name__}: {exc}")
        self.exc = exc
        self.file = file
        self.backend = backend
        self.trace = trace if trace is not None else Trace(backend or "model")
        self.line = line     # set when the error has no frame in the file (a bad return)

    def is_users(self) -> bool:
        """The user's to fix: a syntax error, an exception raised in the user's code (the
        innermost frame is not gupsim's), or gupsim refusing a bad call (ProtocolError,
        TypeError, ValueError, an OSError). Anything else raised inside gupsim is a bug."""
        exc = self.exc
        if isinstance(exc, SyntaxError) or self.line:
            return True
        tb = traceback.extract_tb(exc.__traceback__)
        if not any(_same_file(f.filename, self.file) for f in tb):
            return False
        inner = os.path.realpath(tb[-1].filename)
        if not inner.startswith(_PACKAGE + os.sep):
            return True
        return isinstance(exc, ProtocolError | TypeError | ValueError | OSError)

    @property
    def message(self) -> str:
        """`FILE:LINE: ExceptionType: message` at the scenario's innermost frame."""
        return error_message(self.exc, self.file, self.line)

    @property
    def frames(self) -> list[str]:
        """The scenario's own frames, outermost first, as `FILE:LINE in func: code`."""
        return scenario_frames(self.exc, self.file)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _frames(exc: BaseException, file: str) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, file)]


def scenario_frames(exc: BaseException, file: str) -> list[str]:
    """The frames of `exc`'s traceback that are in the scenario file."""
    return [f"{file}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
            for f in _frames(exc, file)]


def error_message(exc: BaseException, file: str, line: int = 0) -> str:
    """One line: where in the scenario file (`line` if the traceback has no frame
    there), what kind of error, and its message."""
    kind = type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename and _same_file(exc.filename, file):
        return f"{file}:{exc.lineno}: {kind}: {exc.msg} (the file is not valid Python)"
    frames = _frames(exc, file)
    line = (frames[-1].lineno or line) if frames else line
    text = str(exc)
    return f"{file}:{line}: {kind}" + (f": {text}" if text else "")


def load_scenario(file: str) -> Case:
    """The Case a scenario file defines; ScenarioError if its code fails to load, or
    ValueError if it does not define `scenario(system)`."""
    try:
        ns: dict[str, Any] = runpy.run_path(file)
    except Exception as exc:     # noqa: BLE001 - the scenario's own code, told as its error
        raise ScenarioError(exc, file) from exc
    if not callable(ns.get("scenario")):
        raise ValueError(f"{file} must define a function scenario(system)")
    expect: Callable[[Trace], list[str]] = ns.get("expect") or (lambda trace: [])
    return Case(str(ns.get("NAME", file)), ns["scenario"], _checked(expect, file),
                source=file, needs=tuple(ns.get("NEEDS", ())))


def _checked(expect: Callable[[Trace], Any], file: str) -> Callable[[Trace], list[str]]:
    """`expect` as the runner calls it: its exception, or a return that is not a list of
    strings, is the scenario's own error (ScenarioError), not a crash of gupsim."""
    def checked(trace: Trace) -> list[str]:
        try:
            problems = expect(trace)
        except Exception as exc:     # noqa: BLE001 - the scenario's own code
            raise ScenarioError(exc, file, trace=trace) from exc
        if not isinstance(problems, list | tuple) or not all(isinstance(p, str)
                                                             for p in problems):
            bad = TypeError(f"expect(trace) returned {problems!r:.80}: return a list of "
                            "strings, the problems found ([] when there are none)")
            raise ScenarioError(bad, file, trace=trace,
                                line=getattr(getattr(expect, "__code__", None),
                                             "co_firstlineno", 0) or 1)
        return list(problems)
    return checked


__all__ = ["ScenarioError", "load_scenario", "error_message", "scenario_frames"]
