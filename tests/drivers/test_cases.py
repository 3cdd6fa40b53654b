"""drivers/cases.py: the pin_user_pages.rst cases as data a command can narrate.

Every case's steps pass their self-checks, carry a story and facts, and render as plain
data; the self-check is shown to fail when the right driver is swapped for the wrong one.
"""

from __future__ import annotations

import json

import pytest

from gupsim.drivers import cases
from gupsim.drivers.cases import CASES, CaseRun, run_cases


@pytest.fixture(scope="module")
def runs() -> dict[str, CaseRun]:
    return {name: fn() for name, fn in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_shows_what_the_kernel_documents(runs: dict[str, CaseRun],
                                                    name: str) -> None:
    """Right and wrong sides both have steps, each with a title, a story and facts, and
    every self-check holds (for the wrong side: it failed the documented way)."""
    run = runs[name]
    assert run.right and run.wrong and run.right_flags and run.wrong_flags
    bad = [(s.title, s.facts) for s in run.right + run.wrong if not s.ok]
    assert bad == [], bad
    assert all(s.title and s.story and s.facts for s in run.right + run.wrong)


def test_cases_render_as_plain_data(runs: dict[str, CaseRun]) -> None:
    """as_dict() is JSON (bytes shown as text), with the tour's step keys."""
    for run in runs.values():
        d = run.as_dict()
        text = json.dumps(d, default=lambda b: b.decode("latin-1"))
        assert d["ok"] is True and run.name in text
        assert set(d["right"][0]) == {"title", "story", "facts", "dump", "ok"}


def test_the_named_facts_tell_the_story(runs: dict[str, CaseRun]) -> None:
    """The headline figures: case 2's wrong side loses the device's write to the child,
    case 4's pin makes fork copy, case 5's get_user_pages() loses the file write."""
    lost = runs["2"].wrong[2].facts
    assert lost["child reads"] == b"RDMA-WRITE" and lost["parent reads"] != b"RDMA-WRITE"
    assert runs["4"].wrong[0].facts["fork_copy_pinned"] == 4
    assert runs["5"].wrong[0].facts["file reads after the cache is dropped"] == b"user"
    assert runs["5"].right[0].facts["file reads after the cache is dropped"] == b"KERN"


def test_the_self_check_fails_when_the_right_driver_is_the_wrong_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Swapping case 5's correct pattern for the INCORRECT one makes its right-side
    self-checks fail: the checks can fail."""
    monkeypatch.setattr(cases, "pin_and_write", cases.get_and_write_incorrect)
    run = cases.case5()
    assert [s.ok for s in run.right] == [False, False] and not run.ok


def test_run_cases_selects_and_refuses_unknown_names() -> None:
    assert [r.name for r in run_cases(["4"])] == ["case 4: struct page only"]
    with pytest.raises(ValueError, match="no case '6'"):
        run_cases(["6"])
