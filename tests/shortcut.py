"""Running a scenario with a model shortcut and without it, for the tests that hold a fast
path to the general one (importable from every test folder, as callcount.py is)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


def both_ways(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str,
              run: Callable[[], Any], declined: object) -> tuple[Any, Any, list[Any]]:
    """run() with `module.name` in place (its answers recorded), then with it answering
    `declined` (the shortcut not taken: the general path does the work): the result with
    the shortcut, the result without, and the shortcut's answers."""
    real = getattr(module, name)
    answers: list[Any] = []

    def counted(*args: object) -> Any:
        answer = real(*args)
        answers.append(answer)
        return answer

    monkeypatch.setattr(module, name, counted)
    fast = run()
    monkeypatch.setattr(module, name, lambda *args: declined)
    general = run()
    return fast, general, answers
