"""drivers/hmm_mirror.py: the dmirror device meets the expectations of
tools/testing/selftests/mm/hmm-tests.c (read, write, protections, fork/COW, munmap,
mremap, huge pages, files, migration, snapshot), and drivers/mirror_frames.py sees no violation.

The host cannot run these: /dev/hmm_dmirror0 needs the test_hmm module
(CONFIG_TEST_HMM), see test_host_has_no_dmirror_device.
"""

from __future__ import annotations

import pytest

import gupsim
from gupsim import (
    EAGAIN,
    EFAULT,
    EPERM,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MMU_NOTIFY_CLEAR,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    MmuNotifierRange,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start_nonblock,
)
from gupsim.constants import MREMAP_MAYMOVE
from gupsim.drivers.hmm_mirror import (
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_NONE,
    HMM_DMIRROR_PROT_PMD,
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_PROT_ZERO,
    Dmirror,
    DmirrorDevice,
    dmirror_open,
)
from gupsim.drivers.mirror_frames import MirrorWatch
from gupsim.mm.reclaim import compact_range

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
NPAGES = 256                # hmm-tests.c uses 1024; the model's answers do not depend on it


def _ints(n: int, base: int = 0) -> bytes:
    """The selftests' pattern: int i at index i (native 4-byte ints)."""
    return b"".join(((base + i) & 0xFFFFFFFF).to_bytes(4, "little") for i in range(n))


@pytest.fixture
def k() -> gupsim.Kernel:
    return gupsim.Kernel(memory="128MiB", movable="32MiB")


def _open(k: gupsim.Kernel, p: gupsim.Process) -> tuple[Dmirror, MirrorWatch]:
    d = dmirror_open(DmirrorDevice(k), p)
    w = MirrorWatch(k)
    w.watch(d)
    return d, w


def test_anon_read(k: gupsim.Kernel) -> None:
    """hmm.anon_read: the device reads what the CPU wrote, in one device fault."""
    p = k.spawn("t")
    size = NPAGES * PAGE_SIZE
    a = p.mmap(0, size, RW, ANON)
    data = _ints(size // 4)
    p.write(a, data)
    d, w = _open(k, p)
    cmd = d.read(a, NPAGES)
    assert (cmd.ret, cmd.cpages, cmd.faults) == (0, NPAGES, 1)
    assert cmd.data == data
    assert k.vmstat["nr_foll_pin_acquired"] == 0 and p.proc_status()["VmPin"] == 0
    assert w.violations() == [] and k.sanitizer.reports == []
    cmd = d.read(a, NPAGES)
    assert cmd.faults == 0              # the device page table already has every entry


def test_anon_read_prot(k: gupsim.Kernel) -> None:
    """hmm.anon_read_prot: after mprotect(PROT_NONE) the device read fails with -EFAULT."""
    p = k.spawn("t")
    a = p.mmap(0, NPAGES * PAGE_SIZE, RW, ANON)
    p.write(a, _ints(NPAGES * PAGE_SIZE // 4))
    p.mprotect(a, NPAGES * PAGE_SIZE, PROT_NONE)
    d, w = _open(k, p)
    cmd = d.read(a, NPAGES)
    assert cmd.ret == -EFAULT and cmd.data == b""
    assert w.violations() == []


def test_anon_write(k: gupsim.Kernel) -> None:
    """hmm.anon_write: the device writes, the CPU reads it, one fault."""
    p = k.spawn("t")
    a = p.mmap(0, NPAGES * PAGE_SIZE, RW, ANON)
    d, w = _open(k, p)
    data = _ints(NPAGES * PAGE_SIZE // 4)
    cmd = d.write(a, data)
    assert (cmd.ret, cmd.cpages, cmd.faults) == (0, NPAGES, 1)
    assert p.read(a, len(data)) == data
    assert w.violations() == []


def test_anon_write_prot(k: gupsim.Kernel) -> None:
    """hmm.anon_write_prot: a read of a read-only mapping gets the zero page; a write is
    -EPERM and leaves zeros; after mprotect(RW) the write succeeds."""
    p = k.spawn("t")
    a = p.mmap(0, NPAGES * PAGE_SIZE, PROT_READ, ANON)
    d, w = _open(k, p)
    cmd = d.read(a, 1)
    assert (cmd.ret, cmd.cpages, cmd.faults) == (0, 1, 1) and cmd.data == bytes(PAGE_SIZE)
    data = _ints(NPAGES * PAGE_SIZE // 4)
    assert d.write(a, data).ret == -EPERM
    assert p.read(a, len(data)) == bytes(len(data))
    p.mprotect(a, NPAGES * PAGE_SIZE, RW)
    cmd = d.write(a, data)
    assert (cmd.ret, cmd.cpages, cmd.faults) == (0, NPAGES, 1)
    assert p.read(a, len(data)) == data
    assert w.violations() == []


def test_anon_write_child(k: gupsim.Kernel) -> None:
    """hmm.anon_write_child: the child's device write is copy-on-write: the parent keeps
    its data, and the parent's mirror (opened before fork) still reads the parent's."""
    p = k.spawn("t")
    size = NPAGES * PAGE_SIZE
    a = p.mmap(0, size, RW, ANON)
    parent_data = _ints(size // 4)
    p.write(a, parent_data)
    d, w = _open(k, p)
    assert d.read(a, NPAGES).ret == 0
    child = p.fork()
    dc, wc = _open(k, child)
    child_data = _ints(size // 4, base=-NPAGES)
    cmd = dc.write(a, child_data)
    assert cmd.ret == 0 and cmd.cpages == NPAGES
    assert child.read(a, size) == child_data
    assert p.read(a, size) == parent_data
    assert d.read(a, NPAGES).data == parent_data
    assert w.violations() == [] and wc.violations() == []


def test_parent_write_after_fork_reaches_the_parent_only(k: gupsim.Kernel) -> None:
    """fork() write-protects the parent: the mirror drops its writable entries, so a
    device write after fork breaks COW for the parent instead of leaking to the child."""
    p = k.spawn("t")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.write(a, b"p" * 4 * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.write(a, b"1" * 4 * PAGE_SIZE).ret == 0
    child = p.fork()
    assert w.violations() == [] and d.pt == {}
    cmd = d.write(a, b"2" * 4 * PAGE_SIZE)
    assert cmd.ret == 0 and cmd.faults == 1
    assert p.read(a, 1) == b"2" and child.read(a, 1) == b"1"


def test_munmap_removes_device_entries(k: gupsim.Kernel) -> None:
    """Partial munmap: the entries of the hole are gone, a device read there is -EFAULT,
    the rest still reads without a fault."""
    p = k.spawn("t")
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    p.write(a, b"z" * 8 * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.read(a, 8).ret == 0 and len(d.pt) == 8
    p.munmap(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE)
    assert len(d.pt) == 6 and w.violations() == []
    assert d.read(a + 2 * PAGE_SIZE, 1).ret == -EFAULT
    cmd = d.read(a + 4 * PAGE_SIZE, 4)
    assert cmd.ret == 0 and cmd.faults == 0


def test_mremap_moves_the_mirror(k: gupsim.Kernel) -> None:
    """After mremap to a new place the old address is a hole for the device (-EFAULT),
    the new one reads the data."""
    p = k.spawn("t")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.write(a, b"move" * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.read(a, 4).ret == 0
    b = p.mremap(a, 4 * PAGE_SIZE, 8 * PAGE_SIZE, MREMAP_MAYMOVE)
    assert w.violations() == []
    if b != a:
        assert d.read(a, 1).ret == -EFAULT
    cmd = d.read(b, 4)
    assert cmd.ret == 0 and cmd.data == b"move" * PAGE_SIZE


def test_anon_write_huge() -> None:
    """hmm.anon_write_huge: a THP-backed buffer; the device write lands in it."""
    k = gupsim.Kernel(memory="128MiB", thp="always")
    p = k.spawn("t")
    a = p.mmap(0, 4 << 20, RW, ANON)
    a2 = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    d, w = _open(k, p)
    data = _ints((2 << 20) // 4)
    cmd = d.write(a2, data)
    assert cmd.ret == 0 and cmd.cpages == 512
    assert p.read(a2, len(data)) == data and w.violations() == []


def test_anon_write_hugetlbfs() -> None:
    """hmm.anon_write_hugetlbfs: the same on a MAP_HUGETLB mapping."""
    k = gupsim.Kernel(memory="128MiB", nr_hugepages=2)
    p = k.spawn("t")
    a = p.mmap(0, 2 << 20, RW, ANON | MAP_HUGETLB)
    d, w = _open(k, p)
    data = _ints((2 << 20) // 4)
    assert d.write(a, data).ret == 0
    assert p.read(a, len(data)) == data and w.violations() == []


def test_file_read_and_write(k: gupsim.Kernel) -> None:
    """hmm.file_read / hmm.file_write: a shared ext4 mapping; what the device writes is
    in the file."""
    f = k.fs("ext4").create("data", 4 * PAGE_SIZE)
    p = k.spawn("t")
    a = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"file" * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.read(a, 4).data == b"file" * PAGE_SIZE
    assert d.write(a, b"DEV!" * PAGE_SIZE).ret == 0
    assert f.pread(0, 4) == b"DEV!"
    assert w.violations() == []


def test_migration_moves_pages_and_the_device_follows(k: gupsim.Kernel) -> None:
    """Compaction migrates the mirrored pages (nothing pins them); the migration's
    invalidation drops the entries and the device refaults to the new frames."""
    p = k.spawn("t")
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    p.write(a, b"mig!" * 2 * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.read(a, 8).ret == 0
    old = {pfn for pfn, _ in d.pt.values()}
    res = compact_range(k.env, min(old), max(old) + 1)
    assert res.rc == 0 and k.vmstat["pgmigrate_success"] >= 8
    assert w.violations() == []
    cmd = d.read(a, 8)
    assert cmd.faults == 1 and cmd.data == b"mig!" * 2 * PAGE_SIZE
    assert not old & {pfn for pfn, _ in d.pt.values()}


def test_exit_and_close(k: gupsim.Kernel) -> None:
    """Exit empties the device page table; a command afterwards fails; close unsubscribes."""
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"e" * 2 * PAGE_SIZE)
    d, w = _open(k, p)
    assert d.read(a, 2).ret == 0
    p.exit()
    assert d.pt == {} and w.violations() == []
    assert d.read(a, 1).ret == -EFAULT
    d.close()


def test_non_blockable_invalidation_refused_while_the_mutex_is_held(k: gupsim.Kernel) -> None:
    """dmirror_interval_invalidate(): with its mutex busy a non-blockable range fails
    (the caller sees -EAGAIN), and the entries stay until a blockable one comes."""
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"b" * 2 * PAGE_SIZE)
    d, _ = _open(k, p)
    assert d.read(a, 2).ret == 0
    d.mutex_held = True
    rng = MmuNotifierRange(p.mm, a, a + PAGE_SIZE, 0, MMU_NOTIFY_CLEAR)
    assert mmu_notifier_invalidate_range_start_nonblock(rng) == -EAGAIN
    assert len(d.pt) == 2
    d.mutex_held = False
    rng = MmuNotifierRange(p.mm, a, a + PAGE_SIZE, 0, MMU_NOTIFY_CLEAR)
    assert mmu_notifier_invalidate_range_start_nonblock(rng) == 0
    mmu_notifier_invalidate_range_end(rng)
    assert len(d.pt) == 1


def test_the_watch_catches_the_wrong_twin(k: gupsim.Kernel) -> None:
    """The invariant can fail: the twin that ignores invalidations is caught after munmap."""
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.write(a, b"w" * 2 * PAGE_SIZE)
    d = dmirror_open(DmirrorDevice(k), p, ignore_invalidation=True)
    w = MirrorWatch(k)
    w.watch(d, "bad")
    assert d.read(a, 2).ret == 0 and w.violations() == []
    p.munmap(a, 2 * PAGE_SIZE)
    bad = w.violations()
    assert any("no longer maps" in v for v in bad) and any("freed" in v for v in bad)
    p.mmap(a, 2 * PAGE_SIZE, RW, ANON | MAP_FIXED)


def test_snapshot(k: gupsim.Kernel) -> None:
    """hmm2.snapshot (device-private pages aside): unmapped pages are ERROR, a read page
    is ZERO|READ, a read-only one READ, a written one WRITE; nothing is faulted in."""
    p = k.spawn("t")
    a = p.mmap(0, 7 * PAGE_SIZE, RW, ANON)
    p.munmap(a, 2 * PAGE_SIZE)
    p.read(a + 2 * PAGE_SIZE, 1)
    p.write(a + 3 * PAGE_SIZE, b"r")
    p.mprotect(a + 3 * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    p.write(a + 4 * PAGE_SIZE, b"w")
    d, _ = _open(k, p)
    faults = k.vmstat["pgfault"]
    cmd = d.snapshot(a, 7)
    assert (cmd.ret, cmd.cpages) == (0, 7)
    assert list(cmd.data) == [HMM_DMIRROR_PROT_ERROR, HMM_DMIRROR_PROT_ERROR,
                              HMM_DMIRROR_PROT_ZERO | HMM_DMIRROR_PROT_READ,
                              HMM_DMIRROR_PROT_READ, HMM_DMIRROR_PROT_WRITE,
                              HMM_DMIRROR_PROT_NONE, HMM_DMIRROR_PROT_NONE]
    assert k.vmstat["pgfault"] == faults and d.pt == {}


def test_compound_snapshot() -> None:
    """hmm.compound: a THP mapped by a PMD snapshots as PMD|WRITE."""
    k = gupsim.Kernel(memory="128MiB", thp="always")
    p = k.spawn("t")
    a = p.mmap(0, 4 << 20, RW, ANON)
    a2 = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.write(a2, b"huge")
    d, _ = _open(k, p)
    cmd = d.snapshot(a2, 512)
    assert cmd.ret == 0 and set(cmd.data) == {HMM_DMIRROR_PROT_PMD | HMM_DMIRROR_PROT_WRITE}
