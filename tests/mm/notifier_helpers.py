"""A recording device mirror for the MMU-notifier tests: what a driver's ops would do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gupsim
from gupsim import (
    MmuIntervalNotifier,
    MmuNotifierEvent,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
    mmu_notifier_range_blockable,
)


@dataclass(frozen=True)
class Call:
    """One invalidate callback as the subscription saw it."""

    event: MmuNotifierEvent
    start: int
    end: int
    cur_seq: int
    mm_seq: int          # the mm's invalidate_seq while the callback ran
    blockable: bool


@dataclass
class Mirror:
    """Interval ops: record the call, store cur_seq (as drivers must), say yes.

    `refuse_nonblock`: return False for a non-blockable range (a driver that would
    sleep); `on_invalidate`: run something inside the callback.
    """

    calls: list[Call] = field(default_factory=list)
    refuse_nonblock: bool = False
    set_seq: bool = True
    on_invalidate: Callable[[MmuIntervalNotifier, MmuNotifierRange], None] | None = None

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        if self.refuse_nonblock and not mmu_notifier_range_blockable(rng):
            return False
        self.calls.append(Call(rng.event, rng.start, rng.end, cur_seq,
                               rng.mm.notifier_subscriptions.invalidate_seq,
                               mmu_notifier_range_blockable(rng)))
        if self.set_seq:
            mmu_interval_set_seq(sub, cur_seq)
        if self.on_invalidate is not None:
            self.on_invalidate(sub, rng)
        return True

    def events(self) -> list[tuple[MmuNotifierEvent, int, int]]:
        return [(c.event, c.start, c.end) for c in self.calls]


def watch(p: gupsim.Process, start: int, length: int,
          mirror: Mirror | None = None) -> tuple[MmuIntervalNotifier, Mirror, int]:
    """Insert a subscription over [start, start + length); (sub, its mirror, read seq)."""
    mirror = mirror if mirror is not None else Mirror()
    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, p.mm, start, length, mirror) == 0
    return sub, mirror, mmu_interval_read_begin(sub)


def mm_seq(p: gupsim.Process) -> int:
    """The mm-wide invalidate_seq."""
    return p.mm.notifier_subscriptions.invalidate_seq
