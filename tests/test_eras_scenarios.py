"""Each era's headline failure as a runnable scenario (examples/eras/ and the fork
example), `gupsim run --kernel`, and `gupsim eras FILE-or-CASE` (one column per era)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.eras import KERNEL_VERSIONS, Era
from gupsim.scenarios.across_eras import load_target, run_across
from gupsim.scenarios.userfile import load_scenario

ROOT = Path(__file__).resolve().parent.parent
FORK = str(ROOT / "examples" / "fork_with_pinned_buffer.py")
ERAS = ROOT / "examples" / "eras"


def _fails_on(version: str, failing: tuple[tuple[str, str | None], ...]) -> bool:
    """Whether `version` lies in one of the [first, end) ranges."""
    key = Era(version).key
    return any(Era(a).key <= key and (b is None or key < Era(b).key) for a, b in failing)


# example -> the eras on which its expectation fails (the headline failure), as ranges
HEADLINES = {
    FORK: (("5.6", "5.9"),),
    str(ERAS / "ro_pin_after_fork.py"): (("5.6", "5.8"), ("5.9", "5.19")),
    str(ERAS / "vmsplice_after_fork.py"): (("5.1", "5.8"),),
    str(ERAS / "ext4_longterm_pin.py"): (("5.6", "6.5"),),
    str(ERAS / "gup_fast_fork_race.py"): (("5.6", "5.11"),),
    str(ERAS / "dirty_cow_shmem.py"): (("5.1", "6.0"),),
}


@pytest.mark.parametrize("example", sorted(HEADLINES), ids=lambda p: Path(p).stem)
def test_headline_failure_on_exactly_its_eras(example: str) -> None:
    run = run_across(load_scenario(example))
    failing = {v for v, problems in run.problems.items() if problems}
    want = {v for v in run.traces if _fails_on(v, HEADLINES[example])}
    assert failing == want
    # eras before pin_user_pages*() cannot run a pinning scenario: told, not crashed
    assert all("appeared in v5.6" in why for why in run.errors.values())
    assert set(run.traces) | set(run.errors) == set(KERNEL_VERSIONS)


def test_every_era_example_is_in_the_headline_table() -> None:
    assert {str(p) for p in ERAS.glob("*.py")} <= set(HEADLINES)


def test_run_kernel_picks_the_era() -> None:
    r = CliRunner().invoke(main, ["run", "--kernel", "5.8", FORK], terminal_width=80)
    assert r.exit_code == 1, r.output
    assert "differ after fork" in r.output
    r = CliRunner().invoke(main, ["run", "--kernel", "5.9", FORK], terminal_width=80)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("bad, says", [("5.10", "'5.9' and '5.11'"), ("five", "major.minor")])
def test_run_kernel_rejects_a_version_that_is_not_a_profile(bad: str, says: str) -> None:
    r = CliRunner().invoke(main, ["run", "--kernel", bad, FORK])
    assert r.exit_code == 2 and says in r.output, r.output


def test_cli_eras_file_json_marks_the_differing_steps() -> None:
    r = CliRunner().invoke(main, ["eras", str(ERAS / "vmsplice_after_fork.py"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["versions"] == list(KERNEL_VERSIONS)
    pipe = {v: e["steps"][5] for v, e in data["eras"].items()}
    assert all(s["op"] == "pipe_read" for s in pipe.values())
    assert bytes.fromhex(pipe["5.7"]["data"]).startswith(b"secret")
    assert bytes.fromhex(pipe["5.9"]["data"]) == b"\x01" * 4096
    assert data["differs"] == [6]
    assert data["eras"]["5.7"]["problems"] and not data["eras"]["5.9"]["problems"]


def test_cli_eras_file_table_fits_80_columns() -> None:
    """Eras that behave alike share a column ("5.9-6.17"), so 16 eras fit 80 columns."""
    r = CliRunner().invoke(main, ["eras", FORK], terminal_width=80, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert max(len(ln) for ln in r.output.splitlines()) <= 80
    header = next(ln for ln in r.output.splitlines() if "step" in ln)
    assert [c.strip() for c in header.split("┃")[3:-1]] == ["5.1", "5.6", "5.7-5.8",
                                                             "5.9-6.17"]
    marked = [ln for ln in r.output.splitlines() if "≠" in ln]
    assert any("uring_write_fixed" in ln for ln in marked)
    assert not any(" fork " in ln for ln in marked)
    assert "5.6-5.8: the pinned page and the parent's memory differ after fork" in r.output
    assert "5.9-6.17: as expected" in r.output


def test_cli_eras_catalogue_case_and_bad_targets() -> None:
    from gupsim.scenarios.catalogue import catalogue
    name = catalogue()[0].name
    assert load_target(name).name == name
    r = CliRunner().invoke(main, ["eras", name, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["case"] == name
    for bad in ("no such case at all", "a"):
        r = CliRunner().invoke(main, ["eras", bad])
        assert r.exit_code == 2, r.output
