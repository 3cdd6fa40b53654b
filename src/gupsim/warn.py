"""WARN_ON_ONCE as an event log, and the model user's call site.

The kernel prints a warning the first time a given check fires and then carries on;
the model records a `Warning` the first time each site fires, in order, so that tests
and users can ask which kernel warnings a scenario would have produced.

Both the warnings and the pin sanitizer name the *user's* call site: the innermost frame
whose code lies outside the installed gupsim package. "Outside" is decided by the
package's own directory (resolved), never by a substring of the path, so a checkout in a
folder that happens to be called `gupsim` still names the user's files. The walk is cheap
enough to run on every pin: it follows frame links until the first frame outside the
package and keeps that frame's code and instruction offset; `file:line in function` is
made of them only when something reads the site (`site_text()`), and the source line
only when a report is shown (`source_line()`).
"""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType

#: The directory of the imported gupsim package, resolved, with a trailing separator.
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "")

_inside_cache: dict[str, bool] = {}
#: file name -> whether the call-site walk goes on past a frame of that file (inside the
#: package and not a module marked `__gupsim_call_site__`): one dict lookup per frame,
#: as the walk runs on every pin and unpin
_passes_cache: dict[str, bool] = {}


def in_package(filename: str) -> bool:
    """True if `filename` (a code object's file name) lies inside the gupsim package."""
    inside = _inside_cache.get(filename)
    if inside is None:
        if filename.startswith("<"):        # <string>, <frozen runpy>, <stdin>: user code
            inside = False
        else:
            inside = os.path.realpath(filename).startswith(PACKAGE_DIR)
        _inside_cache[filename] = inside
    return inside


#: A call site as the walk finds it: (code object, offset of the instruction) of the
#: user's frame, or a text ("<gupsim>"); `site_text()` makes "file:line in function" of
#: it. The sanitizer keeps this form on every record and formats it only when read.
Site = tuple[CodeType, int] | str


def user_call_frame(*, inside: int = 0) -> Site:
    """Where the model's user made the call, as a `Site`: the innermost frame outside
    the package ("<gupsim>" if every frame is inside it).

    A gupsim module that models a kernel user of GUP (a driver under `drivers/`) can set
    `__gupsim_call_site__ = True`: its frames then count as the call site, so the
    sanitizer names the driver line that took or released a pin, as a kernel report
    names the driver function.

    `inside`: how many frames from the caller's outward are known to be the package's own
    (an express path's fixed chain of calls): the walk starts beyond them. Each frame the
    walk passes costs a frame object (~0.2 us); `sys._getframe(n)` makes only the n-th.
    """
    frame: FrameType | None = sys._getframe(1 + inside)
    passes = _passes_cache
    while frame is not None:
        filename = frame.f_code.co_filename
        through = passes.get(filename)
        if through is None:
            through = passes[filename] = in_package(filename) and not \
                frame.f_globals.get("__gupsim_call_site__")
        if not through:
            return frame.f_code, frame.f_lasti
        frame = frame.f_back
    return "<gupsim>"


#: (id of a code object, offset) -> (that code object, its site text): a site is read
#: again and again (every leak report of a process names where each pin was taken), and
#: finding the line walks the code's line table; the code object is kept, so its id is
#: not reused
_texts: dict[tuple[int, int], tuple[CodeType, str]] = {}


def site_text(site: Site) -> str:
    """A `Site` as "file:line in function" (a text site as it is)."""
    if isinstance(site, str):
        return site
    code, offset = site
    known = _texts.get((id(code), offset))
    if known is None:
        line = next((n for start, end, n in code.co_lines() if start <= offset < end), None)
        known = _texts[id(code), offset] = (code, f"{code.co_filename}:"
                                            f"{line if line is not None else code.co_firstlineno}"
                                            f" in {code.co_name}")
    return known[1]


def user_call_site(skip_package: str | None = None, *, inside: int = 0) -> str:
    """`user_call_frame()` as "file:line in function" ("<gupsim>" if every frame is
    inside the package). `skip_package` is accepted for compatibility and ignored: the
    package is found by its own directory, not by name."""
    return site_text(user_call_frame(inside=1 + inside))


def source_line(site: str) -> str:
    """The source text at a call site from `user_call_site()` ("" if unknown); read only
    when a report is shown."""
    where = site.rsplit(" in ", 1)[0]
    filename, _, line = where.rpartition(":")
    if not filename or not line.isdigit():
        return ""
    return linecache.getline(filename, int(line)).strip()


@dataclass(frozen=True)
class KernelWarning:
    """One WARN_ON_ONCE site that fired: where in the kernel, and why."""

    site: str          # kernel function and check, e.g. "is_valid_gup_args: internal flag"
    message: str
    caller: str = ""   # the model user's call site that triggered it

    def __str__(self) -> str:
        where = f" (from {self.caller})" if self.caller else ""
        return f"WARNING: {self.site}: {self.message}{where}"


@dataclass
class WarnLog:
    """The warnings a simulated machine has printed; each site at most once."""

    events: list[KernelWarning] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)

    def warn_on_once(self, condition: object, site: str,
                     message: str | Callable[[], str] = "") -> bool:
        """Return `condition` as a bool; the first time it is true for `site`, record a
        warning. `message` may be a callable, called only when the warning is recorded, so
        that a check that does not fire computes nothing for the text."""
        if not condition:
            return False
        n = self.hits.get(site, 0) + 1
        self.hits[site] = n
        if n == 1:
            text = message() if callable(message) else message
            self.events.append(KernelWarning(site, text, user_call_site()))
        return True

    def sites(self) -> list[str]:
        """The sites that fired, in the order they first fired."""
        return [w.site for w in self.events]

    def __iter__(self) -> Iterator[KernelWarning]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> KernelWarning:
        return self.events[i]
