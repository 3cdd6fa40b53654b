"""Run a catalogue case on a back-end, and compare the model's trace with the host's.

A case is a function of a `System`, plus the outcome the kernel's documentation and
selftests expect. The host's trace is checked against that expectation too, so a wrong
probe cannot make model and host agree on a wrong answer.
"""

from __future__ import annotations

import functools
import random
import time
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
    model_gap: str = ""                    # known model deficiency: where the model is wrong


@dataclass
class Result:
    """One case run on the model and (maybe) the host: both traces, the problems each
    expectation found, and the step-by-step differences."""

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
    """Run a case on a fresh back-end; a host that cannot run it yields a skipped trace.

    A step's fault or refusal that the scenario does not catch (SIGSEGV, SIGBUS, an errno
    of a step that raises) was recorded by that step: it ends the run, `trace.ended` says
    so, and the trace is compared like any other. Any other exception is the scenario's
    own (or gupsim's) and raises `ScenarioError` with the back-end and its trace."""
    from ..live.errors import HostUnsupported
    from .userfile import ScenarioError
    system = make()
    try:
        case.run(system)
    except HostUnsupported as e:
        system.trace.skipped = str(e) or "host cannot run this case"
    except Exception as e:    # noqa: BLE001 - sorted out below
        step = getattr(e, "gupsim_step", None)
        if step is None:
            raise ScenarioError(e, case.source, system.name, system.trace) from e
        system.trace.ended = f"{type(e).__name__} at step {step}"
    finally:
        system.close()
    return system.trace


def compare(model: Trace, host: Trace, *, counters: bool = True) -> list[str]:
    """Step-by-step differences between two traces (empty when they agree).

    With `counters=False` only what other processes cannot disturb is compared (the
    operations, their outcomes and the data read): the verdict on a noisy host run.
    """
    out: list[str] = []
    for i, (m, h) in enumerate(zip(model.steps, host.steps, strict=False)):
        mk, hk = (m.key(), h.key()) if counters else (_stable(m), _stable(h))
        if mk != hk:
            out.append(f"step {i + 1} {m.op}: model {describe(m)} / host {describe(h)}")
    if len(model.steps) != len(host.steps):
        out.append(f"the model took {len(model.steps)} steps, the host {len(host.steps)}")
    if model.ended != host.ended:
        out.append(f"the scenario ended by {model.ended or 'returning'} on the model, by "
                   f"{host.ended or 'returning'} on the host")
    return out


def _stable(s: Step) -> tuple:
    return (s.op, s.outcome, s.data, s.pages)


def describe(s: Step) -> str:
    """A step's outcome, pin counts, VmPin/VmLck and data start, for tables and diffs."""
    data = "" if s.data is None else f" data={s.data[:8]!r}{'…' if len(s.data) > 8 else ''}"
    pages = "" if s.pages is None else f" pages=[{s.pages}]"
    late = f" ({s.late} late)" if s.late else ""
    return (f"{s.outcome} pins +{s.acquired}/-{s.released}{late} VmPin={s.vm_pin_kb} "
            f"VmLck={s.vm_lck_kb}{data}{pages}")


HOST_ATTEMPTS = 5     # host runs at most, per case
HOST_CONFIRM = 3      # identical exact runs that make a disagreement trusted


def run_host(case: Case, model: Trace, make: Callable[[], System] | None = None,
             attempts: int = HOST_ATTEMPTS, confirm: int = HOST_CONFIRM,
             pages: bool = False) -> Trace:
    """Run a case on the host until its trace can be trusted, and return that trace.

    The pin counters are machine-wide, so other processes' pins can leak into a step,
    even one measured between two quiet windows. A run is trusted when every step was
    measured exactly in quiet windows and it agrees with the model, or when `confirm`
    exact runs gave the very same figures (a real disagreement repeats itself; noise
    rarely does, and a random pause between runs keeps us out of step with a periodic
    pinner). When no run is trusted, the trace is marked inexact and `skipped` says why,
    unless the outcomes or data (which noise cannot change) already differ from the model.
    """
    if attempts < 1 or confirm < 1:
        raise ValueError(f"attempts and confirm must be >= 1, got {attempts}, {confirm}")
    if make is None:
        from .host import HostSystem
        make = functools.partial(HostSystem, needs=case.needs, observe_pages=pages)
    seen: dict[tuple, int] = {}
    last: Trace | None = None
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(random.uniform(0.05, 0.5))
        trace = run_on(case, make)
        trace.attempts = attempt
        if trace.skipped:
            return trace
        last = trace
        if not trace.exact:
            continue
        if not compare(model, trace):
            return trace
        key = tuple(_keys(trace))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= confirm:
            return trace            # the same disagreement again and again: the host means it
    assert last is not None
    last.exact = False              # no run was trusted: its counters prove nothing
    if compare(model, last, counters=False):
        return last                 # outcomes or data differ: noise cannot explain that
    last.skipped = (f"the pin counters gave no trusted figures in {attempts} attempts "
                    "(other processes pinning; outcomes and data agreed): rerun on a "
                    "quieter machine")
    return last


def _keys(trace: Trace) -> list[tuple]:
    return [s.key() for s in trace.steps]


def run_case(case: Case, with_host: bool = True,
             make_host: Callable[[], System] | None = None,
             version: str | None = None, pages: bool = False, *,
             make_model: Callable[[], System] | None = None,
             attempts: int = HOST_ATTEMPTS, confirm: int = HOST_CONFIRM) -> Result:
    """Run a case on the model and (unless told not to, or the host cannot) the host.

    `make_host` replaces the host back-end (tests use it to stand in a lying probe);
    it is then used whatever the host's capabilities. `version` is the model's kernel
    profile (`gupsim.KERNEL_VERSIONS`; default the newest). `pages`: every step also
    records the page identity of the range it touched (`identity.py`), compared like
    the rest. `make_model` replaces the model back-end (the fuzzer's checks the
    invariants after every step; `pages` is then up to it); `attempts` and `confirm`
    are `run_host`'s (the fuzzer's shrinker trusts a single run).
    """
    from .era_expect import expectation_on
    from .model import ModelSystem
    model = run_on(case, make_model or functools.partial(
        ModelSystem, needs=case.needs, version=version, observe_pages=pages))
    result = Result(case, model, None, expectation_on(case, version)(model))
    if with_host:
        if make_host is None:
            from .host import host_skip_reason
            reason = host_skip_reason(case.needs)
            if reason:
                result.host = Trace("host", skipped=reason)
                return result
        from .userfile import ScenarioError
        try:
            result.host = run_host(case, model, make_host, attempts, confirm, pages=pages)
        except ScenarioError as e:      # raised on the host only: a disagreement
            if not e.is_users():
                raise
            e.trace.error = e.message
            result.host = e.trace
            result.differences.append(f"the scenario raised on the host only: {e.message}")
            return result
        if not result.host.skipped:
            from ..eras import host_profile
            result.host_problems = expectation_on(case, host_profile()[0])(result.host)
            result.differences = compare(model, result.host, counters=result.host.exact)
    return result
