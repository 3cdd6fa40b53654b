"""`gupsim run FILE` when the scenario goes wrong: its own error is one line naming the
file and line (exit 2, no traceback of gupsim or click), a step that faults on one
back-end only is a disagreement (exit 1), and what the scenario left (pins held, the
model's sanitizer reports and warnings) is shown in the table and in `--json`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.runner import run_case
from gupsim.scenarios.userfile import ScenarioError, load_scenario

NARROW = {"COLUMNS": "80", "LINES": "50"}


def invoke(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command, run in-process."""
    out = CliRunner().invoke(main, list(args), env=NARROW)
    return out.exit_code, out.stdout, out.stderr


def scenario_file(tmp_path: Path, body: str, name: str = "scn.py") -> Path:
    """A scenario file in tmp_path with `body` dedented."""
    f = tmp_path / name
    f.write_text(textwrap.dedent(body).lstrip("\n"))
    return f


def line_of(f: Path, text: str) -> int:
    """The 1-based line of the first line of `f` containing `text`."""
    return next(i for i, line in enumerate(f.read_text().splitlines(), 1) if text in line)


def assert_one_message(err: str, f: Path, line: int, kind: str) -> None:
    """stderr starts with `FILE:LINE: Kind: ...`, and shows no gupsim or click frame."""
    first = err.splitlines()[0]
    assert first.startswith(f"{f}:{line}: {kind}"), err
    assert "Traceback" not in err and "click" not in err and "site-packages" not in err, err
    assert "gupsim/" not in err.replace(str(f), ""), err


# -- the scenario's own errors: exit 2, one line ------------------------------------------------

def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            if p
                pass
    """)
    code, out, err = invoke("run", str(f))
    assert code == 2, err
    assert_one_message(err, f, 3, "SyntaxError")
    assert out == ""


def test_a_name_error_at_line_n_with_the_scenarios_frames_only(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            r = p.map("anon", 4096)
            fill(p, r)

        def fill(p, r):
            p.write(r, 0, b"x")
            p.write(r, 0, missing_name)
    """)
    code, out, err = invoke("run", str(f))
    assert code == 2, err
    assert_one_message(err, f, line_of(f, "missing_name"), "NameError")
    assert "missing_name" in err.splitlines()[0]
    frames = [ln.strip() for ln in err.splitlines()[1:] if ln.startswith("  ")]
    assert frames == [f"{f}:{line_of(f, 'fill(p, r)')} in scenario: fill(p, r)",
                      f"{f}:{line_of(f, 'missing_name')} in fill: p.write(r, 0, missing_name)"]


def test_an_error_while_loading_the_file_is_the_scenarios_too(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        import gupsim
        LIMIT = 1 // 0

        def scenario(system):
            pass
    """)
    code, _, err = invoke("run", str(f))
    assert code == 2, err
    assert_one_message(err, f, 2, "ZeroDivisionError")


def test_a_bad_protocol_argument_is_a_protocol_error_at_the_calling_line(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            r = p.map("anon", 4096)
            p.read(r, 0, 99999)
    """)
    code, _, err = invoke("run", str(f))
    assert code == 2, err
    assert_one_message(err, f, 4, "ProtocolError")
    assert "outside the region" in err


def test_a_wrong_type_to_the_model_is_a_type_error_at_the_calling_line(tmp_path: Path) -> None:
    """A scenario that reaches into the model with a bad argument: the check's TypeError."""
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            if system.name == "model":
                system.k.unpin_user_page("not a page")
    """)
    code, _, err = invoke("run", str(f))
    assert code == 2, err
    assert_one_message(err, f, 4, "TypeError")
    assert "unpin_user_page(): page must be a gupsim.Page" in err


@pytest.mark.parametrize(("body", "kind", "at"), [
    ("    return [1 / 0]", "ZeroDivisionError", "1 / 0"),
    ("    return 'one problem'", "TypeError", "def expect"),
    ("    return None", "TypeError", "def expect"),
])
@pytest.mark.parametrize("command", [["run"], ["run", "--json"], ["eras"]])
def test_an_error_in_expect_is_the_scenarios_own(tmp_path: Path, body: str, kind: str,
                                                 at: str, command: list[str]) -> None:
    """expect(trace) is the user's code too: its exception, or a return that is not a
    list of strings, is `FILE:LINE: Type: message` and exit 2, not gupsim's traceback."""
    f = scenario_file(tmp_path, "def scenario(system):\n    system.spawn('a')\n\n\n"
                      f"def expect(trace):\n{body}\n")
    code, out, err = invoke(*command, str(f))
    assert code == 2, err
    assert_one_message(err, f, line_of(f, at), kind)
    if kind == "TypeError":
        assert "return a list of strings" in err
    assert out == ""


def test_eras_tells_a_scenario_that_fails_on_every_era_as_its_own_error(
        tmp_path: Path) -> None:
    """Not a table of eras that all say "not run" and exit 0: the one message, exit 2."""
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            p.map("anon", 4096)
            raise RuntimeError("mine")
    """)
    code, out, err = invoke("eras", str(f))
    assert code == 2, err
    assert_one_message(err, f, 4, "RuntimeError")
    assert out == ""


def test_a_file_without_a_scenario_is_still_a_usage_error(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, "X = 1\n")
    code, out, err = invoke("run", str(f))
    assert code == 2 and "must define a function scenario(system)" in err


# -- what a scenario leaves: shown in the table and in --json ----------------------------------

HELD = """
    def scenario(system):
        p = system.spawn("a")
        r = p.map("anon", 8192)
        p.write(r, 0, b"x")
        p.uring_register([(r, 0, 8192)])
"""


def test_pins_left_held_are_shown_before_the_close_releases_them(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, HELD)
    code, out, err = invoke("run", str(f))
    assert code == 0, out + err
    assert "pins left held when the scenario returned" in out
    assert "model 2" in out
    code, out, _ = invoke("run", "--json", str(f))
    model = json.loads(out)[0]["model"]
    assert model["left_pins"] == 2 and model["sanitizer_reports"] == []


def test_no_pins_left_says_nothing_about_them(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, HELD + "        p.uring_unregister()\n")
    code, out, _ = invoke("run", "--json", str(f))
    assert code == 0 and json.loads(out)[0]["model"]["left_pins"] == 0
    code, out, _ = invoke("run", str(f))
    assert "left held" not in out


def test_sanitizer_reports_and_warnings_of_the_model_are_shown(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        import gupsim

        def scenario(system):
            p = system.spawn("a")
            r = p.map("anon", 4096)
            p.write(r, 0, b"x")
            if system.name == "model":
                proc, pages = system.procs[0].p, []
                proc.pin_user_pages_fast(r.addr, 1, gupsim.FOLL_WRITE, pages)
                system.k.unpin_user_page(pages[0])
                system.k.unpin_user_page(pages[0])
    """)
    code, out, _ = invoke("run", str(f))
    assert code == 0, out
    text = " ".join(out.split())
    assert "model sanitizer: double_unpin" in text
    assert "model WARNING: gup_put_folio: refcount underflow" in text
    code, out, _ = invoke("run", "--json", str(f))
    model = json.loads(out)[0]["model"]
    assert any("double_unpin" in r for r in model["sanitizer_reports"])
    assert any("refcount underflow" in w for w in model["warnings"])


# -- a step that fails on one back-end only ------------------------------------------------------

FAULTS_ON_THE_MODEL_ONLY = """
    def scenario(system):
        p = system.spawn("a")
        r = p.map("anon", 4096)
        p.write(r, 0, b"x")
        if system.name == "model":
            p.mprotect(r, 0, 4096, writable=False)
        p.write(r, 0, b"y")
"""


class FakeHost(ModelSystem):
    """A second model standing in for the host (so this runs anywhere)."""

    name = "host"


def test_a_fault_on_one_back_end_only_is_a_disagreement_not_a_traceback(
        tmp_path: Path) -> None:
    f = scenario_file(tmp_path, FAULTS_ON_THE_MODEL_ONLY)
    result = run_case(load_scenario(str(f)), make_host=FakeHost)
    assert result.status == "disagree"
    assert result.model.ended == "SegmentationFault at step 4"
    assert result.model.steps[-1].outcome == "SIGSEGV"
    assert result.host is not None and result.host.ended == ""
    assert any("ended by SegmentationFault at step 4 on the model" in d
               for d in result.differences)


def test_the_same_fault_on_both_back_ends_agrees(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, FAULTS_ON_THE_MODEL_ONLY.replace(
        'if system.name == "model":', 'if True:'))
    result = run_case(load_scenario(str(f)), make_host=FakeHost)
    assert result.status == "agree", result.differences
    assert result.model.ended == result.host.ended == "SegmentationFault at step 4"


def test_a_scenario_error_on_the_host_only_is_a_disagreement(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            r = p.map("anon", 4096)
            assert system.name == "model", "the host says otherwise"
    """)
    result = run_case(load_scenario(str(f)), make_host=FakeHost)
    assert result.status == "disagree"
    assert result.host is not None
    assert result.host.error.startswith(f"{f}:4: AssertionError: the host says otherwise")
    assert len(result.host.steps) == 1       # the step it took before it raised is kept


def test_a_scenario_error_on_the_model_raises_with_its_trace(tmp_path: Path) -> None:
    f = scenario_file(tmp_path, """
        def scenario(system):
            p = system.spawn("a")
            r = p.map("anon", 4096)
            raise RuntimeError("mine")
    """)
    with pytest.raises(ScenarioError) as info:
        run_case(load_scenario(str(f)), with_host=False)
    assert info.value.is_users() and info.value.backend == "model"
    assert info.value.message == f"{f}:4: RuntimeError: mine"
    assert len(info.value.trace.steps) == 1


@pytest.mark.host
def test_a_fault_on_the_model_only_disagrees_with_the_host(tmp_path: Path) -> None:
    """On this kernel: the model's SIGSEGV step against the host's ordinary write."""
    from gupsim.scenarios.host import host_skip_reason
    reason = host_skip_reason(())
    if reason:
        pytest.skip(reason)
    f = scenario_file(tmp_path, FAULTS_ON_THE_MODEL_ONLY)
    code, out, err = invoke("run", "--host", str(f))
    assert code == 1, out + err
    text = " ".join(out.split())
    assert "SIGSEGV" in text and "Traceback" not in out + err
    assert "ended by SegmentationFault at step 4 on the model, by returning on the host" \
        in text


@pytest.mark.host
def test_pins_left_held_on_the_host_are_counted_too(tmp_path: Path) -> None:
    """uring_register left registered: both back-ends report 2 pins held, and agree."""
    from gupsim.scenarios.host import host_skip_reason
    reason = host_skip_reason(("io_uring",))
    if reason:
        pytest.skip(reason)
    f = scenario_file(tmp_path, HELD)
    code, out, err = invoke("run", "--host", "--json", str(f))
    assert code == 0, out + err
    r = json.loads(out)[0]
    assert r["status"] == "agree"
    assert r["model"]["left_pins"] == r["host"]["left_pins"] == 2
