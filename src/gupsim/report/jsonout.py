"""JSON for every `--json`: whatever a result holds (bytes, numpy numbers and arrays,
dataclasses, sets, paths, NaN) becomes plain JSON, so no command can crash on output."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np


def plain(obj: Any) -> Any:
    """`obj` with every value JSON can hold as itself: bytes as hex, numpy numbers and
    arrays as numbers and lists, dataclasses as dicts, sets as sorted lists, NaN and
    infinities as None (JSON has no such numbers)."""
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((plain(v) for v in obj), key=repr)
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, PurePath):
        return str(obj)
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        return plain(as_dict())
    return str(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """`json.dumps` of `plain(obj)`: strict JSON (no NaN), never a TypeError."""
    return json.dumps(plain(obj), indent=indent, allow_nan=False)
