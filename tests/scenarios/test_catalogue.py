"""Every catalogue case, on the model and on the host kernel, against its documented outcome.

The model side always runs: each case must meet the expectation the kernel's selftests
and documentation give, and release every pin it took. The host side (marked `host`)
runs the same steps on this kernel: the host must meet the same expectation, and model
and host must agree step by step. A host that cannot run a case skips it with the reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gupsim.scenarios.catalogue import catalogue, pins_balance
from gupsim.scenarios.host import host_skip_reason
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.runner import Case, compare, run_host, run_on

CASES = catalogue()
IDS = [c.name for c in CASES]
# a case the model is known to get wrong (Case.model_gap) is a strict xfail on the model
# side: it fails the run as soon as the model is fixed, so the gap note gets removed
MODEL_CASES = [pytest.param(c, id=c.name, marks=pytest.mark.xfail(strict=True,
                                                                  reason=c.model_gap))
               if c.model_gap else pytest.param(c, id=c.name) for c in CASES]
REFERENCE = Path(os.environ.get("GUPSIM_REFERENCE",
                                Path(__file__).resolve().parents[3] / "shared" / "reference"))


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_meets_the_documented_outcome(case: Case) -> None:
    trace = run_on(case, ModelSystem)
    assert not trace.skipped, trace.skipped
    assert trace.steps, "the case recorded no steps"
    assert case.expect(trace) == []
    assert pins_balance(trace) == []


@pytest.mark.host
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_host_meets_it_and_agrees_with_the_model(case: Case) -> None:
    reason = host_skip_reason(case.needs)
    if reason:
        pytest.skip(f"host cannot: {reason}")
    model = run_on(case, ModelSystem)
    host = run_host(case, model)
    if host.skipped:
        pytest.skip(f"host: {host.skipped}")
    # an untrusted (noisy) host trace comes back only when its outcomes or data differ
    diff = compare(model, host, counters=host.exact)
    if case.model_gap:           # the host is the oracle: it must still meet the doc
        assert case.expect(host) == [], "the host does not do what the kernel documents"
        assert diff, f"the model now agrees: remove model_gap from {case.name!r}"
        pytest.xfail(f"known model gap: {case.model_gap}")
    assert diff == []
    assert host.exact
    assert case.expect(host) == [], "the host does not do what the kernel documents"


def test_the_catalogue_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 60
    dupes = sorted({n for n in IDS if IDS.count(n) > 1})
    assert not dupes, f"duplicate case names: {dupes}"


def test_every_case_says_why_it_runs_and_what_it_needs() -> None:
    from gupsim.live.capabilities import PROBES
    for case in CASES:
        assert callable(case.run) and callable(case.expect), case.name
        assert case.why, f"{case.name}: say which kernel path gives the figure"
        unknown = set(case.needs) - set(PROBES)
        assert not unknown, f"{case.name}: unknown host capabilities {unknown}"


# -- sources: every case names a row of selftests.md or a section of gup-spec.md ------------

def _sections(path: Path) -> dict[str, str]:
    """Section number ("3.2", "8") -> its text, including subsections for a top level."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in path.read_text().splitlines():
        m = re.match(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", line)
        if m:
            num = m[1]
            current = [num] if "." not in num else [num, num.split(".")[0]]
            for n in current:
                out.setdefault(n, [])
        for n in current:
            out[n].append(line)
    return {n: "\n".join(lines) for n, lines in out.items()}


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, str]]:
    docs = {"selftests": REFERENCE / "selftests.md", "spec": REFERENCE / "gup-spec.md"}
    missing = [str(p) for p in docs.values() if not p.is_file()]
    if missing:
        pytest.skip(f"reference documents not found: {missing} (set GUPSIM_REFERENCE)")
    return {name: _sections(path) for name, path in docs.items()}


SOURCE = re.compile(r"^(selftests|spec) (\d+(?:\.\d+)?) (.+)$")


def source_problem(source: str, reference: dict[str, dict[str, str]]) -> str:
    """Why `source` does not name a real row or section (or "" if it does)."""
    m = SOURCE.match(source)
    if not m:
        return "must read 'selftests <section> <row>' or 'spec <section> <title or #item>'"
    doc, num, rest = m[1], m[2], m[3]
    text = reference[doc].get(num)
    if text is None:
        return f"{doc} has no section {num}"
    flat = " ".join(text.replace("`", "").split()).lower()
    if doc == "spec":
        item = re.fullmatch(r"#(\d+)", rest)
        if item and not re.search(rf"^{item[1]}\. ", text, re.M):
            return f"spec {num} has no item {item[1]}"
        return ""
    for part in rest.split(" / "):
        part = part.removeprefix("... ").strip().lower()
        if part not in flat:
            return f"selftests {num} has no row {part!r}"
    return ""


def test_every_source_names_a_row_or_section(reference) -> None:
    bad = {c.name: p for c in CASES if (p := source_problem(c.source, reference))}
    assert not bad, bad


def test_the_source_check_can_fail(reference) -> None:
    assert source_problem("selftests 3.2 Basic COW after fork()", reference) == ""
    assert source_problem("selftests 3.2 Basic COW after vfork()", reference)
    assert source_problem("selftests 9.9 Basic COW after fork()", reference)
    assert source_problem("spec 11.2 #99", reference)
    assert source_problem("O_DIRECT extras", reference)
