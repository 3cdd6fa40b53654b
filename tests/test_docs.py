"""The README's and DESIGN.md's examples run as written (so the docs never lie)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_examples_run() -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


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
