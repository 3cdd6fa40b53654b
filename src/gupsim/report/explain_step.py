"""`gupsim explain FILE --step N`: run a scenario on the model up to step N and explain
the frames held then (every frame a GUP call still holds, or the frames asked for)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..check.explain import Explanation, explain


class _Stop(Exception):
    """Raised inside the scenario once the chosen step has been explained."""


@dataclass
class StepExplanation:
    """The explanations taken right after one step of a scenario."""

    step: int
    op: str
    outcome: str
    frames: list[Explanation] = field(default_factory=list)
    steps_run: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"step": self.step, "op": self.op, "outcome": self.outcome,
                "frames": [f.as_dict() for f in self.frames]}

    def __str__(self) -> str:
        head = f"after step {self.step}: {self.op} -> {self.outcome}"
        if not self.frames:
            return head + "\nno frame is held by GUP at this step"
        return "\n\n".join([head] + [str(f) for f in self.frames])

    def wrapped(self, width: int = 80) -> str:
        """The text with each line folded to `width` under its own indent (plus two
        spaces), between words only: a call site's path is never cut."""
        out = []
        for line in str(self).splitlines():
            indent = line[:len(line) - len(line.lstrip())]
            out.append(textwrap.fill(line, width, subsequent_indent=indent + "  ",
                                     break_long_words=False, break_on_hyphens=False)
                       if len(line) > width else line)
        return "\n".join(out)


def explain_step(file: str, step: int, pfns: tuple[int, ...] = ()) -> StepExplanation:
    """Run the scenario in `file` on the model, stop after `step` (1-based) and explain
    the folios GUP holds then, or the frames `pfns`. Raises ValueError if the scenario
    has fewer steps."""
    from ..scenarios.model import ModelSystem
    from ..scenarios.userfile import load_scenario
    if step < 1:
        raise ValueError(f"--step counts from 1, not {step}")
    case = load_scenario(file)
    system = ModelSystem(needs=case.needs)
    k = system.k
    found: list[StepExplanation] = []
    inner = system._step

    def step_hook(*args: Any, **kw: Any) -> Any:
        try:
            return inner(*args, **kw)
        finally:
            if len(system.trace.steps) == step and not found:
                s = system.trace.steps[-1]
                targets = list(pfns)
                if not targets:
                    held = [o.pfns for o in k.sanitizer.outstanding()]
                    if held:
                        heads = np.unique(k.mem.head_of(np.concatenate(held)))
                        targets = [int(h) for h in heads]
                found.append(StepExplanation(step, s.op, s.outcome,
                                             [explain(k, p) for p in targets]))
                raise _Stop

    system._step = step_hook  # type: ignore[method-assign]
    try:
        case.run(system)
    except _Stop:
        pass
    finally:
        system.close()
    if not found:
        n = len(system.trace.steps)
        raise ValueError(f"{file} has only {n} step(s): choose --step between 1 and {n}"
                         if n else f"{file} takes no steps: its scenario() calls no "
                         "operation of a process (see examples/), so there is nothing "
                         "to explain")
    return found[0]
