"""One user-space protocol, two back-ends: the model (`gupsim.Kernel`) and the host kernel.

A scenario is ordinary Python written against `System` and `Proc`: it spawns and forks
processes, maps memory, reads and writes it, and uses the user-space operations that
take pins (io_uring fixed buffers, O_DIRECT, process_vm_readv, AF_XDP). Each back-end
records every step's observables in a `Trace`, so the two traces can be compared step
by step, as asyncio runs one program on different event loops.

Conventions: operations that the kernel may refuse return an `Outcome` (ok, or the
errno) instead of raising, because a refusal is an observable to compare; misuse of the
protocol itself (an unknown kind, a region of another process, use after exit, a range
outside its region) raises `ProtocolError` (a ValueError), identically on both back-ends.

The operations are declared once in `ops` (the table `OPS`); `base` runs them for both
back-ends, which supply only primitives (`model`, and `host` with its `server` and
`wire`). This module is the public face: the names a scenario uses.
"""

from __future__ import annotations

from .base import BaseProc as Proc
from .base import BaseSystem as System
from .ops import ADVICE, OPS, Op, Operations
from .records import (
    FILE_KINDS,
    MAP_KINDS,
    MTHP_SIZE,
    PRIVATE_UID_BASE,
    MapKind,
    Outcome,
    ProtocolError,
    Region,
    Step,
    Trace,
)

__all__ = [
    "ADVICE", "FILE_KINDS", "MAP_KINDS", "MTHP_SIZE", "OPS", "PRIVATE_UID_BASE", "MapKind",
    "Op", "Operations", "Outcome", "Proc", "ProtocolError", "Region", "Step", "System",
    "Trace",
]
