"""The shared base of both back-ends: one implementation of every scenario operation.

`BaseProc` runs each operation declared in `ops` (as SimPy's `BaseEnvironment` runs
`run()` on a few primitives): it checks the call against the protocol, resolves regions
to addresses, records one `Step` around the back-end's primitive, and turns the outcome
into what the operation returns. A back-end supplies only the primitives:

- `BaseProc._perform(op, args)`: run `do_<op.name>(**args)` in the process and return its
  `Outcome` (an errno is an outcome; a would-be signal raises SegmentationFault/BusError);
- `BaseProc._status()`: VmPin and VmLck of the live process;
- `BaseSystem._measure(settle)`: count the pin counters' movement over a block;
- `BaseSystem._prepare(proc, op, args)` (optional): host settings a step needs;
- `BaseSystem._race_window(race)`: run a race's steps at its race point during a step
  (`race.py`); a back-end that cannot raises HostUnsupported from `_arm_race`;
- `BaseSystem._close()`: release what the scenario left.

Misuse of the protocol raises `ProtocolError` here, before anything runs and without a
step, so that both back-ends answer it with the same message.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..constants import PAGE_SIZE
from ..mm.access import BusError, OOMKilled, SegmentationFault
from . import race as races
from .ops import Op, Operations, Range
from .records import Outcome, ProtocolError, Region, Step, Trace

OBSERVED_PAGES = 16     # pages of a touched range whose identity a step records


@dataclass
class Counted:
    """The pin counters' movement over one step, filled in when the block ends."""

    acquired: int = 0
    released: int = 0
    late: int = 0            # of `released`: seen only after the call returned (deferred)
    trusted: bool = True     # exact, and no other pinner moved the counters meanwhile
    settle: bool = False     # the step ended its process after all (OOM kill): settle it


class BaseProc(Operations):
    """A scenario process: the operations of `ops.Operations`, checked and recorded once."""

    def __init__(self, system: BaseSystem, pid: int, name: str) -> None:
        self.system = system
        self.pid = pid               # protocol numbering: 0, 1, ... in spawn/fork order
        self.name = name
        self.alive = True
        self.regions: dict[int, Region] = {}   # rid -> region, mapped here or inherited

    def __repr__(self) -> str:
        state = "alive" if self.alive else "exited"
        return f"<{type(self).__name__} {self.pid} {self.name!r} {state}>"

    # -- primitives a back-end supplies -----------------------------------------------------
    def _perform(self, op: Op, args: dict[str, Any]) -> Outcome:
        """Run the primitive `do_<op.name>(**args)` in this process."""
        raise NotImplementedError

    def _status(self) -> dict[str, int]:
        """VmPin and VmLck (kB) of this live process."""
        raise NotImplementedError

    def _identity(self, addr: int, length: int) -> str:
        """Page identity of [addr, addr+length) in this process (`identity.encode`)."""
        raise NotImplementedError

    def _oom_kill(self) -> None:
        """The OOM killer ended this process during a step: tear it down as exit does."""
        raise NotImplementedError

    # -- not a step ------------------------------------------------------------------------
    def status(self) -> dict[str, int]:
        """VmPin and VmLck in kB (not recorded as a step); zero once the process exited."""
        if not self.alive:
            return {"VmPin": 0, "VmLck": 0}
        return self._status()

    @contextlib.contextmanager
    def on_race(self, point: str) -> Iterator[None]:
        """Steps called in the block run when this process passes race point `point`
        during the scenario's next step, as another thread of it would (`race.py`);
        model only: a host run is skipped, saying why."""
        self._usable("on_race")
        races.check_point(point)
        system = self.system
        if system._capture is not None or system._race is not None:
            raise ProtocolError("on_race: a race is already armed: one race at a time, "
                                "and its step must come before the next on_race")
        race = races.Race(self, point)
        system._capture = race
        try:
            yield
        finally:
            system._capture = None
        if not race.steps:
            raise ProtocolError(f"on_race({point!r}): the block called no step: put the "
                                "steps to race inside it")
        system._arm_race(race)

    # -- every operation -------------------------------------------------------------------
    def _invoke(self, op: Op, args: dict[str, Any]) -> Any:
        """Check a call of `op`, record it as one step, and return what `op` returns."""
        system = self.system
        self._usable(op.name)
        for key, value in args.items():     # a process argument must be of this system
            if isinstance(value, BaseProc) and value.system is not system:
                raise ProtocolError(f"{op.name}: {key} must be a process of the same "
                                    f"{system.name} system, got {value!r}")
        if problem := op.wrong_type(args):
            raise ProtocolError(problem)
        given = dict(args)            # the declared arguments, then what replaces them
        touched: list[tuple[BaseProc, int, int]] = []    # (owner, addr, length) of the step
        if op.range is not None:
            resolved, owner, length = self._resolve(op, op.range, args)
            given.update(resolved)
            touched.append((owner, resolved["addr"], length))
        if op.check and (problem := op.check(args)):
            raise ProtocolError(problem)
        if op.buffers is not None:      # checked for shape above, each buffer here
            given[op.buffers] = [(self._addr(op.name, r, off, n), n)
                                 for r, off, n in args[op.buffers]]
            touched += [(self, addr, n) for addr, n in given[op.buffers]]
        if system._capture is not None:      # inside `with on_race(...)`: later
            system._capture.take(self, op, args)
            return None
        if op.returns == "region":
            given["new_rid"] = system._next_rid()
        for key, value_of in op.extra:
            given[key] = value_of(self)
        prim = {key: given[key] for key in op.primitive_params()}
        name = op.step_name(args)
        at = len(system.trace.steps)       # this step's index (racing steps come after it)
        out = system._step(self, op, name, prim)
        if op.returns == "region":
            if not out.ok:
                system._refused(op, args, name, out)
            assert op.makes is not None
            kind, length, shared = op.makes(args)
            region = Region(self.pid, prim["new_rid"], kind, length, shared, out.value)
            self.regions[region.rid] = region
            system._observe(touched + [(self, region.addr, region.length)], at)
            return region
        if out.ok or op.returns == "outcome":
            system._observe(touched, at)
        if op.returns == "proc":
            if not out.ok:
                system._refused(op, args, name, out)
            child: BaseProc = out.value
            child.regions = dict(self.regions)
            return child
        if op.raises and not out.ok:
            system._refused(op, args, name, out)
        if op.returns == "bytes":
            return out.value if out.ok else b""
        if op.returns == "none":
            return None
        return out

    def _usable(self, what: str) -> None:
        """Misuse of a process: its system closed, or the process exited."""
        if self.system.closed:
            raise ProtocolError(f"{what}: the {self.system.name} system is closed; "
                                "make a new one")
        if not self.alive:
            raise ProtocolError(f"{what}: process {self.pid} ({self.name}) has exited; "
                                "spawn or fork a new one")

    def _resolve(self, op: Op, rng: Range, args: dict[str, Any]
                 ) -> tuple[dict[str, Any], BaseProc, int]:
        """Check a region argument; what the primitive gets instead: `addr` (and `rid`,
        and `length` for a whole region); and the owner and length of the range."""
        out: dict[str, Any] = {}
        owner: BaseProc = self
        if rng.owner is not None:
            owner = args[rng.owner]
            if not isinstance(owner, BaseProc) or owner.system is not self.system:
                raise ProtocolError(f"{op.name}: {rng.owner} must be a process of the same "
                                    f"{self.system.name} system, got {owner!r}")
            owner._usable(f"{op.name} of process {owner.pid}")
        region = args[rng.region]
        offset = args[rng.offset] if rng.offset else 0
        if rng.length is None:
            length = region.length if isinstance(region, Region) else 0
            out["length"] = length
        else:
            length = rng.length(args) if callable(rng.length) else args[rng.length]
            if isinstance(length, bytes | bytearray | memoryview):
                length = len(length)
        if rng.aligned and (not isinstance(offset, int) or not isinstance(length, int)
                            or offset % PAGE_SIZE or length % PAGE_SIZE):
            raise ProtocolError(f"{op.name}: offset {offset!r} and length {length!r} must be "
                                f"multiples of the page size ({PAGE_SIZE})")
        out["addr"] = owner._addr(op.name, region, offset, length)
        if rng.rid:
            out["rid"] = region.rid
        return out, owner, length

    def _addr(self, what: str, region: object, offset: object, n: object) -> int:
        """The address of [offset, offset+n) of a region of this process, or ProtocolError."""
        if not isinstance(region, Region):
            raise ProtocolError(f"{what}: expected a Region from map(), got {region!r}")
        mine = self.regions.get(region.rid)
        if mine is None or (mine.kind, mine.length) != (region.kind, region.length):
            raise ProtocolError(f"{what}: region {region.rid} is not mapped in process "
                                f"{self.pid}: pass a region this process mapped or "
                                "inherited at fork")
        if (not isinstance(offset, int) or not isinstance(n, int) or offset < 0 or n < 0
                or offset + n > region.length):
            raise ProtocolError(f"{what}: range [{offset}, {offset} + {n}) lies outside the "
                                f"region of {region.length} bytes: pass an offset and a "
                                "length that stay inside it")
        return mine.addr + offset


class BaseSystem:
    """A back-end: spawns processes, owns the trace, and records every step once."""

    name = "base"

    def __init__(self) -> None:
        self.trace = Trace(self.name)
        self.procs: list[BaseProc] = []
        self.closed = False
        self._rid = 0
        # record the page identity of the range every step touched (its first
        # OBSERVED_PAGES pages), as `Step.pages`; the `pages` operation asks explicitly
        self.observe_pages = False
        self._capture: races.Race | None = None   # inside `with proc.on_race(...)`
        self._race: races.Race | None = None      # armed for the next step

    # -- primitives a back-end supplies -----------------------------------------------------
    def _measure(self, settle: bool) -> contextlib.AbstractContextManager[Counted]:
        """Count the pin counters' movement over a block (`settle`: releases may lag)."""
        raise NotImplementedError

    def _prepare(self, proc: BaseProc, op: Op,
                 args: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
        """Settings a step needs while it runs (none by default)."""
        return contextlib.nullcontext()

    def _arm_race(self, race: races.Race) -> None:
        """Accept `race` for the next step (the host cannot, and raises HostUnsupported)."""
        self._race = race

    def _race_window(self, race: races.Race) -> contextlib.AbstractContextManager[None]:
        """Around a step: run `race`'s steps when its process passes its race point."""
        raise NotImplementedError

    def _findings(self) -> None:
        """Fill the trace's `reports` and `warnings` (a back-end that has them)."""

    def _spawn(self, name: str) -> BaseProc:
        """Start a new process of this back-end."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release what the scenario left."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def spawn(self, name: str = "task") -> BaseProc:
        """A new process (not a step: nothing is pinned or counted)."""
        if self.closed:
            raise ProtocolError(f"spawn: the {self.name} system is closed; make a new one")
        if not isinstance(name, str):
            raise ProtocolError(f"spawn: name must be a str, got {name!r}")
        return self._spawn(name)

    def close(self) -> None:
        """Release everything the scenario left (pins, rings, processes, settings)."""
        if self.closed:
            return
        self.closed = True
        # what the scenario left held, before the close releases it: pins its steps took
        # and did not release (an exit step counts its releases), and the model's findings
        self.trace.left_pins = sum(s.acquired - s.released for s in self.trace.steps)
        self._findings()
        try:
            self._close()
        finally:
            for proc in self.procs:
                proc.alive = False

    def __enter__(self) -> BaseSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _observe(self, touched: list[tuple[BaseProc, int, int]], at: int) -> None:
        """With `observe_pages`, the identity of what step `at` touched (the first
        OBSERVED_PAGES pages of each range, ranges joined by " ; ") becomes its `pages`."""
        if not self.observe_pages or not touched or at >= len(self.trace.steps):
            return
        step = self.trace.steps[at]
        if step.pages is not None:
            return          # an observing step recorded its own
        parts = []
        for owner, addr, length in touched:
            if not owner.alive:
                continue
            start = addr - addr % PAGE_SIZE
            pages = min(OBSERVED_PAGES, -(-(addr + length - start) // PAGE_SIZE))
            if length > 0:
                parts.append(owner._identity(start, pages * PAGE_SIZE))
        step.pages = " ; ".join(parts) if parts else None

    def _refused(self, op: Op, args: dict[str, Any], name: str, out: Outcome) -> None:
        """An operation that returns a region or a process (or `raises`) failed."""
        exc = OSError(out.errno, f"{name} failed on the {self.name}: "
                      f"{os.strerror(out.errno or errno.EIO)}")
        exc.gupsim_step = len(self.trace.steps)   # type: ignore[attr-defined]
        raise exc

    def _step(self, proc: BaseProc, op: Op, name: str, prim: dict[str, Any]) -> Outcome:
        """Run one primitive inside a pin-counter measurement and record its Step; a
        would-be signal is recorded as the outcome (SIGSEGV, SIGBUS), then raised. Running
        out of memory is the OOM killer's SIGKILL: the process is torn down (`_oom_kill`)
        inside the step, so the step counts what its exit released."""
        fault: SegmentationFault | BusError | OOMKilled | None = None
        out = Outcome(errno.EIO)
        race, self._race = self._race, None
        window = self._race_window(race) if race else contextlib.nullcontext()
        with self._prepare(proc, op, prim), self._measure(op.settle) as counted:
            try:
                with window:
                    out = proc._perform(op, prim)
            except (SegmentationFault, BusError) as exc:
                fault = exc
            except OOMKilled as exc:
                fault = exc
                proc._oom_kill()
                counted.settle = True
        if race is not None:            # the racing steps' pins are theirs, not this step's
            counted.acquired -= sum(s.acquired for s in race.ran)
            counted.released -= sum(s.released for s in race.ran)
            counted.late -= sum(s.late for s in race.ran)
        if op.ends or isinstance(fault, OOMKilled):
            proc.alive = False
        if not counted.trusted:
            self.trace.exact = False
        st = proc.status()
        if fault is not None:
            sig = ("SIGSEGV" if isinstance(fault, SegmentationFault) else
                   "SIGKILL" if isinstance(fault, OOMKilled) else "SIGBUS")
            self.trace.steps.append(Step(name, sig, counted.acquired, counted.released,
                                         st["VmPin"], st["VmLck"], None, late=counted.late))
            fault.gupsim_step = len(self.trace.steps)   # type: ignore[union-attr]
            if race is not None:        # what raced still happened; nothing waits now
                races.finish(self, race, run_waiting=False)
            raise fault
        data = out.value if op.data and out.ok else None
        pages = out.value if op.observes and out.ok else None
        self.trace.steps.append(Step(name, str(out), counted.acquired, counted.released,
                                     st["VmPin"], st["VmLck"], data, pages, counted.late))
        if race is not None:
            races.finish(self, race)
        return out
