"""The command line: the tour checks itself, `run` executes a scenario file, `bench` times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.live import host_capabilities
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


def test_bench_reports_the_model_and_why_the_host_was_skipped() -> None:
    out = CliRunner().invoke(main, ["bench", "--max-pages", "256", "--repeat", "1",
                                    "--model-only", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [(r["workload"], r["pages"]) for r in rows] == [("prefaulted", 256),
                                                          ("untouched", 256)]
    assert all(r["model_pin"] > 0 and r["model_unpin"] > 0 for r in rows)
    assert all(r["host_pin"] is None and "model-only" in r["host_skipped"] for r in rows)


@pytest.mark.host
def test_bench_measures_the_host_beside_the_model() -> None:
    cap = host_capabilities()["io_uring"]
    if not cap:
        pytest.skip(f"host cannot: io_uring: {cap.reason}")
    out = CliRunner().invoke(main, ["bench", "--max-pages", "256", "--repeat", "1", "--json"])
    assert out.exit_code == 0, out.output
    for row in json.loads(out.output):
        assert row["host_skipped"] == ""        # the host really pinned all 256 pages
        assert row["host_pin"] > 0 and row["ratio"] == row["model_pin"] / row["host_pin"]
