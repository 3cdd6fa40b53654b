"""FOLL_* values are declared once (constants.py) and imported everywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import gupsim
from gupsim import constants
from gupsim.check import sanitizer
from gupsim.gup import flags

SRC = Path(gupsim.__file__).parent


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_foll_values_are_assigned_only_in_constants() -> None:
    copies = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id.startswith("FOLL_") \
                            and isinstance(node.value, (ast.BinOp, ast.Constant)):
                        copies.append(f"{path.relative_to(SRC)}:{node.lineno} {t.id}")
    assert copies and all(c.startswith("constants.py") for c in copies), copies


def test_no_function_local_flag_imports_in_drivers_and_check() -> None:
    local = []
    for path in [*(SRC / "drivers").glob("*.py"), *(SRC / "check").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and any(
                            a.name.startswith("FOLL_") for a in node.names):
                        local.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert local == []


def test_every_layer_sees_the_same_numbers() -> None:
    assert sanitizer.FOLL_PIN is constants.FOLL_PIN is flags.FOLL_PIN is gupsim.FOLL_PIN
    assert flags.FOLL_GET == 1 << 1
    assert flags.INTERNAL_GUP_FLAGS == 0x7F0000      # spec 1.2
    assert constants.FOLL_MADV_POPULATE == 1 << 22
