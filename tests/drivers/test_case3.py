"""drivers/case3.py: the case-3 records tell the story, and their self-checks can fail."""

from __future__ import annotations

import pytest

from gupsim.drivers import case3 as case3_mod
from gupsim.drivers.cases import CASES, run_cases
from gupsim.drivers.hmm_mirror import DmirrorIgnoringInvalidation


def test_case3_is_listed_and_passes() -> None:
    """Both case-3 entries are in CASES and every step's self-check holds."""
    runs = run_cases(["3", "3-userptr"])
    assert "3" in CASES and "3-userptr" in CASES
    assert all(r.ok for r in runs)


def test_case3_headline_facts() -> None:
    """The wrong mirror reads the child's page after COW and another process's data after
    munmap; the right one pins nothing and reads what the process maps."""
    run = CASES["3"]()
    assert run.right[0].facts["nr_foll_pin_acquired"] == 0
    assert run.right[1].facts["device read"] == b"parent"
    assert run.wrong[1].facts["device read"] == run.wrong[1].facts["child reads"]
    assert run.wrong[3].facts["device read another process's data"]
    up = CASES["3-userptr"]()
    assert up.right[1].facts["GPU read"] == b"fresh" and up.wrong[1].facts["GPU read"] != b"fresh"


def test_the_self_check_fails_with_the_wrong_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the right side the mirror that ignores invalidations: its checks fail."""
    def always_wrong(device, proc, *, ignore_invalidation=False):  # type: ignore[no-untyped-def]
        return DmirrorIgnoringInvalidation(device, proc)

    monkeypatch.setattr(case3_mod, "dmirror_open", always_wrong)
    run = case3_mod.case3()
    assert not all(s.ok for s in run.right) and not run.ok
