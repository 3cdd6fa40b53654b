"""The command line: the tour checks itself, `run` executes a scenario file, `bench` times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gupsim.bench import default_cases
from gupsim.cli import main
from gupsim.live import host_capabilities
from gupsim.live.settings import THP_ENABLED, hugepages_path, read_setting
from gupsim.tour import run_tour

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples"
              / "fork_with_pinned_buffer.py")


def test_every_tour_step_behaves_as_documented() -> None:
    steps = run_tour()
    assert len(steps) == 7
    assert [s.title for s in steps if not s.ok] == []


def test_run_a_scenario_file_on_the_model() -> None:
    out = CliRunner().invoke(main, ["run", "--json", EXAMPLE])
    assert out.exit_code == 0, out.output
    (result,) = json.loads(out.output)
    assert result["status"] == "model-only"
    steps = {s["op"]: s for s in result["model"]["steps"]}
    assert (steps["uring_register"]["acquired"], steps["uring_register"]["VmPin"]) == (1, 4)
    assert steps["uring_unregister"]["released"] == 1
    assert steps["uring_write_fixed"]["data"] == steps["read"]["data"] == "ff" * 4096


@pytest.mark.host
def test_run_a_scenario_file_on_both_back_ends() -> None:
    cap = host_capabilities()["io_uring"]
    if not cap:
        pytest.skip(f"host cannot: io_uring: {cap.reason}")
    out = CliRunner().invoke(main, ["run", "--host", "--json", EXAMPLE])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["status"] == "agree"


def test_run_refuses_a_file_without_a_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "empty.py"
    bad.write_text("X = 1\n")
    out = CliRunner().invoke(main, ["run", str(bad)])
    assert out.exit_code == 2 and "scenario(system)" in out.output


def test_bench_model_only_json_has_every_case_and_phase() -> None:
    out = CliRunner().invoke(main, ["bench", "--max-pages", "256", "--repeat", "1",
                                    "--min-time", "0", "--model-only", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    want = [(c.name, ph) for c in default_cases(256) for ph in c.phases]
    assert [(r["case"], r["phase"]) for r in rows] == want
    names = " | ".join(c.name for c in default_cases(256))
    for part in ("bulk", "-n 1 ", "-n 16 ", "THP", "hugetlb", "unpinned", "pinned", "fuzz",
                 "memory"):
        assert part in names
    for r in rows:                  # "min" is the best round: the highest rate for steps/s
        assert r["model_min"] > 0, r
        rate = r["unit"] == "steps/s"
        assert (r["model_median"] <= r["model_min"]) if rate else \
            (r["model_median"] >= r["model_min"]), r
    assert all(r["host_min"] is None and r["ratio"] is None and r["host_skipped"] for r in rows)
    assert {(r["rounds"], r["host_rounds"]) for r in rows} == {(1, 0)}   # --repeat 1
    assert {r["met"] for r in rows if r["goal"] and "x" in r["goal"]} == {None}


def test_bench_cases_round_huge_sizes_and_cap_pages_per_call() -> None:
    cases = {c.name: c for c in default_cases(1000, (1, 16, 3))}
    assert cases["THP 2 MiB"].params == {"pages": 512, "backing": "thp"}
    assert cases["-n 3 (3996 KiB)"].params == {"pages": 999, "n": 3}
    assert cases["-n 3 (3996 KiB)"].per == 333          # us/call: divided by the calls
    big = [c.name for c in default_cases(1 << 18) if c.workload == "bulk"]
    assert big[:3] == ["bulk 64 MiB", "bulk 256 MiB", "bulk 1 GiB"]


def test_bench_huge_page_goal_is_on_pin_and_unpin_together() -> None:
    """The issue's goal for THP and hugetlb is pin+unpin (io_uring unpins per folio, the
    model's unpin_user_pages() reads every entry); bulk 4 KiB pages have it per phase."""
    cases = {c.name: c for c in default_cases(1024)}
    for name in ("THP 4 MiB", "hugetlb 4 MiB"):
        assert [ph for ph in cases[name].phases if cases[name].goal.applies(ph)] \
            == ["pin+unpin"]
    bulk = cases["bulk 4 MiB"]
    assert all(bulk.goal.applies(ph) for ph in bulk.phases)


def test_bench_k_that_matches_nothing_is_a_usage_error() -> None:
    out = CliRunner().invoke(main, ["bench", "--model-only", "-k", "no such case"])
    assert out.exit_code == 2 and "no case name contains" in out.output


@pytest.mark.host
def test_bench_measures_the_host_beside_the_model() -> None:
    cap = host_capabilities()["io_uring"]
    if not cap:
        pytest.skip(f"host cannot: io_uring: {cap.reason}")
    knobs = [THP_ENABLED, hugepages_path()]
    before = [read_setting(k) for k in knobs]
    out = CliRunner().invoke(main, ["bench", "--max-pages", "256", "--repeat", "1",
                                    "--min-time", "0", "--json"])
    assert out.exit_code == 0, out.output
    assert [read_setting(k) for k in knobs] == before       # every setting restored
    rows = json.loads(out.output)
    for row in rows:
        if row["case"].startswith(("bulk", "-n", "unpinned", "pinned")):
            assert row["host_skipped"] == "", row   # io_uring works: these always run
        if row["host_skipped"]:
            continue
        if row["case"].startswith(("fuzz", "memory")):
            raise AssertionError(f"{row['case']} has no host side: {row}")
        assert row["host_min"] is not None and row["host_median"] >= row["host_min"]
        assert row["rounds"] >= 1 and row["host_rounds"] >= 1
        if row["host_min"] > 0:
            assert row["ratio"] == row["model_min"] / row["host_min"]
    bulk = {r["phase"]: r for r in rows if r["case"] == "bulk 1 MiB"}
    assert bulk["pin"]["host_min"] > 0 and bulk["unpin"]["host_min"] > 0


def test_bench_warms_both_sides_up_before_it_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """WARMUP_ROUNDS untimed rounds per side first (CPython specializes code only after
    it ran several times), then each timed round right after one untimed round; a
    host side that skips the case during the warm-up is not called again."""
    from contextlib import contextmanager

    from gupsim.bench import runner
    from gupsim.bench.cases import Case, Goal

    calls = {"model": 0}

    @contextmanager
    def workload():  # type: ignore[no-untyped-def]
        def round_() -> dict[str, float]:
            calls["model"] += 1
            return {"x": 1e-6}
        yield round_

    class Worker:
        def __init__(self, skip_after: int | None) -> None:
            self.rounds, self.skip_after = 0, skip_after

        def call(self, op: str, **kw: object) -> dict[str, object]:
            if op != "round":
                return {}
            self.rounds += 1
            if self.skip_after is not None and self.rounds > self.skip_after:
                return {"skip": "gone"}
            return {"ok": {"x": 2e-6}}

    monkeypatch.setitem(runner.WORKLOADS, "fake", workload)
    case = Case("fake", "fake", {}, "us/call", 1, ("x",), Goal("max", 10))
    worker = Worker(None)
    rows = runner.measure(case, 3, worker)  # type: ignore[arg-type]
    assert calls["model"] == runner.WARMUP_ROUNDS + 2 * 3
    assert worker.rounds == runner.WARMUP_ROUNDS + 2 * 3
    assert rows[0].model_min == pytest.approx(1.0) and rows[0].host_min == pytest.approx(2.0)
    calls["model"] = 0
    worker = Worker(2)                                 # skips on its third round
    rows = runner.measure(case, 3, worker)  # type: ignore[arg-type]
    assert worker.rounds == 3 and rows[0].host_skipped == "gone"
    assert calls["model"] == runner.WARMUP_ROUNDS + 2 * 3 and rows[0].host_min is None


def _fake_cases(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> list[Any]:
    """Three fake cases whose model rounds log their name: two that take turns, one
    that runs alone; a fake worker stands for the host's process."""
    from contextlib import contextmanager

    from gupsim.bench import runner
    from gupsim.bench.cases import Case, Goal

    def workload(name: str):  # type: ignore[no-untyped-def]
        @contextmanager
        def opened(**_: object):  # type: ignore[no-untyped-def]
            def round_() -> dict[str, float]:
                log.append(name)
                return {"x": 1e-6}
            yield round_
        return opened

    for name in ("a", "b", "c"):
        monkeypatch.setitem(runner.WORKLOADS, name, workload(name))
    return [Case("a", "a", {}, "us/call", 1, ("x",), Goal("max", 10), host=False),
            Case("c", "c", {}, "us/call", 1, ("x",), Goal("max", 10), host=False, alone=True),
            Case("b", "b", {}, "us/call", 1, ("x",), Goal("max", 10), host=False)]


def test_bench_takes_the_cases_rounds_in_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case's timed rounds come in PASSES slices, the cases taking turns, so that a
    slow stretch of the machine does not hold all of one case's rounds; a case that must
    run alone runs after them; the rows keep the cases' order."""
    from gupsim.bench import runner
    log: list[str] = []
    cases = _fake_cases(monkeypatch, log)
    rows = runner.run(cases, rounds=5, with_host=False, min_seconds=0.0)
    assert [r.case for r in rows] == ["a", "c", "b"]
    assert [r.rounds for r in rows] == [5, 5, 5]
    timed = log[2 * runner.WARMUP_ROUNDS:]             # after the warm-ups of a and b
    turns = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]
    assert turns == ["a", "b"] * runner.PASSES + ["c"]
    assert timed.count("a") == timed.count("b") == 2 * 5      # an untimed round before each


def test_bench_short_rounds_go_on_for_min_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --min-time a case of quick rounds takes more of them (at most MAX_ROUNDS);
    without, exactly --repeat."""
    from gupsim.bench import runner
    log: list[str] = []
    cases = _fake_cases(monkeypatch, log)[:1]
    runner.run(cases, rounds=2, with_host=False, min_seconds=0.05)
    assert log.count("a") == runner.WARMUP_ROUNDS + 2 * runner.MAX_ROUNDS
    log.clear()
    runner.run(cases, rounds=2, with_host=False, min_seconds=0.0)
    assert log.count("a") == runner.WARMUP_ROUNDS + 2 * 2


def test_bench_worker_keeps_several_workloads_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's worker answers rounds by workload id, closes one without the others,
    and closes every one left open when its input ends."""
    import io
    from contextlib import contextmanager

    from gupsim.bench import host_side, worker

    closed: list[int] = []

    @contextmanager
    def fake(n: int):  # type: ignore[no-untyped-def]
        try:
            yield lambda: {"x": float(n)}
        finally:
            closed.append(n)

    monkeypatch.setitem(host_side.WORKLOADS, "fake", fake)
    reqs = [{"op": "open", "id": 1, "workload": "fake", "params": {"n": 10}},
            {"op": "open", "id": 2, "workload": "fake", "params": {"n": 20}},
            {"op": "round", "id": 2}, {"op": "round", "id": 1}, {"op": "close", "id": 1},
            {"op": "round", "id": 1}, {"op": "round", "id": 2}]
    out = io.StringIO()
    worker.serve(io.StringIO("".join(json.dumps(r) + "\n" for r in reqs)), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[2:5] == [{"ok": {"x": 20.0}}, {"ok": {"x": 10.0}}, {"ok": None}]
    assert "no workload 1 is open" in replies[5]["skip"] and replies[6] == {"ok": {"x": 20.0}}
    assert closed == [10, 20]
