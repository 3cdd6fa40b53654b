"""A wrong probe cannot pass: wrong expectations, lying back-ends and noise are all caught.

The comparison is only worth trusting if it can say "disagree". These tests feed it a
case whose documented outcome is wrong (on the model, and on the real host), back-ends
that report figures the model did not produce (consistently, or at random like noise),
and hand-built traces that differ in each observable.
"""

from __future__ import annotations

import random
import types
from dataclasses import replace

import pytest

from gupsim.scenarios import runner
from gupsim.scenarios.catalogue import all_of, catalogue, expect, pins_balance, step_pins
from gupsim.scenarios.host import host_skip_reason
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.protocol import Step, Trace
from gupsim.scenarios.runner import Case, Result, compare, run_case, run_host, run_on

BASE = Step("uring_register", "ok", 256, 0, 1024, 0)


def one_case(name: str) -> Case:
    (case,) = [c for c in catalogue() if c.name == name]
    return case


URING_1M = "account: io_uring 1MiB anon in VmPin"


@pytest.fixture
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_host pauses at random between attempts; not needed against a fake host."""
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(sleep=lambda s: None))


# -- hand-built traces -----------------------------------------------------------------------

def trace(*steps: Step, exact: bool = True) -> Trace:
    return Trace("t", list(steps), exact=exact)


@pytest.mark.parametrize("field,value", [
    ("outcome", "EFAULT"), ("acquired", 255), ("released", 1), ("vm_pin_kb", 2048),
    ("vm_lck_kb", 4), ("data", b"\x01"), ("op", "xdp_umem_reg"),
])
def test_compare_sees_every_observable(field: str, value: object) -> None:
    other = replace(BASE, **{field: value})
    diff = compare(trace(BASE), trace(other))
    assert len(diff) == 1 and diff[0].startswith("step 1 ")
    assert compare(trace(BASE), trace(BASE)) == []


def test_compare_sees_a_missing_step() -> None:
    diff = compare(trace(BASE, BASE), trace(BASE))
    assert diff == ["the model took 2 steps, the host 1"]


def test_compare_without_counters_still_sees_outcomes_and_data() -> None:
    noisy = replace(BASE, acquired=999, released=5)
    assert compare(trace(BASE), trace(noisy), counters=False) == []
    assert compare(trace(BASE), trace(replace(noisy, outcome="ENOMEM")), counters=False)
    assert compare(trace(BASE), trace(replace(noisy, data=b"x")), counters=False)


def test_a_result_with_any_problem_is_a_disagreement() -> None:
    case = one_case(URING_1M)
    ok = trace(BASE)
    assert Result(case, ok, ok).status == "agree"
    assert Result(case, ok, ok, model_problems=["x"]).status == "disagree"
    assert Result(case, ok, ok, host_problems=["x"]).status == "disagree"
    assert Result(case, ok, ok, differences=["x"]).status == "disagree"
    assert Result(case, ok, None).status == "model-only"
    assert Result(case, ok, Trace("host", skipped="no")).status == "skipped"


# -- a wrong expectation -------------------------------------------------------------------

def wrong(case: Case, check) -> Case:
    return replace(case, name=case.name + " (wrong expectation)", expect=check)


def test_a_wrong_expectation_fails_on_the_model() -> None:
    case = wrong(one_case(URING_1M), all_of(expect(uring_register="EFAULT"), pins_balance))
    result = run_case(case, with_host=False)
    assert result.status == "disagree"
    assert result.model_problems == ["uring_register: ok, documented EFAULT"]


@pytest.mark.host
@pytest.mark.parametrize("check,problem", [
    (expect(uring_register="EFAULT"), "uring_register: ok, documented EFAULT"),
    (step_pins("uring_register", acquired=255), "uring_register: acquired 256, documented 255"),
    (step_pins("uring_unregister", vm_pin_kb=4), "uring_unregister: VmPin 0, documented 4"),
])
def test_a_wrong_expectation_fails_on_the_host(check, problem: str) -> None:
    case = wrong(one_case(URING_1M), check)
    reason = host_skip_reason(case.needs)
    if reason:
        pytest.skip(f"host cannot: {reason}")
    result = run_case(case)
    if result.host is not None and result.host.skipped:
        pytest.skip(f"host: {result.host.skipped}")
    assert result.status == "disagree"
    assert result.host_problems == [problem]
    assert result.model_problems == [problem]
    assert result.differences == []      # model and host agree with each other, not the doc


# -- lying back-ends -------------------------------------------------------------------------

class Lying(ModelSystem):
    """The model, reporting one more pin acquired than happened at the first pinning step."""

    name = "host"

    def close(self) -> None:
        super().close()
        self.trace.backend = "host"
        for i, s in enumerate(self.trace.steps):
            if s.acquired:
                self.trace.steps[i] = replace(s, acquired=s.acquired + 1)
                break


class Noisy(ModelSystem):
    """The model, with random extra pins in a random step, as another process would add."""

    name = "host"

    def close(self) -> None:
        super().close()
        i = random.randrange(len(self.trace.steps))
        s = self.trace.steps[i]
        self.trace.steps[i] = replace(s, acquired=s.acquired + random.randrange(1, 10**6))


class NoisyAndWrong(ModelSystem):
    """Counters flagged as noisy, and an outcome that differs (which noise cannot cause)."""

    name = "host"

    def close(self) -> None:
        super().close()
        self.trace.exact = False
        self.trace.steps[-1] = replace(self.trace.steps[-1], outcome="EIO")


def test_a_consistently_lying_host_is_reported_as_disagreeing(no_pauses) -> None:
    result = run_case(one_case(URING_1M), make_host=Lying)
    assert result.status == "disagree"
    assert result.host is not None and result.host.exact
    assert result.host.attempts == runner.HOST_CONFIRM
    assert any("+257/-0" in d for d in result.differences), result.differences
    assert result.host_problems   # and the documented figure (256) convicts the host too


def test_noise_never_becomes_agreement(no_pauses) -> None:
    result = run_case(one_case(URING_1M), make_host=Noisy)
    assert result.status == "skipped"
    assert result.host is not None and not result.host.exact
    assert "no trusted figures" in result.host.skipped


def test_noise_cannot_hide_a_different_outcome(no_pauses) -> None:
    result = run_case(one_case(URING_1M), make_host=NoisyAndWrong)
    assert result.status == "disagree"
    assert result.host is not None and not result.host.exact and not result.host.skipped
    assert any("EIO" in d for d in result.differences)


def test_an_honest_host_agrees_at_the_first_attempt() -> None:
    class Honest(ModelSystem):
        name = "host"

    case = one_case(URING_1M)
    model = run_on(case, ModelSystem)
    host = run_host(case, model, Honest)
    assert host.attempts == 1 and host.exact and compare(model, host) == []


def test_run_host_rejects_nonsense() -> None:
    case = one_case(URING_1M)
    with pytest.raises(ValueError, match="attempts"):
        run_host(case, Trace("model"), ModelSystem, attempts=0)
