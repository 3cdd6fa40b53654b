"""MMU notifiers (mm/mmu_notifier.c): telling secondary MMUs that CPU page tables change.

Two kinds of subscription, as in the kernel:

- Interval notifiers (`MmuIntervalNotifier`, `mmu_interval_notifier_insert()`): a driver
  mirroring [start, start + length) of an mm (RDMA ODP, GPU SVM, `hmm_range_fault()`
  users) gets `ops.invalidate(sub, range, cur_seq)` for every invalidation that
  overlaps its interval, and establishes device mappings with the collision-retry
  protocol `mmu_interval_read_begin()` / `mmu_interval_read_retry()`.
- Classic notifiers (`MmuNotifier`, `mmu_notifier_register()`, KVM's kind): every
  `invalidate_range_start`/`invalidate_range_end` of the mm, `release` at exit, and the
  young-bit queries `clear_young`, `clear_flush_young`, `test_young`.

The sequence protocol (per mm, `MmuNotifierSubscriptions`): `invalidate_seq` starts at 2
and is even while idle. An invalidation start counts itself in
`active_invalidate_ranges`; if its range overlaps an interval it makes the seq odd and
calls each overlapping subscription with that odd `cur_seq`, which the callback stores
with `mmu_interval_set_seq()`. When the last active invalidation ends, an odd seq is
incremented (even again), and inserts and removes deferred meanwhile are applied (the
interval structure never changes while the seq is odd). A reader's
`mmu_interval_read_begin()` returns the subscription's seq; `mmu_interval_read_retry()`
is true once an invalidation has stored a newer one. `hmm_range_fault()` can sit on this
as in the kernel: it takes the subscription and a read_begin seq, walks the page table,
and answers -EBUSY once `mmu_interval_check_retry()` is true. Overlapping subscriptions
are found in an interval tree (`IntervalTree`), never by a scan of all of them.

A non-blockable start that a subscriber refuses fails with -EAGAIN and the caller does
not call range_end: classic notifiers whose start ran get their range_end at once, as
the kernel has done since a 2021 fix, and the model also ends the interval side, so no
invalidation stays active forever.

Single-threaded model: the kernel's `mmu_interval_read_begin()` sleeps while an
invalidation of the subscription is in progress; the model cannot, so called inside
one (from a callback, or from a race point between start and end) it returns an even
value that no subscription seq ever has: the caller's read_retry/check_retry is then
always true and it goes round its retry loop once the invalidation is over. Called from
an ops callback of the same mm (a deadlock in the kernel, reported by lockdep) it also
records a warning; so does `mmu_interval_notifier_remove()` from a callback, which is
deferred to the end of the invalidation and delivers no further callbacks.

How notifiers are called from mm paths: each path that changes or removes PTEs brackets
the change with `rng = invalidate_start(mm, event, start, end)` and
`invalidate_end(rng)`, which cost one attribute test when the mm has no notifiers
(`mm.notifier_subscriptions is None`). Events and page-aligned [start, end) ranges are
the kernel's: munmap, MAP_FIXED over a mapping, mremap's shrink and the old range of a
move use MMU_NOTIFY_UNMAP; mprotect MMU_NOTIFY_PROTECTION_VMA per VMA whose flags change
(the kernel begins it at the first populated page table, the model over the whole VMA);
fork MMU_NOTIFY_PROTECTION_PAGE over each private writable (COW) VMA of the parent that
it copies (the kernel skips one that never had an anonymous page);
page_mkclean MMU_NOTIFY_PROTECTION_PAGE per shared mapping of the folio; MADV_DONTNEED,
MADV_REMOVE and MADV_FREE MMU_NOTIFY_CLEAR over the advised part of each VMA; the COW
break and unshare (wp_page_copy), hugetlb COW, THP PMD split, THP folio split (per
mapping, as unmap_folio()), THP collapse, swap-out and
lazyfree discard (try_to_unmap), migration and compaction (try_to_migrate, before the
refcount test, so a driver dropping its pins in the callback lets the folio move),
truncation and hwpoison MMU_NOTIFY_CLEAR over the PTEs concerned; exit calls
`mmu_notifier_release()` first (MMU_NOTIFY_RELEASE over [0, ULONG_MAX) to interval
subscriptions, `release` to classic ones, which are then unlinked and hear nothing more)
and then unmaps everything under one MMU_NOTIFY_UNMAP over [0, ULONG_MAX), which interval
subscriptions still in the tree receive, as in the kernel. MADV_COLD clears only
accessed bits in the kernel, without notifiers; the model's MADV_COLD changes nothing.
The model's paths are all blockable; `oom_reap_task_mm()` (mm/oom_kill.py) is the
non-blockable one, using `mmu_notifier_invalidate_range_start_nonblock()`.
MMU_NOTIFY_MIGRATE and MMU_NOTIFY_EXCLUSIVE (device migration, device-exclusive
entries, with `owner` set through `mmu_notifier_range_init_owner()`) have no caller yet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from ..constants import EAGAIN, EINTR, EINVAL, ENOMEM, EOVERFLOW

if TYPE_CHECKING:
    from .mm_struct import MM

ULONG_MAX = (1 << 64) - 1


class MmuNotifierEvent(IntEnum):
    """enum mmu_notifier_event: why a range is invalidated (the kernel's values)."""

    UNMAP = 0            # munmap(), or mremap() moving the range
    CLEAR = 1            # PTEs cleared: madvise, COW, swap-out, migration, THP split, ...
    PROTECTION_VMA = 2   # mprotect(): the VMA's protection changes
    PROTECTION_PAGE = 3  # write-protection of pages: fork's COW, page_mkclean()
    SOFT_DIRTY = 4       # soft-dirty tracking reset (clear_refs)
    RELEASE = 5          # the mm is being torn down (exit)
    MIGRATE = 6          # device migration (migrate_vma); `owner` is set
    EXCLUSIVE = 7        # device-exclusive entries (make_device_exclusive); `owner` is set


MMU_NOTIFY_UNMAP = MmuNotifierEvent.UNMAP
MMU_NOTIFY_CLEAR = MmuNotifierEvent.CLEAR
MMU_NOTIFY_PROTECTION_VMA = MmuNotifierEvent.PROTECTION_VMA
MMU_NOTIFY_PROTECTION_PAGE = MmuNotifierEvent.PROTECTION_PAGE
MMU_NOTIFY_SOFT_DIRTY = MmuNotifierEvent.SOFT_DIRTY
MMU_NOTIFY_RELEASE = MmuNotifierEvent.RELEASE
MMU_NOTIFY_MIGRATE = MmuNotifierEvent.MIGRATE
MMU_NOTIFY_EXCLUSIVE = MmuNotifierEvent.EXCLUSIVE

MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0


@dataclass(eq=False)
class MmuNotifierRange:
    """struct mmu_notifier_range: [start, end) of `mm`, why (`event`), flags, owner."""

    mm: MM | None = None
    start: int = 0
    end: int = 0
    flags: int = 0
    event: MmuNotifierEvent = MMU_NOTIFY_UNMAP
    owner: object = None

    def __repr__(self) -> str:
        return (f"<mmu_notifier_range {self.event.name} {self.start:#x}-{self.end:#x}"
                f"{'' if mmu_notifier_range_blockable(self) else ' nonblock'}>")


def _range_mm(range: MmuNotifierRange) -> MM:
    """The mm a range belongs to; only a range never passed to mmu_notifier_range_init()
    has none, and no invalidation path may see one."""
    assert range.mm is not None, "mmu_notifier_range used before mmu_notifier_range_init()"
    return range.mm


def mmu_notifier_range_init(range: MmuNotifierRange, event: MmuNotifierEvent, flags: int,
                            mm: MM, start: int, end: int) -> None:
    """Fill `range` for an invalidation of [start, end) of `mm` (owner None)."""
    mmu_notifier_range_init_owner(range, event, flags, mm, start, end, None)


def mmu_notifier_range_init_owner(range: MmuNotifierRange, event: MmuNotifierEvent,
                                  flags: int, mm: MM, start: int, end: int,
                                  owner: object) -> None:
    """As mmu_notifier_range_init(), with the `owner` that MIGRATE/EXCLUSIVE events carry."""
    range.event = MmuNotifierEvent(event)
    range.flags = flags
    range.mm = mm
    range.start = start
    range.end = end
    range.owner = owner


def mmu_notifier_range_blockable(range: MmuNotifierRange) -> bool:
    """May the callbacks of this invalidation sleep? False only for the OOM reaper's."""
    return bool(range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE)


# -- the interval structure ----------------------------------------------------------------


class _Node:
    __slots__ = ("key", "start", "last", "sub", "prio", "left", "right", "max_last")

    def __init__(self, key: tuple[int, int], start: int, last: int, sub: Any,
                 prio: float) -> None:
        self.key = key
        self.start = start
        self.last = last
        self.sub = sub
        self.prio = prio
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.max_last = last


def _update(t: _Node) -> None:
    m = t.last
    if t.left is not None and t.left.max_last > m:
        m = t.left.max_last
    if t.right is not None and t.right.max_last > m:
        m = t.right.max_last
    t.max_last = m


def _split(t: _Node | None, key: tuple[int, int]) -> tuple[_Node | None, _Node | None]:
    if t is None:
        return None, None
    if t.key < key:
        left, right = _split(t.right, key)
        t.right = left
        _update(t)
        return t, right
    left, right = _split(t.left, key)
    t.left = right
    _update(t)
    return left, t


def _merge(a: _Node | None, b: _Node | None) -> _Node | None:
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        _update(a)
        return a
    b.left = _merge(a, b.left)
    _update(b)
    return b


def _delete(t: _Node | None, key: tuple[int, int]) -> _Node | None:
    if t is None:
        return None
    if key == t.key:
        return _merge(t.left, t.right)
    if key < t.key:
        t.left = _delete(t.left, key)
    else:
        t.right = _delete(t.right, key)
    _update(t)
    return t


class IntervalTree:
    """The kernel's interval_tree: closed intervals [start, last], overlap queries.

    A treap ordered by start and augmented with each subtree's largest `last`, so that
    a query visits O(log n + k) nodes for k results instead of every subscription.
    Priorities come from a fixed seed: the same inserts give the same tree.
    """

    def __init__(self) -> None:
        self.root: _Node | None = None
        self._n = 0
        self._ids = 0
        self._rand = random.Random(0x6D6D75)

    def __len__(self) -> int:
        return self._n

    def insert(self, start: int, last: int, sub: Any) -> _Node:
        """interval_tree_insert(): add [start, last] for `sub`; returns its node."""
        self._ids += 1
        node = _Node((start, self._ids), start, last, sub, self._rand.random())
        left, right = _split(self.root, node.key)
        self.root = _merge(_merge(left, node), right)
        self._n += 1
        return node

    def remove(self, node: _Node) -> None:
        """interval_tree_remove()."""
        self.root = _delete(self.root, node.key)
        self._n -= 1

    def overlapping(self, start: int, last: int) -> list[Any]:
        """Every sub whose [start, last] meets [start, last], in order of start."""
        out: list[Any] = []
        stack: list[_Node] = []
        t = self.root
        while stack or t is not None:        # in-order walk, pruned by max_last and start
            while t is not None and t.max_last >= start:
                stack.append(t)
                t = t.left
            if not stack:
                break
            t = stack.pop()
            if t.start > last:
                break
            if t.last >= start:
                out.append(t.sub)
            t = t.right
        return out


# -- subscriptions ---------------------------------------------------------------------------


class MmuIntervalNotifierOps(Protocol):
    """struct mmu_interval_notifier_ops: one callback, for overlapping invalidations."""

    def invalidate(self, sub: MmuIntervalNotifier, range: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """Store cur_seq with mmu_interval_set_seq(), tear down device mappings, return
        True; return False only if the range is not blockable and the work would sleep."""
        ...


class MmuIntervalNotifier:
    """struct mmu_interval_notifier: one driver's subscription to [start, last] of an mm."""

    def __init__(self) -> None:
        self.mm: MM | None = None
        self.ops: MmuIntervalNotifierOps | None = None
        self.start = 0
        self.last = 0                       # inclusive, as the kernel's interval tree
        self.invalidate_seq = 0
        self._node: _Node | None = None     # None: not in the tree (RB_EMPTY_NODE)
        self._deferred = False              # on the deferred list
        self._removed = False               # remove() called: no further callbacks

    @property
    def end(self) -> int:
        """Exclusive end of the interval (start + length)."""
        return self.last + 1

    def __repr__(self) -> str:
        return f"<mmu_interval_notifier {self.start:#x}-{self.end:#x} seq={self.invalidate_seq}>"


class MmuNotifierOps:
    """struct mmu_notifier_ops: override the callbacks you need (the rest are absent).

    `invalidate_range_start(sub, range)` returns 0, or -EAGAIN for a non-blockable
    range it cannot handle without sleeping; the young callbacks return 0 or 1.
    """

    release: Any = None                 # (sub, mm) -> None
    invalidate_range_start: Any = None  # (sub, range) -> int
    invalidate_range_end: Any = None    # (sub, range) -> None
    clear_flush_young: Any = None       # (sub, mm, start, end) -> int
    clear_young: Any = None             # (sub, mm, start, end) -> int
    test_young: Any = None              # (sub, mm, address) -> int
    arch_invalidate_secondary_tlbs: Any = None   # (sub, mm, start, end) -> None


class MmuNotifier:
    """struct mmu_notifier: a classic subscription to every invalidation of an mm."""

    def __init__(self, ops: MmuNotifierOps | None = None) -> None:
        self.ops = ops if ops is not None else MmuNotifierOps()
        self.mm: MM | None = None
        self.users = 0
        self.hashed = False                 # on the mm's list (hlist_unhashed() is False)

    def __repr__(self) -> str:
        return f"<mmu_notifier {type(self.ops).__name__}{'' if self.hashed else ' unhashed'}>"


@dataclass(eq=False)
class MmuNotifierSubscriptions:
    """struct mmu_notifier_subscriptions: an mm's notifiers and its invalidation state."""

    hlist: list[MmuNotifier] = field(default_factory=list)   # the kernel's `list`
    has_itree: bool = False
    invalidate_seq: int = 2
    active_invalidate_ranges: int = 0
    itree: IntervalTree = field(default_factory=IntervalTree)
    deferred_list: list[MmuIntervalNotifier] = field(default_factory=list)
    in_callback: int = 0                # model: depth of ops callbacks now running

    def is_invalidating(self) -> bool:
        """mn_itree_is_invalidating(): an invalidation touching an interval is running."""
        return bool(self.invalidate_seq & 1)


def mm_has_notifiers(mm: MM) -> bool:
    """Has anything ever been registered on this mm? (stays true until the mm is freed)"""
    return mm.notifier_subscriptions is not None


def _warn(mm: MM | None, condition: bool, site: str, message: str = "") -> bool:
    if mm is None:
        return bool(condition)
    return mm.mem.warnings.warn_on_once(condition, site, message)


def _mm_has_users(mm: MM) -> bool:
    return mm.users > 0 and not mm.dead


# fault injection for the -errno cases of registration (the kernel's failslab, in spirit)
_register_failure: list[int] = []


def inject_register_failure(err: int) -> None:
    """Make the next mmu_notifier_register() fail with `err`: -ENOMEM (allocating the
    subscriptions) or -EINTR (mm_take_all_locks() interrupted by a signal)."""
    if err not in (-ENOMEM, -EINTR):
        raise ValueError(f"mmu_notifier_register fails only with -ENOMEM or -EINTR, not {err}")
    _register_failure.append(err)


# -- the interval tree side ----------------------------------------------------------------


def _itree_inv_start_range(subs: MmuNotifierSubscriptions,
                           range: MmuNotifierRange) -> tuple[list[MmuIntervalNotifier], int]:
    subs.active_invalidate_ranges += 1
    hits = subs.itree.overlapping(range.start, range.end - 1) if range.end > range.start \
        else []
    if hits:
        subs.invalidate_seq |= 1
    return hits, subs.invalidate_seq


def _itree_inv_end(subs: MmuNotifierSubscriptions) -> None:
    subs.active_invalidate_ranges -= 1
    if subs.active_invalidate_ranges or not subs.is_invalidating():
        return
    subs.invalidate_seq += 1
    deferred, subs.deferred_list = subs.deferred_list, []
    for sub in reversed(deferred):          # hlist_add_head: last deferred comes first
        sub._deferred = False
        if sub._node is None:
            sub._node = subs.itree.insert(sub.start, sub.last, sub)
        else:
            subs.itree.remove(sub._node)
            sub._node = None


def _call_invalidate(subs: MmuNotifierSubscriptions, sub: MmuIntervalNotifier,
                     range: MmuNotifierRange, cur_seq: int) -> bool:
    assert sub.ops is not None, "an interval notifier in the tree was inserted with ops"
    subs.in_callback += 1
    try:
        return bool(sub.ops.invalidate(sub, range, cur_seq))
    finally:
        subs.in_callback -= 1


def _itree_invalidate(subs: MmuNotifierSubscriptions, range: MmuNotifierRange) -> int:
    hits, cur_seq = _itree_inv_start_range(subs, range)
    for sub in hits:
        if sub._removed:
            continue
        if not _call_invalidate(subs, sub, range, cur_seq):
            if _warn(range.mm, mmu_notifier_range_blockable(range),
                     "mn_itree_invalidate: blockable invalidate returned false",
                     "an interval notifier may refuse only a non-blockable range"):
                continue
            _itree_inv_end(subs)            # the caller must not call range_end
            return -EAGAIN
    return 0


def _itree_release(subs: MmuNotifierSubscriptions, mm: MM) -> None:
    range = MmuNotifierRange(mm, 0, ULONG_MAX, MMU_NOTIFIER_RANGE_BLOCKABLE, MMU_NOTIFY_RELEASE)
    hits, cur_seq = _itree_inv_start_range(subs, range)
    for sub in hits:
        if not sub._removed:
            _warn(mm, not _call_invalidate(subs, sub, range, cur_seq),
                  "mn_itree_release: invalidate returned false", "release is blockable")
    _itree_inv_end(subs)


# -- the classic list side -------------------------------------------------------------------


def _hlist_call(subs: MmuNotifierSubscriptions, sub: MmuNotifier, name: str,
                *args: Any) -> Any:
    """Run the classic notifier's callback `name`, if it has one (every op is optional)."""
    fn = getattr(sub.ops, name, None)
    if fn is None:
        return None
    subs.in_callback += 1
    try:
        return fn(sub, *args)
    finally:
        subs.in_callback -= 1


def _hlist_invalidate_range_start(subs: MmuNotifierSubscriptions,
                                  range: MmuNotifierRange) -> int:
    ret = 0
    for sub in list(subs.hlist):
        r = _hlist_call(subs, sub, "invalidate_range_start", range) or 0
        if r:
            _warn(range.mm, mmu_notifier_range_blockable(range) or r != -EAGAIN,
                  "mn_hlist_invalidate_range_start: callback failed",
                  f"returned {r} for a {'' if mmu_notifier_range_blockable(range) else 'non-'}"
                  "blockable range; only -EAGAIN on a non-blockable one is allowed")
            ret = r
    if ret:
        # the caller will not call range_end: pair every range_start that ran with one now
        for sub in list(subs.hlist):
            _hlist_call(subs, sub, "invalidate_range_end", range)
    return ret


# -- invalidation entry points -----------------------------------------------------------------


def _invalidate_range_start(range: MmuNotifierRange) -> int:
    subs = _range_mm(range).notifier_subscriptions
    assert subs is not None, "the start calls check for subscriptions before coming here"
    if subs.has_itree:
        ret = _itree_invalidate(subs, range)
        if ret:
            return ret
    if subs.hlist:
        ret = _hlist_invalidate_range_start(subs, range)
        if ret and subs.has_itree:
            _itree_inv_end(subs)            # model: no active range is left behind
        return ret
    return 0


def mmu_notifier_invalidate_range_start(range: MmuNotifierRange) -> None:
    """Begin a blockable invalidation of `range` (may sleep in the kernel)."""
    if _range_mm(range).notifier_subscriptions is not None:
        range.flags |= MMU_NOTIFIER_RANGE_BLOCKABLE
        _invalidate_range_start(range)


def mmu_notifier_invalidate_range_start_nonblock(range: MmuNotifierRange) -> int:
    """Begin a non-blockable invalidation: 0, or -EAGAIN if a subscriber would have to
    sleep; on -EAGAIN the caller skips the range and must not call range_end."""
    if _range_mm(range).notifier_subscriptions is None:
        return 0
    range.flags &= ~MMU_NOTIFIER_RANGE_BLOCKABLE
    return _invalidate_range_start(range)


def mmu_notifier_invalidate_range_end(range: MmuNotifierRange) -> None:
    """End an invalidation begun by one of the start calls (the PTEs are changed now)."""
    subs = _range_mm(range).notifier_subscriptions
    if subs is None:
        return
    if subs.has_itree:
        _itree_inv_end(subs)
    for sub in list(subs.hlist):
        _hlist_call(subs, sub, "invalidate_range_end", range)


def invalidate_start(mm: MM, event: MmuNotifierEvent, start: int,
                     end: int) -> MmuNotifierRange | None:
    """For mm paths: range init plus a blockable start; None, at the cost of one attribute
    test, when the mm has no notifiers. Pass the result to invalidate_end()."""
    if mm.notifier_subscriptions is None:
        return None
    rng = MmuNotifierRange(mm, start, end, 0, event)
    mmu_notifier_invalidate_range_start(rng)
    return rng


def invalidate_end(rng: MmuNotifierRange | None) -> None:
    """For mm paths: end what invalidate_start() began (nothing if it returned None)."""
    if rng is not None:
        mmu_notifier_invalidate_range_end(rng)


# -- registration --------------------------------------------------------------------------


def _subscriptions(mm: MM) -> MmuNotifierSubscriptions:
    if mm.notifier_subscriptions is None:
        mm.notifier_subscriptions = MmuNotifierSubscriptions()
    return mm.notifier_subscriptions


def __mmu_notifier_register(subscription: MmuNotifier | None, mm: MM) -> int:
    """mmu_notifier_register() with mmap_lock held for write; `None` enables the itree."""
    if _warn(mm, not _mm_has_users(mm), "__mmu_notifier_register: mm_users <= 0",
             "the mm has exited (a BUG_ON in the kernel); hold mmget() while registering"):
        return -EINVAL
    if _register_failure:
        return _register_failure.pop(0)
    if subscription is None:
        _subscriptions(mm).has_itree = True
        return 0
    if _warn(mm, subscription.hashed, "__mmu_notifier_register: already registered",
             "this struct mmu_notifier is already on an mm's list"):
        return -EINVAL
    subs = _subscriptions(mm)
    subscription.mm = mm
    subscription.users = 1
    subscription.hashed = True
    subs.hlist.insert(0, subscription)       # hlist_add_head_rcu
    return 0


def mmu_notifier_register(subscription: MmuNotifier, mm: MM) -> int:
    """Attach a classic notifier to `mm`: 0, -ENOMEM (no memory for the mm's notifier
    state) or -EINTR (mm_take_all_locks() saw a signal); see inject_register_failure().
    The model also answers -EINVAL, with a warning, where the kernel would BUG or corrupt
    its list: an exited mm, a notifier already registered."""
    return __mmu_notifier_register(subscription, mm)


def mmu_notifier_unregister(subscription: MmuNotifier, mm: MM) -> None:
    """Detach; calls `release` first unless exit already did (then only unlinks)."""
    subs = mm.notifier_subscriptions
    if subscription.hashed and subs is not None:
        _hlist_call(subs, subscription, "release", mm)
        if subscription in subs.hlist:
            subs.hlist.remove(subscription)
        subscription.hashed = False
    subscription.users = 0


def mmu_notifier_get(ops: MmuNotifierOps, mm: MM) -> MmuNotifier | int:
    """The one notifier of `mm` with these ops (users + 1), else a new one from
    `ops.alloc_notifier(mm)`, registered; a -errno on failure (ERR_PTR)."""
    subs = mm.notifier_subscriptions
    if subs is not None:
        for sub in subs.hlist:
            if sub.ops is ops:
                sub.users += 1
                return sub
    alloc = getattr(ops, "alloc_notifier", None)
    sub = alloc(mm) if alloc is not None else MmuNotifier()
    if isinstance(sub, int):
        return sub
    sub.ops = ops
    ret = __mmu_notifier_register(sub, mm)
    if ret:
        free = getattr(ops, "free_notifier", None)
        if free is not None:
            free(sub)
        return ret
    return sub


def mmu_notifier_put(subscription: MmuNotifier) -> None:
    """Drop a mmu_notifier_get() reference; the last one unlinks and frees (no release)."""
    mm = subscription.mm
    if _warn(mm, subscription.users <= 0, "mmu_notifier_put: no users"):
        return
    subscription.users -= 1
    if subscription.users:
        return
    subs = mm.notifier_subscriptions if mm is not None else None
    if subs is not None and subscription in subs.hlist:
        subs.hlist.remove(subscription)
    subscription.hashed = False
    free = getattr(subscription.ops, "free_notifier", None)
    if free is not None:
        free(subscription)


def mmu_notifier_release(mm: MM) -> None:
    """exit_mmap()'s first step: RELEASE to intervals, `release` to classic notifiers,
    which are then unlinked (and so hear no later invalidation)."""
    subs = mm.notifier_subscriptions
    if subs is None:
        return
    if subs.has_itree:
        _itree_release(subs, mm)
    if subs.hlist:
        for sub in list(subs.hlist):
            _hlist_call(subs, sub, "release", mm)
        for sub in subs.hlist:
            sub.hashed = False
        subs.hlist.clear()


# -- young bits (reclaim's aging) -------------------------------------------------------------


def mmu_notifier_clear_flush_young(mm: MM, start: int, end: int) -> int:
    """Test-and-clear the accessed bit in secondary MMUs, flushing: 1 if any was young."""
    subs = mm.notifier_subscriptions
    young = 0
    if subs is not None:
        for sub in list(subs.hlist):
            young |= int(_hlist_call(subs, sub, "clear_flush_young", mm, start, end) or 0)
    return young


def mmu_notifier_clear_young(mm: MM, start: int, end: int) -> int:
    """As clear_flush_young, without the secondary TLB flush."""
    subs = mm.notifier_subscriptions
    young = 0
    if subs is not None:
        for sub in list(subs.hlist):
            young |= int(_hlist_call(subs, sub, "clear_young", mm, start, end) or 0)
    return young


def mmu_notifier_test_young(mm: MM, address: int) -> int:
    """Is `address` young in some secondary MMU? Stops at the first that says so."""
    subs = mm.notifier_subscriptions
    if subs is not None:
        for sub in list(subs.hlist):
            young = int(_hlist_call(subs, sub, "test_young", mm, address) or 0)
            if young:
                return young
    return 0


# -- interval notifiers: the driver's API ---------------------------------------------------


def _interval_insert(sub: MmuIntervalNotifier, mm: MM, start: int, length: int,
                     ops: MmuIntervalNotifierOps) -> int:
    if length <= 0 or start < 0 or start + length - 1 > ULONG_MAX:
        return -EOVERFLOW
    if _warn(mm, not _mm_has_users(mm), "mmu_interval_notifier_insert: mm_users <= 0",
             "the mm has exited; the caller must hold mmget()"):
        return -EINVAL
    subs = mm.notifier_subscriptions
    if subs is None or not subs.has_itree:
        ret = __mmu_notifier_register(None, mm)
        if ret:
            return ret
        subs = mm.notifier_subscriptions
        assert subs is not None, "__mmu_notifier_register() returned 0, so the mm has them"
    sub.mm = mm
    sub.ops = ops
    sub.start = start
    sub.last = start + length - 1
    sub._node = None
    sub._deferred = False
    sub._removed = False
    if subs.active_invalidate_ranges:
        if subs.is_invalidating():
            sub._deferred = True
            subs.deferred_list.append(sub)
        else:
            subs.invalidate_seq |= 1
            sub._node = subs.itree.insert(sub.start, sub.last, sub)
        sub.invalidate_seq = subs.invalidate_seq
    else:
        _warn(mm, subs.is_invalidating(), "mmu_interval_notifier_insert: idle mm invalidating")
        sub.invalidate_seq = subs.invalidate_seq - 1
        sub._node = subs.itree.insert(sub.start, sub.last, sub)
    return 0


def mmu_interval_notifier_insert(sub: MmuIntervalNotifier, mm: MM, start: int, length: int,
                                 ops: MmuIntervalNotifierOps) -> int:
    """Subscribe `sub` to invalidations of [start, start + length) of `mm`.

    0, -EOVERFLOW (empty or wrapping range), -EINVAL with a warning (the mm has exited)
    or registration's -errno. During an active invalidation the insertion is deferred
    to its end and the seq makes readers retry: establish device mappings with
    mmu_interval_read_begin()/mmu_interval_read_retry() only.
    """
    return _interval_insert(sub, mm, start, length, ops)


def mmu_interval_notifier_insert_locked(sub: MmuIntervalNotifier, mm: MM, start: int,
                                        length: int, ops: MmuIntervalNotifierOps) -> int:
    """mmu_interval_notifier_insert() for a caller holding mmap_lock for write."""
    return _interval_insert(sub, mm, start, length, ops)


def mmu_interval_notifier_remove(sub: MmuIntervalNotifier) -> None:
    """Unsubscribe; on return no callback runs for `sub` again. Not from a callback."""
    mm = sub.mm
    if mm is None or mm.notifier_subscriptions is None:
        return
    subs = mm.notifier_subscriptions
    _warn(mm, subs.in_callback > 0, "lockdep: mmu_interval_notifier_remove in a callback",
          "remove() waits for the invalidation that is calling it: a deadlock in the kernel")
    sub._removed = True
    if subs.is_invalidating():
        if sub._node is None:
            if sub._deferred:               # inserted meanwhile: cancel the insertion
                subs.deferred_list.remove(sub)
                sub._deferred = False
        elif not sub._deferred:
            sub._deferred = True
            subs.deferred_list.append(sub)  # leaves the tree when the invalidation ends
    else:
        _warn(mm, sub._node is None, "mmu_interval_notifier_remove: not in the tree")
        if sub._node is not None:
            subs.itree.remove(sub._node)
            sub._node = None


def mmu_interval_read_begin(sub: MmuIntervalNotifier) -> int:
    """Begin a read-side critical section: the seq to check with read_retry later.

    The kernel sleeps here while an invalidation of this interval runs; the model
    returns an even value instead (see the module docstring), so read_retry is true.
    """
    mm = sub.mm
    assert mm is not None, "mmu_interval_read_begin() on a notifier never inserted"
    subs = mm.notifier_subscriptions
    assert subs is not None, "insertion gave the mm its subscriptions, which outlive it"
    seq = sub.invalidate_seq
    if seq == subs.invalidate_seq:          # invalidating this interval right now
        _warn(mm, subs.in_callback > 0,
              "lockdep: mmu_interval_read_begin in an invalidate callback",
              "read_begin waits for the invalidation that is calling it: a deadlock")
        return seq - 1
    return seq


def mmu_interval_read_retry(sub: MmuIntervalNotifier, seq: int) -> bool:
    """Under the driver's lock: True if an invalidation ran since read_begin (retry)."""
    return sub.invalidate_seq != seq


def mmu_interval_check_retry(sub: MmuIntervalNotifier, seq: int) -> bool:
    """Lockless hint of read_retry: True means retrying now is worthwhile."""
    return sub.invalidate_seq != seq


def mmu_interval_set_seq(sub: MmuIntervalNotifier, cur_seq: int) -> None:
    """From ops.invalidate, under the driver's lock: record the invalidation's seq."""
    sub.invalidate_seq = cur_seq


__all__ = [
    "ULONG_MAX", "MmuNotifierEvent", "MMU_NOTIFY_UNMAP", "MMU_NOTIFY_CLEAR",
    "MMU_NOTIFY_PROTECTION_VMA", "MMU_NOTIFY_PROTECTION_PAGE", "MMU_NOTIFY_SOFT_DIRTY",
    "MMU_NOTIFY_RELEASE", "MMU_NOTIFY_MIGRATE", "MMU_NOTIFY_EXCLUSIVE",
    "MMU_NOTIFIER_RANGE_BLOCKABLE", "MmuNotifierRange", "mmu_notifier_range_init",
    "mmu_notifier_range_init_owner", "mmu_notifier_range_blockable", "IntervalTree",
    "MmuIntervalNotifierOps", "MmuIntervalNotifier", "MmuNotifierOps", "MmuNotifier",
    "MmuNotifierSubscriptions", "mm_has_notifiers", "inject_register_failure",
    "mmu_notifier_invalidate_range_start", "mmu_notifier_invalidate_range_start_nonblock",
    "mmu_notifier_invalidate_range_end", "invalidate_start", "invalidate_end",
    "mmu_notifier_register", "mmu_notifier_unregister", "mmu_notifier_get",
    "mmu_notifier_put", "mmu_notifier_release", "mmu_notifier_clear_flush_young",
    "mmu_notifier_clear_young", "mmu_notifier_test_young", "mmu_interval_notifier_insert",
    "mmu_interval_notifier_insert_locked", "mmu_interval_notifier_remove",
    "mmu_interval_read_begin", "mmu_interval_read_retry", "mmu_interval_check_retry",
    "mmu_interval_set_seq",
]
