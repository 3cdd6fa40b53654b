"""Random interleavings of driver registrations with what mm does behind their backs.

RDMA, VFIO and GPU registrations come and go over one buffer while the process forks
and writes, memory is compacted and paged out, and ranges are zapped. After every step:
no pinned frame was freed or migrated, the pin counters equal what the drivers hold,
and the machine's invariants hold (debug mode). At the end nothing is left and the
sanitizer saw no misuse.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gupsim import (
    MADV_DONTNEED,
    MADV_PAGEOUT,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
)
from gupsim.drivers.gpu import GpuDevice, gpu_host_register, gpu_host_unregister
from gupsim.drivers.pinned_frames import PinnedFrameWatch
from gupsim.drivers.rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IbDevice,
    ibv_dereg_mr,
    ibv_open_device,
    ibv_reg_mr,
)
from gupsim.drivers.vfio import VfioContainer
from gupsim.mm.reclaim import compact_range

NPAGES = 32


class DriversAndMM(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel(memory="128MiB", movable="32MiB", swap="32MiB", debug=True)
        self.p = self.k.spawn("app", uid=1000, caps=set(), rlimit_memlock=1 << 30)
        self.a = self.p.mmap(0, NPAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS)
        self.p.write(self.a, b"b" * NPAGES * PAGE_SIZE)
        self.ctx = ibv_open_device(IbDevice(self.k), self.p)
        self.vfio = VfioContainer(self.k, self.p)
        self.gpu = GpuDevice(self.k)
        self.iova = 0x100000
        self.holders: list[tuple[object, int, Callable[[], object]]] = []
        self.watch = PinnedFrameWatch(self.k)
        self.children = []

    def held(self) -> int:
        return self.k.vmstat["nr_foll_pin_acquired"] - self.k.vmstat["nr_foll_pin_released"]

    @rule(driver=st.sampled_from(["rdma", "vfio", "gpu"]), first=st.integers(0, NPAGES - 1),
          n=st.integers(1, 8))
    def register(self, driver: str, first: int, n: int) -> None:
        n = min(n, NPAGES - first)
        addr = self.a + first * PAGE_SIZE
        if driver == "rdma":
            mr = ibv_reg_mr(self.ctx, addr, n * PAGE_SIZE, IB_ACCESS_LOCAL_WRITE)
            holder, release = mr.umem, partial(ibv_dereg_mr, mr)
        elif driver == "vfio":
            iova = self.iova
            self.iova += 0x100000
            self.vfio.map_dma(addr, iova, n * PAGE_SIZE)
            holder = _VfioRange(self.vfio, iova)
            release = partial(self.vfio.unmap_dma, iova, n * PAGE_SIZE)
        else:
            region = gpu_host_register(self.gpu, addr, n * PAGE_SIZE, current=self.p)
            assert not isinstance(region, int)
            holder, release = region, partial(gpu_host_unregister, region)
        self.watch.watch(holder, driver)
        self.holders.append((holder, n, release))

    @precondition(lambda self: self.holders)
    @rule(data=st.data())
    def release(self, data) -> None:
        i = data.draw(st.integers(0, len(self.holders) - 1))
        _, _, release = self.holders.pop(i)
        release()

    @rule(page=st.integers(0, NPAGES - 1))
    def fork_and_write(self, page: int) -> None:
        child = self.p.fork()
        child.write(self.a + page * PAGE_SIZE, b"c")
        self.p.write(self.a + page * PAGE_SIZE + 1, b"p")
        self.children.append(child)

    @precondition(lambda self: self.children)
    @rule()
    def child_exits(self) -> None:
        self.children.pop().exit()

    @rule()
    def compact_movable_zone(self) -> None:
        compact_range(self.k.env, self.k.mem.movable_start, self.k.mem.movable_start + 2048)

    @rule()
    def pageout(self) -> None:
        self.p.madvise(self.a, NPAGES * PAGE_SIZE, MADV_PAGEOUT)

    @rule(first=st.integers(0, NPAGES - 1), n=st.integers(1, 4))
    def dontneed_then_touch(self, first: int, n: int) -> None:
        n = min(n, NPAGES - first)
        self.p.madvise(self.a + first * PAGE_SIZE, n * PAGE_SIZE, MADV_DONTNEED)
        self.p.write(self.a + first * PAGE_SIZE, b"t" * n * PAGE_SIZE)

    @invariant()
    def pinned_frames_stay(self) -> None:
        assert self.watch.violations() == []
        assert self.held() == sum(n for _, n, _ in self.holders)

    def teardown(self) -> None:
        for _, _, release in self.holders:
            release()
        assert self.held() == 0 and self.k.sanitizer.reports == [] and self.k.check() == []


class _VfioRange:
    """One VFIO mapping as a pin holder (the container may hold several)."""

    def __init__(self, container: VfioContainer, iova: int) -> None:
        self.c = container
        self.iova = iova

    def pinned_pfns(self):
        dma = self.c.vfio_find_dma(self.iova, 1)
        return dma.pfns if dma is not None and dma.iova == self.iova else \
            self.c.pinned_pfns()[:0]


DriversAndMM.TestCase.settings = settings(max_examples=25, stateful_step_count=20,
                                          deadline=None)
TestDriversAndMM = DriversAndMM.TestCase
