"""Property: random mm operations interleaved with device accesses never leave a device
mapping that points at a frame the process no longer maps (drivers/mirror_frames.py),
for every notifier driver (dmirror, RDMA ODP, the pinning userptr, KVM's secondary
MMU), and what the device reads is what the CPU reads; Hypothesis finds a violating
program for each wrong twin (the mirror ignoring invalidations, the UNSYNCHRONIZED
userptr, a KVM whose invalidate_range_start does not zap).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, find, given, settings

import gupsim
from gupsim import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.drivers.hmm_mirror import DmirrorDevice, dmirror_open
from gupsim.drivers.kvm import kvm_create_vm
from gupsim.drivers.mirror_frames import check_device_mappings
from gupsim.drivers.rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_ON_DEMAND,
    IB_ACCESS_REMOTE_READ,
    IB_ACCESS_REMOTE_WRITE,
)
from gupsim.drivers.rdma_odp import OdpIbDevice
from gupsim.drivers.userptr import I915_USERPTR_UNSYNCHRONIZED, i915_gem_userptr_ioctl
from gupsim.mm.reclaim import compact_range

N = 8
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
P = PAGE_SIZE

page = st.integers(0, N - 1)
span = st.tuples(page, st.integers(1, 3))
op = st.one_of(
    st.tuples(st.just("cpu_write"), page, st.integers(1, 255)),
    st.tuples(st.just("dev_read"), page),
    st.tuples(st.just("dev_write"), page, st.integers(1, 255)),
    st.tuples(st.just("fork")),
    st.tuples(st.just("child_write"), page),
    st.tuples(st.just("child_exit")),
    st.tuples(st.just("munmap"), span),
    st.tuples(st.just("remap"), span),
    st.tuples(st.just("mprotect"), span, st.sampled_from([PROT_NONE, PROT_READ, RW])),
    st.tuples(st.just("dontneed"), span),
    st.tuples(st.just("compact")),
)
programs = st.lists(op, max_size=25)


class Harness:
    """One machine, one process, one driver over N pages, and its device accessors."""

    def __init__(self, kind: str) -> None:
        self.k = gupsim.Kernel(memory="64MiB", movable="16MiB")
        self.p = self.k.spawn("app")
        self.a = self.p.mmap(0, N * P, RW, ANON)
        self.p.write(self.a, bytes(range(1, N + 1)) * (P // N) * N)
        self.children: list[gupsim.Process] = []
        self.kind = kind
        self.holder: Any
        self.read: Callable[[int], bytes | int]
        self.write: Callable[[int, bytes], int]
        if kind in ("dmirror", "dmirror-ignore"):
            d = dmirror_open(DmirrorDevice(self.k), self.p,
                             ignore_invalidation=kind == "dmirror-ignore")
            self.holder = d

            def rd(i: int) -> bytes | int:
                c = d.read(self.a + i * P, 1)
                return c.ret or c.data[:1]

            def wr(i: int, b: bytes) -> int:
                return d.write(self.a + i * P, b * P).ret
        elif kind == "odp":
            dev = OdpIbDevice(self.k)
            mr = dev.reg_mr_odp(self.p, self.a, N * P, IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE
                                | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ)
            self.holder = mr

            def rd(i: int) -> bytes | int:
                return dev.dma_read(mr.rkey, self.a + i * P, 1)

            def wr(i: int, b: bytes) -> int:
                return dev.dma_write(mr.rkey, self.a + i * P, b)
        elif kind in ("kvm", "kvm-nozap"):
            vm = kvm_create_vm(self.k, self.p)
            assert vm.set_user_memory_region(0, 0, N * P, self.a) == 0
            if kind == "kvm-nozap":     # invalidate_range_start zaps nothing
                vm.kvm_unmap_gfn_range = lambda slot, i0, i1: 0  # type: ignore[method-assign]
            self.holder = vm

            def rd(i: int) -> bytes | int:
                try:
                    return vm.guest_read(i * P, 1)
                except OSError as e:        # KVM_RUN fails: nothing mapped there
                    return -e.errno

            def wr(i: int, b: bytes) -> int:
                try:
                    vm.guest_write(i * P, b)
                except OSError as e:
                    return -e.errno
                return 0
        else:
            obj = i915_gem_userptr_ioctl(self.k, self.p, self.a, N * P,
                                         I915_USERPTR_UNSYNCHRONIZED if kind == "userptr-unsync"
                                         else 0)
            self.holder = obj

            def rd(i: int) -> bytes | int:
                return obj.gpu_read(i * P, 1)

            def wr(i: int, b: bytes) -> int:
                return obj.gpu_write(i * P, b)
        self.read, self.write = rd, wr

    def cpu_byte(self, i: int) -> bytes | None:
        vma = self.p.mm.find_vma(self.a + i * P)
        if vma is None or not vma.flags & 1:
            return None
        return self.p.read(self.a + i * P, 1)

    def step(self, o: tuple[Any, ...]) -> str | None:
        """Run one operation; for a device read, a mismatch with the CPU as text."""
        p, a, name = self.p, self.a, o[0]
        if name == "cpu_write":
            vma = p.mm.find_vma(a + o[1] * P)
            if vma is not None and vma.flags & 2:
                p.write(a + o[1] * P, bytes([o[2]]))
        elif name == "dev_read":
            got = self.read(o[1])
            want = self.cpu_byte(o[1])
            if isinstance(got, bytes) and want is not None and got != want:
                return f"device read {got!r}, the CPU reads {want!r} at page {o[1]}"
        elif name == "dev_write":
            self.write(o[1], bytes([o[2]]))
        elif name == "fork" and len(self.children) < 2:
            self.children.append(p.fork())
        elif name == "child_write" and self.children:
            c = self.children[-1]
            vma = c.mm.find_vma(a + o[1] * P)
            if vma is not None and vma.flags & 2:
                c.write(a + o[1] * P, b"c")
        elif name == "child_exit" and self.children:
            self.children.pop(0).exit()
        elif name == "munmap":
            i, n = o[1]
            p.munmap(a + i * P, min(n, N - i) * P)
        elif name == "remap":
            i, n = o[1]
            p.mmap(a + i * P, min(n, N - i) * P, RW, ANON | MAP_FIXED)
        elif name == "mprotect":
            i, n = o[1]
            if all(p.mm.find_vma(a + j * P) for j in range(i, min(i + n, N))):
                p.mprotect(a + i * P, min(n, N - i) * P, o[2])
        elif name == "dontneed":
            i, n = o[1]
            if all(p.mm.find_vma(a + j * P) for j in range(i, min(i + n, N))):
                p.madvise(a + i * P, min(n, N - i) * P, MADV_DONTNEED)
        elif name == "compact":
            compact_range(self.k.env, 0, self.k.mem.nr_pages)
        return None

    def violations(self) -> list[str]:
        return check_device_mappings(self.k, self.holder, self.kind)


def run(kind: str, ops: list[tuple[Any, ...]]) -> list[str]:
    """Every problem the program shows, in order (empty: the invariant held throughout)."""
    h = Harness(kind)
    bad: list[str] = []
    for o in ops:
        mismatch = h.step(o)
        if mismatch:
            bad.append(mismatch)
        bad += h.violations()
        if bad:
            break
    return bad


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_dmirror_keeps_the_invariant(ops: list[tuple[Any, ...]]) -> None:
    """The mirror device: no stale device entry, device reads agree with the CPU."""
    assert run("dmirror", ops) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_odp_keeps_the_invariant(ops: list[tuple[Any, ...]]) -> None:
    """The ODP region: the same."""
    assert run("odp", ops) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_userptr_keeps_the_invariant(ops: list[tuple[Any, ...]]) -> None:
    """The pinning userptr (unpin on invalidation): the same."""
    assert run("userptr", ops) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_kvm_keeps_the_invariant(ops: list[tuple[Any, ...]]) -> None:
    """KVM's secondary page table (FOLL_GET lookups, zapped in invalidate_range_start):
    the same, and the guest loads what the VMM's CPU reads."""
    assert run("kvm", ops) == []


def test_hypothesis_finds_the_mirror_that_ignores_invalidation() -> None:
    """A short program breaks the wrong mirror; the same program is fine for the right one."""
    ops = find(programs, lambda ops: bool(run("dmirror-ignore", ops)),
               settings=settings(max_examples=500, deadline=None, database=None))
    assert run("dmirror-ignore", ops) and run("dmirror", ops) == []
    assert len(ops) <= 3


def test_hypothesis_finds_the_unsynchronized_userptr() -> None:
    """Likewise for I915_USERPTR_UNSYNCHRONIZED against the notifier userptr."""
    ops = find(programs, lambda ops: bool(run("userptr-unsync", ops)),
               settings=settings(max_examples=500, deadline=None, database=None))
    assert run("userptr-unsync", ops) and run("userptr", ops) == []


def test_hypothesis_finds_the_kvm_that_does_not_zap() -> None:
    """Likewise for a KVM whose invalidate_range_start leaves its entries in place."""
    ops = find(programs, lambda ops: bool(run("kvm-nozap", ops)),
               settings=settings(max_examples=500, deadline=None, database=None))
    assert run("kvm-nozap", ops) and run("kvm", ops) == []
