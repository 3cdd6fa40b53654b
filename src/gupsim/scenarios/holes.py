"""The holes a scenario process left (munmap, mremap_move), kept out of its later maps.

`map_fixed` maps at the address of a region that was unmapped: whether something else
lies there by then (EEXIST) would depend on where each back-end placed the process's
later maps, and the host's server also maps memory of its own. So while a back-end
makes a scenario map (map, map_view, mremap_move's destination) it first reserves every
hole with a PROT_NONE placeholder (MAP_FIXED_NOREPLACE), and unmaps the placeholders
right after: a hole is never reused by the scenario, on either back-end, and stays a
plain hole (a munmap'ed range answers ENOMEM to madvise, EFAULT to a pin) in between.

Both back-ends keep a `Holes` per process (a forked child inherits its parent's) and
pass their own mmap/munmap. A hole that something filled meanwhile (map_fixed, or on
the host the server's own allocations) is not reserved.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast


@dataclass
class Holes:
    """[start, end) ranges this process unmapped, in the order it did so."""

    spans: list[tuple[int, int]] = field(default_factory=list)

    def add(self, addr: int, length: int) -> None:
        """The process unmapped [addr, addr+length) (all of it: a region or a moved part)."""
        if length > 0:
            self.spans.append((addr, addr + length))

    def filled(self, addr: int, length: int) -> None:
        """The process mapped [addr, addr+length) itself (map_fixed): no longer a hole."""
        end = addr + length
        self.spans = [(s, e) for s, e in self.spans if e <= addr or s >= end]

    def copy(self) -> Holes:
        """The same holes, for a forked child."""
        return Holes(list(self.spans))

    @contextlib.contextmanager
    def kept(self, reserve: Callable[[int, int], bool],
             release: Callable[[int, int], None]) -> Iterator[None]:
        """Placeholders over every hole while the body maps; `reserve(addr, length)`
        says whether it could (False: something is there now)."""
        held = [(s, e - s) for s, e in self.spans if reserve(s, e - s)]
        try:
            yield
        finally:
            for addr, length in held:
                release(addr, length)


F = TypeVar("F", bound=Callable[..., Any])


def keeping_holes(fn: F) -> F:
    """Run a back-end primitive that maps with its process's holes reserved (see the
    module doc); the back-end has `holes`, `_reserve_hole(addr, length) -> bool` and
    `_release_hole(addr, length)`."""
    @functools.wraps(fn)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.holes.kept(self._reserve_hole, self._release_hole):
            return fn(self, *args, **kwargs)
    return cast(F, run)
