"""Undo what a dead gupsim run left on this host.

A run killed with SIGKILL (or by the OOM killer, or a CI timeout) restores nothing: a
raised nr_hugepages, an mTHP `enabled` knob, a changed sysctl, a temporary swap file and
its temporary folders stay. Every change is journaled before it is made (`settings`,
`swapfile`) and every temporary folder says whose it is (`cleanup.temp_dir()`), so the
next run can put things back. Call `repair_dead_runs()` when a host run starts and show
its lines to the user.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .cleanup import remove_dead_temp_dirs
from .settings import repair_dead_settings
from .swapfile import repair_dead_swapfiles


@dataclass
class Repair:
    """What `repair_dead_runs()` undid: one line per setting, and the folders removed."""

    settings: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.settings or self.folders)

    def lines(self) -> list[str]:
        """Human-readable lines, one per repaired setting and one for the folders."""
        out = list(self.settings)
        if self.folders:
            shown = ", ".join(self.folders[:3]) + (", ..." if len(self.folders) > 3 else "")
            out.append(f"removed {len(self.folders)} temporary folder(s) left by dead gupsim "
                       f"runs: {shown}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def repair_dead_runs(temp_bases: list[str] | None = None, lock_timeout: float = 0.0) -> Repair:
    """Put back the settings and remove the temporary folders of gupsim processes that
    are no longer alive; nothing of a living gupsim process is touched. `lock_timeout`
    is how long to wait for running host systems to end before judging folders that carry
    no pid (they are kept when one is running)."""
    return Repair(repair_dead_settings() + repair_dead_swapfiles(),
                  remove_dead_temp_dirs(temp_bases, lock_timeout=lock_timeout))


_host_run_started = False


def host_run_started() -> bool:
    """Whether this process has started work on the host (`announce_repairs()` ran, as
    every host run does first): an interrupted command then says that what it took on
    the host was released."""
    return _host_run_started


def announce_repairs(lock_timeout: float = 0.0) -> Repair:
    """`repair_dead_runs()`, printing one line on stderr per repair, so that a user sees
    what an earlier run had left changed. Every host run calls it before it starts."""
    global _host_run_started
    _host_run_started = True
    repair = repair_dead_runs(lock_timeout=lock_timeout)
    for line in repair.lines():
        print(f"gupsim: repaired what a dead run left: {line}", file=sys.stderr)
    return repair
