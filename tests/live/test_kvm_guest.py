"""A real KVM guest (live/kvm.py) over this process's memory: what it reads, that it pins
nothing, and that every fd and mapping it made is released (also on an exception)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator

import pytest

from gupsim.constants import MADV_DONTNEED
from gupsim.live import libc
from gupsim.live.kvm import MAX_GUEST_MEMORY, KvmGuest
from gupsim.live.vmstat import measure_repeat

pytestmark = pytest.mark.host
PAGE = 4096
NPAGES = 4


@pytest.fixture
def area(need: Callable[..., None]) -> Iterator[int]:
    """NPAGES anonymous pages holding b"page<i>" at the start of page i."""
    need("kvm")
    a = libc.mmap(0, NPAGES * PAGE, libc.PROT_READ | libc.PROT_WRITE,
                  libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    for i in range(NPAGES):
        ctypes.memmove(a + i * PAGE, b"page%d" % i, 5)
    try:
        yield a
    finally:
        libc.munmap(a, NPAGES * PAGE)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _kvm_maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "kvm" in line]


def test_the_guest_reads_what_the_process_wrote_without_pins(area: int) -> None:
    def run() -> tuple[bytes, bytes, bytes]:
        with KvmGuest(area, NPAGES * PAGE) as g:
            return g.read(0, 5), g.read(3 * PAGE, 5), g.read(PAGE - 2, 4)
    m = measure_repeat(run)
    assert m.value == (b"page0", b"page3", b"\0\0pa")
    if m.delta.quiet:
        assert m.delta.as_tuple() == (0, 0), "a KVM guest's loads took pins"


def test_the_guest_sees_madv_dontneed_and_the_next_write(area: int) -> None:
    with KvmGuest(area, NPAGES * PAGE) as g:
        assert g.read(0, 5) == b"page0"
        libc.madvise(area, PAGE, MADV_DONTNEED)
        assert g.read(0, 5) == bytes(5)
        ctypes.memmove(area, b"again", 5)
        assert g.read(0, 5) == b"again"
        assert g.read(PAGE, 5) == b"page1"


def test_a_read_where_no_memory_is_faults_and_the_guest_stays_usable(area: int) -> None:
    with KvmGuest(area, NPAGES * PAGE) as g:
        with pytest.raises(OSError) as err:
            g.read(NPAGES * PAGE, 1)          # beyond slot 0: no memory there
        assert err.value.errno == errno.EFAULT
        assert g.read(0, 5) == b"page0", "the pending MMIO exit leaked into the next read"


def test_every_fd_and_mapping_is_released(area: int) -> None:
    fds, maps = _fds(), _kvm_maps()
    g = KvmGuest(area, NPAGES * PAGE)
    assert len(_fds()) == len(fds) + 3          # /dev/kvm, the VM, the vCPU
    g.read(0, 1)
    g.close()
    g.close()                                   # idempotent
    assert _fds() == fds and _kvm_maps() == maps
    with pytest.raises(OSError):
        g.read(0, 1)


def test_an_exception_inside_the_block_releases_everything(area: int) -> None:
    fds, maps = _fds(), _kvm_maps()
    with pytest.raises(RuntimeError), KvmGuest(area, NPAGES * PAGE):
        raise RuntimeError("boom")
    assert _fds() == fds and _kvm_maps() == maps


def test_bad_arguments_say_what_to_do(need: Callable[..., None]) -> None:
    need("kvm")
    with pytest.raises(ValueError, match="page-aligned"):
        KvmGuest(1, PAGE)
    with pytest.raises(ValueError, match="map less"):
        KvmGuest(0, MAX_GUEST_MEMORY + PAGE)
    with KvmGuest(0, 0) as g, pytest.raises(ValueError, match="keep 0 < n"):
        g.read(0, 0)
