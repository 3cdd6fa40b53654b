"""Run a catalogue case on a back-end, and compare the model's trace with the host's.

A case is a function of a `System`, plus the outcome the kernel's documentation and
selftests expect. The host's trace is checked against that expectation too, so a wrong
probe cannot make model and host agree on a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .protocol import Step, System, Trace


@dataclass
class Case:
    """One catalogue entry: the scenario, what the kernel documents, and why."""

    name: str
    run: Callable[[System], None]
    expect: Callable[[Trace], list[str]]   # documented expectation: problems found, if any
    source: str                            # which selftest row or spec section it stands for
    why: str = ""                          # the kernel code path behind a surprising figure
    needs: tuple[str, ...] = ()            # host capabilities (live.host_capabilities names)


@dataclass
class Result:
    case: Case
    model: Trace
    host: Trace | None
    model_problems: list[str] = field(default_factory=list)
    host_problems: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """agree, disagree, skipped (host could not run it), or model-only."""
        if self.model_problems or self.host_problems or self.differences:
            return "disagree"
        if self.host is None:
            return "model-only"
        if self.host.skipped:
            return "skipped"
        return "agree"


def run_on(case: Case, make: Callable[[], System]) -> Trace:
    """Run a case on a fresh back-end; a host that cannot run it yields a skipped trace."""
    from ..live.errors import HostUnsupported
    system = make()
    try:
        case.run(system)
    except HostUnsupported as e:
        system.trace.skipped = str(e) or "host cannot run this case"
    finally:
        system.close()
    return system.trace


def compare(model: Trace, host: Trace) -> list[str]:
    """Step-by-step differences between two traces (empty when they agree)."""
    out: list[str] = []
    for i, (m, h) in enumerate(zip(model.steps, host.steps, strict=False)):
        if m.key() != h.key():
            out.append(f"step {i + 1} {m.op}: model {describe(m)} / host {describe(h)}")
    if len(model.steps) != len(host.steps):
        out.append(f"the model took {len(model.steps)} steps, the host {len(host.steps)}")
    return out


def describe(s: Step) -> str:
    data = "" if s.data is None else f" data={s.data[:8]!r}{'…' if len(s.data) > 8 else ''}"
    return (f"{s.outcome} pins +{s.acquired}/-{s.released} VmPin={s.vm_pin_kb} "
            f"VmLck={s.vm_lck_kb}{data}")


def run_case(case: Case, with_host: bool = True) -> Result:
    from .model import ModelSystem
    model = run_on(case, ModelSystem)
    result = Result(case, model, None, case.expect(model))
    if with_host:
        from .host import HostSystem, host_skip_reason
        reason = host_skip_reason(case.needs)
        if reason:
            result.host = Trace("host", skipped=reason)
            return result
        result.host = run_on(case, HostSystem)
        if not result.host.skipped:
            result.host_problems = case.expect(result.host)
            result.differences = compare(model, result.host)
    return result
