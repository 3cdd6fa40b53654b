"""What a user meets in their first hour with the command line: every `--json` is JSON,
every bad option value is a usage error (exit 2) that says what was wrong, an empty
selection is an error, exit codes tell success (0), disagreement (1), usage error (2) and
interruption (130) apart, tables fit 80 columns with their words whole, progress shows
when output is piped, and the README's links lead to files the repository has."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gupsim.cli import main
from gupsim.scenarios.catalogue import catalogue

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "fork_with_pinned_buffer.py")
NARROW = {"COLUMNS": "80", "LINES": "50"}
GUPSIM = Path(sys.executable).with_name("gupsim")


def invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main, list(args), env=NARROW)
    return out.exit_code, out.output


# -- every --json is JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["demo", "--json", "--tour-only"],
    ["live", "--json", "--model-only", "-k", "account"],
    ["live", "--json", "--list", "-k", "zero page"],
    ["top", "--json"],
    ["bench", "--json", "--model-only", "--max-pages", "256", "--repeat", "1", "--min-time", "0"],
    ["run", "--json", EXAMPLE],
])
def test_every_json_output_parses(args: list[str]) -> None:
    """Strict JSON (no NaN, no bytes) on stdout, exit 0."""
    out = subprocess.run([str(GUPSIM), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_the_tours_json_shows_what_was_read_as_text() -> None:
    code, text = invoke("demo", "--json", "--tour-only")
    facts = {k: v for step in json.loads(text) for k, v in step["facts"].items()}
    assert code == 0 and facts["after the child writes: parent reads"] == "parent data"


# -- bad values are usage errors -------------------------------------------------------------

BAD = [
    (["top", "--watch", "nan"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "inf"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "-inf"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "0"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "-1"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "1e-9"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "1e9"], "between 0.1 and 86400 seconds"),
    (["top", "--watch", "soon"], "is not a number of seconds"),
    (["top", "--watch"], "requires an argument"),
    (["bench", "--max-pages", "0"], "--max-pages"),
    (["bench", "--max-pages", "nan"], "--max-pages"),
    (["bench", "--max-pages", str(1 << 40)], "--max-pages"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--repeat", "inf"], "--repeat"),
    (["bench", "--repeat", "-3"], "--repeat"),
    (["bench", "--min-time", "nan"], "between 0 and 60 seconds"),
    (["bench", "--min-time", "-1"], "between 0 and 60 seconds"),
    (["bench", "--min-time", "61"], "between 0 and 60 seconds"),
    (["live", "-k", "no such case anywhere"], "no case name contains"),
    (["live", "-k", "  "], "give some text"),
    (["live", "--model-only", "-k", "zzzz", "--json"], "no case name contains"),
    (["live", "--list", "-k", "zzzz"], "no case name contains"),
    (["demo", "--no-such-option"], "No such option"),
    (["run", "/no/such/file.py"], "does not exist"),
    (["run"], "Missing argument"),
    (["nonsense"], "No such command"),
    (["cases", "-k", "no such case"], "no case matches"),
    (["cases", "-k", ""], "give a case key"),
    (["cases", "--json", "--show"], "--show draws on stdout"),
    (["eras", "no such case or file"], "neither a file nor part of a catalogue case"),
    (["explain", EXAMPLE, "--step", "0"], "--step"),
    (["explain", EXAMPLE], "Missing option '--step'"),
    (["explain", EXAMPLE, "--step", "1", "--pfn", "abc"], "--pfn"),
    (["explain", EXAMPLE, "--step", "1", "--pfn", str(1 << 40)], "is outside memory"),
    (["exporter"], "Missing option '--port'"),
    (["exporter", "--port", "0"], "--port"),
    (["exporter", "--port", "70000"], "--port"),
    (["fuzz", "--programs", "0"], "--programs"),
    (["fuzz", "--steps", "0"], "--steps"),
    (["fuzz", "--steps", "1000"], "--steps"),
    (["fuzz", "--seed", "-1"], "--seed"),
    (["fuzz", "--shrink-budget", "nan"], "--shrink-budget"),
    (["run", EXAMPLE, "--kernel", "99.1"], "not a modelled profile"),
    (["run", EXAMPLE, "--kernel", "six"], "is not of the form"),
    (["run", EXAMPLE, "--json", "--show"], "--show draws on stdout"),
    (["run", str(ROOT)], "is a directory"),
    (["bench", "-n", "0"], "-n"),
    (["bench", "-k", "no such bench"], "no case name contains"),
    (["top", "--prometheus", "--json"], "--prometheus prints one exposition"),
    # outputs are checked before any work is done
    (["run", EXAMPLE, "--html", "/nonexistent-gupsim/x.html"], "/nonexistent-gupsim does not"),
    (["demo", "--tour-only", "--html", "/nonexistent-gupsim/x.html"], "does not exist"),
    (["cases", "-k", "1", "--html", "/nonexistent-gupsim/x.html"], "does not exist"),
    (["eras", EXAMPLE, "--html", "/nonexistent-gupsim/x.html"], "does not exist"),
    (["demo", "--tour-only", "--html", str(ROOT)], "is a directory"),
    (["fuzz", "--model-only", "--out", str(ROOT / "README.md" / "found")],
     "README.md is not a folder"),
    (["exporter", "--port", "9", "--bind", "192.0.2.1"], "give --bind an address"),
    (["explain", EXAMPLE, "--step", "99"], "choose --step between 1 and 8"),
]


@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_usage_errors_that_say_what_was_wrong(args: list[str],
                                                               says: str) -> None:
    code, text = invoke(*args)
    assert code == 2, text
    assert says in text and "Traceback" not in text


def test_every_command_has_bad_input_tried() -> None:
    """A new command joins BAD with its own bad values (each of its options that takes a
    value, or its argument, gets at least one here or in its own test file)."""
    assert set(main.commands) <= {args[0] for args, _ in BAD}


def test_a_scenario_file_that_is_not_python_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def scenario(system:\n")
    code, text = invoke("run", str(bad))
    assert code == 2 and "not valid Python" in text


def test_a_scenario_without_steps_has_nothing_to_explain(tmp_path: Path) -> None:
    f = tmp_path / "idle.py"
    f.write_text("def scenario(system):\n    system.spawn('a')\n")
    code, text = invoke("explain", str(f), "--step", "1")
    assert code == 2 and "takes no steps" in text and "between 1 and 0" not in text


def test_close_case_names_are_suggested() -> None:
    code, text = invoke("live", "--model-only", "-k", "shared zeropgae")
    assert code == 2 and "shared zeropage" in text


# -- exit codes --------------------------------------------------------------------------------

def test_a_disagreement_exits_1(tmp_path: Path) -> None:
    """A scenario whose expectation fails on the model is a disagreement, not an error."""
    f = tmp_path / "wrong.py"
    f.write_text("def scenario(system):\n    system.spawn('a')\n\n"
                 "def expect(trace):\n    return ['the model did not do X']\n")
    code, text = invoke("run", str(f))
    assert code == 1, text
    assert "the model did not do X" in text


def test_an_unexpected_error_is_not_a_disagreement(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An error inside gupsim (here: a back-end primitive missing) is exit 3; the
    scenario's own errors are exit 2 (tests/test_run_errors.py)."""
    from gupsim.scenarios.base import BaseProc
    from gupsim.scenarios.model import ModelProc
    monkeypatch.setattr(ModelProc, "_perform", BaseProc._perform)
    f = tmp_path / "crash.py"
    f.write_text("def scenario(system):\n    system.spawn('a').map('anon', 4096)\n")
    code, text = invoke("run", str(f))
    assert code not in (0, 1, 2, 130), text


def test_ctrl_c_exits_130_and_says_so() -> None:
    """SIGINT during a (piped) catalogue run: exit 130, a line on stderr, no traceback."""
    proc = subprocess.Popen([str(GUPSIM), "live", "--model-only"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()               # the first progress line
        assert first.startswith("gupsim: [1/"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "on the host" not in err             # a model-only run took nothing there


# -- output that reads well --------------------------------------------------------------------

def test_progress_is_shown_on_stderr_when_piped() -> None:
    out = subprocess.run([str(GUPSIM), "live", "--model-only", "-k", "account"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^gupsim: \[1/\d+\]", out.stderr, re.M)
    assert re.search(r"^gupsim: \[(\d+)/\1\] done in \d+s: \d+ model-only", out.stderr, re.M)
    assert "gupsim: [" not in out.stdout


def _width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


@pytest.mark.parametrize("args", [
    ["live", "--model-only", "-k", "longterm"],
    ["live", "--model-only", "--summary"],
    ["bench", "--model-only", "--max-pages", "256", "--repeat", "1", "--min-time", "0"],
    ["top"],
    ["run", EXAMPLE],
    ["demo", "--model-only"],
])
def test_tables_fit_80_columns_with_words_whole(args: list[str]) -> None:
    code, text = invoke(*args)
    assert code == 0, text
    assert _width(text) <= 80, max(text.splitlines(), key=len)
    words = set(re.findall(r"[\w/().,:-]+", text))
    if args[0] == "live" and "--summary" not in args:
        for case in catalogue():
            if "longterm" in case.name:
                assert set(case.name.split()) <= words, case.name
    if args[0] == "bench":
        assert {"bulk", "THP", "hugetlb", "fork", "exit", "munmap", "fuzz", "skipped:"} <= words
        assert "not asked for" in text.replace("\n", " ")


def test_the_demo_summary_has_one_row_per_selftest() -> None:
    from gupsim.report.live import summary
    from gupsim.scenarios.runner import run_case
    cases = catalogue()
    results = [run_case(c, with_host=False) for c in cases]
    rows = summary(results)
    assert len(rows) == len({c.source for c in cases}) < len(cases) // 3
    assert sum(r["cases"] for r in rows) == len(cases) == sum(r["model-only"] for r in rows)
    code, text = invoke("demo", "--model-only")
    assert code == 0 and text.count("model-only") < 60      # short enough to read
    assert "`gupsim live` shows every case" in text


# -- docs ----------------------------------------------------------------------------------

def test_the_readme_links_to_files_the_repository_has() -> None:
    """Every relative link or `path` the README names exists in the checkout; the design
    is docs/DESIGN.md, whose own relative links exist too."""
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    assert "docs/DESIGN.md" in readme
    for doc in (ROOT / "README.md", ROOT / "docs" / "DESIGN.md"):
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
        assert "../shared" not in text, f"{doc.name} points outside the repository"


def test_the_readme_lists_every_command_and_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in main.commands:
        assert f"`gupsim {command}" in readme, command
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"\b{code}\b", readme.split("## Exit codes", 1)[-1]), code


@pytest.fixture(autouse=True)
def _no_color() -> None:
    os.environ.setdefault("NO_COLOR", "1")


def test_the_demo_shows_progress_when_piped_and_stays_short() -> None:
    """`make demo | tee log`: progress lines on stderr, a summary table on stdout."""
    out = subprocess.run([str(GUPSIM), "demo", "--model-only"], capture_output=True,
                         text=True, timeout=300, env={**os.environ, **NARROW})
    assert out.returncode == 0, out.stderr
    assert re.search(r"^gupsim: \[1/\d+\]", out.stderr, re.M)
    assert "done in" in out.stderr
    assert "per selftest" in out.stdout and len(out.stdout.splitlines()) < 300
