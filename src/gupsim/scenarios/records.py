"""What a scenario produces and passes around: outcomes, regions, steps, traces, misuse.

These are plain values shared by the operation table (`ops`), the shared base (`base`)
and both back-ends; `protocol` re-exports them as the public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MapKind = Literal["anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb", "thp", "mthp",
                  "mthp-16k", "mthp-32k", "mthp-128k", "mthp-256k", "mthp-512k",
                  "mthp-1024k", "secretmem"]
MTHP_SIZE = 64 << 10   # the mTHP size the "mthp" kind uses (hugepages-64kB)
# Every anonymous mTHP size below the PMD that x86-64 offers (hugepages-<N>kB), by kind:
# "mthp" keeps its 64 KiB meaning, the others name their size.
MTHP_KINDS: dict[str, int] = {"mthp-16k": 16 << 10, "mthp-32k": 32 << 10, "mthp": MTHP_SIZE,
                              "mthp-128k": 128 << 10, "mthp-256k": 256 << 10,
                              "mthp-512k": 512 << 10, "mthp-1024k": 1024 << 10}
MAP_KINDS: tuple[str, ...] = ("anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb",
                              "thp", *MTHP_KINDS, "secretmem")
FILE_KINDS: tuple[str, ...] = ("memfd", "tmpfs", "file", "memfd-hugetlb", "secretmem")
PRIVATE_UID_BASE = 60000   # limit_memlock: uid = base + the process's protocol pid


class ProtocolError(ValueError):
    """A scenario misused the protocol (not a kernel refusal): both back-ends raise it,
    with the same message, before anything runs and without recording a step."""


@dataclass(frozen=True)
class Outcome:
    """What a system call returned: success (with a value) or an errno."""

    errno: int = 0
    value: Any = None

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.errno == 0

    def __str__(self) -> str:
        import errno as _e
        return "ok" if self.ok else _e.errorcode.get(self.errno, str(self.errno))


@dataclass
class Region:
    """A mapping made by `Proc.map`: which process, where, how big, of which kind."""

    proc: int          # pid in the back-end's own numbering (0, 1, ... in spawn/fork order)
    rid: int           # region number within the back-end
    kind: str
    length: int
    shared: bool
    addr: int = 0      # the address in that process (informative; differs between back-ends)


@dataclass
class Step:
    """One observed step: the operation, its outcome, and the pin observables around it."""

    op: str
    outcome: str
    acquired: int          # nr_foll_pin_acquired delta during the step
    released: int          # nr_foll_pin_released delta during the step
    vm_pin_kb: int | None  # VmPin of the acting process after the step
    vm_lck_kb: int | None
    data: bytes | None = None   # bytes read, for read-like steps
    pages: str | None = None    # page identity of the range, for observing steps (identity.py)
    late: int = 0               # of `released`: seen only after the call had returned

    def key(self) -> tuple:
        """What must agree between back-ends."""
        return (self.op, self.outcome, self.acquired, self.released, self.vm_pin_kb,
                self.vm_lck_kb, self.data, self.pages, self.late)


@dataclass
class Trace:
    """Every step a back-end recorded for one scenario, and whether it could be trusted."""

    backend: str
    steps: list[Step] = field(default_factory=list)
    skipped: str = ""          # why the back-end could not run the case ("" if it ran)
    exact: bool = True         # host only: were the counters exact and quiet at every step?
    attempts: int = 1          # host only: runs needed to get a trusted trace (noise retries)
    ended: str = ""            # a step's fault or refusal that ended the scenario early
    error: str = ""            # the scenario's own error, raised on this back-end only
    left_pins: int | None = None   # pins the scenario's steps left held (the close freed them)
    reports: list[str] = field(default_factory=list)    # model: sanitizer reports
    warnings: list[str] = field(default_factory=list)   # model: WARN_ON_ONCE sites that fired
    counted: bool = True       # the kernel has nr_foll_pin_* (model eras before 5.7 do not)
