"""Short-term pins on the host: O_DIRECT, process_vm_readv/writev, and AF_XDP UMEM."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from gupsim.live import (
    Child,
    DirectFile,
    HostMapping,
    XdpUmem,
    hugepages,
    measure,
    process_vm_readv,
    read_remote,
    user_buffer,
    vm_pin_kb,
    write_remote,
)
from gupsim.live.libc import PAGE_SIZE

pytestmark = pytest.mark.host
Need = Callable[..., None]
Quiet = Callable[..., Any]
MiB = 1 << 20


@pytest.fixture
def dio(need: Need) -> DirectFile:
    need("o_direct")
    with DirectFile(4 * MiB) as f:
        yield f  # type: ignore[misc]


def test_odirect_write_4_pages_pins_and_releases_4(dio: DirectFile,
                                                   quiet: Quiet) -> None:
    with HostMapping(MiB, fill=0x33) as m:
        def run() -> Any:
            with measure() as d:
                n = dio.write_from(m.addr, 4 * PAGE_SIZE)
            return n, d.delta
        n, delta = quiet(run)
        assert n == 4 * PAGE_SIZE
        assert delta.as_tuple() == (4, 4)
        assert dio.contents(0, 4 * PAGE_SIZE) == b"\x33" * (4 * PAGE_SIZE)


def test_odirect_read_into_anon_pins_and_fills(dio: DirectFile,
                                               quiet: Quiet) -> None:
    with HostMapping(MiB, fill=0x44) as src, HostMapping(MiB) as dst:
        dio.write_from(src.addr, 4 * PAGE_SIZE)

        def run() -> Any:
            with measure() as d:
                n = dio.read_into(dst.addr + 2 * PAGE_SIZE, 4 * PAGE_SIZE)
            return n, d.delta
        n, delta = quiet(run)
        assert n == 4 * PAGE_SIZE and delta.as_tuple() == (4, 4)
        assert dst.read(2 * PAGE_SIZE, 4 * PAGE_SIZE) == b"\x44" * (4 * PAGE_SIZE)
        assert dst.read(0, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)


def test_odirect_from_thp_counts_pages_not_folios(dio: DirectFile, need: Need,
                                                  quiet: Quiet) -> None:
    need("thp")
    with HostMapping(4 * MiB, "thp") as m:
        def run() -> Any:
            with measure() as a:
                dio.write_from(m.addr, 4 * PAGE_SIZE)
            with measure() as b:
                dio.write_from(m.addr, 4 * MiB)
            return a.delta, b.delta
        small, big = quiet(run)
    assert small.as_tuple() == (4, 4)
    assert big.as_tuple() == (1024, 1024)


def test_odirect_from_hugetlb_leaks_no_huge_page(dio: DirectFile,
                                                 need: Need) -> None:
    """hugetlb_dio: after O_DIRECT writes from a private huge page, munmap frees it."""
    need("hugetlb_2m")

    def free() -> int:
        with open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") as f:
            return int(f.read())

    with hugepages(1) as hp:
        if hp.actual != "1":
            pytest.skip(f"could not get a huge page (got {hp.actual})")
        before = free()
        with HostMapping(2 * MiB, "hugetlb") as m:
            assert free() == before - 1
            for start, end in [(0, 3), (0, 2.5), (0.5, 3), (0.5, 3.5)]:
                off, length = int(start * PAGE_SIZE), int((end - start) * PAGE_SIZE)
                # half pages are 512-byte aligned, enough for ext4's logical block size
                with measure() as d:
                    os.pwritev(dio.fd, [user_buffer(m.addr + off, length)], 0)
                assert d.delta.acquired == d.delta.released == -(-(off + length) // PAGE_SIZE)
        assert free() == before


def test_odirect_misaligned_is_refused_clearly(dio: DirectFile) -> None:
    with HostMapping(MiB) as m, pytest.raises(ValueError, match="alignment"):
        dio.write_from(m.addr + 100, PAGE_SIZE)


def test_process_vm_readv_self_copies_and_pins_each_page(quiet: Quiet) -> None:
    with HostMapping(MiB) as m:
        pattern = bytes(range(256)) * (4 * PAGE_SIZE // 256)
        m.write(PAGE_SIZE, pattern)

        def run() -> Any:
            with measure() as d:
                data = read_remote(os.getpid(), m.addr + PAGE_SIZE, len(pattern))
            return data, d.delta
        data, delta = quiet(run)
    assert data == pattern
    assert delta.as_tuple() == (4, 4)


def test_process_vm_rw_on_a_child_that_stays() -> None:
    with HostMapping(MiB, fill=7) as m:
        with Child(lambda: os.getpid(),
                   commands={"write": lambda: m.write(0, b"child!"),
                             "read": lambda: m.read(100, 6)}) as child:
            child.call("write")
            assert read_remote(child.pid, m.addr, 6) == b"child!"
            assert m.read(0, 6) == b"\x07" * 6  # our copy is untouched (COW)
            assert write_remote(child.pid, m.addr + 100, b"parent") == 6
            assert child.call("read") == b"parent"
            assert m.read(100, 6) == b"\x07" * 6


def test_process_vm_readv_unmapped_is_efault() -> None:
    with HostMapping(PAGE_SIZE) as m:
        with pytest.raises(OSError) as exc:
            process_vm_readv(os.getpid(), [(m.addr, 16)], [(PAGE_SIZE, 16)])
    assert exc.value.errno == errno.EFAULT


def test_xdp_umem_pins_256_without_vmpin_and_releases_on_close(
        need: Need, quiet: Quiet) -> None:
    need("af_xdp")
    with HostMapping(MiB) as m:
        def run() -> Any:
            with measure() as reg:
                umem = XdpUmem(m.addr, m.length).__enter__()
            pin = vm_pin_kb()
            with measure(settle=0.3) as rel:
                umem.close()
            return reg.delta, pin, rel.delta
        reg, pin, rel = quiet(run)
    assert reg.as_tuple() == (256, 0)
    assert pin == 0  # AF_XDP charges the user's locked_vm (not as root), never VmPin
    assert rel.as_tuple() == (0, 256)


def test_xdp_umem_on_ext4_shared_mapping_fails(need: Need) -> None:
    need("af_xdp", "disk_fs")
    with HostMapping(MiB, "file", shared=True) as m, measure() as d:
        with pytest.raises(OSError) as exc:
            XdpUmem(m.addr, m.length).__enter__()
    assert exc.value.errno == errno.EFAULT
    assert d.delta.as_tuple() == (0, 0)  # slow path only: refused before any pin
