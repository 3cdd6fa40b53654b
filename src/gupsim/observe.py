"""Hooks for an observer of the narrated runs (the tour, the cases): a new machine was
built, a step was recorded. `gupsim demo --html` and `gupsim cases --html` draw a picture
of the machine at every step through them; with no observer they cost one lookup.

This module imports nothing of gupsim, so any layer may call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

Observer = tuple[Callable[[Any], None], Callable[[Any], None]]
_observer: ContextVar[Observer | None] = ContextVar("gupsim_observer", default=None)


def kernel_built(kernel: Any) -> None:
    """Called by `Kernel()` once the machine is ready."""
    obs = _observer.get()
    if obs is not None:
        obs[0](kernel)


def step_recorded(step: Any) -> None:
    """Called when a narrated step's record (tour or case step) is made, after its work."""
    obs = _observer.get()
    if obs is not None:
        obs[1](step)


@contextlib.contextmanager
def observing(on_kernel: Callable[[Any], None],
              on_step: Callable[[Any], None]) -> Iterator[None]:
    """Call `on_kernel(k)` for every machine built and `on_step(step)` for every step
    recorded inside the block (in this thread or task only)."""
    token = _observer.set((on_kernel, on_step))
    try:
        yield
    finally:
        _observer.reset(token)
