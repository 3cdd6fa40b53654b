"""One user-space protocol, two back-ends: the model (`gupsim.Kernel`) and the host kernel.

A scenario is ordinary Python written against `System` and `Proc`: it spawns and forks
processes, maps memory, reads and writes it, and uses the user-space operations that
take pins (io_uring fixed buffers, O_DIRECT, process_vm_readv, AF_XDP). Each back-end
records every step's observables in a `Trace`, so the two traces can be compared step
by step, as asyncio runs one program on different event loops.

Conventions: operations that the kernel may refuse return an `Outcome` (ok, or the
errno) instead of raising, because a refusal is an observable to compare; misuse of the
protocol itself (an unknown kind, a region of another process) raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MapKind = Literal["anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb", "thp", "mthp"]
MAP_KINDS: tuple[str, ...] = ("anon", "memfd", "tmpfs", "file", "hugetlb", "memfd-hugetlb",
                              "thp", "mthp")
FILE_KINDS: tuple[str, ...] = ("memfd", "tmpfs", "file", "memfd-hugetlb")
MTHP_SIZE = 64 << 10   # the mTHP size the "mthp" kind uses (hugepages-64kB)


@dataclass(frozen=True)
class Outcome:
    """What a system call returned: success (with a value) or an errno."""

    errno: int = 0
    value: Any = None

    @property
    def ok(self) -> bool:
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

    def key(self) -> tuple:
        """What must agree between back-ends."""
        return (self.op, self.outcome, self.acquired, self.released, self.vm_pin_kb,
                self.vm_lck_kb, self.data)


@dataclass
class Trace:
    backend: str
    steps: list[Step] = field(default_factory=list)
    skipped: str = ""          # why the back-end could not run the case ("" if it ran)
    exact: bool = True         # host only: were the counters exact and quiet at every step?
    attempts: int = 1          # host only: runs needed to get a trusted trace (noise retries)


class Proc(Protocol):
    """A process of a back-end. Every method records one `Step` in the system's trace."""

    pid: int

    def map(self, kind: MapKind, length: int, *, shared: bool = False, writable: bool = True,
            populate: bool | Literal["read"] = True, fill: int = 0) -> Region:
        """mmap a new area. `populate`: True writes `fill` to every page (reads them if not
        writable), "read" read-faults every page, False leaves them untouched.
        Kinds: "thp" is 2 MiB-aligned anon with MADV_HUGEPAGE; "mthp" the same at 64 KiB
        with hugepages-64kB/enabled at "madvise" while it faults (the host checks the
        folio it got, and skips the case if THP allocation failed)."""
        ...

    def map_view(self, region: Region, *, shared: bool, writable: bool) -> Region:
        """mmap the file behind a file-kind region once more (read-faulted), as cow.c
        maps a page cache page privately and shared at once."""
        ...

    def mremap_move(self, region: Region, offset: int, length: int) -> Region:
        """Move [offset, offset+length) of a region to a new address (MREMAP_FIXED onto a
        fresh reservation, as cow.c's "partially mremap()'ed THP"); the moved part."""
        ...

    def read(self, region: Region, offset: int, n: int) -> bytes: ...

    def write(self, region: Region, offset: int, data: bytes) -> None: ...

    def mprotect(self, region: Region, offset: int, length: int, writable: bool) -> Outcome: ...

    def madvise(self, region: Region, offset: int, length: int, advice: int) -> Outcome: ...

    def munmap(self, region: Region) -> Outcome: ...

    def fork(self) -> Proc: ...

    def exit(self) -> None: ...

    def status(self) -> dict[str, int]:
        """VmPin and VmLck in kB (not recorded as a step)."""
        ...

    # -- operations that take pins ---------------------------------------------------------

    def uring_register(self, buffers: list[tuple[Region, int, int]]) -> Outcome:
        """IORING_REGISTER_BUFFERS of (region, offset, length) buffers on this process's ring."""
        ...

    def uring_unregister(self) -> Outcome: ...

    def uring_write_fixed(self, index: int, length: int) -> Outcome:
        """IORING_OP_WRITE_FIXED of registered buffer `index` to a scratch file; the value
        is the bytes the file received (what the pinned pages held)."""
        ...

    def odirect_write(self, region: Region, offset: int, length: int) -> Outcome:
        """pwrite() with O_DIRECT from memory to a scratch file (a short-term R/O pin)."""
        ...

    def odirect_read(self, region: Region, offset: int, length: int, fill: int) -> Outcome:
        """pread() with O_DIRECT of `length` bytes of value `fill` into memory (a R/W pin)."""
        ...

    def process_vm_readv(self, target: Proc, region: Region, offset: int,
                         length: int) -> Outcome:
        """Read another process's memory (remote short-term pins); value: the bytes."""
        ...

    def ro_pin_then_write(self, region: Region, offset: int, length: int,
                          fill: int) -> Outcome:
        """Pin the range R/O (process_vm_readv of this process, short-term FOLL_PIN via
        pin_user_pages_remote), write `fill` through the page tables while it is pinned,
        then read through the pins; value: what the pins saw."""
        ...

    def vmsplice(self, region: Region, offset: int, length: int) -> Outcome:
        """vmsplice the range into this process's pipe (FOLL_GET references, no pin)."""
        ...

    def pipe_read(self, length: int) -> Outcome:
        """Read from this process's pipe; value: the bytes."""
        ...

    def xdp_umem_reg(self, region: Region) -> Outcome:
        """XDP_UMEM_REG of the whole region on a new AF_XDP socket (long-term pins)."""
        ...

    def xdp_close(self) -> Outcome: ...

    def limit_memlock(self, limit: int) -> None:
        """Drop CAP_IPC_LOCK and set RLIMIT_MEMLOCK, as an unprivileged user would have."""
        ...


class System(Protocol):
    """A back-end: spawns processes and owns the trace and the machine-wide counters."""

    name: str
    trace: Trace

    def spawn(self, name: str = "task") -> Proc: ...

    def close(self) -> None:
        """Release everything the scenario left (pins, rings, processes, settings)."""
        ...
