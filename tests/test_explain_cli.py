"""`gupsim explain FILE --step N`: the frames held after a scenario step, each with its
holders' call sites in the scenario file and what they block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fork_with_pinned_buffer.py"


def register_line() -> int:
    lines = EXAMPLE.read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if "uring_register(" in line)


def test_after_the_fork_the_pinned_buffer_names_its_register_call() -> None:
    out = CliRunner().invoke(main, ["explain", str(EXAMPLE), "--step", "3", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["op"].startswith("fork")
    [frame] = got["frames"]
    [g] = frame["gup"]
    assert g["how"] == "FOLL_PIN" and g["longterm"]
    assert g["site"].endswith(f"fork_with_pinned_buffer.py:{register_line()} in scenario")
    assert "copied for the child" in frame["consequences"]["fork"]
    assert not frame["movable"]


def test_before_the_register_nothing_is_held_and_pfn_explains_one_frame() -> None:
    out = CliRunner().invoke(main, ["explain", str(EXAMPLE), "--step", "1"])
    assert out.exit_code == 0, out.output
    assert "no frame is held by GUP" in out.output
    out = CliRunner().invoke(main, ["explain", str(EXAMPLE), "--step", "1", "--pfn", "0x0",
                                    "--json"])
    assert out.exit_code == 0, out.output
    [frame] = json.loads(out.output)["frames"]
    assert frame["pfn"] == 0 and frame["kind"] == "ZERO" and not frame["movable"]


def test_a_step_past_the_end_says_how_many_there_are() -> None:
    out = CliRunner().invoke(main, ["explain", str(EXAMPLE), "--step", "999"])
    assert out.exit_code == 2 and "choose --step between 1 and" in out.output


def test_the_text_folds_to_80_columns_without_cutting_the_call_site(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Long lines (a call site's path, a consequence) fold between words under their
    own indent; the path of the scenario file stays whole."""
    monkeypatch.setenv("COLUMNS", "80")
    out = CliRunner().invoke(main, ["explain", str(EXAMPLE), "--step", "3"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    site = f"{EXAMPLE}:{register_line()} in scenario"
    assert any(line.strip().startswith(site) for line in lines), out.output
    assert [line for line in lines if len(line) > 80 and not line.strip().startswith(site)
            ] == []             # only a path too long for any line may pass 80 columns
    assert "maybe_dma_pinned True" in out.output
