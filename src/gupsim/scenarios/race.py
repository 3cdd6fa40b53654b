"""Race points in scenario files: run steps inside a kernel race window.

    with parent.on_race("fork:before_wrprotect"):   # when the parent's next step passes it,
        parent.uring_register([(buf, 0, PAGE)])     # another thread of it registers this
    child = parent.fork()                            # the next step: the window opens here

The block does not run its steps: it records them (checked as any step is), and the
next step of the scenario runs them when the armed process passes the race point
(`gupsim.gup.state.RACE_POINTS`), as another thread would. A step in the block cannot
return a region or a process (its result would be needed before it ran).

The trace shows, after the interrupted step, a marker step `on_race <point>` whose
outcome says what happened, then the racing steps:

- "raced": every racing step ran inside the window;
- "waited": the first racing step needed mmap_lock, which the interrupted step held for
  write (fork does): in the kernel that thread sleeps until the lock is free, so the
  model runs it (and the steps after it) once the interrupted step is over;
- "raced, then waited": a later step waited;
- "missed": the step never passed the race point, and the racing steps did not run.

A race point whose context names no mm ("longterm:before_migrate") fires for whichever
process passes it. If the interrupted step faults (SIGSEGV), what raced is still
recorded and nothing that waited runs.

The interrupted step's pin counts exclude the racing steps' (they have their own). Only
the model can do this: the host cannot inject into the kernel's race windows, so a
host run of a scenario with a race is skipped with that reason (never agreement).

Model notes: only what the model runs under mmap_read_lock() waits (GUP's slow path,
drivers that take the lock); the model's system calls (madvise, mprotect, ...) take no
lock, so they run inside the window even where the kernel's would wait. And the model
cannot suspend a step that waits. The step is abandoned where it
asked for the lock (`mm_struct.MmapLockBusy`, an OSError, so its driver undoes what it
did, as on any error) and run again from the start after the interrupted step; by then
GUP-fast, the only thing that ran without the lock, has given back whatever it took.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..gup.state import RACE_POINTS
from .records import ProtocolError, Step

if TYPE_CHECKING:
    from .base import BaseProc, BaseSystem
    from .ops import Op

Call = tuple["BaseProc", "Op", dict[str, Any]]


@dataclass
class Race:
    """Steps to run when `proc` passes race point `point` during the next step."""

    proc: BaseProc
    point: str
    steps: list[Call] = field(default_factory=list)
    reached: bool = False
    ran: list[Step] = field(default_factory=list)        # recorded inside the window
    waiting: list[Call] = field(default_factory=list)    # to run after the step
    error: BaseException | None = None                   # raised by a racing step

    def take(self, proc: BaseProc, op: Op, args: dict[str, Any]) -> None:
        """Record a checked call made inside the `on_race` block, to run later."""
        if op.returns in ("region", "proc"):
            raise ProtocolError(f"on_race: {op.name} returns a {op.returns}, which the "
                                "scenario would need before the step ran: call it before "
                                "the `with` block")
        self.steps.append((proc, op, args))

    @property
    def outcome(self) -> str:
        """The marker step's outcome (see the module docstring)."""
        if not self.reached:
            return "missed"
        if not self.waiting:
            return "raced"
        return "waited" if len(self.waiting) == len(self.steps) else "raced, then waited"


def check_point(point: object) -> None:
    """ProtocolError unless `point` is a race point of the model."""
    if point not in RACE_POINTS:
        raise ProtocolError(f"on_race: no race point {point!r}: choose one of "
                            f"{', '.join(RACE_POINTS)}")


def run_in_window(system: BaseSystem, race: Race, blocked: type[BaseException]) -> None:
    """At the race point: run the racing steps, their Steps recorded aside (the trace
    gets them after the interrupted step); a step raising `blocked` waits, with those
    after it, for the interrupted step to end; any other exception is kept for then."""
    race.reached = True
    saved, system.trace.steps = system.trace.steps, race.ran
    try:
        for i, (proc, op, args) in enumerate(race.steps):
            try:
                proc._invoke(op, args)
            except blocked:
                race.waiting = race.steps[i:]
                break
    except Exception as e:      # noqa: BLE001 - re-raised after the interrupted step
        race.error = e
    finally:
        system.trace.steps = saved


def finish(system: BaseSystem, race: Race, run_waiting: bool = True) -> None:
    """After the interrupted step: the marker step, the steps that ran in the window,
    then (unless the step faulted: `run_waiting` False) the waiting steps run now."""
    st = race.proc.status()
    system.trace.steps.append(Step(f"on_race {race.point}", race.outcome, 0, 0,
                                   st["VmPin"], st["VmLck"]))
    base = len(system.trace.steps)
    system.trace.steps.extend(race.ran)
    if race.error is not None:
        at = getattr(race.error, "gupsim_step", None)
        if at is not None:
            race.error.gupsim_step = base + at   # type: ignore[attr-defined]
        raise race.error
    for proc, op, args in race.waiting if run_waiting else ():
        proc._invoke(op, args)


__all__ = ["Race", "check_point", "finish", "run_in_window"]
