"""VFIO type1 DMA mapping: long-term remote pins charged to locked_vm (VmLck).

What a VMM sees: VFIO_IOMMU_MAP_DMA pins and charges VmLck, refuses with ENOMEM past
RLIMIT_MEMLOCK unless CAP_IPC_LOCK, leaves nothing behind when it fails, and the device
reaches exactly the mapped, permitted IOVAs.
"""

from __future__ import annotations

import pytest
from callcount import python_calls
from drivers_helpers import ANON, RW, anon_buffer, held, mapped_pfn

import gupsim
from gupsim import (
    EEXIST,
    EFAULT,
    EINVAL,
    ENOMEM,
    ENOSPC,
    MAP_POPULATE,
    PAGE_SIZE,
    Kernel,
    Process,
)
from gupsim.drivers.vfio import (
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE,
    VfioContainer,
)
from gupsim.memory import PG

IOVA = 0x1000_0000
RWF = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE


def vmm(k: Kernel, memlock: int = 64 << 20, caps: set[int] | None = None) -> Process:
    return k.spawn("qemu", uid=1000, caps=caps or set(), rlimit_memlock=memlock)


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_map_dma_charges_vmlck_not_vmpin_and_the_device_reaches_the_process(
        k: Kernel) -> None:
    """8 pages mapped: 8 long-term writable pins taken by pin_user_pages_remote() in
    vaddr_get_pfns(), VmLck 32 kB, VmPin 0; device writes at an IOVA land in the
    process; unmapping returns the bytes and everything."""
    p = vmm(k)
    a = anon_buffer(p, 8, b"g")
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 8 * PAGE_SIZE, RWF)
    st = p.proc_status()
    assert (st["VmLck"], st["VmPin"], held(k)) == (32, 0, 8)
    [rec] = k.sanitizer.outstanding()
    assert rec.call == "pin_user_pages_remote" and "in vaddr_get_pfns" in rec.site
    assert rec.flags & gupsim.FOLL_LONGTERM and rec.flags & gupsim.FOLL_WRITE
    assert list(c.pinned_pfns()) == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(8)]
    assert c.dma_write(IOVA + PAGE_SIZE - 2, b"dma!") == 0
    assert p.read(a + PAGE_SIZE - 2, 4) == b"dma!"
    assert c.dma_read(IOVA, 2) == b"gg"
    assert c.unmap_dma(IOVA, 8 * PAGE_SIZE) == 8 * PAGE_SIZE
    assert p.proc_status()["VmLck"] == 0 and held(k) == 0 and k.sanitizer.reports == []


def test_read_only_mapping_pins_without_write_and_faults_device_writes(k: Kernel) -> None:
    """READ only (device reads memory): no FOLL_WRITE; a device write is an IOMMU fault
    (-EFAULT, recorded) and changes nothing; an unmapped IOVA faults too."""
    p = vmm(k)
    a = anon_buffer(p, 2, b"r")
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 2 * PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ)
    [rec] = k.sanitizer.outstanding()
    assert not rec.flags & gupsim.FOLL_WRITE
    assert c.dma_write(IOVA, b"no") == -EFAULT and p.read(a, 2) == b"rr"
    assert c.dma_read(IOVA + 4 * PAGE_SIZE, 1) == -EFAULT
    assert len(c.faults) == 2 and "write fault" in c.faults[0]
    c.close()
    assert held(k) == 0


def test_rlimit_memlock_refuses_and_the_failed_map_leaves_nothing(k: Kernel) -> None:
    """Without CAP_IPC_LOCK, locked_vm + pages > RLIMIT_MEMLOCK: ENOMEM, the driver's
    pr_warn in dmesg, the partial pins released, VmLck and the first mapping untouched."""
    p = vmm(k, memlock=16 * PAGE_SIZE)
    a = anon_buffer(p, 30)
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 10 * PAGE_SIZE, RWF)
    assert errno_of(c.map_dma, a + 10 * PAGE_SIZE, IOVA + 10 * PAGE_SIZE,
                    10 * PAGE_SIZE, RWF) == ENOMEM
    assert p.proc_status()["VmLck"] == 40 and held(k) == 10 and len(c.dmas) == 1
    assert c.dmesg == [f"vfio_pin_pages_remote: RLIMIT_MEMLOCK ({16 * PAGE_SIZE}) exceeded"]
    c.map_dma(a + 10 * PAGE_SIZE, IOVA + 10 * PAGE_SIZE, 6 * PAGE_SIZE, RWF)   # exact fit
    assert p.proc_status()["VmLck"] == 64
    c.close()
    assert p.proc_status()["VmLck"] == 0 and held(k) == 0 and k.sanitizer.reports == []


def test_cap_ipc_lock_bypasses_the_limit_but_is_still_charged(k: Kernel) -> None:
    """dma->lock_cap: no limit check, locked_vm still counts the pages."""
    p = vmm(k, memlock=0, caps={gupsim.CAP_IPC_LOCK})
    a = anon_buffer(p, 4)
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 4 * PAGE_SIZE, RWF)
    assert p.proc_status()["VmLck"] == 16
    c.close()
    assert p.mm.locked_vm == 0


def test_discontiguous_frames_are_mapped_run_by_run_from_one_batch(k: Kernel) -> None:
    """Pages faulted in reverse order get descending frames: every run is one page long,
    yet each page is pinned exactly once (runs come from the batch's leftovers)."""
    p = vmm(k)
    a = p.mmap(0, 40 * PAGE_SIZE, RW, ANON)
    for i in reversed(range(40)):
        p.write(a + i * PAGE_SIZE, bytes([i]))
    pfns = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(40)]
    assert all(x - y != 1 for x, y in zip(pfns[1:], pfns, strict=False))
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 40 * PAGE_SIZE, RWF)
    assert list(c.pinned_pfns()) == pfns
    assert k.vmstat["nr_foll_pin_acquired"] == 40 and len(k.sanitizer.outstanding()) == 1
    assert c.dma_read(IOVA + 39 * PAGE_SIZE, 1) == bytes([39])
    c.close()
    assert held(k) == 0 and p.mm.locked_vm == 0


@pytest.mark.parametrize("vaddr_off,iova,size,flags,err", [
    (1, IOVA, PAGE_SIZE, RWF, EINVAL),                       # unaligned vaddr
    (0, IOVA + 1, PAGE_SIZE, RWF, EINVAL),                   # unaligned iova
    (0, IOVA, 0, RWF, EINVAL),                               # empty
    (0, IOVA, PAGE_SIZE, 0, EINVAL),                         # neither READ nor WRITE
    (0, IOVA, PAGE_SIZE, RWF | 1 << 7, EINVAL),              # unknown flag
    (0, (1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE, RWF, EINVAL),  # IOVA wraps
])
def test_map_argument_errors(k: Kernel, vaddr_off: int, iova: int, size: int, flags: int,
                             err: int) -> None:
    """vfio_dma_do_map()'s argument checks, before anything is pinned."""
    p = vmm(k)
    a = anon_buffer(p, 2)
    c = VfioContainer(k, p)
    assert errno_of(c.map_dma, a + vaddr_off, iova, size, flags) == err
    assert k.vmstat["nr_foll_pin_acquired"] == 0 and c.dmas == []


def test_overlap_is_eexist_and_the_entry_limit_is_enospc(k: Kernel) -> None:
    p = vmm(k)
    a = anon_buffer(p, 4)
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 2 * PAGE_SIZE, RWF)
    assert errno_of(c.map_dma, a + 2 * PAGE_SIZE, IOVA + PAGE_SIZE, PAGE_SIZE, RWF) == EEXIST
    c.dma_avail = 0
    assert errno_of(c.map_dma, a + 2 * PAGE_SIZE, IOVA + 8 * PAGE_SIZE, PAGE_SIZE,
                    RWF) == ENOSPC
    assert held(k) == 2
    c.close()


def test_unmap_must_not_split_a_mapping(k: Kernel) -> None:
    """Type1 v2: an unmap starting or ending inside a mapping is EINVAL; a covering range
    removes whole mappings and says how many bytes; an empty range unmaps 0."""
    p = vmm(k)
    a = anon_buffer(p, 6)
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 4 * PAGE_SIZE, RWF)
    c.map_dma(a + 4 * PAGE_SIZE, IOVA + 4 * PAGE_SIZE, 2 * PAGE_SIZE, RWF)
    assert errno_of(c.unmap_dma, IOVA + PAGE_SIZE, PAGE_SIZE) == EINVAL
    assert errno_of(c.unmap_dma, IOVA, 2 * PAGE_SIZE) == EINVAL
    assert c.unmap_dma(IOVA + 64 * PAGE_SIZE, PAGE_SIZE) == 0
    assert c.unmap_dma(IOVA, 6 * PAGE_SIZE) == 6 * PAGE_SIZE
    assert held(k) == 0 and p.mm.locked_vm == 0


def test_a_hole_fails_the_map_with_efault_and_releases_every_run(k: Kernel) -> None:
    """A hole in the range: the pages before it were pinned and charged; the map fails
    with EFAULT, the mapping is removed, pins and VmLck return to zero."""
    p = vmm(k)
    a = anon_buffer(p, 20)
    p.munmap(a + 12 * PAGE_SIZE, PAGE_SIZE)
    c = VfioContainer(k, p)
    assert errno_of(c.map_dma, a, IOVA, 20 * PAGE_SIZE, RWF) == EFAULT
    assert c.dmas == [] and held(k) == 0 and p.mm.locked_vm == 0
    assert k.vmstat["nr_foll_pin_acquired"] >= 12
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_unmap_dirties_pages_the_device_may_have_written(k: Kernel) -> None:
    """put_pfn(): unpin_user_page_range_dirty_lock(make_dirty = IOMMU_WRITE)."""
    p = vmm(k)
    a = anon_buffer(p, 2)
    frames = [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, PAGE_SIZE, RWF)
    c.map_dma(a + PAGE_SIZE, IOVA + PAGE_SIZE, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ)
    k.mem.clear_flag(frames, PG.dirty)
    c.close()
    assert [k.page(f).folio.dirty for f in frames] == [True, False]


def test_pages_are_moved_out_of_zone_movable_before_the_pin() -> None:
    """FOLL_LONGTERM on pin_user_pages_remote(): the guest memory leaves ZONE_MOVABLE."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = vmm(k)
    a = anon_buffer(p, 4, b"m")
    assert k.page(mapped_pfn(p, a)).folio.zone.name == "MOVABLE"
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 4 * PAGE_SIZE, RWF)
    assert {k.page(int(f)).folio.zone.name for f in c.pinned_pfns()} == {"NORMAL"}
    assert c.dma_read(IOVA, 1) == b"m" and k.vmstat["pgmigrate_success"] == 4
    c.close()


def test_exit_leaks_until_the_container_is_closed(k: Kernel) -> None:
    """The process exits with memory mapped: its pins are reported as leaked (taken in
    vaddr_get_pfns); closing the container later unpins them, the uncharge of the dead
    mm being skipped (-ESRCH)."""
    p = vmm(k)
    a = anon_buffer(p, 3, b"e")
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, 3 * PAGE_SIZE, RWF)
    p.exit()
    [leak] = k.sanitizer.reports
    assert leak.kind == "leak" and "in vaddr_get_pfns" in leak.taken_at
    assert c.dma_read(IOVA, 1) == b"e"
    c.close()
    assert held(k) == 0 and k.check() == []


def test_a_256mib_map_costs_python_per_batch_not_per_page() -> None:
    """65536 contiguous pages: 128 batch refills (one pin_user_pages_remote() each, as
    the kernel), one run; Python calls bounded per batch, below one per page."""
    k = Kernel(memory="1GiB")
    p = vmm(k, memlock=1 << 30)
    n = 65536
    a = p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    c = VfioContainer(k, p)
    calls, secs, _ = python_calls(lambda: c.map_dma(a, IOVA, n * PAGE_SIZE, RWF))
    assert calls < 250 * (n // 512) and calls < n // 2 and secs < 10, calls
    assert p.proc_status()["VmLck"] == n * 4
    calls, secs, _ = python_calls(lambda: c.unmap_dma(IOVA, n * PAGE_SIZE))
    assert calls < n // 4 and secs < 10, calls
    assert held(k) == 0


def test_a_fragmented_mapping_is_unmapped_without_per_run_python(k: Kernel) -> None:
    """One-page runs (interleaved frames): every page unpinned once, dirtied, VmLck back
    to zero, with Python work well below one call per page."""
    p = vmm(k)
    n = 2048
    a = p.mmap(0, n * PAGE_SIZE, RW, ANON)
    for start in (0, 1):
        for i in range(start, n, 2):
            p.write(a + i * PAGE_SIZE, b"f")
    c = VfioContainer(k, p)
    c.map_dma(a, IOVA, n * PAGE_SIZE, RWF)
    frames = c.pinned_pfns().copy()
    assert len(frames) == n and (abs(frames[1:] - frames[:-1]) != 1).all()
    k.mem.clear_flag(frames, PG.dirty)
    calls, _, unmapped = python_calls(lambda: c.unmap_dma(IOVA, n * PAGE_SIZE))
    assert unmapped == n * PAGE_SIZE and calls < n // 2, calls
    assert held(k) == 0 and p.mm.locked_vm == 0
    assert all(k.page(int(f)).folio.dirty for f in frames)
