"""Shrinking a failing program: drop calls, then simplify arguments, while it still fails.

`still(program)` says whether a candidate fails the same way (same class of finding);
each call of it runs the candidate, on the host too for a disagreement, so the work is
bounded by `budget` evaluations. Dropping follows delta debugging: chunks of halving
size, then single calls (a dropped call takes the calls that use what it made with it).
Simplifying tries, for each argument, values a reader takes in at a glance (offset 0, a
page, fill 0, flags off) and keeps the first that still fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..constants import PAGE_SIZE
from .program import Call, Fill, Program


class Budget:
    """A count of evaluations left; `still` is not called once it is spent."""

    def __init__(self, n: int) -> None:
        self.left = n

    def spend(self) -> bool:
        """Take one evaluation; False when none is left."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def shrink(program: Program, still: Callable[[Program], bool], budget: int = 60) -> Program:
    """The smallest program found that `still` fails, and a note of how it shrank."""
    left = Budget(budget)
    size = len(program.calls)
    best = _drop(program, still, left)
    best = _simplify(best, still, left)
    best = _drop(best, still, left)       # what simpler calls no longer need
    return replace(best, note=f"shrunk from {size} to {len(best.calls)} calls")


def _drop(program: Program, still: Callable[[Program], bool], left: Budget) -> Program:
    chunk = max(1, len(program.calls) // 2)
    while chunk >= 1:
        i = 0
        while i < len(program.calls):
            candidate = program.without(range(i, i + chunk))
            if len(candidate.calls) < len(program.calls):
                if not left.spend():
                    return program
                if still(candidate):
                    program = candidate
                    continue           # the same index now holds the next calls
            i += chunk
        chunk //= 2
    return program


def simpler(name: str, value: Any) -> list[Any]:
    """Simpler values for an argument, simplest first (none for what cannot shrink)."""
    if isinstance(value, bool):
        return [False] if value else []
    if isinstance(value, Fill):
        return [Fill(value.byte, n) for n in (PAGE_SIZE, 1) if n < value.n] + \
            ([Fill(1, value.n)] if value.byte not in (0, 1) else [])
    if isinstance(value, int) and name not in ("advice", "fill") and value > 0:
        options = [0, PAGE_SIZE, value // 2 // PAGE_SIZE * PAGE_SIZE]
        return sorted({v for v in options if v < value})
    if name == "fill" and isinstance(value, int) and value > 1:
        return [1]
    if isinstance(value, list) and len(value) > 1:
        return [value[:1], value[-1:]]
    return []


def _simplify(program: Program, still: Callable[[Program], bool], left: Budget) -> Program:
    for i in range(len(program.calls)):
        if program.calls[i].proc != "p0" and left.spend():   # the first process, if it can
            candidate = _with_call(program, i, replace(program.calls[i], proc="p0"))
            if still(candidate):
                program = candidate
        for name, _ in program.calls[i].args:
            for value in simpler(name, program.calls[i].arg(name)):
                if not left.spend():
                    return program
                candidate = _with_call(program, i, program.calls[i].with_arg(name, value))
                if still(candidate):
                    program = candidate
                    break
    return program


def _with_call(program: Program, i: int, call: Call) -> Program:
    calls = list(program.calls)
    calls[i] = call
    return replace(program, calls=calls)
