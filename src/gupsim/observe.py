"""Hooks for an observer of the narrated runs (the tour, the cases): a new machine was
built, a GUP call ended, a step was recorded. `gupsim demo --html` and `gupsim cases
--html` draw a picture of the machine at every step through them (and of the moment a
step held the most pins); with no observer each hook costs one lookup.

This module imports nothing of gupsim, so any layer may call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Observer:
    """What to call: with each machine built, each GUP call's memory map, each step."""

    on_kernel: Callable[[Any], None]
    on_gup: Callable[[Any], None]
    on_step: Callable[[Any], None]


_observer: ContextVar[Observer | None] = ContextVar("gupsim_observer", default=None)


def kernel_built(kernel: Any) -> None:
    """Called by `Kernel()` once the machine is ready."""
    obs = _observer.get()
    if obs is not None:
        obs.on_kernel(kernel)


def gup_call_ended(mem: Any) -> None:
    """Called when a GUP entry point call on the machine owning `mem` returns."""
    obs = _observer.get()
    if obs is not None:
        obs.on_gup(mem)


def step_recorded(step: Any) -> None:
    """Called when a narrated step's record (tour or case step) is made, after its work."""
    obs = _observer.get()
    if obs is not None:
        obs.on_step(step)


@contextlib.contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Call the observer's callbacks for what happens inside the block (in this thread
    or task only)."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)
