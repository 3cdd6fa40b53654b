"""The invariant of every pinning driver: no pinned frame is ever freed or migrated.

Each long-term driver (RDMA umem, VFIO container, GPU host region, io_uring fixed
buffers, io_uring's NO_MMAP rings and provided-buffer ring, an AF_XDP UMEM) pins a
buffer, then the memory manager does what it does to memory behind a device's back;
the frames the driver holds must stay the same allocated, pinned folios until the
driver lets go (the userptr variant is checked in test_userptr_odp.py); the short-term
pinners (Direct IO, case 5's pin-and-write) keep theirs for the whole transfer. The checker itself
is shown to fail on holders that break the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from drivers_helpers import anon_buffer, held, mapped_pfn

from gupsim import MADV_DONTNEED, MADV_PAGEOUT, PAGE_SIZE, Kernel, PageArray, Process
from gupsim.drivers.direct_io import dio_read
from gupsim.drivers.gpu import GpuDevice, gpu_host_register, gpu_host_unregister
from gupsim.drivers.io_uring import IoRing
from gupsim.drivers.kernel_write import pin_and_write
from gupsim.drivers.pinned_frames import PinnedFrameWatch
from gupsim.drivers.rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_REMOTE_WRITE,
    IbDevice,
    ibv_dereg_mr,
    ibv_open_device,
    ibv_reg_mr,
)
from gupsim.drivers.vfio import VfioContainer
from gupsim.drivers.xdp import XdpSocket
from gupsim.mm.reclaim import compact_range

N = 8


def rdma(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    mr = ibv_reg_mr(ibv_open_device(IbDevice(k), p), a, N * PAGE_SIZE,
                    IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE)
    return mr.umem, lambda: ibv_dereg_mr(mr)


def vfio(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    c = VfioContainer(k, p)
    c.map_dma(a, 0x100000, N * PAGE_SIZE)
    return c, c.close


def gpu(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    region = gpu_host_register(GpuDevice(k), a, N * PAGE_SIZE, current=p)
    assert not isinstance(region, int)
    return region, lambda: gpu_host_unregister(region)


def uring_buffers(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    ring = IoRing(k, p)
    ring.register_buffers([(a, N * PAGE_SIZE)])
    return ring, ring.close


def uring_user_memory(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    """IORING_SETUP_NO_MMAP rings in pages 0-1, a provided-buffer ring in pages 2-5."""
    ring = IoRing(k, p, user_memory=(a + PAGE_SIZE, a))
    ring.register_pbuf_ring(a + 2 * PAGE_SIZE, 1024, bgid=1)     # 16 bytes an entry
    return ring, ring.close


def xdp(k: Kernel, p: Process, a: int) -> tuple[object, Callable[[], None]]:
    sock = XdpSocket(k, p)
    sock.umem_reg(a, N * PAGE_SIZE)
    return sock, lambda: (sock.close(), k.flush_scheduled_work())


def around(k: Kernel, pfns: np.ndarray) -> tuple[int, int]:
    return max(0, int(pfns.min()) - 64), min(k.mem.nr_pages, int(pfns.max()) + 64)


OPS: dict[str, Callable[[Kernel, Process, int, np.ndarray], None]] = {
    "fork, then both write": lambda k, p, a, f: (p.fork().write(a, b"child"),
                                                 p.write(a, b"parent")),
    "compaction of the frames' block": lambda k, p, a, f: compact_range(k.env, *around(k, f)),
    "MADV_PAGEOUT": lambda k, p, a, f: p.madvise(a, N * PAGE_SIZE, MADV_PAGEOUT),
    "MADV_DONTNEED": lambda k, p, a, f: p.madvise(a, N * PAGE_SIZE, MADV_DONTNEED),
    "munmap": lambda k, p, a, f: p.munmap(a, N * PAGE_SIZE),
    "exit": lambda k, p, a, f: p.exit(),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("driver", [rdma, vfio, gpu, uring_buffers, uring_user_memory, xdp],
                         ids=["rdma", "vfio", "gpu", "io_uring buffers", "io_uring rings",
                              "af_xdp"])
def test_no_pinned_frame_is_freed_or_migrated(k: Kernel, driver, op: str) -> None:
    """Whatever the operation, the driver's frames are unchanged and still pinned, and
    the device still reads what was there; the release then frees what nothing maps."""
    p = k.spawn("app", uid=1000, caps=set(), rlimit_memlock=64 << 20)
    a = anon_buffer(p, N, b"d")
    holder, release = driver(k, p, a)
    watch = PinnedFrameWatch(k)
    watch.watch(holder)
    frames = holder.pinned_pfns().copy()
    assert len(frames) and held(k) == len(frames), "the driver pins what it claims"
    OPS[op](k, p, a, frames)
    assert watch.violations() == []
    assert all(k.dma_read(k.page(int(f)), PAGE_SIZE - 1, 1) == b"d" for f in frames)
    release()
    assert watch.violations() == [] and held(k) == 0 and k.check() == []


SHORT_TERM: dict[str, Callable[[Kernel, Process, int, Callable[[], None]], int]] = {
    "direct IO read": lambda k, p, a, window: dio_read(
        k, p, k.fs("ext4").create("data", N * PAGE_SIZE), a, N * PAGE_SIZE,
        while_held=window),
    "case 5 pin_and_write": lambda k, p, a, window: pin_and_write(
        k, a, b"K" * N * PAGE_SIZE, current=p, while_held=window),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("driver", list(SHORT_TERM))
def test_short_term_pins_hold_their_frames_for_the_whole_window(k: Kernel, driver: str,
                                                                op: str) -> None:
    """Case 1 and case 5 pin only for one transfer; while it runs, whatever mm does
    leaves the pinned frames allocated, unmoved and pinned, and afterwards nothing is held."""
    p = k.spawn("app", uid=1000, caps=set(), rlimit_memlock=64 << 20)
    a = anon_buffer(p, N, b"d")
    seen: list[str] = []

    def window() -> None:
        frames = np.array([mapped_pfn(p, a + i * PAGE_SIZE) for i in range(N)])
        watch = PinnedFrameWatch(k)
        watch.watch(FakeHolder(frames), driver)
        seen.append(f"held {held(k)}")
        OPS[op](k, p, a, frames)
        seen.extend(watch.violations())

    assert SHORT_TERM[driver](k, p, a, window) == N * PAGE_SIZE
    assert seen == [f"held {N}"] and held(k) == 0 and k.check() == []


def test_two_drivers_on_the_same_buffer_need_both_their_pins(k: Kernel) -> None:
    """RDMA and VFIO both hold the buffer: each folio carries two pins, and the watch
    counts what both need."""
    p = k.spawn("app")
    a = anon_buffer(p, N)
    umem, rel1 = rdma(k, p, a)
    cont, rel2 = vfio(k, p, a)
    watch = PinnedFrameWatch(k)
    watch.watch(umem)
    watch.watch(cont)
    assert watch.violations() == []
    assert k.page(int(umem.pinned_pfns()[0])).refcount == 1 + 2 * 1024
    rel1()
    rel2()


class FakeHolder:
    """A 'driver' that claims frames it does not (or no longer) pins."""

    def __init__(self, pfns: np.ndarray) -> None:
        self.pfns = pfns

    def pinned_pfns(self) -> np.ndarray:
        return self.pfns


def test_the_watch_catches_a_frame_unpinned_behind_the_drivers_back(k: Kernel,
                                                                    p: Process) -> None:
    """Pins dropped while the holder still claims the frames: 'no longer looks pinned';
    once the mapping goes too, the frame is freed and the watch says so."""
    a = anon_buffer(p, 2)
    pages = PageArray(2)
    assert p.pin_user_pages_fast(a, 2, 0, pages) == 2
    holder = FakeHolder(pages.pfns.copy())
    watch = PinnedFrameWatch(k)
    watch.watch(holder, "fake")
    k.unpin_user_pages(pages)
    bad = watch.violations()
    assert any("no longer looks pinned" in b for b in bad)
    assert any("holds 0 pins but drivers hold" in b for b in bad)
    p.munmap(a, 2 * PAGE_SIZE)
    assert any("was freed" in b for b in watch.violations())


def test_the_watch_catches_a_foll_get_holder_whose_frame_was_left_behind(k: Kernel,
                                                                       p: Process) -> None:
    """A FOLL_GET 'registration' (case 2's wrong flags) is never pinned, and after fork
    and a parent write its frame is no longer the process's: the watch reports it."""
    a = anon_buffer(p, 1)
    pages = PageArray(1)
    assert p.get_user_pages_fast(a, 1, 0, pages) == 1
    watch = PinnedFrameWatch(k)
    watch.watch(FakeHolder(pages.pfns.copy()), "foll_get")
    assert any("no longer looks pinned" in b for b in watch.violations())
    k.put_page(pages[0])
