"""A seeded random program generator over every declared scenario operation.

Nothing here is written per operation: the arguments of a call are derived from the
operation's declaration in `scenarios/ops.py` (its parameters' names and type hints, its
`Range`, its `buffers`, its `check`), so an operation declared tomorrow is fuzzed the day
it is declared. What is known about a few parameter *names* (a madvise advice, a map
length that must be a multiple of the kind's folio size) is in `NAMED`; any other
parameter gets a value from its type (bool, int, Literal, a region, a process).

Ranges are drawn valid and invalid as the kernel sees them (the protocol itself only
asks that a range lie inside its region): whole regions, page-aligned parts, zero
lengths, unaligned starts and lengths. The generator tracks just enough state to keep
programs running: which processes are alive, which regions each one knows, and which of
them a CPU access may touch without a fault (not unmapped, moved, write-protected or
left out of a fork by MADV_DONTFORK) -- a fault ends a scenario, and it would end most
programs after a few steps.
"""

from __future__ import annotations

import random
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..constants import MADV_DONTFORK, PAGE_SIZE
from ..scenarios import ops as ops_mod
from ..scenarios.base import BaseProc
from ..scenarios.ops import ADVICE, GRANULE, OPS, Op, Range
from ..scenarios.records import MAP_KINDS, Region
from .program import NEEDS_BY_KIND, NEEDS_BY_PREFIX, Call, Fill, Program, Ref

# Operations whose CPU access faults on a region that is unmapped or write-protected:
# the generator only gives them regions it knows to be safe for that access.
CPU_ACCESS = {"read": "read", "write": "write", "ro_pin_then_write": "write"}

# What may use a region once (some of) it is unmapped: map_fixed, whose answer no
# longer depends on layout (scenarios/holes.py keeps the scenario's own maps out of
# holes). Nothing else: on the host, the server's own allocations (a ring, a buffer)
# may land in the hole, so an O_DIRECT there may pin them, and a munmap would take
# them away.
AFTER_UNMAP = {"map_fixed"}

# How often an operation is drawn, relative to the default 1 (new operations get 1).
WEIGHTS = {"map": 2.0, "read": 2.0, "write": 2.0, "fork": 0.8, "exit": 0.4,
           "limit_memlock": 0.2, "munmap": 0.5}

MAX_PROCS = 3          # live processes at once
MAX_REGIONS = 8        # map calls per program
MAX_HUGETLB = 2        # hugetlb maps per program (2 MiB each, copies at fork need more)
SIZES = (0, 1, 512, PAGE_SIZE, 2 * PAGE_SIZE, 64 << 10)   # a plain byte count


@dataclass
class Known:
    """A region as one process knows it, and whether a CPU access is safe there."""

    kind: str
    length: int
    read: bool = True
    write: bool = True
    nofork: bool = False      # MADV_DONTFORK was given on some of it
    moved: bool = False       # made by mremap_move or map_view
    gone: bool = False        # unmapped (munmap), or a part moved away (mremap_move)


@dataclass
class State:
    """What the generator tracks of the program so far."""

    procs: dict[str, dict[str, Known]] = field(default_factory=lambda: {"p0": {}})
    maps: int = 0
    hugetlb: int = 0


def _hints(name: str) -> dict[str, Any]:
    """The type hints of operation `name`'s declaration."""
    fn = getattr(ops_mod.Operations, name)
    fn = getattr(fn, "__wrapped__", fn)
    return typing.get_type_hints(fn, vars(ops_mod), {"BaseProc": BaseProc})


class Generator:
    """Random programs from one seed: `Generator(seed).program(number, steps)` is the
    same program on every run and every machine (the host plays no part in it).

    `allowed(capability)` says whether an operation or map kind needing that host
    capability may be used (a campaign on a host without AF_XDP leaves AF_XDP out)."""

    def __init__(self, seed: int, allowed: Callable[[str], bool] = lambda need: True) -> None:
        self.seed = seed
        self.allowed = allowed
        self.ops = [op for op in OPS.values()
                    if all(allowed(need) for prefix, need in NEEDS_BY_PREFIX.items()
                           if op.name.startswith(prefix))]
        self.kinds = [k for k in MAP_KINDS if allowed(NEEDS_BY_KIND.get(k, "x86_64"))]
        self.hints = {op.name: _hints(op.name) for op in self.ops}

    def program(self, number: int, steps: int) -> Program:
        """Program `number` of this seed, of 1..`steps` calls."""
        rng = random.Random(f"{self.seed}/{number}")
        state = State()
        calls: list[Call] = []
        want = rng.randint(1, steps)
        for _ in range(want * 4):           # a drawn call may not fit: draw again
            if len(calls) >= want:
                break
            call = self._call(rng, state, len(calls) + 1)
            if call is not None:
                calls.append(call)
                self._update(state, call)
        return Program(calls, self.seed, number)

    # -- one call -------------------------------------------------------------------------
    def _call(self, rng: random.Random, state: State, index: int) -> Call | None:
        proc = rng.choice(sorted(state.procs))
        ops = [op for op in self.ops if self._fits(op, state)]
        op = rng.choices(ops, [WEIGHTS.get(op.name, 1.0) for op in ops])[0]
        if not state.procs[proc] and rng.random() < 0.7:
            op = OPS["map"]       # most operations want a region: make one first
        for _ in range(10):
            args = self._args(rng, state, op, proc)
            if args is None:
                return None
            if op.check is None or not op.check(self._checkable(state, args)):
                makes = {"region": f"r{index}", "proc": f"p{index}"}.get(op.returns, "")
                return Call(proc, op.name, tuple(args.items()), makes)
        return None

    def _fits(self, op: Op, state: State) -> bool:
        if op.name == "fork":
            return len(state.procs) < MAX_PROCS
        if op.ends:
            return len(state.procs) > 1
        if op.name == "map":
            return state.maps < MAX_REGIONS
        return True

    @staticmethod
    def _checkable(state: State, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments as an op's `check` sees them: a region as a Region."""
        every = {n: k for known in state.procs.values() for n, k in known.items()}

        def conv(v: Any) -> Any:
            if isinstance(v, Ref) and v.name in every:
                k = every[v.name]
                return Region(0, 0, k.kind, k.length, False)
            if isinstance(v, Fill):
                return bytes([v.byte]) * v.n
            if isinstance(v, list):
                return [tuple(conv(x) for x in b) for b in v]
            return v
        return {k: conv(v) for k, v in args.items()}

    def _args(self, rng: random.Random, state: State, op: Op,
              proc: str) -> dict[str, Any] | None:
        hints = self.hints[op.name]
        rng_ = op.range
        ranged = {rng_.region, rng_.offset, rng_.owner} if rng_ else set()
        if rng_ is not None and isinstance(rng_.length, str):
            ranged.add(rng_.length)
        args: dict[str, Any] = {}
        for name in op.params:          # plain arguments first: a range may depend on them
            if name in ranged or name == op.buffers:
                continue
            args[name] = self._value(rng, state, op, name, hints.get(name), args)
            if args[name] is _NONE:
                return None
        owner = proc
        if rng_ is not None and rng_.owner is not None:
            owner = rng.choice(sorted(state.procs))
            args[rng_.owner] = Ref(owner)
        if rng_ is not None and not self._ranged(rng, state, op, rng_, owner, args):
            return None
        if op.buffers is not None:
            known = state.procs[proc]
            mapped = sorted(n for n, k in known.items() if not k.gone)
            if not mapped:
                return None
            bufs = []
            for _ in range(rng.randint(1, 3)):
                name = rng.choice(mapped)
                off, n = span(rng, known[name].length, aligned=False)
                bufs.append((Ref(name), off, n))
            args[op.buffers] = bufs
        return {name: args[name] for name in op.params}

    def _ranged(self, rng: random.Random, state: State, op: Op, r: Range, owner: str,
                args: dict[str, Any]) -> bool:
        """Draw the region, offset and length of a range into `args`; False if none fits."""
        known = state.procs[owner]
        access = CPU_ACCESS.get(op.name)
        names = sorted(n for n, k in known.items() if (access is None or getattr(k, access))
                       and not (k.gone and op.name not in AFTER_UNMAP))
        fixed = r.length(self._checkable(state, args)) if callable(r.length) else None
        if fixed is not None:
            names = [n for n in names if known[n].length >= fixed]
        if not names:
            return False
        name = rng.choice(names)
        length = known[name].length
        args[r.region] = Ref(name)
        if r.length is None:
            return True
        if fixed is not None:
            room = (length - fixed) // PAGE_SIZE
            off = rng.randint(0, room) * PAGE_SIZE
            if not r.aligned and rng.random() < 0.2 and off + fixed < length:
                off += rng.randint(1, PAGE_SIZE - 1)
        else:
            off, n = span(rng, length, r.aligned)
            assert isinstance(r.length, str)
            hint = self.hints[op.name].get(r.length)
            args[r.length] = Fill(rng.randint(0, 255), n) if hint is bytes else n
        if r.offset:
            args[r.offset] = off
        return True

    def _value(self, rng: random.Random, state: State, op: Op, name: str, hint: Any,
               args: dict[str, Any]) -> Any:
        if name in NAMED:
            return NAMED[name](rng, self, state, args)
        if hint is bool:
            return rng.random() < 0.5
        if typing.get_origin(hint) is typing.Literal:
            return rng.choice(typing.get_args(hint))
        if hint is int:
            return rng.choice((0, 1, 2, PAGE_SIZE))
        if hint is bytes:
            return Fill(rng.randint(0, 255), rng.choice(SIZES))
        if hint is BaseProc or hint == "BaseProc":
            return Ref(rng.choice(sorted(state.procs)))
        args_ = typing.get_args(hint)     # a union such as bool | Literal["read"]
        if type(None) in args_ and rng.random() < 0.5:
            return None                   # an optional argument left out half the time
        rest = [a for a in args_ if a is not type(None)]
        if len(rest) == 1 and args_:      # X | None: draw an X
            return self._value(rng, state, op, name, rest[0], args)
        if args_:
            options: list[Any] = []
            for a in args_:
                options += list(typing.get_args(a)) if typing.get_origin(a) is typing.Literal \
                    else ([True, False] if a is bool else [])
            if options:
                return rng.choice(options)
        raise TypeError(f"the fuzzer cannot draw argument {name!r} of {op.name} (type "
                        f"{hint!r}): add a generator for it to gupsim.fuzz.generate.NAMED")

    # -- what a call changes ----------------------------------------------------------------
    def _update(self, state: State, call: Call) -> None:
        known = state.procs[call.proc]
        region = call.arg("region") if "region" in dict(call.args) else None
        mine = known.get(region.name) if isinstance(region, Ref) else None
        if call.op == "map":
            state.maps += 1
            state.hugetlb += call.arg("kind") in ("hugetlb", "memfd-hugetlb")
            known[call.makes] = Known(call.arg("kind"), call.arg("length"),
                                      write=call.arg("writable"))
        elif call.makes.startswith("r") and mine is not None:   # a view or a moved part
            length = call.arg("length") if "length" in dict(call.args) else mine.length
            writable = dict(call.args).get("writable", mine.write)
            known[call.makes] = Known(mine.kind, length, write=mine.write and writable,
                                      moved=True)
            if call.op == "mremap_move":
                mine.read = mine.write = False
                mine.gone = True
        elif call.op == "fork":
            state.procs[call.makes] = {
                n: Known(k.kind, k.length, k.read and not k.nofork, k.write and not k.nofork,
                         moved=k.moved, gone=k.gone)
                for n, k in known.items()}
        elif call.op == "exit":
            del state.procs[call.proc]
        elif mine is not None:
            if call.op in ("munmap", "map_fixed"):
                mine.read = mine.write = False
                mine.gone = True
            elif call.op == "mprotect" and not call.arg("writable"):
                mine.write = False
            elif call.op == "madvise" and call.arg("advice") == MADV_DONTFORK:
                mine.nofork = True


_NONE = object()    # no value fits (no region known yet)


def span(rng: random.Random, length: int, aligned: bool) -> tuple[int, int]:
    """An (offset, n) inside a region of `length` bytes, valid or invalid as the kernel
    sees it: the whole region, page-aligned parts, zero bytes, or unaligned."""
    pages = length // PAGE_SIZE
    mode = rng.choice(("whole", "pages", "pages", "zero")
                      + (() if aligned else ("small", "unaligned", "unaligned")))
    if mode == "whole" or pages == 0:
        return 0, length
    off = rng.randrange(pages) * PAGE_SIZE
    if mode == "pages":
        return off, rng.randint(1, pages - off // PAGE_SIZE) * PAGE_SIZE
    if mode == "zero":
        return off, 0
    if mode == "small":
        return off, rng.randint(1, PAGE_SIZE)
    off = rng.randrange(length)
    return off, rng.randint(1, length - off)


def _map_kind(rng: random.Random, gen: Generator, state: State, args: dict[str, Any]) -> str:
    kinds = [k for k in gen.kinds
             if state.hugetlb < MAX_HUGETLB or k not in ("hugetlb", "memfd-hugetlb")]
    return rng.choice(kinds)


def _plain_length(rng: random.Random, gen: Generator, state: State,
                  args: dict[str, Any]) -> int:
    """A map's length (a multiple of its kind's folio size), or a plain byte count."""
    if "kind" in args:
        granule = GRANULE.get(args["kind"], PAGE_SIZE)
        few = (1,) if granule == GRANULE.get("hugetlb") and args["kind"] != "thp" else (1, 2)
        pages = (1, 2, 3, 16, 512) if granule == PAGE_SIZE else few
        return granule * rng.choice(pages)
    return rng.choice(SIZES)


NAMED: dict[str, Callable[[random.Random, Generator, State, dict[str, Any]], Any]] = {
    "kind": _map_kind,
    "length": _plain_length,
    "advice": lambda rng, g, s, a: rng.choice(sorted(ADVICE)),
    "fill": lambda rng, g, s, a: rng.randint(0, 255),
    "populate": lambda rng, g, s, a: rng.choice((True, True, False, "read")),
    "shared": lambda rng, g, s, a: rng.random() < 0.4,
    "writable": lambda rng, g, s, a: rng.random() < 0.8,
    "entries": lambda rng, g, s, a: rng.choice((1, 8, 256, 257)),
    "bgid": lambda rng, g, s, a: rng.choice((0, 0, 1)),
    "index": lambda rng, g, s, a: rng.choice((0, 0, 1, 5)),
    "limit": lambda rng, g, s, a: rng.choice((0, PAGE_SIZE, 64 << 10, 1 << 20)),
    "soft_dirty": lambda rng, g, s, a: g.allowed("soft_dirty") and rng.random() < 0.5,
}
