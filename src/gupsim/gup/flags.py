"""FOLL_* flags (current enum values) and the argument validation of the exported API.

The values live in `constants` (public flags in bits 0-12, internal ones, which callers
may not pass, in bits 16-22, as in the 6.x kernels: spec 1.1, 1.2) so that every layer
shares one copy; this module re-exports them. `is_valid_gup_args()` is the gate every
exported entry point passes through (spec 1.4): each refusal is its own WARN_ON_ONCE
site, checked in the kernel's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..constants import (  # noqa: F401 - the FOLL_* values, re-exported
    FOLL_ANON,
    FOLL_DUMP,
    FOLL_FAST_ONLY,
    FOLL_FORCE,
    FOLL_GET,
    FOLL_HONOR_NUMA_FAULT,
    FOLL_HWPOISON,
    FOLL_INTERRUPTIBLE,
    FOLL_LONGTERM,
    FOLL_MADV_POPULATE,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_PCI_P2PDMA,
    FOLL_PIN,
    FOLL_REMOTE,
    FOLL_SPLIT_PMD,
    FOLL_TOUCH,
    FOLL_TRIED,
    FOLL_UNLOCKABLE,
    FOLL_WRITE,
    INTERNAL_GUP_FLAGS,
)
from ..warn import WarnLog

# Flags the GUP-fast entry points accept (gup_fast_fallback()).
FAST_GUP_ALLOWED = (FOLL_WRITE | FOLL_LONGTERM | FOLL_FORCE | FOLL_PIN | FOLL_GET
                    | FOLL_FAST_ONLY | FOLL_NOFAULT | FOLL_PCI_P2PDMA | FOLL_HONOR_NUMA_FAULT)

FOLL_NAMES = {
    FOLL_WRITE: "FOLL_WRITE", FOLL_GET: "FOLL_GET", FOLL_DUMP: "FOLL_DUMP",
    FOLL_FORCE: "FOLL_FORCE", FOLL_NOWAIT: "FOLL_NOWAIT", FOLL_NOFAULT: "FOLL_NOFAULT",
    FOLL_HWPOISON: "FOLL_HWPOISON", FOLL_ANON: "FOLL_ANON", FOLL_LONGTERM: "FOLL_LONGTERM",
    FOLL_SPLIT_PMD: "FOLL_SPLIT_PMD", FOLL_PCI_P2PDMA: "FOLL_PCI_P2PDMA",
    FOLL_INTERRUPTIBLE: "FOLL_INTERRUPTIBLE", FOLL_HONOR_NUMA_FAULT: "FOLL_HONOR_NUMA_FAULT",
    FOLL_TOUCH: "FOLL_TOUCH", FOLL_TRIED: "FOLL_TRIED", FOLL_REMOTE: "FOLL_REMOTE",
    FOLL_PIN: "FOLL_PIN", FOLL_FAST_ONLY: "FOLL_FAST_ONLY", FOLL_UNLOCKABLE: "FOLL_UNLOCKABLE",
    FOLL_MADV_POPULATE: "FOLL_MADV_POPULATE",
}

# Seed-era (v5.6 #define) values, for decoding old traces only (spec 1.3).
FOLL_V56 = {
    "FOLL_WRITE": 0x01, "FOLL_TOUCH": 0x02, "FOLL_GET": 0x04, "FOLL_DUMP": 0x08,
    "FOLL_FORCE": 0x10, "FOLL_NOWAIT": 0x20, "FOLL_POPULATE": 0x40, "FOLL_SPLIT": 0x80,
    "FOLL_HWPOISON": 0x100, "FOLL_NUMA": 0x200, "FOLL_MIGRATION": 0x400, "FOLL_TRIED": 0x800,
    "FOLL_MLOCK": 0x1000, "FOLL_REMOTE": 0x2000, "FOLL_COW": 0x4000, "FOLL_ANON": 0x8000,
    "FOLL_LONGTERM": 0x10000, "FOLL_SPLIT_PMD": 0x20000, "FOLL_PIN": 0x40000,
}


def foll_flags_str(flags: int) -> str:
    """`FOLL_WRITE|FOLL_PIN`-style text for a flags value (unknown bits in hex)."""
    names = [name for bit, name in FOLL_NAMES.items() if flags & bit]
    rest = flags & ~sum(FOLL_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def is_valid_gup_args(warnings: WarnLog, pages: object, locked: Sequence[int] | None,
                      gup_flags: int, to_set: int) -> int | None:
    """The kernel's is_valid_gup_args(): the flags to use, or None if the call is invalid.

    `locked` stands for the `int *locked` pointer: None or a one-element list. The
    kernel updates the caller's flags through a pointer; here the new flags are returned.
    """
    # each test first, warn_on_once() only when it fires: this runs on every GUP call
    if gup_flags & INTERNAL_GUP_FLAGS and warnings.warn_on_once(
                             True, "is_valid_gup_args: internal FOLL flag",
                             lambda: "caller passed internal flags "
                             f"{foll_flags_str(gup_flags & INTERNAL_GUP_FLAGS)}"):
        return None
    gup_flags |= to_set
    if locked is not None:
        if locked[0] != 1 and warnings.warn_on_once(True, "is_valid_gup_args: *locked != 1",
                                 f"*locked is {locked[0]}: take mmap_lock and set it to 1"):
            return None
        gup_flags |= FOLL_UNLOCKABLE
    if (gup_flags & (FOLL_GET | FOLL_PIN)) == (FOLL_GET | FOLL_PIN) and warnings.warn_on_once(
                             True, "is_valid_gup_args: FOLL_GET with FOLL_PIN",
                             "FOLL_GET and FOLL_PIN are mutually exclusive"):
        return None
    if gup_flags & FOLL_LONGTERM and not gup_flags & FOLL_PIN and warnings.warn_on_once(
                             True, "is_valid_gup_args: FOLL_LONGTERM without FOLL_PIN",
                             "long-term references must be pins: use pin_user_pages*()"):
        return None
    if gup_flags & (FOLL_GET | FOLL_PIN) and pages is None and warnings.warn_on_once(
                             True, "is_valid_gup_args: no pages array",
                             "FOLL_GET/FOLL_PIN need a pages array to return the pages in"):
        return None
    if (gup_flags & (FOLL_LONGTERM | FOLL_PCI_P2PDMA)) == (FOLL_LONGTERM | FOLL_PCI_P2PDMA) \
            and warnings.warn_on_once(
                             True, "is_valid_gup_args: FOLL_LONGTERM with FOLL_PCI_P2PDMA",
                             "P2PDMA memory cannot be pinned long-term"):
        return None
    return gup_flags
