"""WARN_ON_ONCE as an event log.

The kernel prints a warning the first time a given check fires and then carries on;
the model records a `Warning` the first time each site fires, in order, so that tests
and users can ask which kernel warnings a scenario would have produced.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


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

    def warn_on_once(self, condition: bool, site: str, message: str = "") -> bool:
        """Return `condition`; the first time it is true for `site`, record a warning."""
        if condition:
            self.hits[site] = self.hits.get(site, 0) + 1
            if self.hits[site] == 1:
                self.events.append(KernelWarning(site, message, user_call_site()))
        return bool(condition)

    def sites(self) -> list[str]:
        return [w.site for w in self.events]

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> KernelWarning:
        return self.events[i]


def user_call_site(skip_package: str = "gupsim") -> str:
    """The innermost frame outside gupsim: where the model's user made the call.

    A gupsim module that models a kernel user of GUP (a driver under `drivers/`) can set
    `__gupsim_call_site__ = True`: its own frames then count as the call site, so that
    the sanitizer names the driver line that took or released a pin, as a kernel report
    names the driver function.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename.replace("\\", "/")
        if f"/{skip_package}/" not in filename or frame.f_globals.get("__gupsim_call_site__"):
            return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "<gupsim>"
