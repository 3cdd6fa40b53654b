"""Parsing of memory sizes given as text ("4GiB", "512M") or as integers, and where a
THP-aligned area starts inside a reservation (one rule for the model and the host)."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}


def parse_size(value: int | str, what: str = "size") -> int:
    """Return `value` in bytes; binary units, so "1G" == "1GiB" == 2**30 as in the kernel."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of bytes or a string like '4GiB', not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative (got {value})")
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an int or a string like '4GiB', "
                        f"not {type(value).__name__}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{what}={value!r} is not a size: write it like '4GiB', '512MiB' or 4096")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


PMD_BYTES = 2 << 20


def thp_area(raw: int, length: int, align: int) -> tuple[int, int]:
    """(span to reserve, start) of an anonymous area of `length` bytes meant for THPs of
    `align` bytes: call it once with raw=0 for the span, mmap that span, then again with
    its address for the start. A PMD area starts on a 2 MiB boundary; an mTHP area (below
    2 MiB) starts `align` past one, so whether a PMD THP fits in it never depends on
    where mmap() put the reservation (the model and the host then get the same folios)."""
    if align >= PMD_BYTES:
        return length + align, (raw + align - 1) & ~(align - 1)
    return length + align + PMD_BYTES, ((raw + PMD_BYTES - 1) & ~(PMD_BYTES - 1)) + align
