"""`gupsim fuzz`: the generator covers the declared protocol, programs are data that
replay exactly as scenario files, shrinking finds the minimal failing program, and a
short campaign runs clean on the model (with the invariants checked) and on the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.fuzz.campaign import campaign, evaluate
from gupsim.fuzz.generate import Generator
from gupsim.fuzz.program import Call, Fill, Program, Ref
from gupsim.fuzz.shrink import shrink
from gupsim.scenarios.model import ModelProc, ModelSystem
from gupsim.scenarios.ops import OPS
from gupsim.scenarios.runner import run_case, run_on
from gupsim.scenarios.userfile import ScenarioError, load_scenario

SEED = 2026


def test_the_same_seed_gives_the_same_programs_and_another_seed_others() -> None:
    a = [Generator(SEED).program(n, 12).source() for n in range(10)]
    b = [Generator(SEED).program(n, 12).source() for n in range(10)]
    c = [Generator(SEED + 1).program(n, 12).source() for n in range(10)]
    assert a == b
    assert a != c


def test_every_declared_operation_is_drawn() -> None:
    """An operation declared in ops.py joins the fuzzer by its declaration alone: if one
    is never drawn (or its arguments cannot be), this fails and names it."""
    gen = Generator(SEED)
    seen = {call.op for n in range(300) for call in gen.program(n, 20).calls}
    assert set(OPS) - seen == set()


def test_a_host_campaign_never_draws_a_model_only_operation() -> None:
    """uffd_continue has no host primitive: drawing it against the host would only turn
    programs into skips; a model-only campaign still draws it."""
    host = Generator(SEED, allowed=lambda need: need != "model_only")
    drawn = {c.op for n in range(300) for c in host.program(n, 20).calls}
    assert "uffd_continue" not in drawn and "uring_register" in drawn
    model = {c.op for n in range(300) for c in Generator(SEED).program(n, 20).calls}
    assert "uffd_continue" in model


def test_invalid_arguments_are_drawn_too() -> None:
    """Zero lengths and unaligned offsets reach the pinning operations."""
    calls = [c for n in range(200) for c in Generator(SEED).program(n, 20).calls]
    ranged = [c for c in calls if c.op in ("odirect_read", "odirect_write", "mprotect",
                                           "madvise", "vmsplice")]
    assert any(c.arg("length") == 0 for c in ranged)
    assert any(c.arg("offset") % 4096 for c in ranged)
    assert any(c.arg("length") % 4096 == 0 and c.arg("length") > 0 for c in ranged)


def test_without_drops_the_calls_that_use_what_a_dropped_call_made() -> None:
    p = Program([Call("p0", "map", (("kind", "anon"), ("length", 4096)), "r1"),
                 Call("p0", "fork", (), "p2"),
                 Call("p2", "read", (("region", Ref("r1")), ("offset", 0), ("n", 1))),
                 Call("p0", "write", (("region", Ref("r1")), ("offset", 0),
                                      ("data", Fill(7, 1))))])
    assert [c.op for c in p.without([1]).calls] == ["map", "write"]
    assert p.without([0]).calls == [p.calls[1]]


def test_a_written_program_replays_as_the_fuzzer_ran_it(tmp_path: Path) -> None:
    gen = Generator(SEED)
    program = max((gen.program(n, 15) for n in range(20)), key=lambda p: len(p.calls))
    f = tmp_path / "prog.py"
    f.write_text(program.source())
    from_file = run_on(load_scenario(str(f)), ModelSystem)
    in_fuzzer = run_on(program.case(), ModelSystem)
    assert len(from_file.steps) > 5 and from_file.ended == in_fuzzer.ended
    if not from_file.ended:             # a refusal that raises (EPERM) ends it early
        assert len(from_file.steps) == len(program.calls)
    assert [s.key() for s in from_file.steps] == [s.key() for s in in_fuzzer.steps]


def test_shrinking_keeps_only_what_the_failure_needs() -> None:
    """A predicate that fails on any zero-length O_DIRECT write of a mapped region: the
    shrunk program is one map and that write (with the map's arguments simplified)."""
    gen = Generator(SEED)

    def fails(p: Program) -> bool:
        made = {c.makes for c in p.calls if c.op == "map"}
        return any(c.op == "odirect_write" and c.arg("length") == 0
                   and c.arg("region").name in made for c in p.calls)

    program = next(p for n in range(500) if fails(p := gen.program(n, 20))
                   and len(p.calls) > 6)
    small = shrink(program, fails, budget=500)
    assert [c.op for c in small.calls] == ["map", "odirect_write"]
    assert small.calls[0].arg("populate") is False      # simplified from any value
    assert f"shrunk from {len(program.calls)} to 2 calls" in small.note


def test_model_only_campaign_checks_invariants_and_runs_clean() -> None:
    report = campaign(SEED, 20, 12, with_host=False)
    assert report.status == {"model-only": 20}, report.as_dict()
    assert report.model_steps > 20


def test_a_model_crash_is_found_shrunk_and_written(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A model primitive that raises (a stand-in for a model bug) is a crash finding,
    shrunk to the calls it needs and written as a scenario file that reproduces it."""
    def broken(self: ModelProc, addr: int, length: int) -> int:
        raise RuntimeError("a model bug")

    monkeypatch.setattr(ModelProc, "do_vmsplice", broken)
    report = campaign(SEED, 30, 12, with_host=False, out=str(tmp_path))
    assert report.status["crash"] > 0
    assert report.classes == {"crash: RuntimeError at vmsplice": report.status["crash"]}
    (finding,) = report.findings
    assert [c.op for c in finding.program.calls] == ["map", "vmsplice"]
    with pytest.raises(ScenarioError, match="RuntimeError: a model bug"):
        run_case(load_scenario(finding.file), with_host=False)


def test_a_broken_invariant_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model-only check runs after every step: a machine that reports a violation
    makes the program a crash, classed at the first step (a map)."""
    program = next(p for n in range(50) if (p := Generator(SEED).program(n, 8)).calls
                   and p.calls[0].op == "map")
    monkeypatch.setattr("gupsim.kernel.Kernel.check",
                        lambda self: ["pins-balance: a made-up violation"])
    verdict = evaluate(program, with_host=False)
    assert verdict.status == "crash"
    assert verdict.cls == f"invariant at map {program.calls[0].arg('kind')}"
    assert "made-up violation" in verdict.detail


def test_cli_json(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["fuzz", "--model-only", "--programs", "5", "--seed",
                                    str(SEED), "--json", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    d = json.loads(out.stdout)
    assert d["status"] == {"model-only": 5}
    assert d["mode"] == "model only" and d["model_steps_per_s"] > 0
    assert d["findings"] == [] and list(tmp_path.iterdir()) == []


@pytest.mark.host
def test_host_campaign_agrees_and_leaves_no_pin(tmp_path: Path) -> None:
    """Five programs on this kernel: each agrees with the model (or is skipped with its
    reason), and the machine's outstanding pins are back where they were."""
    from gupsim.fuzz.command import host_allowed
    from gupsim.scenarios.host import host_skip_reason
    if reason := host_skip_reason(()):
        pytest.skip(reason)
    report = campaign(SEED, 5, 10, with_host=True, out=str(tmp_path),
                      allowed=host_allowed())
    assert report.status["disagree"] == report.status["crash"] == 0, report.as_dict()
    assert report.status["agree"] >= 3, report.as_dict()
    assert report.pins_left == 0


def test_written_programs_are_short_lined_python() -> None:
    """Scenario files fit the project's line length (they are kept as regression cases)
    and every name they assign is used."""
    gen = Generator(SEED)
    for n in range(100):
        program = gen.program(n, 20)
        source = program.source()
        compile(source, "<test>", "exec")
        assert max(len(line) for line in source.splitlines()) <= 100


def test_a_disagreement_is_classed_by_its_first_differing_step() -> None:
    """The class names the operation (sizes left out, an advice by name) and the
    observables that differ, so that one model bug counts as one class."""
    from gupsim.fuzz.campaign import _disagreement
    from gupsim.scenarios.protocol import Step, Trace
    from gupsim.scenarios.runner import Case, Result, compare

    same = Step("map anon 8KiB writable", "ok", 0, 0, 0, 0)
    model = Trace("model", [same, Step("madvise 14", "EINVAL", 0, 0, 0, 0),
                            Step("uring_register", "ok", 2, 0, 8, 0)])
    host = Trace("host", [same, Step("madvise 14", "ok", 0, 0, 0, 0),
                          Step("uring_register", "ok", 2, 0, 16, 0)])
    result = Result(Case("c", lambda s: None, lambda t: [], "test"), model, host,
                    differences=compare(model, host))
    cls, detail = _disagreement(result)
    assert cls == "madvise MADV_HUGEPAGE: outcome"
    assert "step 2" in detail and "step 3" in detail
