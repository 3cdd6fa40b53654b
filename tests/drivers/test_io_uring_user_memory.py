"""io_uring memory pinned besides fixed buffers, on the model: rings set up with
IORING_SETUP_NO_MMAP and provided-buffer rings in user memory (io_pin_pages)."""

from __future__ import annotations

import errno

import pytest

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from gupsim.constants import CAP_IPC_LOCK, PAGE_SIZE
from gupsim.drivers.io_uring import IOU_PBUF_RING_MMAP, IoRing
from gupsim.kernel import Kernel, Process

RW = PROT_READ | PROT_WRITE


def machine(unprivileged: bool = False, limit: int = 64 << 10
            ) -> tuple[Kernel, Process, int]:
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn("app", uid=1000, rlimit_memlock=limit) if unprivileged else k.spawn("app")
    if unprivileged:
        p.cred.caps.discard(CAP_IPC_LOCK)
    a = p.mmap(0, 8 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    return k, p, a


def held(k: Kernel) -> int:
    return k.vmstat["nr_foll_pin_acquired"] - k.vmstat["nr_foll_pin_released"]


def test_no_mmap_ring_pins_its_two_pages_until_close_outside_vmpin() -> None:
    k, p, a = machine(unprivileged=True)
    ring = IoRing(k, p, user_memory=(a + PAGE_SIZE, a))
    assert held(k) == 2
    assert all(gupsim.page_maybe_dma_pinned(k.page(int(f))) for f in ring.pinned_pfns())
    assert (p.proc_status()["VmPin"], p.proc_status()["VmLck"]) == (0, 0)
    assert k.user(1000).locked_vm == 2             # charged to the user only
    ring.close()
    assert held(k) == 0 and k.user(1000).locked_vm == 0
    assert k.sanitizer.reports == []


def test_a_kernel_allocated_ring_charges_the_same_but_pins_nothing() -> None:
    k, p, _ = machine(unprivileged=True)
    ring = IoRing(k, p)
    assert held(k) == 0 and k.user(1000).locked_vm == 2
    ring.close()
    assert k.user(1000).locked_vm == 0


@pytest.mark.parametrize("sq_off, cq_off, err", [(PAGE_SIZE + 64, 0, errno.EINVAL),
                                                 (PAGE_SIZE, 8, errno.EINVAL)])
def test_unaligned_ring_memory_is_refused_and_leaves_nothing(sq_off: int, cq_off: int,
                                                            err: int) -> None:
    k, p, a = machine(unprivileged=True)
    with pytest.raises(OSError) as exc:
        IoRing(k, p, user_memory=(a + sq_off, a + cq_off))
    assert exc.value.errno == err
    assert held(k) == 0 and k.user(1000).locked_vm == 0
    assert k.vmstat["nr_foll_pin_acquired"] == (1 if cq_off == 0 else 0)


def test_a_null_ring_address_is_efault() -> None:
    k, p, a = machine()
    with pytest.raises(OSError) as exc:
        IoRing(k, p, user_memory=(0, a))
    assert exc.value.errno == errno.EFAULT and held(k) == 0


def test_ring_memory_in_a_shared_ext4_file_is_refused() -> None:
    k, p, _ = machine()
    f = k.fs("ext4").create("ring", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    with pytest.raises(OSError) as exc:
        IoRing(k, p, user_memory=(a + PAGE_SIZE, a))
    assert exc.value.errno == errno.EFAULT and held(k) == 0


def test_pbuf_ring_pins_its_pages_until_unregistered() -> None:
    k, p, a = machine(unprivileged=True)
    ring = IoRing(k, p)
    ring.register_pbuf_ring(a, 512, 3)          # 512 * 16 bytes = 2 pages
    assert held(k) == 2 and k.user(1000).locked_vm == 4
    assert p.proc_status()["VmPin"] == 0
    with pytest.raises(OSError) as exc:
        ring.register_pbuf_ring(a, 8, 3)
    assert exc.value.errno == errno.EEXIST and held(k) == 2
    ring.unregister_pbuf_ring(3)
    assert held(k) == 0 and k.user(1000).locked_vm == 2
    with pytest.raises(OSError) as exc:
        ring.unregister_pbuf_ring(3)
    assert exc.value.errno == errno.ENOENT
    ring.close()
    assert k.sanitizer.reports == []


def test_closing_the_ring_releases_its_pbuf_rings() -> None:
    k, p, a = machine()
    ring = IoRing(k, p, user_memory=(a + PAGE_SIZE, a))
    ring.register_pbuf_ring(a + 2 * PAGE_SIZE, 256, 0)
    assert held(k) == 3
    ring.close()
    assert held(k) == 0 and k.vmstat["nr_foll_pin_released"] == 3


@pytest.mark.parametrize("entries, offset", [(6, 0), (1 << 16, 0), (8, 512)])
def test_bad_pbuf_rings_are_einval(entries: int, offset: int) -> None:
    k, p, a = machine()
    ring = IoRing(k, p)
    with pytest.raises(OSError) as exc:
        ring.register_pbuf_ring(a + offset, entries, 0)
    assert exc.value.errno == errno.EINVAL and held(k) == 0
    ring.close()


def test_pbuf_ring_over_rlimit_memlock_is_enomem_before_any_pin() -> None:
    k, p, a = machine(unprivileged=True, limit=12 << 10)   # the ring takes 2 of 3 pages
    ring = IoRing(k, p)
    with pytest.raises(OSError) as exc:
        ring.register_pbuf_ring(a, 512, 0)
    assert exc.value.errno == errno.ENOMEM
    assert k.vmstat["nr_foll_pin_acquired"] == 0 and k.user(1000).locked_vm == 2
    ring.register_pbuf_ring(a, 256, 0)                      # one page fits
    assert held(k) == 1
    ring.close()


def test_a_kernel_allocated_pbuf_ring_charges_without_pinning() -> None:
    k, p, _ = machine(unprivileged=True)
    ring = IoRing(k, p)
    ring.register_pbuf_ring(0, 512, 0, IOU_PBUF_RING_MMAP)
    assert held(k) == 0 and k.user(1000).locked_vm == 4
    ring.close()
    assert k.user(1000).locked_vm == 0
