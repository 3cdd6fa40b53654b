"""`gupsim cases`: every case's right driver and wrong twin self-check, JSON parses, a
failing self-check exits 1 and an empty selection is a usage error (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.drivers import cases as case_list
from gupsim.drivers.cases import CaseRun, CaseStep
from gupsim.report.cases import WHICH_CASE


@pytest.mark.parametrize("key", list(case_list.CASES))
def test_every_step_of_every_case_passes_its_self_check(key: str) -> None:
    run = case_list.CASES[key]()
    assert run.right and run.wrong, f"case {key} needs a right and a wrong driver"
    failed = [s.title for s in run.right + run.wrong if not s.ok]
    assert failed == [], f"case {key}: {failed}"


def test_case_1_direct_io_read_lands_in_the_parent_only_when_pinned() -> None:
    run = case_list.CASES["1"]()
    (right,), (wrong,) = run.right, run.wrong
    assert right.facts["parent reads"] == wrong.facts["child reads"] == b"DDDD"
    assert right.facts["child reads"] == wrong.facts["parent reads"] == b"uuuu"
    assert right.facts["page_maybe_dma_pinned during the I/O"] is True
    assert wrong.facts["page_maybe_dma_pinned during the I/O"] is False


def test_json_lists_every_case_with_its_steps_and_the_summary() -> None:
    out = CliRunner().invoke(main, ["cases", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    assert [c["case"] for c in doc["which_case"]] == ["1", "2", "3", "4", "5"]
    assert len(doc["cases"]) == len(case_list.CASES)
    for case in doc["cases"]:
        assert case["right"] and case["wrong"]
        assert all(step["ok"] for step in case["right"] + case["wrong"])


def test_text_fits_80_columns_and_names_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = CliRunner().invoke(main, ["cases", "-k", "1"])
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "which case is my driver?" in text and "FOLL_LONGTERM" in text
    assert "case 1: Direct IO" in text and "right driver" in text and "wrong driver" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "case 2: RDMA" not in text          # -k selected one case


def test_every_case_prints_in_80_columns_with_no_control_characters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes a step read are text when printable, hex otherwise (the device reading a
    freed frame shows its zeros, not six invisible NULs that widen the line)."""
    monkeypatch.setenv("COLUMNS", "80")
    out = CliRunner().invoke(main, ["cases"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not [line for line in lines if not line.isprintable()]
    assert any(line.split()[-6:] == ["00"] * 6 for line in lines if "device read" in line)


def test_k_selects_by_description_text() -> None:
    out = CliRunner().invoke(main, ["cases", "--json", "-k", "rdma"])
    assert out.exit_code == 0, out.output
    names = [c["name"] for c in json.loads(out.stdout)["cases"]]
    assert names and all("RDMA" in n for n in names)


def test_a_failing_self_check_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> CaseRun:
        """Case 9, a deliberately broken demonstration."""
        return CaseRun("case 9: broken", "FOLL_PIN", "FOLL_GET", "",
                       [CaseStep("pins", "", {"pins": 0}, ok=False)],
                       [CaseStep("refs", "", {}, ok=True)])

    monkeypatch.setitem(case_list.CASES, "9", broken)
    out = CliRunner().invoke(main, ["cases", "-k", "9"])
    assert out.exit_code == 1, out.output
    assert "self-check failed" in out.stdout
    out = CliRunner().invoke(main, ["cases", "-k", "9", "--json"])
    assert out.exit_code == 1 and json.loads(out.stdout)["ok"] is False


@pytest.mark.parametrize("pattern", ["nothing-like-this", " "])
def test_a_selection_of_nothing_is_a_usage_error(pattern: str) -> None:
    out = CliRunner().invoke(main, ["cases", "-k", pattern])
    assert out.exit_code == 2, out.output
    assert "-k" in out.output


def test_the_summary_names_the_documented_flags() -> None:
    flags = {case: f for case, _, f, _ in WHICH_CASE}
    assert flags["1"] == flags["5"] == "FOLL_PIN"
    assert flags["2"] == "FOLL_PIN | FOLL_LONGTERM" and flags["4"] == "FOLL_GET"


def test_a_regression_in_a_real_driver_fails_its_step_and_exits_1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-checks judge what the model does, not a flag set by hand: a mirror that
    stops erasing its entries on invalidation makes case 3's right driver read stale
    data after fork and COW, and the command fails naming that step."""
    from gupsim.drivers.hmm_mirror import Dmirror

    monkeypatch.setattr(Dmirror, "_do_update", lambda self, start, end: None)
    out = CliRunner().invoke(main, ["cases", "-k", "3", "--json"])
    assert out.exit_code == 1, out.output
    (case,) = json.loads(out.stdout)["cases"]
    failed = [s["title"] for s in case["right"] if not s["ok"]]
    assert failed and failed[0].startswith("fork(), the parent writes (COW)"), failed
    assert all(s["ok"] for s in case["wrong"])   # the twin still fails as it should
