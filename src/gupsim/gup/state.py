"""Per-machine state of the pinning layer: the machine's env, its sanitizer, race points,
the record of which path each GUP call took, and `current`.

The unpin family takes only pages (kernel argument order), so it finds the machine's
allocator from the pages' MemMap through this registry, which `KernelPinning` fills
when a `Kernel` is built. Race points are the named places where a scenario may run a
competing operation (a fork between GUP-fast's PTE read and its grab, for example).

Every GUP entry point call leaves a `GupCall` in `k.gup.calls` (the last few, newest
last; `k.gup.last_call`): which path it took (`GUP_PATHS`), how many pages the lockless
walk kept, what the slow path returned, how many FOLL_LONGTERM migration rounds ran, and
what the call returned. Tests read it instead of spying on internal functions. The
internals add to the call in progress with `note_gup()`: a few attribute stores per
call, never per page.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..memory import Allocator, MemMap
from ..observe import gup_call_ended
from .flags import foll_flags_str

if TYPE_CHECKING:
    from ..check.sanitizer import PinSanitizer
    from ..mm import MM, MMEnv

RACE_POINTS = (
    "gup_fast:after_pte_read",     # PTEs read, folios not yet grabbed (fork, munmap, ...)
    "gup_slow:before_fault",       # the slow path is about to fault a page in
    "gup_slow:after_fault",        # a page faulted in, not yet looked up again
    "longterm:before_migrate",     # pins dropped, folios about to be migrated
    "fork:before_wrprotect",       # fork chose which pages to share, not yet write-protected
)


# The paths a GUP call can take (GupCall.path).
PATH_INVALID = "invalid"                 # refused by argument checks (spec 1.4): no walk ran
PATH_FAST = "fast"                       # the lockless walk alone (all pages, or FAST_ONLY)
PATH_FALLBACK = "fast+slow fallback"     # the lockless walk, then the slow path for the rest
PATH_SLOW = "slow"                       # the slow path alone (the entry has no GUP-fast)
GUP_PATHS = (PATH_INVALID, PATH_FAST, PATH_FALLBACK, PATH_SLOW)

# How many GupCall records `k.gup.calls` keeps (older ones are dropped): enough for a
# test or a scenario step to look back over a driver's few calls, bounded for long runs.
GUP_CALLS_KEPT = 64


@dataclass(slots=True)
class GupCall:
    """What one GUP entry point call did: the path it took and what each part returned.

    `flags` are the gup_flags after the entry point added its own (spec 1.5), or the
    caller's when the arguments were refused. `fast` is the number of pages the lockless
    walk kept (None: it did not run); `slow` is what the slow path returned for the rest,
    a count or -errno (None: it did not run); `migrate_rounds` counts the FOLL_LONGTERM
    rounds that dropped the pins, migrated the offenders and pinned again (spec 4.4).
    `leaves`: the lockless walk checked and grabbed PMD/PUD leaves once each, not entry
    by entry; `express`: the whole call went the express way (`gup/express.py`: the
    common GUP-fast calls with the layers collapsed, held to the general walk by
    `tests/gup/test_lean_paths.py`). memfd_pin_folios() is recorded too: `start` is its
    byte offset, `nr_pages` its max_folios, and its page-cache lookup counts as the slow
    path.
    """

    entry: str
    start: int
    nr_pages: int
    flags: int
    path: str
    fast: int | None = None
    slow: int | None = None
    migrate_rounds: int = 0
    ret: int = 0
    leaves: bool = False
    express: bool = False

    def __str__(self) -> str:
        parts = [] if self.fast is None else [f"fast {self.fast}"]
        if self.slow is not None:
            parts.append(f"slow {self.slow}")
        if self.migrate_rounds:
            parts.append(f"{self.migrate_rounds} migration round(s)")
        how = f" ({', '.join(parts)})" if parts else ""
        return (f"{self.entry}({self.start:#x}, {self.nr_pages}, "
                f"{foll_flags_str(self.flags)}): {self.path}{how} -> {self.ret}")


@dataclass(eq=False)
class GupState:
    """The pinning layer's view of one machine (`k.gup`)."""

    env: MMEnv
    sanitizer: PinSanitizer | None = None
    race_hooks: dict[str, list[Callable[..., Any]]] = field(default_factory=dict)
    migrate_retry_limit: int = 16
    replace_cache: Callable[[int, int], bool] | None = None   # overrides env.replace_cache
    last_migrate_failure: str = ""
    calls: deque[GupCall] = field(default_factory=lambda: deque(maxlen=GUP_CALLS_KEPT))
    call: GupCall | None = None          # the call in progress, for note_gup()
    # unpin_user_pages() calls the express way released (grab.py), by number of entries
    express_unpins: dict[int, int] = field(default_factory=dict)

    @property
    def last_call(self) -> GupCall | None:
        """The record of the most recent GUP entry point call (None before the first)."""
        return self.calls[-1] if self.calls else None

    def recording(self, call: GupCall) -> _Recording:
        """Make `call` the call in progress; append it to `calls` when it ends. A call made
        from a race hook inside another gets its own record, and the outer one resumes."""
        return _Recording(self, call)

    @property
    def alloc(self) -> Allocator:
        """The machine's page allocator, which unpinning frees folios to."""
        return self.env.alloc

    def on_race(self, point: str, fn: Callable[..., Any]) -> None:
        """Run `fn(**context)` (once) the next time GUP passes the race point `point`."""
        if point not in RACE_POINTS:
            raise ValueError(f"no race point {point!r}: choose one of {RACE_POINTS}")
        self.race_hooks.setdefault(point, []).append(fn)


class _Recording:
    """`GupState.recording()`: a plain class, as it runs on every GUP call (a generator
    context manager costs about 1 us more)."""

    __slots__ = ("st", "call", "outer")

    def __init__(self, st: GupState, call: GupCall) -> None:
        self.st, self.call, self.outer = st, call, st.call

    def __enter__(self) -> GupCall:
        self.outer, self.st.call = self.st.call, self.call
        return self.call

    def __exit__(self, *exc: object) -> None:
        st = self.st
        st.call = self.outer
        st.calls.append(self.call)
        gup_call_ended(st.env.mem)          # an observer drawing pictures (observe.py)


# The state hangs off the MemMap itself: a WeakKeyDictionary lookup builds a weakref on
# every call (some five per one-page pin), and its value (state -> env -> mem) kept the
# key alive anyway. `_STATE` is the attribute's name; only register_machine() sets it.
_STATE = "_gupsim_gup_state"


def _state_of(mem: MemMap) -> GupState | None:
    st: GupState | None = getattr(mem, _STATE, None)
    return st


def register_machine(env: MMEnv) -> GupState:
    """Make a machine known to the pinning layer (idempotent; `Kernel()` calls it); also
    links mm/ to GUP's page walk (populate), as the kernel links mm/mmap.c and
    mm/madvise.c to mm/gup.c."""
    st = _state_of(env.mem)
    if st is None:
        st = GupState(env)
        setattr(env.mem, _STATE, st)
        from .slow import register_populate  # here: slow.py imports this module
        register_populate(env)
        env.race_hook = functools.partial(race_point, env.mem)
        env.race_pending = functools.partial(race_pending, env.mem)
    return st


def gup_state(mem: MemMap) -> GupState:
    """The pinning layer's state of the machine that owns `mem`; RuntimeError if unknown."""
    st = _state_of(mem)
    if st is None:
        raise RuntimeError("these pages belong to a machine the pinning layer does not know: "
                           "create it with gupsim.Kernel()")
    return st


def note_gup(mem: MemMap, **fields: Any) -> None:
    """Add to the record of the GUP call in progress, e.g. `note_gup(mem, fast=n)`."""
    st = _state_of(mem)
    call = st.call if st is not None else None
    if call is not None:
        for name, value in fields.items():
            setattr(call, name, value)


def race_pending(mem: MemMap, point: str) -> bool:
    """Whether a callback waits at race point `point` (what was read must be kept to
    re-check it after the race)."""
    st = _state_of(mem)
    return st is not None and bool(st.race_hooks.get(point))


def race_point(mem: MemMap, point: str, **context: Any) -> bool:
    """Run (and forget) the callbacks registered for `point`; True if any ran (the
    machine may have changed, so the caller must re-check what it read)."""
    st = _state_of(mem)
    if st is None or not st.race_hooks.get(point):
        return False
    hooks, st.race_hooks[point] = st.race_hooks[point], []
    for fn in hooks:
        fn(**context)
    return True


# -- current ------------------------------------------------------------------------------


class Current:
    """What `current` means to GUP: the task's mm and the machine it runs on."""

    def __init__(self, env: MMEnv, mm: MM, task: Any = None) -> None:
        self.env = env
        self.mm = mm
        self.task = task


_current: ContextVar[Current | None] = ContextVar("gupsim_current", default=None)


class running_as:  # noqa: N801 - used as a function: `with running_as(env, mm, task):`
    """Run kernel code with `current` set to a task (the facade's process methods use it).
    A plain class rather than a generator: every process GUP call enters it."""

    __slots__ = ("cur", "token")

    def __init__(self, env: MMEnv, mm: MM, task: Any = None) -> None:
        self.cur = Current(env, mm, task)

    def __enter__(self) -> Current:
        self.token = _current.set(self.cur)
        return self.cur

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)


def current() -> Current:
    """The task GUP runs for; an error that says how to call GUP when there is none."""
    cur = _current.get()
    if cur is None:
        raise RuntimeError("no current task: call this through a process, e.g. "
                           "p.pin_user_pages_fast(...), or use the *_remote variant")
    return cur
