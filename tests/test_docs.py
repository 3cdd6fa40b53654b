"""The README's and DESIGN.md's examples run as written (so the docs never lie).

A README line whose comment opens with a Python literal states a result: `pages[0].refcount
# 1025: one mapping + the bias` promises 1025, and `n = ...  # 256` promises n == 256. Those
promises are checked, as SimPy checks its documentation against golden output; a comment
that is prose (`# a write fault allocates ...`) is only run. The `gupsim` command lines of
the README's shell blocks run too, and every public item of src/ must have a docstring.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"


def python_blocks(path: Path) -> list[str]:
    """The file's python code blocks, each padded with blank lines so that its line
    numbers are the file's own (an error then names the README line to fix)."""
    text = path.read_text()
    return ["\n" * text.count("\n", 0, m.start(1)) + m.group(1)
            for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


@dataclass(frozen=True)
class Stated:
    """A result a documentation line promises: the line and the literal its comment opens with."""

    line: int
    value: Any


def _stated_literal(comment: str) -> tuple[bool, Any]:
    """(True, value) when the comment opens with a Python literal, before any ':'."""
    text = comment.lstrip("#").strip()
    for candidate in (text, text.split(":", 1)[0]):
        try:
            return True, ast.literal_eval(candidate.strip())
        except (ValueError, SyntaxError):
            continue
    return False, None


def stated_results(code: str) -> dict[int, Stated]:
    """The stated results of a block, by line number."""
    out: dict[int, Stated] = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            ok, value = _stated_literal(tok.string)
            if ok:
                out[tok.start[0]] = Stated(tok.start[0], value)
    return out


def run_checking_stated(code: str, filename: str) -> int:
    """Run a block statement by statement; check every stated result; return how many.
    A result stated where no statement ends (inside a call spread over lines) is an
    error, so that no promise goes unchecked."""
    stated = stated_results(code)
    ends = {stmt.end_lineno or stmt.lineno for stmt in ast.parse(code).body}
    stray = sorted(set(stated) - ends)
    if stray:
        raise AssertionError(f"{filename}:{stray[0]}: a result is stated inside a statement "
                             "that goes on below; state it on the statement's last line")
    ns: dict[str, Any] = {}
    checked = 0
    for stmt in ast.parse(code).body:
        promise = stated.get(stmt.end_lineno or stmt.lineno)
        if isinstance(stmt, ast.Expr):
            got = eval(compile(ast.Expression(stmt.value), filename, "eval"), ns)
        else:
            exec(compile(ast.Module([stmt], type_ignores=[]), filename, "exec"), ns)
            got = None
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                got = ns[stmt.targets[0].id]
            elif promise is not None:
                raise AssertionError(f"{filename}:{stmt.lineno}: a result is stated on a "
                                     f"line that neither is an expression nor names a value")
        if promise is not None:
            assert got == promise.value, (
                f"{filename}:{stmt.lineno}: the documentation states {promise.value!r}, "
                f"the code gives {got!r}")
            checked += 1
    return checked


def test_readme_examples_run_and_state_the_truth() -> None:
    """Every README example runs, and every result it states is what it gives."""
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README has no python example"
    checked = sum(run_checking_stated(code, "README.md") for code in blocks)
    assert checked == sum(len(stated_results(code)) for code in blocks)
    assert checked >= 7, f"only {checked} stated results found in the README's examples"


def test_a_false_statement_is_caught() -> None:
    """The checker itself can fail: a wrong stated result, or one on a statement without value."""
    run_checking_stated("x = 1 + 1   # 2\nx * 3   # 6: prose after the colon\n", "ok")
    with pytest.raises(AssertionError, match="states 3"):
        run_checking_stated("x = 1 + 1   # 3\n", "wrong")
    with pytest.raises(AssertionError, match="neither"):
        run_checking_stated("import os   # 1\n", "misplaced")
    with pytest.raises(AssertionError, match="goes on below"):
        run_checking_stated("x = max(1,   # 2\n        2)\n", "inside")
    assert stated_results("f()   # a prose comment\n") == {}


def readme_commands() -> list[str]:
    """The `gupsim ...` lines of the README's shell blocks, comments cut (the `make`
    lines are the whole set-up and suite, which `make test` itself is)."""
    text = (ROOT / "README.md").read_text()
    return [cmd for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
            for line in block.splitlines()
            if (cmd := line.split("#", 1)[0].strip()).startswith("gupsim ")]


COMMANDS = readme_commands()


@pytest.mark.parametrize("command", [
    pytest.param(c, marks=[pytest.mark.host] if "--host" in c.split() else [])
    for c in COMMANDS])
def test_readme_commands_run_as_written(command: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each README command runs from the checkout and does what its line says (an HTML
    page written where `--html` points; here into a temporary folder)."""
    import shlex

    from click.testing import CliRunner

    from gupsim.cli import main

    args = shlex.split(command)[1:]
    if "--host" in args:
        from gupsim.scenarios.host import host_skip_reason
        if reason := host_skip_reason(()):
            pytest.skip(f"host cannot: {reason}")
    html = None
    if "--html" in args:
        at = args.index("--html") + 1
        html = args[at] = str(tmp_path / args[at])
    monkeypatch.chdir(ROOT)                     # the examples/ paths are the checkout's
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    if html is not None:
        assert Path(html).read_text().startswith("<!DOCTYPE html>")
    else:
        assert out.stdout.strip()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 5 and all(c.split()[1] in ("run", "cases", "demo")
                                      for c in COMMANDS), COMMANDS


def test_design_contract_runs_as_written() -> None:
    """The public contract of DESIGN.md, verbatim, then what its comments promise."""
    code = next(b for b in python_blocks(DESIGN) if "pin_user_pages_fast" in b)
    ns: dict = {}
    # the contract uses MAP_POPULATE without importing it; everything else is verbatim
    exec(compile("from gupsim import MAP_POPULATE\n" + code, "DESIGN.md", "exec"), ns)
    k, p = ns["k"], ns["p"]
    assert ns["n"] == 262144                          # the bulk pin got every page
    assert ns["page"].refcount == 1 + 1024            # the remote pin of the child's page
    assert [w.site for w in k.warnings.events] == [
        "is_valid_gup_args: internal FOLL flag", "is_valid_gup_args: FOLL_GET with FOLL_PIN"]
    assert k.vmstat["nr_foll_pin_acquired"] == 256 + 1 + 262144
    assert k.vmstat["nr_foll_pin_released"] == 256 + 262144
    assert [o.call for o in k.sanitizer.outstanding()] == ["pin_user_pages_remote"]
    assert k.dma_read(ns["page"], 0, 3) == b"dev"
    assert p.proc_status()["VmPin"] == 0              # GUP itself charges nothing


def undocumented(code: str, where: str) -> list[str]:
    """Public classes, functions and methods of `code` without a docstring, as `where:line
    name`. Public by name (no leading underscore, not nested in a function, in a public
    class), not by `__all__`: ruff's D10x rules take a module's `__all__` as all of its
    public API, so a public class left out of `__all__` would pass them undocumented.
    Property setters and `@overload` declarations share their function's docstring."""
    found: list[str] = []

    def skipped(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
        for d in getattr(node, "decorator_list", []):
            name = d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
            if name in ("setter", "deleter", "overload"):
                return True
        return False

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if child.name.startswith("_"):
                    continue
                if ast.get_docstring(child) is None and not skipped(child):
                    found.append(f"{where}:{child.lineno} {child.name}")
                if isinstance(child, ast.ClassDef):
                    visit(child)            # its methods and nested classes
            elif not isinstance(child, ast.Lambda):
                visit(child)                # if/try blocks at module or class level

    visit(ast.parse(code))
    return found


def test_every_public_function_and_class_is_documented() -> None:
    """Every public class, function and method of src/ has a docstring (also those a
    module's `__all__` leaves out, which ruff does not ask about)."""
    src = ROOT / "src"
    missing = [line for path in sorted(src.rglob("*.py"))
               for line in undocumented(path.read_text(), str(path.relative_to(src)))]
    assert missing == [], "public items without a docstring:\n" + "\n".join(missing)


def test_the_docstring_check_can_fail() -> None:
    code = ('__all__ = ["f"]\n'
            'def f():\n    """Documented."""\n'
            'class Left(object):\n    def method(self): pass\n    def _private(self): pass\n'
            'def _helper():\n    def inner(): pass\n')
    assert undocumented(code, "m.py") == ["m.py:4 Left", "m.py:5 method"]


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_output_is_the_golden_output(example: Path) -> None:
    """What `gupsim run examples/X.py` prints on the model (80 columns) is the checked-in
    `examples/X.out`, as SimPy checks its examples; a change of behaviour or of the table
    shows up here. Renew a golden file on purpose with GUPSIM_REGOLD=1."""
    import os

    from click.testing import CliRunner

    from gupsim.cli import main

    out = CliRunner().invoke(main, ["run", str(example)], env={"COLUMNS": "80"},
                             terminal_width=80)
    assert out.exit_code == 0, out.output
    golden = example.with_suffix(".out")
    if os.environ.get("GUPSIM_REGOLD"):
        golden.write_text(out.stdout)
    assert golden.exists(), f"{golden.name} is missing: run GUPSIM_REGOLD=1 pytest {__file__}"
    assert out.stdout == golden.read_text(), (
        f"`gupsim run {example.name}` no longer prints {golden.name}; if the change is "
        f"intended, renew it with GUPSIM_REGOLD=1 pytest {__file__}")


def test_readme_names_every_scenario_operation_and_map_kind() -> None:
    """The README's list of what a scenario may do is the operation table's, whole."""
    from gupsim.scenarios.ops import OPS
    from gupsim.scenarios.records import MAP_KINDS
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a scenario"):text.index("## Pictures")]
    kinds = [k for k in MAP_KINDS if not k.startswith("mthp-")] + ["mthp-16k", "mthp-1024k"]
    missing = [n for n in [*sorted(OPS), *kinds] if f"`{n}`" not in section]
    assert missing == [], f"the README does not name {missing}"
