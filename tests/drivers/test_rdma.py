"""RDMA memory registration (case 2): ib_umem_get()/ib_umem_release() and ibv_reg_mr().

What an RDMA user sees: VmPin grows by the pages spanned, RLIMIT_MEMLOCK refuses
(unless CAP_IPC_LOCK), a failed pin leaves nothing behind, the device's writes reach
the process, and deregistration unpins and uncharges everything.
"""

from __future__ import annotations

import pytest
from callcount import python_calls
from drivers_helpers import ANON, RW, anon_buffer, held, mapped_pfn

import gupsim
from gupsim import (
    EACCES,
    EFAULT,
    EINVAL,
    ENOMEM,
    EOPNOTSUPP,
    EPERM,
    MAP_POPULATE,
    MAP_SHARED,
    PAGE_SIZE,
    Kernel,
    Process,
    page_maybe_dma_pinned,
)
from gupsim.drivers import rdma
from gupsim.drivers.rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_ON_DEMAND,
    IB_ACCESS_REMOTE_READ,
    IB_ACCESS_REMOTE_WRITE,
    IS_ERR,
    IbDevice,
    ib_umem_get,
    ib_umem_release,
    ibv_dereg_mr,
    ibv_open_device,
    ibv_reg_mr,
)
from gupsim.memory import PG

RWMR = IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ


@pytest.fixture
def dev(k: Kernel) -> IbDevice:
    return IbDevice(k)


def user(k: Kernel, memlock: int = 64 << 20, caps: set[int] | None = None) -> Process:
    """An unprivileged process (no CAP_IPC_LOCK unless given) with that RLIMIT_MEMLOCK."""
    return k.spawn("rdma", uid=1000, caps=caps or set(), rlimit_memlock=memlock)


def test_reg_mr_pins_every_spanned_page_and_charges_vmpin(k: Kernel, dev: IbDevice) -> None:
    """An unaligned 3-page registration spans 4 pages: 4 pins, VmPin 16 kB, all pinned;
    deregistration releases all 4 and VmPin returns to 0."""
    p = user(k)
    a = anon_buffer(p, 5)
    mr = ibv_reg_mr(ibv_open_device(dev, p), a + 100, 3 * PAGE_SIZE, RWMR)
    assert rdma.ib_umem_num_pages(mr.umem) == 4
    assert p.proc_status()["VmPin"] == 16 and held(k) == 4
    assert all(page_maybe_dma_pinned(k.page(int(f))) for f in mr.umem.pfns)
    assert list(mr.umem.pfns) == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(4)]
    ibv_dereg_mr(mr)
    assert p.proc_status()["VmPin"] == 0 and held(k) == 0
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_device_writes_reach_the_process_and_rights_are_checked(k: Kernel,
                                                                 dev: IbDevice) -> None:
    """RDMA WRITE through the rkey lands in the process's memory, across a page boundary;
    an MR without remote write answers -EACCES and writes nothing; outside the MR is
    -EFAULT; after deregistration the key is gone (-EINVAL)."""
    p = user(k)
    a = anon_buffer(p, 2)
    ctx = ibv_open_device(dev, p)
    mr = ibv_reg_mr(ctx, a, 2 * PAGE_SIZE, RWMR)
    assert dev.dma_write(mr.rkey, a + PAGE_SIZE - 3, b"across") == 0
    assert p.read(a + PAGE_SIZE - 3, 6) == b"across"
    p.write(a, b"from cpu")
    assert dev.dma_read(mr.rkey, a, 8) == b"from cpu"
    assert dev.dma_write(mr.rkey, a + 2 * PAGE_SIZE - 2, b"xyz") == -EFAULT
    ro = ibv_reg_mr(ctx, a, PAGE_SIZE, IB_ACCESS_REMOTE_READ)
    assert dev.dma_write(ro.rkey, a, b"no") == -EACCES and p.read(a, 2) == b"fr"
    ibv_dereg_mr(mr)
    ibv_dereg_mr(ro)
    assert dev.dma_write(mr.rkey, a, b"gone") == -EINVAL
    assert held(k) == 0


def test_pins_are_taken_in_chunks_of_512_named_at_the_driver_line(k: Kernel,
                                                                   dev: IbDevice) -> None:
    """1000 pages are pinned by two pin_user_pages_fast() calls (512, 488), and the
    sanitizer names the line in umem's ib_umem_get() that took them."""
    p = user(k)
    a = anon_buffer(p, 1000)
    umem = ib_umem_get(dev, a, 1000 * PAGE_SIZE, RWMR, current=p)
    assert not IS_ERR(umem)
    held_now = k.sanitizer.outstanding()
    assert sorted(o.pages for o in held_now) == [488, 512]
    assert {o.call for o in held_now} == {"pin_user_pages_fast"}
    assert all(o.flags & gupsim.FOLL_LONGTERM and o.flags & gupsim.FOLL_WRITE
               for o in held_now)
    assert all(o.site.endswith("in ib_umem_get") and "drivers/rdma.py" in o.site
               for o in held_now)
    ib_umem_release(umem)
    assert held(k) == 0 and p.mm.pinned_vm == 0


def test_segments_merge_contiguous_pages_and_respect_max_seg_size(k: Kernel) -> None:
    """Physically contiguous pages form one sg segment unless the device's max segment
    size cuts it; release unpins each segment as one range."""
    p = user(k)
    a = p.mmap(0, 64 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    pfns = [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(64)]
    assert pfns == list(range(pfns[0], pfns[0] + 64)), "the model hands out contiguous frames"
    whole = ib_umem_get(IbDevice(k), a, 64 * PAGE_SIZE, RWMR, current=p)
    cut = ib_umem_get(IbDevice(k, max_seg_size=16 * PAGE_SIZE), a, 64 * PAGE_SIZE, RWMR,
                      current=p)
    assert isinstance(whole, rdma.IbUmem) and isinstance(cut, rdma.IbUmem)
    assert (whole.nsegs, cut.nsegs) == (1, 4)
    assert held(k) == 128
    ib_umem_release(whole)
    ib_umem_release(cut)
    assert held(k) == 0 and p.proc_status()["VmPin"] == 0


def test_release_dirties_only_writable_regions(k: Kernel, dev: IbDevice) -> None:
    """make_dirty = dirty && writable: a writable MR's release dirties its folios, a
    read-only MR's does not."""
    p = user(k)
    a = anon_buffer(p, 2)
    heads = [mapped_pfn(p, a), mapped_pfn(p, a + PAGE_SIZE)]
    ctx = ibv_open_device(dev, p)
    w = ibv_reg_mr(ctx, a, PAGE_SIZE, IB_ACCESS_LOCAL_WRITE)
    r = ibv_reg_mr(ctx, a + PAGE_SIZE, PAGE_SIZE, IB_ACCESS_REMOTE_READ)
    k.mem.clear_flag(heads, PG.dirty)          # as if written back meanwhile
    ibv_dereg_mr(w)
    ibv_dereg_mr(r)
    assert [k.page(h).folio.dirty for h in heads] == [True, False]


def test_read_only_region_pins_without_foll_write(k: Kernel, dev: IbDevice) -> None:
    """A read-only MR pins without FOLL_WRITE (no FOLL_FORCE since 6.2): untouched memory
    gets real pages, and the process's later writes are what the device reads."""
    p = user(k)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mr = ibv_reg_mr(ibv_open_device(dev, p), a, 2 * PAGE_SIZE, IB_ACCESS_REMOTE_READ)
    [rec] = k.sanitizer.outstanding()
    assert not rec.flags & gupsim.FOLL_WRITE and rec.flags & gupsim.FOLL_LONGTERM
    p.write(a + PAGE_SIZE, b"later")
    assert dev.dma_read(mr.rkey, a + PAGE_SIZE, 5) == b"later"
    ibv_dereg_mr(mr)


@pytest.mark.parametrize("addr,size", [((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE),
                                       ((1 << 64) - 10, 5), (0x10000, 0)])
def test_wrapping_or_empty_ranges_are_einval(k: Kernel, dev: IbDevice, addr: int,
                                             size: int) -> None:
    """addr + size (or its page alignment) wraps, or no page is spanned: -EINVAL,
    nothing charged."""
    p = user(k)
    assert ib_umem_get(dev, addr, size, RWMR, current=p) == -EINVAL
    assert p.mm.pinned_vm == 0


def test_memlock_zero_without_cap_is_eperm_and_cap_ipc_lock_lifts_the_limit(
        k: Kernel, dev: IbDevice) -> None:
    """RLIMIT_MEMLOCK 0 without CAP_IPC_LOCK: can_do_mlock() fails, -EPERM. With the
    capability the registration works and is still charged to VmPin."""
    weak = user(k, memlock=0)
    a = anon_buffer(weak, 1)
    assert ib_umem_get(dev, a, PAGE_SIZE, RWMR, current=weak) == -EPERM
    with pytest.raises(OSError) as e:
        ibv_reg_mr(ibv_open_device(dev, weak), a, PAGE_SIZE, RWMR)
    assert e.value.errno == EPERM
    strong = user(k, memlock=0, caps={gupsim.CAP_IPC_LOCK})
    b = anon_buffer(strong, 4)
    umem = ib_umem_get(dev, b, 4 * PAGE_SIZE, RWMR, current=strong)
    assert not IS_ERR(umem) and strong.proc_status()["VmPin"] == 16
    ib_umem_release(umem)
    assert strong.mm.pinned_vm == 0


def test_over_the_limit_is_enomem_before_anything_is_pinned(k: Kernel, dev: IbDevice) -> None:
    """pinned_vm would pass RLIMIT_MEMLOCK: -ENOMEM, pinned_vm back to what it was, no pin
    taken; ibv_reg_mr raises ENOMEM saying what to do."""
    p = user(k, memlock=16 * PAGE_SIZE)
    a = anon_buffer(p, 20)
    ctx = ibv_open_device(dev, p)
    ibv_reg_mr(ctx, a, 10 * PAGE_SIZE, RWMR)
    acquired = k.vmstat["nr_foll_pin_acquired"]
    assert ib_umem_get(dev, a, 7 * PAGE_SIZE, RWMR, current=p) == -ENOMEM
    assert p.mm.pinned_vm == 10 and k.vmstat["nr_foll_pin_acquired"] == acquired
    with pytest.raises(OSError) as e:
        ibv_reg_mr(ctx, a + 10 * PAGE_SIZE, 10 * PAGE_SIZE, RWMR)
    assert e.value.errno == ENOMEM and "RLIMIT_MEMLOCK" in str(e.value)
    six = ibv_reg_mr(ctx, a + 10 * PAGE_SIZE, 6 * PAGE_SIZE, RWMR)   # exactly at the limit
    assert p.proc_status()["VmPin"] == 64
    ctx.close()
    assert p.mm.pinned_vm == 0 and held(k) == 0 and six not in ctx.mrs


def test_on_demand_is_not_the_plain_getters_job(k: Kernel, dev: IbDevice) -> None:
    """IB_ACCESS_ON_DEMAND: -EOPNOTSUPP from ib_umem_get(); uverbs also refuses remote
    write without local write (-EINVAL)."""
    p = user(k)
    a = anon_buffer(p, 1)
    assert ib_umem_get(dev, a, PAGE_SIZE, RWMR | IB_ACCESS_ON_DEMAND, current=p) == -EOPNOTSUPP
    for access, err in ((IB_ACCESS_REMOTE_WRITE, EINVAL), (RWMR | IB_ACCESS_ON_DEMAND,
                                                          EOPNOTSUPP)):
        with pytest.raises(OSError) as e:
            ibv_reg_mr(ibv_open_device(dev, p), a, PAGE_SIZE, access)
        assert e.value.errno == err
    assert p.mm.pinned_vm == 0


def test_a_failing_chunk_releases_everything_and_undoes_pinned_vm(k: Kernel,
                                                                  dev: IbDevice) -> None:
    """600 pages with a hole at page 550: the first chunk (512) and the part before the
    hole (38) are pinned, the next call fails with -EFAULT; all 550 pins are released,
    pinned_vm is undone, and the sanitizer sees no misuse."""
    p = user(k)
    a = anon_buffer(p, 600)
    p.munmap(a + 550 * PAGE_SIZE, PAGE_SIZE)
    assert ib_umem_get(dev, a, 600 * PAGE_SIZE, RWMR, current=p) == -EFAULT
    assert k.vmstat["nr_foll_pin_acquired"] == 550 and held(k) == 0
    assert p.mm.pinned_vm == 0
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []


def test_writable_region_on_an_ext4_shared_mapping_is_efault_read_only_is_fine(
        k: Kernel, dev: IbDevice) -> None:
    """Writable long-term pins of a dirty-tracked shared file mapping are refused (6.5):
    the registration fails with EFAULT and leaves nothing; a read-only MR is allowed."""
    p = user(k)
    f = k.fs("ext4").create("mr", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"file")
    ctx = ibv_open_device(dev, p)
    with pytest.raises(OSError) as e:
        ibv_reg_mr(ctx, a, 2 * PAGE_SIZE, RWMR)
    assert e.value.errno == EFAULT and p.mm.pinned_vm == 0 and held(k) == 0
    mr = ibv_reg_mr(ctx, a, 2 * PAGE_SIZE, IB_ACCESS_REMOTE_READ)
    assert dev.dma_read(mr.rkey, a, 4) == b"file"
    ibv_dereg_mr(mr)


def test_longterm_registration_moves_the_buffer_out_of_zone_movable() -> None:
    """FOLL_LONGTERM: pages in ZONE_MOVABLE are migrated to ZONE_NORMAL before the pin;
    the process still reads its data, now from the new frames."""
    k = Kernel(memory="256MiB", movable="64MiB", debug=True)
    p = user(k)
    a = anon_buffer(p, 8, b"movable!")
    assert k.page(mapped_pfn(p, a)).folio.zone.name == "MOVABLE"
    mr = ibv_reg_mr(ibv_open_device(IbDevice(k), p), a, 8 * PAGE_SIZE, RWMR)
    assert {k.page(int(f)).folio.zone.name for f in mr.umem.pfns} == {"NORMAL"}
    assert k.vmstat["pgmigrate_success"] == 8
    assert p.read(a, 8) == b"movable!" and mapped_pfn(p, a) == int(mr.umem.pfns[0])
    ibv_dereg_mr(mr)


def test_dereg_twice_raises_and_release_twice_warns(k: Kernel, dev: IbDevice) -> None:
    """Deregistering twice is EINVAL; a driver releasing a umem twice warns once and
    unpins nothing more."""
    p = user(k)
    a = anon_buffer(p, 1)
    mr = ibv_reg_mr(ibv_open_device(dev, p), a, PAGE_SIZE, RWMR)
    ibv_dereg_mr(mr)
    with pytest.raises(OSError) as e:
        ibv_dereg_mr(mr)
    assert e.value.errno == EINVAL
    ib_umem_release(mr.umem)
    assert "ib_umem_release: released twice" in k.warnings.sites()
    assert k.sanitizer.reports == [] and p.mm.pinned_vm == 0
    ib_umem_release(None)
    ib_umem_release(-ENOMEM)            # ERR_PTR: ignored as the kernel does


def test_process_exit_with_a_registered_region_is_a_leak_until_the_context_closes(
        k: Kernel, dev: IbDevice) -> None:
    """The pins outlive the address space: exit reports them as leaked (named at the
    driver line), the frames stay allocated, and closing the context releases them."""
    p = user(k)
    a = anon_buffer(p, 2, b"z")
    ctx = ibv_open_device(dev, p)
    mr = ibv_reg_mr(ctx, a, 2 * PAGE_SIZE, RWMR)
    p.exit()
    [leak] = k.sanitizer.reports
    assert leak.kind == "leak" and "in ib_umem_get" in leak.taken_at
    assert dev.dma_read(mr.rkey, a, 1) == b"z", "the device still reads the frame"
    ctx.close()
    assert held(k) == 0 and k.check() == []


def test_one_gib_registration_is_vectorised() -> None:
    """A 1 GiB registration costs Python calls per 512-page pin call (as the kernel
    loops per chunk) and per segment, not per page: about 256 times the calls of a
    1024-page registration, well under one call per page, in bounded time."""
    k = Kernel(memory="2GiB")
    p = user(k, memlock=2 << 30)
    n = 262144
    a = p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    small = p.mmap(0, 1024 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    dev = IbDevice(k)
    ctx = ibv_open_device(dev, p)
    ibv_dereg_mr(ibv_reg_mr(ctx, small, 1024 * PAGE_SIZE, RWMR))     # warm-up
    calls_small, _, few = python_calls(lambda: ibv_reg_mr(ctx, small, 1024 * PAGE_SIZE, RWMR))
    calls, secs, mr = python_calls(lambda: ibv_reg_mr(ctx, a, n * PAGE_SIZE, RWMR))
    assert calls <= calls_small * (n // 1024) * 1.1 and calls < n // 2, (calls_small, calls)
    assert secs < 10
    assert p.proc_status()["VmPin"] == (n + 1024) * 4 and held(k) == n + 1024
    ibv_dereg_mr(few)
    calls, secs, _ = python_calls(lambda: ibv_dereg_mr(mr))
    # one range unpin per segment; the sanitizer matches it against the 512 pin records
    assert mr.umem.nsegs < 64 and calls < n // 4, calls
    assert secs < 10
    assert held(k) == 0 and p.mm.pinned_vm == 0


def test_access_flags_are_the_uverbs_values() -> None:
    """The access flags are the uverbs ABI values user space passes."""
    assert (IB_ACCESS_LOCAL_WRITE, IB_ACCESS_REMOTE_WRITE, IB_ACCESS_REMOTE_READ,
            rdma.IB_ACCESS_REMOTE_ATOMIC, IB_ACCESS_ON_DEMAND) == (1, 2, 4, 8, 64)
    assert rdma.UMEM_CHUNK == 512


def test_fragmented_region_releases_every_page_once_and_dirties_it(k: Kernel,
                                                                    dev: IbDevice) -> None:
    """Pages faulted every other one first get interleaved frames: one segment per page.
    Deregistration still unpins each page once, dirties each, in bounded Python work."""
    p = user(k)
    n = 2048
    a = p.mmap(0, n * PAGE_SIZE, RW, ANON)
    for start in (0, 1):
        for i in range(start, n, 2):
            p.write(a + i * PAGE_SIZE, b"f")
    mr = ibv_reg_mr(ibv_open_device(dev, p), a, n * PAGE_SIZE, RWMR)
    assert mr.umem.nsegs == n
    frames = mr.umem.pfns.copy()
    k.mem.clear_flag(frames, PG.dirty)
    calls, _, _ = python_calls(lambda: ibv_dereg_mr(mr))
    assert calls < n // 2, calls
    assert held(k) == 0 and k.vmstat["nr_foll_pin_released"] == n
    assert all(k.page(int(f)).folio.dirty for f in frames)
    assert k.sanitizer.reports == []
