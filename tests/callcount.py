"""Counting Python calls, so that "no per-page Python" is a test (importable from every test
folder: pytest puts tests/, where the root conftest.py lives, on sys.path)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def python_calls(fn: Callable[[], Any]) -> tuple[int, float, Any]:
    """(Python-level function calls, seconds, result) of running fn()."""
    calls = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    t0 = time.perf_counter()
    sys.setprofile(prof)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return calls, time.perf_counter() - t0, result
