"""The scenario operations, each declared once: signature, documentation, and what the
step checks and records. Everything else is derived from these declarations.

An operation is a method of `Operations` marked `@operation(...)`. Its body is never
run: the decorator replaces it with a call to the shared base (`base.BaseProc._invoke`),
which checks the arguments against the declaration (the process is alive, each region
belongs to the process named and the range lies inside it, the op's own argument
check), records one `Step` named by `label`, and calls the back-end primitive
`do_<name>` with the *primitive arguments*: the declared ones, with every region (and
its offset) replaced by `addr` (the address in the owning process), plus `rid` when the
range asks for it, `length` for a whole-region range, and `new_rid` for operations that
return a region. The table `OPS` (name -> `Op`) is what the base, both back-ends, the
host's command server and the tests read.

How to add an operation:

1. Declare it here: a method of `Operations` with type hints and a docstring, decorated
   with `@operation(returns=..., data=..., settle=..., range=..., label=..., check=...)`.
   Use `check` for misuse of the protocol (it must answer the same on every back-end);
   what the kernel may refuse is the primitive's errno, recorded as the step's outcome.
2. Implement the model primitive `do_<name>(**primitive arguments)` on `ModelProc` in
   `scenarios/model.py`, through the model's real code paths (`gupsim.drivers`).
3. Implement the host primitive `do_<name>` on `CommandServer` in `scenarios/server.py`
   (it runs inside the scenario process); set-up the orchestrator must do first (a host
   setting) goes in `HostSystem._prepare` in `scenarios/host.py`.
4. Use it in a catalogue case (`scenarios/catalogue.py`); `tests/scenarios/
   test_protocol.py` checks that both back-ends implement every declared operation.
"""

# The method bodies below are declarations (`...`) that @operation replaces before any
# call, so mypy's empty-body check (a stub that would return None) does not apply here.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ..constants import (
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DODUMP,
    MADV_DOFORK,
    MADV_DONTDUMP,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_UNMERGEABLE,
    MADV_WILLNEED,
    MADV_WIPEONFORK,
    PAGE_SIZE,
    PMD_SIZE,
    RLIM_INFINITY,
)
from ..drivers.process_vm import PVM_MAX_PAGES_PER_LOOP
from .records import (
    FILE_KINDS,
    MAP_KINDS,
    MTHP_KINDS,
    PRIVATE_UID_BASE,
    MapKind,
    Outcome,
    Region,
)
from .steps import op_name

if TYPE_CHECKING:
    from .base import BaseProc

Returns = Literal["outcome", "bytes", "region", "proc", "none"]
Args = Mapping[str, Any]

# The madvise() advice a scenario may give: every value the model implements except
# MADV_HWPOISON, which on the host would poison real memory.
ADVICE: dict[int, str] = {
    MADV_NORMAL: "MADV_NORMAL", MADV_RANDOM: "MADV_RANDOM",
    MADV_SEQUENTIAL: "MADV_SEQUENTIAL", MADV_WILLNEED: "MADV_WILLNEED",
    MADV_DONTNEED: "MADV_DONTNEED", MADV_FREE: "MADV_FREE", MADV_REMOVE: "MADV_REMOVE",
    MADV_DONTFORK: "MADV_DONTFORK", MADV_DOFORK: "MADV_DOFORK",
    MADV_MERGEABLE: "MADV_MERGEABLE", MADV_UNMERGEABLE: "MADV_UNMERGEABLE",
    MADV_HUGEPAGE: "MADV_HUGEPAGE", MADV_NOHUGEPAGE: "MADV_NOHUGEPAGE",
    MADV_DONTDUMP: "MADV_DONTDUMP", MADV_DODUMP: "MADV_DODUMP",
    MADV_WIPEONFORK: "MADV_WIPEONFORK", MADV_KEEPONFORK: "MADV_KEEPONFORK",
    MADV_COLD: "MADV_COLD", MADV_PAGEOUT: "MADV_PAGEOUT",
    MADV_POPULATE_READ: "MADV_POPULATE_READ", MADV_POPULATE_WRITE: "MADV_POPULATE_WRITE",
    MADV_COLLAPSE: "MADV_COLLAPSE",
}

# The folio size a mapping kind is made of: its length must be a multiple of it.
GRANULE: dict[str, int] = {"hugetlb": PMD_SIZE, "memfd-hugetlb": PMD_SIZE, "thp": PMD_SIZE,
                           **MTHP_KINDS}
PROT_BITS = 0x7   # PROT_READ | PROT_WRITE | PROT_EXEC: the protections a scenario may ask


@dataclass(frozen=True)
class Range:
    """A region argument checked before the step: the region belongs to the owning process
    and [offset, offset + length) lies inside it. Absent `offset` means 0, absent `length`
    the whole region; `length` may name a bytes argument (its size counts), or be a
    function of the arguments (the bytes a call derives from them)."""

    region: str = "region"
    offset: str | None = None
    length: str | Callable[[Args], int] | None = None
    owner: str | None = None     # the argument naming the owning process (None: the caller)
    aligned: bool = False        # offset and length must be multiples of the page size
    rid: bool = False            # the primitive also gets the region id `rid`


@dataclass(frozen=True)
class Op:
    """One declared operation: what the base checks, records and passes to `do_<name>`."""

    name: str
    params: tuple[str, ...]
    returns: Returns
    doc: str
    data: bool = False           # the step records the bytes the call returned
    settle: bool = False         # pins may be released after the call (the host waits)
    range: Range | None = None
    buffers: str | None = None   # an argument holding [(region, offset, length), ...]
    label: Callable[[Args], dict[str, object]] | None = None
    check: Callable[[Args], str] | None = None   # misuse found in the arguments, or ""
    makes: Callable[[Args], tuple[str, int, bool]] | None = None  # kind, length, shared
    raises: bool = False         # a refusal raises OSError instead of being returned
    ends: bool = False           # the process is gone after the step
    extra: tuple[tuple[str, Callable[[BaseProc], Any]], ...] = ()  # (name, value of caller)
    observes: bool = False       # the step records the page identity the call returned
    simple: tuple[tuple[str, str], ...] = ()   # (name, "int" / "bool" / "bytes") to check

    def wrong_type(self, args: Args) -> str:
        """The first argument declared `int`, `bool` or `bytes` that is not one, or "".
        A bool is not taken for an int (True would be 1 on one back-end and refused by a
        driver on the other), nor a truthy value for a bool."""
        for name, kind in self.simple:
            value = args[name]
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            elif kind == "bool":
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, bytes | bytearray | memoryview)
            if not ok:
                want = {"int": "an int", "bool": "True or False", "bytes": "bytes"}[kind]
                return f"{self.name}: {name} must be {want}, got {value!r}"
        return ""

    def primitive_params(self) -> tuple[str, ...]:
        """The argument names `do_<name>` takes on every back-end (see the module doc)."""
        names = list(self.params)
        if self.range is not None:
            rng = self.range
            at = names.index(rng.region)
            names[at:at + 1] = ["rid", "addr"] if rng.rid else ["addr"]
            if rng.offset:
                names.remove(rng.offset)
            if rng.length is None:
                names.insert(names.index("addr") + 1, "length")
        if self.returns == "region":
            names.append("new_rid")
        names += [name for name, _ in self.extra]
        return tuple(names)

    def step_name(self, args: Args) -> str:
        """The name the step gets in both back-ends' traces."""
        return op_name(self.name, **(self.label(args) if self.label else {}))


OPS: dict[str, Op] = {}
F = TypeVar("F", bound=Callable[..., Any])


def operation(*, returns: Returns, data: bool = False, settle: bool = False,
              range: Range | None = None, buffers: str | None = None,  # noqa: A002
              label: Callable[[Args], dict[str, object]] | None = None,
              check: Callable[[Args], str] | None = None,
              makes: Callable[[Args], tuple[str, int, bool]] | None = None,
              raises: bool = False, ends: bool = False,
              extra: tuple[tuple[str, Callable[[BaseProc], Any]], ...] = (),
              observes: bool = False) -> Callable[[F], F]:
    """Declare a scenario operation: enter it in `OPS` and make the method call the base."""
    def declare(fn: F) -> F:
        sig = inspect.signature(fn)
        params = tuple(p for p in sig.parameters if p != "self")
        simple = tuple((name, str(sig.parameters[name].annotation)) for name in params
                       if str(sig.parameters[name].annotation) in ("int", "bool", "bytes"))
        op = Op(fn.__name__, params, returns, inspect.getdoc(fn) or "", data, settle, range,
                buffers, label, check, makes, raises, ends, extra, observes, simple)
        if op.name in OPS:
            raise ValueError(f"operation {op.name!r} is declared twice")
        OPS[op.name] = op

        @functools.wraps(fn)
        def public(self: BaseProc, *args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            given = dict(bound.arguments)
            del given["self"]
            return self._invoke(op, given)

        public.op = op  # type: ignore[attr-defined]
        return cast(F, public)
    return declare


# -- argument checks (misuse of the protocol, answered identically by every back-end) -------

def _byte(name: str, value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        return f"{name} must be a byte value 0..255, got {value!r}"
    return ""


def _not_negative(name: str, value: object) -> str:
    if not isinstance(value, int) or value < 0:
        return f"{name} must be an integer >= 0, got {value!r}"
    return ""


def _check_map(a: Args) -> str:
    kind, length = a["kind"], a["length"]
    if kind not in MAP_KINDS:
        return f"unknown mapping kind {kind!r}: use one of {MAP_KINDS}"
    granule = GRANULE.get(kind, PAGE_SIZE)
    if not isinstance(length, int) or length <= 0 or length % granule:
        return (f"a {kind} map needs a length that is a positive multiple of {granule} "
                f"bytes, got {length!r}")
    if (kind == "thp" or kind in MTHP_KINDS) and a["shared"]:
        return f"kind {kind!r} is anonymous private memory: use shared=False"
    if a["populate"] not in (True, False, "read"):
        return f"populate must be True, False or 'read', got {a['populate']!r}"
    return _byte("fill", a["fill"])


def _check_limit(a: Args) -> str:
    limit = a["limit"]
    if problem := _not_negative("limit", limit):
        return problem
    if limit > RLIM_INFINITY:          # rlim_t is unsigned 64 bits
        return f"limit must be at most RLIM_INFINITY (2**64 - 1), got {limit}"
    return ""


def _check_mprotect(a: Args) -> str:
    writable, prot = a["writable"], a["prot"]
    if writable is not None and not isinstance(writable, bool):
        return f"writable must be True, False or None, got {writable!r}"
    if (writable is None) == (prot is None):
        return "mprotect takes either writable=True/False or prot=PROT_* bits, not both"
    if prot is not None and (not isinstance(prot, int) or isinstance(prot, bool)
                             or prot & ~PROT_BITS or prot < 0):
        return (f"prot must be PROT_NONE or an OR of PROT_READ, PROT_WRITE, PROT_EXEC "
                f"(0..7), got {prot!r}")
    return ""


def prot_name(prot: int) -> str:
    """PROT_* bits by name: 0 is PROT_NONE, 3 is PROT_READ|PROT_WRITE."""
    names = [n for bit, n in ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"))
             if prot & bit]
    return "|".join(names) or "PROT_NONE"


def _mprotect_label(a: Args) -> dict[str, object]:
    """writable as before (old traces keep their step names), else the PROT_* names."""
    if a["prot"] is None:
        return dict(writable=a["writable"])
    return dict(prot=prot_name(a["prot"]))


def _check_pages(a: Args) -> str:
    other, region = a["other"], a["region"]
    if other is None:
        return ""
    regions = getattr(other, "regions", None)
    if regions is None:
        return f"other must be a process (a Proc) or None, got {other!r}"
    if not getattr(other, "alive", False):
        return f"other (process {other.pid}) has exited: observe a live process"
    mine = regions.get(getattr(region, "rid", None))
    if not isinstance(region, Region) or mine is None \
            or (mine.kind, mine.length) != (region.kind, region.length):
        return (f"other (process {other.pid}) does not map region "
                f"{getattr(region, 'rid', region)}: pass a process that mapped or "
                "inherited it")
    return ""


def _check_map_view(a: Args) -> str:
    kind = a["region"].kind
    if kind not in FILE_KINDS:
        return f"map_view needs a file-backed region ({FILE_KINDS}), not {kind!r}"
    return ""


def _check_madvise(a: Args) -> str:
    if a["advice"] not in ADVICE:
        return (f"unknown madvise advice {a['advice']!r}: use one of the MADV_* values in "
                f"gupsim.constants ({', '.join(ADVICE.values())})")
    return ""


def _check_buffers(a: Args) -> str:
    bufs = a["buffers"]
    if not isinstance(bufs, list | tuple) or not all(
            isinstance(b, tuple | list) and len(b) == 3 and isinstance(b[0], Region)
            for b in bufs):
        return "buffers must be a list of (region, offset, length) tuples"
    return ""


def _pbuf_ring_bytes(entries: object) -> int:
    """The bytes a provided-buffer ring of `entries` covers (pages, rounded up)."""
    n = entries if isinstance(entries, int) and entries > 0 else 1
    return (n * 16 + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _check_pbuf_ring(a: Args) -> str:
    entries = a["entries"]
    if not isinstance(entries, int) or isinstance(entries, bool) or not 0 < entries <= 1 << 15:
        return f"entries must be an integer 1..32768, got {entries!r}"
    return _not_negative("bgid", a["bgid"]) or (
        "" if a["bgid"] < 1 << 16 else f"bgid must be below 65536, got {a['bgid']}")


def _check_ro_pin(a: Args) -> str:
    off, n = a["offset"], a["length"]
    if problem := _not_negative("offset", off) or _not_negative("length", n):
        return problem
    pages = (off % PAGE_SIZE + n + PAGE_SIZE - 1) // PAGE_SIZE
    if not 0 < pages <= PVM_MAX_PAGES_PER_LOOP:
        return (f"ro_pin_then_write holds 1..{PVM_MAX_PAGES_PER_LOOP} pages pinned at once (one "
                f"process_vm_readv chunk), got {n} bytes at offset {off} ({pages} pages): "
                "use a length > 0 that spans fewer pages")
    return _byte("fill", a["fill"])


MAX_RINGS = 8     # io_uring rings a scenario process may hold at once (ids 0..7)


def _ring_check(check: Callable[[Args], str] | None = None) -> Callable[[Args], str]:
    """The op's own check, after the ring id's."""
    def run(a: Args) -> str:
        ring = a["ring"]
        if not isinstance(ring, int) or isinstance(ring, bool) or not 0 <= ring < MAX_RINGS:
            return f"ring must be a ring id 0..{MAX_RINGS - 1}, got {ring!r}"
        return check(a) if check else ""
    return run


def _ring_label(label: Callable[[Args], dict[str, object]] | None = None
                ) -> Callable[[Args], dict[str, object]]:
    """The op's own label, plus `ring N` for a ring other than 0 (so that traces of
    one-ring scenarios keep their step names)."""
    def run(a: Args) -> dict[str, object]:
        out = dict(label(a)) if label else {}
        if a["ring"]:
            out["ring"] = f"ring{a['ring']}"
        return out
    return run


KVM_GUEST_MEMORY = 0xF0000   # a real-mode guest's memory below its code page (live/kvm.py)
KVM_MAX_READ = PAGE_SIZE


def _check_kvm_create(a: Args) -> str:
    length = a["region"].length if isinstance(a["region"], Region) else 0
    if length > KVM_GUEST_MEMORY:
        return (f"kvm_create maps at most {KVM_GUEST_MEMORY:#x} bytes (a real-mode guest); "
                f"the region has {length:#x}: use a smaller region")
    return ""


def _check_kvm_guest_read(a: Args) -> str:
    off, n = a["offset"], a["length"]
    if problem := _not_negative("offset", off) or _not_negative("length", n):
        return problem
    if not 0 < n <= KVM_MAX_READ or off + n > KVM_GUEST_MEMORY:
        return (f"kvm_guest_read reads 1..{KVM_MAX_READ} bytes below guest-physical "
                f"{KVM_GUEST_MEMORY:#x}, got {n} at {off:#x}")
    return ""


class Operations:
    """The operations a scenario process offers (`Proc`): every call records one `Step`
    in its system's trace. Declared here once; `base.BaseProc` runs them."""

    pid: int

    def _invoke(self, op: Op, args: dict[str, Any]) -> Any:
        raise NotImplementedError

    # -- memory -----------------------------------------------------------------------------

    @operation(returns="region", check=_check_map,
               label=lambda a: dict(kind=a["kind"], length=a["length"], shared=a["shared"],
                                    writable=a["writable"]),
               makes=lambda a: (a["kind"], a["length"], a["shared"]))
    def map(self, kind: MapKind, length: int, *, shared: bool = False, writable: bool = True,
            populate: bool | Literal["read"] = True, fill: int = 0) -> Region:
        """mmap a new area. `populate`: True writes `fill` to every page (reads them if not
        writable), "read" read-faults every page, False leaves them untouched.
        Kinds: "thp" is 2 MiB-aligned anon with MADV_HUGEPAGE; "mthp" the same at 64 KiB
        with hugepages-64kB/enabled at "madvise" while it faults (the host checks the
        folio it got, and skips the case if THP allocation failed); "mthp-16k" ..
        "mthp-1024k" the same at their size (`MTHP_KINDS`); "secretmem" a memfd_secret()
        file (MAP_SHARED only: a private map is the kernel's EINVAL)."""
        ...

    @operation(returns="region", range=Range(rid=True), check=_check_map_view,
               label=lambda a: dict(kind=a["region"].kind, length=a["region"].length,
                                    shared=a["shared"], writable=a["writable"]),
               makes=lambda a: (a["region"].kind, a["region"].length, a["shared"]))
    def map_view(self, region: Region, *, shared: bool, writable: bool) -> Region:
        """mmap the file behind a file-kind region once more (read-faulted), as cow.c
        maps a page cache page privately and shared at once: from the file's start, the
        region's length. A view, or a part moved by mremap_move, maps the same file."""
        ...

    @operation(returns="region",
               range=Range(offset="offset", length="length", aligned=True, rid=True),
               label=lambda a: dict(size=a["length"]),
               check=lambda a: "" if a["length"] > 0 else
               f"mremap_move moves a part of at least one page, got length {a['length']}",
               makes=lambda a: (a["region"].kind, a["length"], a["region"].shared))
    def mremap_move(self, region: Region, offset: int, length: int) -> Region:
        """Move [offset, offset+length) of a region to a new address (MREMAP_FIXED onto a
        fresh reservation, as cow.c's "partially mremap()'ed THP"); the moved part."""
        ...

    @operation(returns="bytes", data=True, range=Range(offset="offset", length="n"))
    def read(self, region: Region, offset: int, n: int) -> bytes:
        """A CPU read of n bytes (through page faults); a bad access raises
        `gupsim.SegmentationFault` / `gupsim.BusError` after recording the step."""
        ...

    @operation(returns="none", range=Range(offset="offset", length="data"))
    def write(self, region: Region, offset: int, data: bytes) -> None:
        """A CPU write (through page faults, COW included)."""
        ...

    @operation(returns="outcome", range=Range(offset="offset", length="length"),
               check=_check_mprotect, label=_mprotect_label)
    def mprotect(self, region: Region, offset: int, length: int, writable: bool | None = None,
                 *, prot: int | None = None) -> Outcome:
        """mprotect() a range R/O or R/W (`writable`), or to any protection (`prot`: PROT_*
        bits, PROT_NONE included); give one of the two."""
        ...

    @operation(returns="outcome", settle=True, range=Range(offset="offset", length="length"),
               check=_check_madvise, label=lambda a: dict(advice=a["advice"]))
    def madvise(self, region: Region, offset: int, length: int, advice: int) -> Outcome:
        """madvise() a range with one of the `ADVICE` values."""
        ...

    @operation(returns="outcome")
    def clear_refs(self) -> Outcome:
        """Write "4" to /proc/self/clear_refs, as cow.c does before its mprotect cases:
        soft-dirty bits reset, every PTE write-protected (but a pinned one in a COW
        mapping), so the next write faults (`mm/soft_dirty.py`)."""
        ...

    @operation(returns="outcome", settle=True, range=Range(rid=True))
    def munmap(self, region: Region) -> Outcome:
        """Unmap the whole region (the region stays known: a later access faults)."""
        ...

    @operation(returns="proc")
    def fork(self) -> BaseProc:
        """fork(): a new process sharing this one's memory copy-on-write; it knows the
        same regions at the same addresses, but has no ring, socket or pipe of its own yet."""
        ...

    @operation(returns="none", settle=True, ends=True)
    def exit(self) -> None:
        """exit(): the kernel releases everything the process held; using it afterwards
        is a `ProtocolError`."""
        ...

    # -- operations that take pins --------------------------------------------------------------

    @operation(returns="outcome", settle=True, buffers="buffers",
               check=_ring_check(_check_buffers), label=_ring_label())
    def uring_register(self, buffers: list[tuple[Region, int, int]], *,
                       ring: int = 0) -> Outcome:
        """IORING_REGISTER_BUFFERS of (region, offset, length) buffers on this process's
        ring `ring` (each process may hold rings 0..MAX_RINGS-1; the first use of an id
        sets that ring up)."""
        ...

    @operation(returns="outcome", settle=True, check=_ring_check(), label=_ring_label())
    def uring_unregister(self, *, ring: int = 0) -> Outcome:
        """IORING_UNREGISTER_BUFFERS on this process's ring."""
        ...

    @operation(returns="outcome", data=True, label=_ring_label(),
               check=_ring_check(lambda a: _not_negative("length", a["length"])))
    def uring_write_fixed(self, index: int, length: int, *, ring: int = 0) -> Outcome:
        """IORING_OP_WRITE_FIXED of registered buffer `index` to a scratch file; the value
        is the bytes the file received (what the pinned pages held)."""
        ...

    @operation(returns="outcome", label=_ring_label(),
               check=_ring_check(lambda a: _not_negative("length", a["length"])
                                 or _byte("fill", a["fill"])))
    def uring_read_fixed(self, index: int, length: int, fill: int, *,
                         ring: int = 0) -> Outcome:
        """IORING_OP_READ_FIXED of `length` bytes of value `fill` from a scratch file into
        registered buffer `index` (the device writes into the pinned pages); value: the
        byte count. A later read() shows whether the process still maps those pages."""
        ...

    @operation(returns="outcome", settle=True, check=_ring_check(), label=_ring_label(),
               range=Range(offset="offset", length=lambda a: 2 * PAGE_SIZE))
    def uring_setup_user(self, region: Region, offset: int = 0, *, ring: int = 0) -> Outcome:
        """io_uring_setup(IORING_SETUP_NO_MMAP) of a 4-entry ring whose memory is two pages
        of the region from `offset`: the SQ/CQ rings in the first (cq_off.user_addr), the
        SQE array in the second (sq_off.user_addr); the kernel pins both long-term. It
        becomes this process's ring `ring` (EBUSY if that id has a ring: uring_close it
        first)."""
        ...

    @operation(returns="outcome", settle=True, check=_ring_check(), label=_ring_label())
    def uring_close(self, *, ring: int = 0) -> Outcome:
        """Close this process's ring `ring` (EBADF if there is none): its fixed buffers, buffer
        rings and, for a NO_MMAP ring, its own memory are unpinned."""
        ...

    @operation(returns="outcome", settle=True,
               range=Range(offset="offset", length=lambda a: _pbuf_ring_bytes(a["entries"])),
               check=_ring_check(_check_pbuf_ring),
               label=_ring_label(lambda a: dict(entries=a["entries"])))
    def uring_register_pbuf_ring(self, region: Region, offset: int, entries: int,
                                 bgid: int = 0, *, ring: int = 0) -> Outcome:
        """IORING_REGISTER_PBUF_RING of a provided-buffer ring of `entries` 16-byte entries
        at region+offset (IOU_PBUF_RING_MMAP unset) for buffer group `bgid`, on this
        process's ring: the kernel pins its pages long-term."""
        ...

    @operation(returns="outcome", settle=True, label=_ring_label(),
               check=_ring_check(lambda a: _not_negative("bgid", a["bgid"])))
    def uring_unregister_pbuf_ring(self, bgid: int = 0, *, ring: int = 0) -> Outcome:
        """IORING_UNREGISTER_PBUF_RING of buffer group `bgid` (ENOENT if it has no ring)."""
        ...

    @operation(returns="outcome", settle=True, range=Range(offset="offset", length="length"))
    def odirect_write(self, region: Region, offset: int, length: int) -> Outcome:
        """pwrite() with O_DIRECT from memory to a scratch file (a short-term R/O pin)."""
        ...

    @operation(returns="outcome", settle=True, range=Range(offset="offset", length="length"),
               check=lambda a: _byte("fill", a["fill"]))
    def odirect_read(self, region: Region, offset: int, length: int, fill: int) -> Outcome:
        """pread() with O_DIRECT of `length` bytes of value `fill` into memory (a R/W pin)."""
        ...

    @operation(returns="outcome", data=True, settle=True,
               range=Range(offset="offset", length="length", owner="target"))
    def process_vm_readv(self, target: BaseProc, region: Region, offset: int,
                         length: int) -> Outcome:
        """Read another process's memory (remote short-term pins); value: the bytes."""
        ...

    @operation(returns="outcome", settle=True,
               range=Range(offset="offset", length="data", owner="target"))
    def process_vm_writev(self, target: BaseProc, region: Region, offset: int,
                          data: bytes) -> Outcome:
        """Write `data` into another process's memory (remote short-term R/W pins, the
        pages dirtied as they are unpinned); value: the bytes written."""
        ...

    @operation(returns="outcome", data=True,
               range=Range(offset="offset", length="length", owner="target"))
    def proc_mem_read(self, target: BaseProc, region: Region, offset: int,
                      length: int) -> Outcome:
        """pread() of /proc/PID/mem of `target` (access_remote_vm: FOLL_GET|FOLL_FORCE
        references, no pin); value: the bytes. EIO where nothing could be read (a
        memfd_secret mapping, which GUP refuses)."""
        ...

    @operation(returns="outcome", range=Range(offset="offset", length="data", owner="target"))
    def proc_mem_write(self, target: BaseProc, region: Region, offset: int,
                       data: bytes) -> Outcome:
        """pwrite() of `data` to /proc/PID/mem of `target` (access_remote_vm with
        FOLL_FORCE|FOLL_WRITE references, no pin: a read-only private mapping is written
        through a COW copy); value: the bytes written. EIO where nothing could be written."""
        ...

    @operation(returns="outcome", range=Range(offset="offset", length="length", aligned=True))
    def uffd_continue(self, region: Region, offset: int, length: int) -> Outcome:
        """UFFDIO_CONTINUE of the range of a shmem (memfd, tmpfs) mapping taken to be
        registered for minor faults: its page cache pages are mapped (read-only and dirty
        in a private mapping). EEXIST where a page is mapped already. Model only: the host
        back-end registers no userfaultfd, so a host run skips the case (mm/userfaultfd.py)."""
        ...

    @operation(returns="outcome", data=True, range=Range(offset="offset", length="length"),
               check=_check_ro_pin)
    def ro_pin_then_write(self, region: Region, offset: int, length: int,
                          fill: int) -> Outcome:
        """Pin the range R/O (process_vm_readv of this process, short-term FOLL_PIN via
        pin_user_pages_remote), write `fill` through the page tables while it is pinned,
        then read through the pins; value: what the pins saw."""
        ...

    @operation(returns="outcome", range=Range(offset="offset", length="length"))
    def vmsplice(self, region: Region, offset: int, length: int) -> Outcome:
        """vmsplice the range into this process's pipe (FOLL_GET references, no pin)."""
        ...

    @operation(returns="outcome", data=True,
               check=lambda a: _not_negative("length", a["length"]))
    def pipe_read(self, length: int) -> Outcome:
        """Read from this process's pipe; value: the bytes."""
        ...

    @operation(returns="outcome", settle=True, range=Range())
    def xdp_umem_reg(self, region: Region) -> Outcome:
        """XDP_UMEM_REG of the whole region on a new AF_XDP socket (long-term pins)."""
        ...

    @operation(returns="outcome", settle=True)
    def xdp_close(self) -> Outcome:
        """Close the AF_XDP socket opened last (EBADF if there is none)."""
        ...

    @operation(returns="outcome", observes=True, check=_check_pages,
               range=Range(offset="offset", length="length", aligned=True))
    def pages(self, region: Region, offset: int, length: int,
              other: BaseProc | None = None, soft_dirty: bool = False) -> Outcome:
        """Observe page identity of [offset, offset+length) (`scenarios/identity.py`):
        per page nothing, swapped, the zero page, or a frame numbered by first
        appearance, THP/hugetlb, exclusively mapped, and with `soft_dirty` whether it
        reads soft-dirty; with `other`, the same range in that process too (did fork
        share the frames or copy them?). Value: the tokens."""
        ...

    @operation(returns="none", raises=True, label=lambda a: dict(size=a["limit"]),
               check=_check_limit,
               extra=(("uid", lambda proc: PRIVATE_UID_BASE + proc.pid),))
    def limit_memlock(self, limit: int) -> None:
        """Set RLIMIT_MEMLOCK and drop CAP_IPC_LOCK and CAP_SYS_RESOURCE, as an unprivileged
        user would have (the process also moves to a uid of its own, `PRIVATE_UID_BASE +
        pid`). Lowering the limit again is allowed; raising it is EPERM (no
        CAP_SYS_RESOURCE; the model's root has none from the start, as this host's
        container root: there a first limit above the 8 MiB default is EPERM too)."""
        ...

    # -- KVM: a case-3 user (MMU notifiers, no pins) -----------------------------------------

    @operation(returns="outcome", settle=True, range=Range(), check=_check_kvm_create)
    def kvm_create(self, region: Region) -> Outcome:
        """KVM_CREATE_VM with one real-mode vCPU; memory slot 0 maps guest-physical
        [0, region length) onto the region (at most KVM_GUEST_MEMORY bytes: the guest runs
        in real mode). Replaces this process's previous VM, if any."""
        ...

    @operation(returns="outcome", data=True, settle=True, check=_check_kvm_guest_read,
               label=lambda a: dict(size=a["length"]))
    def kvm_guest_read(self, offset: int, length: int) -> Outcome:
        """The guest loads `length` bytes at guest-physical `offset` through its own
        second-level page table (KVM's MMU-notifier-guarded faults) and reports them;
        value: the bytes. EFAULT where no memory is behind the address; EBADF without a
        VM (kvm_create first; a forked child has none)."""
        ...

    @operation(returns="outcome", settle=True, range=Range(),
               check=lambda a: _byte("fill", a["fill"]))
    def map_fixed(self, region: Region, fill: int) -> Outcome:
        """mmap a fresh private anonymous read/write area at the address of `region`
        (MAP_FIXED_NOREPLACE: EEXIST while anything is still mapped there, so munmap it
        first) and write `fill` to every page: "munmap and mmap at the same address"."""
        ...
