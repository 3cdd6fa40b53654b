"""MMU notifiers, the API: interval subscriptions and their sequence protocol, the
interval lookup, removal, the classic notifier, release at exit, non-blockable ranges."""

from __future__ import annotations

import random

import pytest
from notifier_helpers import Mirror, mm_seq, watch

import gupsim
from gupsim import (
    EAGAIN,
    EINTR,
    EINVAL,
    ENOMEM,
    EOVERFLOW,
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_MIGRATE,
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFY_UNMAP,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    MmuIntervalNotifier,
    MmuNotifier,
    MmuNotifierOps,
    MmuNotifierRange,
    mmu_interval_check_retry,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_notifier_clear_flush_young,
    mmu_notifier_clear_young,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
    mmu_notifier_invalidate_range_start_nonblock,
    mmu_notifier_range_blockable,
    mmu_notifier_range_init,
    mmu_notifier_range_init_owner,
    mmu_notifier_register,
    mmu_notifier_test_young,
    mmu_notifier_unregister,
    oom_reap_task_mm,
)
from gupsim.mm.mmu_notifier import ULONG_MAX, IntervalTree, inject_register_failure

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
P = PAGE_SIZE


def region(p: gupsim.Process, pages: int = 16, touch: bool = True) -> int:
    a = p.mmap(0, pages * P, RW, ANON)
    if touch:
        p.write(a, b"\1" * (pages * P))
    return a


# -- insertion ---------------------------------------------------------------------------------


def test_insert_returns_0_and_the_sequence_starts_odd_below_an_even_mm_seq(p):
    a = region(p)
    sub, _, seq = watch(p, a, 16 * P)
    assert (sub.start, sub.end, sub.last) == (a, a + 16 * P, a + 16 * P - 1)
    assert mm_seq(p) == 2 and sub.invalidate_seq == 1 and seq == 1
    assert not mmu_interval_read_retry(sub, seq)
    assert not mmu_interval_check_retry(sub, seq)


@pytest.mark.parametrize("start, length", [(0x10000, 0), (ULONG_MAX - P + 1, 2 * P)])
def test_insert_refuses_an_empty_or_wrapping_range_with_eoverflow(p, start, length):
    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, p.mm, start, length, Mirror()) == -EOVERFLOW
    assert p.mm.notifier_subscriptions is None         # nothing was registered


def test_insert_on_an_exited_mm_warns_and_returns_einval(k, p):
    mm = p.mm
    p.exit()
    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, mm, 0x10000, P, Mirror()) == -EINVAL
    assert "mmu_interval_notifier_insert: mm_users <= 0" in k.warnings.sites()


@pytest.mark.parametrize("err", [-ENOMEM, -EINTR])
def test_insert_passes_on_the_registration_errno(p, err):
    inject_register_failure(err)
    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, p.mm, 0x10000, P, Mirror()) == err
    assert mmu_interval_notifier_insert(sub, p.mm, 0x10000, P, Mirror()) == 0


def test_register_failure_injection_takes_only_kernel_errnos():
    with pytest.raises(ValueError, match="-ENOMEM or -EINTR"):
        inject_register_failure(-EINVAL)


# -- the sequence protocol ---------------------------------------------------------------------


def test_invalidate_runs_with_an_odd_seq_and_read_retry_then_says_retry(p):
    a = region(p)
    sub, mirror, seq = watch(p, a, 16 * P)
    p.madvise(a, P, MADV_DONTNEED)
    (call,) = mirror.calls
    assert call.cur_seq % 2 == 1 and call.mm_seq == call.cur_seq      # odd while running
    assert mm_seq(p) == call.cur_seq + 1                              # even afterwards
    assert sub.invalidate_seq == call.cur_seq                        # set_seq stored it
    assert mmu_interval_read_retry(sub, seq) and mmu_interval_check_retry(sub, seq)
    seq2 = mmu_interval_read_begin(sub)
    assert seq2 == call.cur_seq and not mmu_interval_read_retry(sub, seq2)


def test_a_callback_that_does_not_set_seq_leaves_read_retry_false(p):
    """read_retry compares the subscription's seq: the driver must call set_seq."""
    a = region(p)
    sub, mirror, seq = watch(p, a, 16 * P, Mirror(set_seq=False))
    p.madvise(a, P, MADV_DONTNEED)
    assert len(mirror.calls) == 1 and not mmu_interval_read_retry(sub, seq)


def test_an_invalidation_outside_every_interval_leaves_the_seq_even(p):
    a = region(p, 32)
    sub, mirror, seq = watch(p, a, 4 * P)
    before = mm_seq(p)
    p.madvise(a + 16 * P, P, MADV_DONTNEED)
    assert mirror.calls == [] and mm_seq(p) == before
    assert not mmu_interval_read_retry(sub, seq)


def test_read_begin_inside_an_invalidation_returns_a_seq_that_must_retry(k, p):
    a = region(p)
    got = []
    mirror = Mirror(on_invalidate=lambda sub, rng: got.append(mmu_interval_read_begin(sub)))
    sub, _, _ = watch(p, a, 16 * P, mirror)
    p.madvise(a, P, MADV_DONTNEED)
    (seq,) = got
    assert seq % 2 == 0                                  # no subscription seq is even
    assert mmu_interval_read_retry(sub, seq)             # so the reader goes round again
    assert "lockdep: mmu_interval_read_begin in an invalidate callback" in k.warnings.sites()
    seq = mmu_interval_read_begin(sub)                   # after the end: a usable seq
    assert not mmu_interval_read_retry(sub, seq)


def test_nested_invalidations_keep_the_seq_odd_until_the_last_ends(p):
    a = region(p)
    sub, mirror, seq = watch(p, a, 16 * P)
    outer = MmuNotifierRange()
    mmu_notifier_range_init(outer, MMU_NOTIFY_CLEAR, 0, p.mm, a, a + P)
    inner = MmuNotifierRange()
    mmu_notifier_range_init(inner, MMU_NOTIFY_CLEAR, 0, p.mm, a + P, a + 2 * P)
    mmu_notifier_invalidate_range_start(outer)
    mmu_notifier_invalidate_range_start(inner)
    odd = mm_seq(p)
    assert odd % 2 == 1 and [c.cur_seq for c in mirror.calls] == [odd, odd]
    assert p.mm.notifier_subscriptions.active_invalidate_ranges == 2
    mmu_notifier_invalidate_range_end(inner)
    assert mm_seq(p) == odd
    mmu_notifier_invalidate_range_end(outer)
    assert mm_seq(p) == odd + 1 and p.mm.notifier_subscriptions.active_invalidate_ranges == 0


# -- insertion and removal during an invalidation ----------------------------------------------


def test_insert_during_an_invalidation_is_deferred_to_its_end(p):
    a = region(p)
    late = MmuIntervalNotifier()
    late_mirror = Mirror()

    def insert_late(sub, rng):
        assert mmu_interval_notifier_insert(late, p.mm, a, 16 * P, late_mirror) == 0

    watch(p, a, 16 * P, Mirror(on_invalidate=insert_late))
    p.madvise(a, P, MADV_DONTNEED)
    odd = mm_seq(p) - 1
    assert late.invalidate_seq == odd                    # readers of it had to wait
    assert late_mirror.calls == []                       # not in the tree yet: not called
    assert len(p.mm.notifier_subscriptions.itree) == 2   # inserted when the range ended
    seq = mmu_interval_read_begin(late)
    p.madvise(a + P, P, MADV_DONTNEED)
    assert len(late_mirror.calls) == 1 and mmu_interval_read_retry(late, seq)


def test_insert_while_a_range_is_active_but_no_interval_is_hit_makes_the_seq_odd(p):
    a = region(p, 32)
    rng = MmuNotifierRange()
    mmu_notifier_range_init(rng, MMU_NOTIFY_CLEAR, 0, p.mm, a + 16 * P, a + 17 * P)
    watch(p, a, P)                                       # far from the active range
    mmu_notifier_invalidate_range_start(rng)
    assert mm_seq(p) % 2 == 0
    sub, mirror, seq = watch(p, a + 16 * P, P)          # inserted at once, seq made odd
    assert mm_seq(p) % 2 == 1 and sub.invalidate_seq == mm_seq(p)
    assert seq % 2 == 0 and mmu_interval_read_retry(sub, seq)   # read_begin would wait
    mmu_notifier_invalidate_range_end(rng)
    assert mm_seq(p) % 2 == 0
    seq = mmu_interval_read_begin(sub)
    assert seq == sub.invalidate_seq and not mmu_interval_read_retry(sub, seq)


def test_remove_stops_the_callbacks(p):
    a = region(p)
    sub, mirror, _ = watch(p, a, 16 * P)
    mmu_interval_notifier_remove(sub)
    p.madvise(a, P, MADV_DONTNEED)
    assert mirror.calls == [] and len(p.mm.notifier_subscriptions.itree) == 0


def test_remove_from_a_callback_is_deferred_warns_and_delivers_nothing_more(k, p):
    a = region(p)
    mirror = Mirror(on_invalidate=lambda sub, rng: mmu_interval_notifier_remove(sub))
    watch(p, a, 16 * P, mirror)
    p.madvise(a, 16 * P, MADV_DONTNEED)
    p.write(a, b"x")
    p.munmap(a, 16 * P)
    assert len(mirror.calls) == 1
    assert "lockdep: mmu_interval_notifier_remove in a callback" in k.warnings.sites()
    assert len(p.mm.notifier_subscriptions.itree) == 0


def test_remove_of_a_deferred_insert_cancels_it(p):
    a = region(p)
    late = MmuIntervalNotifier()
    late_mirror = Mirror()

    def insert_and_remove(sub, rng):
        mmu_interval_notifier_insert(late, p.mm, a, P, late_mirror)
        mmu_interval_notifier_remove(late)

    watch(p, a, 16 * P, Mirror(on_invalidate=insert_and_remove))
    p.madvise(a, P, MADV_DONTNEED)
    assert len(p.mm.notifier_subscriptions.itree) == 1
    p.madvise(a, P, MADV_DONTNEED)
    assert late_mirror.calls == []


# -- the interval lookup -----------------------------------------------------------------------


def test_only_overlapping_subscriptions_are_called(p):
    a = region(p, 64)
    subs = [watch(p, a + i * P, P) for i in range(64)]
    wide, wide_mirror, _ = watch(p, a, 64 * P)
    p.madvise(a + 10 * P, 3 * P, MADV_DONTNEED)
    called = [i for i, (_, m, _) in enumerate(subs) if m.calls]
    assert called == [10, 11, 12]
    assert len(wide_mirror.calls) == 1
    assert [mmu_interval_read_retry(s, q) for s, _, q in subs[9:14]] == \
        [False, True, True, True, False]


def test_many_subscriptions_one_page_invalidated(p):
    a = region(p, 4)
    mirrors = []
    for i in range(5000):                        # far apart: none overlaps the range
        sub = MmuIntervalNotifier()
        m = Mirror()
        assert mmu_interval_notifier_insert(sub, p.mm, 0x100000 + i * 2 * P, P, m) == 0
        mirrors.append(m)
    _, near, _ = watch(p, a, P)
    p.madvise(a, P, MADV_DONTNEED)
    assert len(near.calls) == 1 and not any(m.calls for m in mirrors)


def test_interval_tree_agrees_with_a_brute_force_search():
    rnd = random.Random(7)
    tree = IntervalTree()
    live: dict[int, tuple[int, int, object]] = {}
    for step in range(3000):
        if live and rnd.random() < 0.3:
            key = rnd.choice(list(live))
            tree.remove(live.pop(key)[2])
        else:
            s = rnd.randrange(0, 1000)
            last = s + rnd.randrange(0, 50)
            live[step] = (s, last, tree.insert(s, last, step))
        if step % 10 == 0:
            qs = rnd.randrange(0, 1000)
            ql = qs + rnd.randrange(0, 30)
            want = sorted(k for k, (s, last, _) in live.items() if s <= ql and last >= qs)
            assert sorted(tree.overlapping(qs, ql)) == want
    assert len(tree) == len(live)


# -- non-blockable invalidations (the OOM reaper) ----------------------------------------------


def test_a_refusal_makes_the_nonblock_start_fail_with_eagain(p):
    a = region(p)
    sub, mirror, seq = watch(p, a, 16 * P, Mirror(refuse_nonblock=True))
    rng = MmuNotifierRange()
    mmu_notifier_range_init(rng, MMU_NOTIFY_CLEAR, 0, p.mm, a, a + P)
    assert mmu_notifier_invalidate_range_start_nonblock(rng) == -EAGAIN
    assert not mmu_notifier_range_blockable(rng)
    # the failed start ended its own part: nothing is left active, the seq is even
    assert p.mm.notifier_subscriptions.active_invalidate_ranges == 0 and mm_seq(p) % 2 == 0


def test_the_oom_reaper_skips_a_vma_a_notifier_refuses(p):
    a = region(p, 8)
    b = region(p, 8)
    _, refusing, _ = watch(p, a, 8 * P, Mirror(refuse_nonblock=True))
    _, willing, seq = watch(p, b, 8 * P)
    assert oom_reap_task_mm(p._env, p.mm) is False
    assert refusing.calls == [] and p.mm.rss.anon == 8          # a's VMA stays mapped
    (call,) = willing.calls
    assert (call.event, call.start, call.end, call.blockable) == (MMU_NOTIFY_CLEAR, b,
                                                                  b + 8 * P, False)
    assert p.mm.notifier_subscriptions.active_invalidate_ranges == 0


def test_a_blockable_invalidate_returning_false_warns_and_is_ignored(k, p):
    a = region(p)

    class Refuses:
        def invalidate(self, sub, rng, cur_seq):
            return False

    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, p.mm, a, 16 * P, Refuses()) == 0
    p.madvise(a, P, MADV_DONTNEED)
    assert "mn_itree_invalidate: blockable invalidate returned false" in k.warnings.sites()
    assert p.mm.rss.anon == 15


def test_range_fields_blockable_flag_and_owner(p):
    rng = MmuNotifierRange()
    mmu_notifier_range_init_owner(rng, MMU_NOTIFY_MIGRATE, MMU_NOTIFIER_RANGE_BLOCKABLE,
                                  p.mm, 0x10000, 0x12000, owner="gpu0")
    assert (rng.event, rng.start, rng.end, rng.owner) == (MMU_NOTIFY_MIGRATE, 0x10000,
                                                          0x12000, "gpu0")
    assert mmu_notifier_range_blockable(rng)
    mmu_notifier_range_init(rng, MMU_NOTIFY_CLEAR, 0, p.mm, 0, P)
    assert rng.owner is None and not mmu_notifier_range_blockable(rng)


# -- the classic notifier ----------------------------------------------------------------------


class Kvm(MmuNotifierOps):
    """KVM's kind of user: tracks start/end nesting, answers the young queries."""

    def __init__(self, young: int = 0, eagain: bool = False) -> None:
        self.log: list[tuple] = []
        self.active = 0
        self.young = young
        self.eagain = eagain

    def invalidate_range_start(self, sub, rng):
        if self.eagain and not mmu_notifier_range_blockable(rng):
            self.log.append(("start-refused", rng.event, rng.start, rng.end))
            return -EAGAIN
        self.active += 1
        self.log.append(("start", rng.event, rng.start, rng.end))
        return 0

    def invalidate_range_end(self, sub, rng):
        self.active -= 1
        self.log.append(("end", rng.event, rng.start, rng.end))

    def release(self, sub, mm):
        self.log.append(("release",))

    def clear_young(self, sub, mm, start, end):
        self.log.append(("clear_young", start, end))
        return self.young

    def clear_flush_young(self, sub, mm, start, end):
        self.log.append(("clear_flush_young", start, end))
        return self.young

    def test_young(self, sub, mm, address):
        return self.young


def test_classic_start_and_end_are_paired_with_the_same_range(p):
    a = region(p)
    ops = Kvm()
    assert mmu_notifier_register(MmuNotifier(ops), p.mm) == 0
    p.madvise(a, 2 * P, MADV_DONTNEED)
    p.munmap(a, 16 * P)
    assert ops.log == [("start", MMU_NOTIFY_CLEAR, a, a + 2 * P),
                       ("end", MMU_NOTIFY_CLEAR, a, a + 2 * P),
                       ("start", MMU_NOTIFY_UNMAP, a, a + 16 * P),
                       ("end", MMU_NOTIFY_UNMAP, a, a + 16 * P)]
    assert ops.active == 0


def test_release_at_exit_then_nothing_more_for_classic_notifiers(p):
    region(p)
    ops = Kvm()
    sub = MmuNotifier(ops)
    assert mmu_notifier_register(sub, p.mm) == 0
    mm = p.mm
    p.exit()
    assert ops.log == [("release",)]          # the exit's UNMAP is not delivered
    mmu_notifier_unregister(sub, mm)          # release already ran: not again
    assert ops.log == [("release",)]


def test_interval_subscriptions_hear_release_then_the_exit_unmap(p):
    a = region(p)
    sub, mirror, seq = watch(p, a, 16 * P)
    mm = p.mm
    p.exit()
    assert mirror.events() == [(MMU_NOTIFY_RELEASE, 0, ULONG_MAX),
                               (MMU_NOTIFY_UNMAP, 0, ULONG_MAX)]
    assert mmu_interval_read_retry(sub, seq)
    mmu_interval_notifier_remove(sub)          # still allowed after exit (mmgrab)
    assert len(mm.notifier_subscriptions.itree) == 0


def test_unregister_calls_release_once_and_stops_callbacks(p):
    a = region(p)
    ops = Kvm()
    sub = MmuNotifier(ops)
    assert mmu_notifier_register(sub, p.mm) == 0
    mmu_notifier_unregister(sub, p.mm)
    p.madvise(a, P, MADV_DONTNEED)
    assert ops.log == [("release",)]


def test_register_refusals(k, p):
    sub = MmuNotifier(Kvm())
    assert mmu_notifier_register(sub, p.mm) == 0
    assert mmu_notifier_register(sub, p.mm) == -EINVAL
    assert "__mmu_notifier_register: already registered" in k.warnings.sites()
    inject_register_failure(-EINTR)
    assert mmu_notifier_register(MmuNotifier(Kvm()), p.mm) == -EINTR
    q = k.spawn("q")
    q.exit()
    assert mmu_notifier_register(MmuNotifier(Kvm()), q.mm) == -EINVAL
    assert "__mmu_notifier_register: mm_users <= 0" in k.warnings.sites()


def test_young_queries_or_the_answers_of_every_notifier(p):
    a = region(p)
    old, young = Kvm(young=0), Kvm(young=1)
    assert mmu_notifier_clear_young(p.mm, a, a + P) == 0       # no notifiers yet
    for ops in (old, young):
        assert mmu_notifier_register(MmuNotifier(ops), p.mm) == 0
    assert mmu_notifier_clear_young(p.mm, a, a + P) == 1
    assert mmu_notifier_clear_flush_young(p.mm, a, a + P) == 1
    assert mmu_notifier_test_young(p.mm, a) == 1
    assert ("clear_flush_young", a, a + P) in old.log and ("clear_young", a, a + P) in old.log


def test_classic_nonblock_refusal_returns_eagain_and_ends_the_started_ones(k, p):
    a = region(p)
    willing, refusing = Kvm(), Kvm(eagain=True)
    assert mmu_notifier_register(MmuNotifier(willing), p.mm) == 0
    assert mmu_notifier_register(MmuNotifier(refusing), p.mm) == 0
    assert oom_reap_task_mm(p._env, p.mm) is False
    assert willing.active == 0 and ("start", MMU_NOTIFY_CLEAR, a, a + 16 * P) in willing.log
    assert p.mm.rss.anon == 16                  # nothing reaped
    assert k.warnings.sites() == []             # -EAGAIN on a non-blockable range is allowed


def test_classic_error_on_a_blockable_range_warns(k, p):
    a = region(p)

    class Bad(MmuNotifierOps):
        def invalidate_range_start(self, sub, rng):
            return -ENOMEM

    assert mmu_notifier_register(MmuNotifier(Bad()), p.mm) == 0
    p.madvise(a, P, MADV_DONTNEED)
    assert "mn_hlist_invalidate_range_start: callback failed" in k.warnings.sites()


def test_no_notifier_no_state(p):
    """An mm nobody subscribed to never grows notifier state on any path."""
    a = region(p)
    p.madvise(a, P, MADV_DONTNEED)
    p.fork().exit()
    p.munmap(a, 16 * P)
    assert p.mm.notifier_subscriptions is None


def _lines_run(fn) -> int:
    """Python lines executed by fn() (a scan of n subscriptions executes n times more)."""
    import sys
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return lines


def test_the_lookup_visits_a_logarithmic_part_of_the_tree():
    """Finding the subscriptions over one page costs about the same with 200 or 20000
    subscriptions: the lookup descends the tree instead of scanning every interval."""
    costs = []
    for n in (200, 20000):
        tree = IntervalTree()
        for i in range(n):
            tree.insert(i * 2 * P, i * 2 * P + P - 1, i)
        probe = (n // 2) * 2 * P
        assert tree.overlapping(probe, probe + P - 1) == [n // 2]
        costs.append(_lines_run(lambda tree=tree, probe=probe: tree.overlapping(probe,
                                                                               probe + P - 1)))
    assert costs[1] < 3 * costs[0], costs


def test_an_mm_path_finds_its_subscriptions_without_a_scan():
    """End to end: MADV_DONTNEED of one page costs about the same Python with 200 or
    20000 subscriptions elsewhere on the mm (the invalidation asks the tree)."""
    costs = []
    for n in (200, 20000):
        p = gupsim.Kernel(memory="64MiB").spawn("app")
        a = region(p, 2)
        for i in range(n):
            assert mmu_interval_notifier_insert(MmuIntervalNotifier(), p.mm,
                                                0x100000 + i * 2 * P, P, Mirror()) == 0
        _, near, _ = watch(p, a, P)
        p.madvise(a + P, P, MADV_DONTNEED)              # warm up the path's imports
        costs.append(_lines_run(lambda p=p, a=a: p.madvise(a, P, MADV_DONTNEED)))
        assert len(near.calls) == 1
    assert costs[1] < 2 * costs[0], costs


def test_classic_ops_are_all_optional(p):
    """A notifier whose ops define only release (any object will do) is skipped elsewhere."""
    a = region(p)
    seen = []

    class OnlyRelease:
        def release(self, sub, mm):
            seen.append("release")

    assert mmu_notifier_register(MmuNotifier(OnlyRelease()), p.mm) == 0
    p.madvise(a, P, MADV_DONTNEED)
    assert mmu_notifier_clear_young(p.mm, a, a + P) == 0
    assert mmu_notifier_test_young(p.mm, a) == 0
    p.exit()
    assert seen == ["release"]


def test_get_shares_one_notifier_per_ops_and_put_frees_it_without_release(p):
    from gupsim import mmu_notifier_get, mmu_notifier_put
    a = region(p)
    freed = []

    class Shared(Kvm):
        def alloc_notifier(self, mm):
            return MmuNotifier()

        def free_notifier(self, sub):
            freed.append(sub)

    ops = Shared()
    one = mmu_notifier_get(ops, p.mm)
    two = mmu_notifier_get(ops, p.mm)
    assert one is two and one.users == 2
    p.madvise(a, P, MADV_DONTNEED)
    assert [e[0] for e in ops.log] == ["start", "end"]          # registered once
    mmu_notifier_put(one)
    assert freed == [] and one.hashed
    mmu_notifier_put(one)
    assert freed == [one] and not one.hashed
    p.madvise(a + P, P, MADV_DONTNEED)
    assert [e[0] for e in ops.log] == ["start", "end"]          # no release, nothing more
