"""Step names shared by both back-ends, so that their traces line up op for op."""

from __future__ import annotations


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def op_name(method: str, **args: object) -> str:
    """A short, stable name: `op_name("map", kind="anon", length=2 << 20, shared=True)`
    gives "map anon 2MiB shared"; booleans appear by name when true, sizes in binary units."""
    parts = [method]
    for key, value in args.items():
        if isinstance(value, bool):
            if value:
                parts.append(key)
        elif key in ("length", "size", "offset") and isinstance(value, int):
            parts.append(_size(value))
        else:
            parts.append(str(value))
    return " ".join(parts)
