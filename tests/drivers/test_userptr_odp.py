"""drivers/userptr.py (pin + notifier, and UNSYNCHRONIZED) and drivers/rdma_odp.py (ODP):
pins, accounting, what the device sees after munmap/fork/migration, and the invariants."""

from __future__ import annotations

import pytest

import gupsim
from gupsim import (
    EFAULT,
    EINVAL,
    EPERM,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.drivers.mirror_frames import MirrorWatch
from gupsim.drivers.pinned_frames import PinnedFrameWatch
from gupsim.drivers.rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_ON_DEMAND,
    IB_ACCESS_REMOTE_READ,
    IB_ACCESS_REMOTE_WRITE,
)
from gupsim.drivers.rdma_odp import OdpIbDevice, ib_umem_odp_get
from gupsim.drivers.userptr import (
    I915_USERPTR_READ_ONLY,
    I915_USERPTR_UNSYNCHRONIZED,
    i915_gem_userptr_ioctl,
)
from gupsim.mm.reclaim import compact_range

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
N = 4
ODP = IB_ACCESS_ON_DEMAND | IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ


def _held(k: gupsim.Kernel) -> int:
    return k.vmstat["nr_foll_pin_acquired"] - k.vmstat["nr_foll_pin_released"]


def _app(k: gupsim.Kernel, **kw: object) -> tuple[gupsim.Process, int]:
    p = k.spawn("app", **kw)  # type: ignore[arg-type]
    a = p.mmap(0, N * PAGE_SIZE, RW, ANON)
    p.write(a, b"u" * N * PAGE_SIZE)
    return p, a


# -- userptr ---------------------------------------------------------------------------


def test_userptr_pins_on_use_and_unpins_on_munmap() -> None:
    """The pin is taken on GPU use; munmap's notifier unpins (the frames are freed), the
    next use pins the new mapping's pages; close releases everything."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k)
    obj = i915_gem_userptr_ioctl(k, p, a, N * PAGE_SIZE)
    assert _held(k) == 0
    mw, pw = MirrorWatch(k), PinnedFrameWatch(k)
    assert obj.gpu_read(0, 4) == b"uuuu" and _held(k) == N
    mw.watch(obj)
    pw.watch(obj)
    p.munmap(a, N * PAGE_SIZE)
    assert _held(k) == 0 and obj.unpins_by_notifier == 1
    assert mw.violations() == [] and pw.violations() == []
    p.mmap(a, N * PAGE_SIZE, RW, ANON | MAP_FIXED)
    p.write(a, b"v" * N * PAGE_SIZE)
    assert obj.gpu_write(0, b"GPU") == 0 and p.read(a, 3) == b"GPU"
    obj.close()
    assert _held(k) == 0 and k.sanitizer.reports == []


def test_userptr_fork_drops_the_pin_then_repins_the_parents_copy() -> None:
    """fork()'s write-protection reaches the object: it unpins, so fork shares the pages
    COW; the GPU's next write pins with FOLL_WRITE, which gives the parent its own copy."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k)
    obj = i915_gem_userptr_ioctl(k, p, a, N * PAGE_SIZE)
    assert obj.gpu_read(0, 1) == b"u"
    child = p.fork()
    assert obj.unpins_by_notifier == 1 and k.vmstat["fork_copy_pinned"] == 0
    assert obj.gpu_write(0, b"G") == 0
    assert p.read(a, 1) == b"G" and child.read(a, 1) == b"u"
    obj.close()


def test_userptr_pins_still_block_compaction() -> None:
    """A pinned userptr stays where it is under compaction (the pin, not the notifier,
    decides: compaction skips pinned folios before any unmap), unlike the mirror."""
    k = gupsim.Kernel(memory="128MiB", movable="32MiB")
    p, a = _app(k)
    obj = i915_gem_userptr_ioctl(k, p, a, N * PAGE_SIZE)
    assert obj.gpu_read(0, 1) == b"u"
    pfns = obj.pinned_pfns()
    res = compact_range(k.env, int(pfns.min()), int(pfns.max()) + 1)
    assert res.rc < 0 and len(res.skipped) == N
    obj.close()


def test_userptr_ioctl_errors() -> None:
    """Misaligned or empty ranges and unknown flags: EINVAL; UNSYNCHRONIZED without
    CAP_SYS_ADMIN: EPERM; a read-only object refuses GPU writes."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k, uid=1000, caps=set())
    for args in ((a + 1, PAGE_SIZE, 0), (a, 0, 0), (a, PAGE_SIZE, 0x4)):
        with pytest.raises(OSError) as e:
            i915_gem_userptr_ioctl(k, p, *args)
        assert e.value.errno == EINVAL
    with pytest.raises(OSError) as e:
        i915_gem_userptr_ioctl(k, p, a, PAGE_SIZE, I915_USERPTR_UNSYNCHRONIZED)
    assert e.value.errno == EPERM
    ro = i915_gem_userptr_ioctl(k, p, a, PAGE_SIZE, I915_USERPTR_READ_ONLY)
    assert ro.gpu_write(0, b"x") == -EPERM and ro.gpu_read(0, 1) == b"u"
    ro.close()


def test_unsynchronized_keeps_stale_frames_pinned() -> None:
    """The wrong twin: no notifier, so after munmap and a new mapping the GPU reads the
    old frames, which stay pinned until close; the mirror invariant sees it."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k)
    obj = i915_gem_userptr_ioctl(k, p, a, N * PAGE_SIZE, I915_USERPTR_UNSYNCHRONIZED)
    mw = MirrorWatch(k)
    mw.watch(obj)
    assert obj.gpu_read(0, 1) == b"u"
    p.munmap(a, N * PAGE_SIZE)
    p.mmap(a, N * PAGE_SIZE, RW, ANON | MAP_FIXED)
    p.write(a, b"new!")
    assert obj.gpu_read(0, 4) == b"uuuu" and _held(k) == N
    assert any("no longer maps" in v for v in mw.violations())
    obj.close()
    assert _held(k) == 0


# -- RDMA ODP --------------------------------------------------------------------------


def test_odp_region_pins_nothing_and_faults_on_use() -> None:
    """ibv_reg_mr(ON_DEMAND): no pin, no VmPin, even with RLIMIT_MEMLOCK 0; the first
    access is an adapter page fault, later ones are not."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k, uid=1000, caps=set(), rlimit_memlock=0)
    dev = OdpIbDevice(k)
    mr = dev.reg_mr_odp(p, a, N * PAGE_SIZE, ODP)
    assert mr.umem.npages_mapped == 0
    assert dev.dma_read(mr.rkey, a, 4) == b"uuuu" and dev.page_faults == 1
    assert dev.dma_read(mr.rkey, a, 4) == b"uuuu" and dev.page_faults == 1
    assert dev.dma_write(mr.rkey, a + PAGE_SIZE, b"RDMA") == 0
    assert p.read(a + PAGE_SIZE, 4) == b"RDMA"
    assert _held(k) == 0 and p.proc_status()["VmPin"] == 0
    dev.dereg_mr_odp(mr)


def test_odp_follows_fork_munmap_and_migration() -> None:
    """Every invalidation unmaps the adapter's pages; the next access refaults and finds
    what the process maps: after fork the parent's copy, after migration the new frame,
    after munmap nothing (-EFAULT)."""
    k = gupsim.Kernel(memory="128MiB", movable="32MiB")
    p, a = _app(k)
    dev = OdpIbDevice(k)
    mr = dev.reg_mr_odp(p, a, N * PAGE_SIZE, ODP)
    w = MirrorWatch(k)
    w.watch(mr)
    assert dev.dma_write(mr.rkey, a, b"one") == 0
    child = p.fork()
    assert w.violations() == []
    assert dev.dma_write(mr.rkey, a, b"two") == 0
    assert p.read(a, 3) == b"two" and child.read(a, 3) == b"one"
    assert dev.dma_read(mr.rkey, a, 1) == b"t"
    before = set(mr.umem.pfn_list[mr.umem.pfn_list >= 0].tolist())
    res = compact_range(k.env, min(before), max(before) + 1)
    assert res.rc == 0 and w.violations() == []
    assert dev.dma_read(mr.rkey, a, 3) == b"two"
    assert not before & set(mr.umem.pfn_list[mr.umem.pfn_list >= 0].tolist())
    p.munmap(a, N * PAGE_SIZE)
    assert w.violations() == [] and mr.umem.npages_mapped == 0
    assert dev.dma_read(mr.rkey, a, 1) == -EFAULT
    dev.dereg_mr_odp(mr)


def test_odp_errors() -> None:
    """Without ON_DEMAND the ODP getter warns and answers -EINVAL; accesses outside the
    region are -EFAULT; a region without remote write refuses RDMA WRITE."""
    k = gupsim.Kernel(memory="64MiB")
    p, a = _app(k)
    dev = OdpIbDevice(k)
    assert ib_umem_odp_get(dev, a, PAGE_SIZE, IB_ACCESS_LOCAL_WRITE, current=p) == -EINVAL
    assert "ib_umem_odp_get: no IB_ACCESS_ON_DEMAND" in k.warnings.sites()
    with pytest.raises(OSError):
        dev.reg_mr_odp(p, a, PAGE_SIZE, IB_ACCESS_LOCAL_WRITE)
    mr = dev.reg_mr_odp(p, a, PAGE_SIZE, IB_ACCESS_ON_DEMAND | IB_ACCESS_REMOTE_READ)
    assert dev.dma_read(mr.rkey, a + PAGE_SIZE, 1) == -EFAULT
    assert dev.dma_write(mr.rkey, a, b"x") < 0
    dev.dereg_mr_odp(mr)
