"""Exact readings of the kernel's pin counters (`nr_foll_pin_acquired/released`).

/proc/vmstat is folded from per-CPU deltas lazily, so a plain read can be several
hundred pins behind. As root we write 1 to /proc/sys/vm/stat_refresh first, which folds
every CPU's deltas now (exact). Without that right we wait past vm.stat_interval and
call the reading approximate. The counters are machine-wide: other processes' pins are
noise, which `measure()` detects by checking that the counters are still before and
after the measured block, and `measure_repeat()` removes by re-running a repeatable block.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

VMSTAT = "/proc/vmstat"
STAT_REFRESH = "/proc/sys/vm/stat_refresh"
STAT_INTERVAL = "/proc/sys/vm/stat_interval"


@dataclass(frozen=True)
class PinCounters:
    """One reading of the two machine-wide pin counters."""

    acquired: int
    released: int
    exact: bool

    @property
    def outstanding(self) -> int:
        """Pins held right now on the whole machine (acquired minus released)."""
        return self.acquired - self.released

    def __sub__(self, other: PinCounters) -> PinDelta:
        return PinDelta(self.acquired - other.acquired, self.released - other.released,
                        self.exact and other.exact)


@dataclass(frozen=True)
class PinDelta:
    """How far the counters moved over a block; `quiet` is False if noise may be mixed in."""

    acquired: int
    released: int
    exact: bool
    quiet: bool = True
    attempts: int = 1

    def as_tuple(self) -> tuple[int, int]:
        """(acquired, released), handy in assertions."""
        return self.acquired, self.released


def stat_refresh() -> bool:
    """Fold per-CPU vmstat deltas now; False if we may not (not root, or no such file)."""
    try:
        with open(STAT_REFRESH, "w") as f:
            f.write("1")
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return True  # folded, but the kernel saw a negative counter and says so
        return False
    return True


def stat_interval() -> float:
    """vm.stat_interval in seconds (how often per-CPU deltas are folded without help)."""
    try:
        with open(STAT_INTERVAL) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return 1.0


def read_vmstat() -> dict[str, int]:
    """All of /proc/vmstat as integers (as folded at this moment)."""
    out: dict[str, int] = {}
    with open(VMSTAT) as f:
        for line in f:
            name, _, value = line.partition(" ")
            out[name] = int(value)
    return out


def pin_counters(*, wait: bool = True) -> PinCounters:
    """Read the pin counters, exactly if we can refresh them.

    Without stat_refresh the reading is approximate; with `wait` we first sleep past one
    stat interval so that at least the deltas of finished work are folded in.
    """
    exact = stat_refresh()
    if not exact and wait:
        time.sleep(stat_interval() + 0.2)
    stats = read_vmstat()
    try:
        return PinCounters(stats["nr_foll_pin_acquired"], stats["nr_foll_pin_released"], exact)
    except KeyError as exc:
        raise OSError(errno.ENOTSUP, f"{VMSTAT} has no {exc.args[0]}; this kernel predates "
                      "FOLL_PIN accounting (Linux 5.7)") from exc


def wait_quiet(quiet: float = 0.05, timeout: float = 2.0) -> tuple[PinCounters, bool]:
    """Wait until the counters stay unchanged for `quiet` seconds; (reading, achieved)."""
    deadline = time.monotonic() + timeout
    last = pin_counters()
    while True:
        time.sleep(quiet)
        now = pin_counters()
        if now == last:
            return now, True
        if time.monotonic() > deadline:
            return now, False
        last = now


def wait_outstanding(target: int, timeout: float = 2.0, poll: float = 0.02) -> PinCounters:
    """Wait until machine-wide outstanding pins equal `target` (for releases done later,
    e.g. by a workqueue after close()); return the last reading either way."""
    deadline = time.monotonic() + timeout
    while True:
        now = pin_counters()
        if now.outstanding == target or time.monotonic() > deadline:
            return now
        time.sleep(poll)


# -- one measurer at a time, among gupsim processes ------------------------------------------
#
# Two gupsim processes measuring at once (pytest runs in parallel, `gupsim live` beside a
# test run) are each other's noise, and in lock-step: the same cases, the same timing,
# so the same "extra" pins in the same steps, which even repeated runs cannot tell from
# a real figure. They also share the free huge page pool. So measuring blocks and host
# scenario runs hold an exclusive lock file; other pinners on the machine are still
# caught by the quiet windows.

LOCK_PATH = os.path.join(os.environ.get("GUPSIM_LOCK_DIR", tempfile.gettempdir()),
                         "gupsim-pin-counters.lock")
LOCK_TIMEOUT = 300.0
_guard = threading.Lock()
_held = {"depth": 0, "fd": -1, "pid": 0}


@contextmanager
def counters_to_ourselves(timeout: float = LOCK_TIMEOUT) -> Iterator[bool]:
    """Hold the gupsim measuring lock for a block (re-entrant in a process); yields False
    if another gupsim process kept it past `timeout` seconds and we went ahead anyway."""
    with _guard:
        if _held["pid"] != os.getpid():          # a forked child starts afresh
            _held.update(depth=0, fd=-1, pid=os.getpid())
        nested = _held["depth"] > 0
        _held["depth"] += 1
    got = True
    try:
        if not nested:
            fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        got = False
                        break
                    time.sleep(0.02)
            _held["fd"] = fd
        yield got
    finally:
        with _guard:
            _held["depth"] -= 1
            if _held["depth"] == 0 and _held["fd"] >= 0:
                os.close(_held["fd"])           # closing drops the flock
                _held["fd"] = -1


def forget_inherited_lock() -> None:
    """In a forked child: close our copy of the parent's lock file, so that the lock is
    free as soon as the parent lets go, even if this child lives on."""
    with _guard:
        if _held["pid"] != os.getpid() and _held["fd"] >= 0:
            try:
                os.close(_held["fd"])
            except OSError:
                pass
        _held.update(depth=0, fd=-1, pid=os.getpid())


@dataclass
class Measurement:
    """Filled in when a `measure()` block ends."""

    before: PinCounters | None = None
    after: PinCounters | None = None
    quiet_before: bool = False
    quiet_after: bool = False
    settle: float = 0.0
    returned: PinCounters | None = None   # with `settle`: read as the block returned
    _delta: PinDelta | None = field(default=None, repr=False)

    @property
    def late_released(self) -> int:
        """Releases seen after the block returned, while the counters settled (work the
        kernel deferred to a worker, as AF_XDP's umem release); 0 without `settle`."""
        if self.returned is None or self.after is None:
            return 0
        return self.after.released - self.returned.released

    @property
    def delta(self) -> PinDelta:
        """Counter movement over the block; raises if the block has not finished."""
        if self._delta is None:
            raise ValueError("read .delta after the `with measure()` block has ended")
        return self._delta

    def finish(self) -> PinDelta:
        """Compute `delta` from the readings (once `before` and `after` are set)."""
        if self.before is None or self.after is None:
            raise ValueError("finish() needs both the opening and the closing reading")
        d = self.after - self.before
        self._delta = PinDelta(d.acquired, d.released, d.exact,
                               self.quiet_before and self.quiet_after)
        return self._delta


class Meter:
    """Measures block after block, each between two quiet windows.

    With `chain`, a block whose opening counters equal the previous block's closing quiet
    check uses that check as its opening quiet window (no new wait): a run of steps, as a
    scenario's, then spends half the time measuring. The caller holds the measuring lock
    (`counters_to_ourselves`) for as long as the meter is used.
    """

    def __init__(self, *, quiet: float = 0.05, timeout: float = 2.0, chain: bool = True
                 ) -> None:
        self.quiet = quiet
        self.timeout = timeout
        self.chain = chain
        self._last: PinCounters | None = None   # the previous block's closing quiet check

    @contextmanager
    def block(self, settle: float = 0.0) -> Iterator[Measurement]:
        """Measure one block (see `measure()` for `settle`); also when it raises."""
        m = Measurement(settle=settle)
        now = pin_counters() if self.chain and self._last is not None else None
        if now is not None and now == self._last:
            m.before, m.quiet_before = now, True
        else:
            m.before, m.quiet_before = wait_quiet(self.quiet, self.timeout)
        self._last = None
        try:
            yield m
        finally:  # a failing block (a refused pin) is measured too: the error is the point
            if settle:
                m.returned = pin_counters()
            m.after = wait_quiet(settle, self.timeout)[0] if settle else pin_counters()
            time.sleep(self.quiet)
            check = pin_counters()
            m.quiet_after = check == m.after
            if self.chain and m.quiet_after:
                self._last = check
            m.finish()


@contextmanager
def measure(*, quiet: float = 0.05, settle: float = 0.0,
            timeout: float = 2.0) -> Iterator[Measurement]:
    """Measure pin counter movement around a block.

    Waits (up to `timeout`) for a quiet window before, reads, runs the block, and reads
    again, also when the block raises. With `settle` > 0 the final reading waits until
    the counters have stayed unchanged for `settle` seconds: use it for releases that the
    kernel defers to a worker (closing an io_uring or an AF_XDP socket). `delta.quiet` is
    False when the machine was busy, so the caller can retry or report an approximate
    figure instead.
    """
    with counters_to_ourselves(), \
            Meter(quiet=quiet, timeout=timeout, chain=False).block(settle) as m:
        yield m


@dataclass(frozen=True)
class Measured(Generic[T]):
    """Result of `measure_repeat()`: the block's return value and its pin delta."""

    value: T
    delta: PinDelta


def measure_repeat(fn: Callable[[], T], *, retries: int = 5, quiet: float = 0.05,
                   settle: float = 0.0) -> Measured[T]:
    """Run a self-contained, repeatable `fn` until one run is measured in a quiet window.

    `fn` must undo its own effects (e.g. register *and* unregister) so that a retry
    starts from the same state. After `retries` noisy runs the last delta is returned
    with `quiet=False`.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    for attempt in range(1, retries + 1):
        with measure(quiet=quiet, settle=settle) as m:
            value = fn()
        d = m.delta
        if d.quiet or attempt == retries:
            return Measured(value, PinDelta(d.acquired, d.released, d.exact, d.quiet, attempt))
    raise AssertionError("unreachable")
