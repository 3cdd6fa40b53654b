"""io_uring memory the host kernel pins besides fixed buffers: a ring set up with
IORING_SETUP_NO_MMAP in our memory, and a provided-buffer ring registered in our memory.
Each figure is also what the model's driver gives for the same calls."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

import gupsim
from gupsim.constants import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from gupsim.drivers.io_uring import IoRing
from gupsim.live import HostMapping, IoUring, PinDelta, measure, vm_pin_kb
from gupsim.live.libc import PAGE_SIZE
from gupsim.live.uring import no_mmap_supported

pytestmark = pytest.mark.host
Need = Callable[..., None]
Quiet = Callable[..., Any]


@pytest.fixture(autouse=True)
def _uring(need: Need) -> None:
    need("io_uring", "stat_refresh")
    if not no_mmap_supported():
        pytest.skip("host cannot: io_uring_setup answers EINVAL to IORING_SETUP_NO_MMAP "
                    "(a kernel before 6.5)")


def vm_lck_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmLck:"))


def model_ring_deltas(pbuf_entries: int) -> tuple[int, int, int]:
    """The model's pins for: NO_MMAP setup, a pbuf ring of `pbuf_entries`, close."""
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, 8 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    vm = k.vmstat
    ring = IoRing(k, p, user_memory=(a + PAGE_SIZE, a))
    setup = vm["nr_foll_pin_acquired"]
    ring.register_pbuf_ring(a + 2 * PAGE_SIZE, pbuf_entries, 1)
    pbuf = vm["nr_foll_pin_acquired"] - setup
    ring.close()
    return setup, pbuf, vm["nr_foll_pin_released"]


def test_no_mmap_ring_and_pbuf_ring_pins_match_the_model(quiet: Quiet) -> None:
    def run() -> tuple[PinDelta, PinDelta, PinDelta, int, int]:
        with HostMapping(8 * PAGE_SIZE) as m:
            with measure() as setup:
                ring = IoUring(4, user_memory=(m.addr + PAGE_SIZE, m.addr))
                ring.open()
            try:
                with measure() as pbuf:
                    ring.register_pbuf_ring(m.addr + 2 * PAGE_SIZE, 512, 1)
                status = vm_pin_kb(), vm_lck_kb()
            finally:
                with measure(settle=0.2) as close:
                    ring.close()
        return setup.delta, pbuf.delta, close.delta, *status

    setup, pbuf, close, vmpin, vmlck = quiet(run)
    m_setup, m_pbuf, m_released = model_ring_deltas(512)
    assert setup.as_tuple() == (m_setup, 0) == (2, 0)
    assert pbuf.as_tuple() == (m_pbuf, 0) == (2, 0)
    assert close.as_tuple() == (0, m_released) == (0, 4)
    assert (vmpin, vmlck) == (0, 0)       # charged to the user's locked_vm only


def test_unaligned_sqe_memory_pins_and_drops_the_rings_page(quiet: Quiet) -> None:
    def run() -> tuple[PinDelta, int]:
        err = 0
        with HostMapping(4 * PAGE_SIZE) as m:
            with measure(settle=0.2) as d:
                try:
                    IoUring(4, user_memory=(m.addr + PAGE_SIZE + 64, m.addr)).open()
                except OSError as exc:
                    err = exc.errno or 0
        return d.delta, err

    delta, err = quiet(run)
    assert err == errno.EINVAL
    assert delta.as_tuple() == (1, 1)     # io_allocate_scq_urings frees the first region


def test_pbuf_ring_refusals(need: Need) -> None:
    with HostMapping(4 * PAGE_SIZE) as m, IoUring() as ring:
        for addr, entries, err in ((m.addr + 512, 8, errno.EINVAL),
                                   (m.addr, 6, errno.EINVAL), (0, 8, errno.EFAULT)):
            with pytest.raises(OSError) as exc:
                ring.register_pbuf_ring(addr, entries, 2)
            assert exc.value.errno == err, (hex(addr), entries)
        with pytest.raises(OSError) as exc:
            ring.unregister_pbuf_ring(2)
        assert exc.value.errno == errno.ENOENT
