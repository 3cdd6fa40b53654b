"""io_uring fixed buffers on the host: pin counts, VmPin, refusals and limits."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

from gupsim.live import (
    Child,
    HostMapping,
    IoUring,
    LiveStack,
    PinDelta,
    hugepages,
    kpageflags,
    measure,
    pinned_processes,
    run_in_child,
    uring_fdinfo,
    vm_pin_kb,
)
from gupsim.live.libc import PAGE_SIZE

pytestmark = pytest.mark.host
Need = Callable[..., None]
Quiet = Callable[..., Any]
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _uring(need: Need) -> None:
    need("io_uring", "stat_refresh")


def register_cycle(m: HostMapping, length: int | None = None) -> tuple[PinDelta, int, PinDelta]:
    """Register then unregister one buffer: (delta of register, VmPin kB, delta of unreg)."""
    with IoUring() as ring:
        with measure() as reg:
            ring.register_buffers([(m.addr, length or m.length)])
        pinned = vm_pin_kb()
        with measure() as unreg:
            ring.unregister_buffers()
    return reg.delta, pinned, unreg.delta


def test_register_1mib_anon_pins_256_pages_and_1024kb(quiet: Quiet) -> None:
    with HostMapping(MiB) as m:
        reg, vmpin, unreg = quiet(lambda: register_cycle(m))
    assert reg.as_tuple() == (256, 0)
    assert vmpin == 1024
    assert unreg.as_tuple() == (0, 256)


def test_fdinfo_and_pinned_processes_show_the_buffer() -> None:
    with HostMapping(MiB) as m, IoUring() as ring:
        ring.register_buffers([(m.addr, m.length)])
        bufs = uring_fdinfo()[ring.fd]
        assert [(b.index, b.addr, b.length) for b in bufs] == [(0, m.addr, MiB)]
        me = [p for p in pinned_processes() if p.pid == os.getpid()]
        assert me and me[0].vm_pin_kb == 1024
        ring.unregister_buffers()
        assert uring_fdinfo()[ring.fd] == []


@pytest.mark.parametrize(("kind", "shared", "fs"), [
    ("memfd", True, "tmpfs"), ("tmpfs", True, "tmpfs"), ("anon", True, "shmem"),
    ("file", False, None), ("memfd", False, "tmpfs"),
])
def test_register_works_where_longterm_pins_are_allowed(quiet: Quiet, kind: str, shared: bool,
                                                        fs: str | None) -> None:
    with HostMapping(MiB, kind, shared=shared) as m:  # type: ignore[arg-type]
        if fs:
            assert m.fs == fs
        reg, vmpin, unreg = quiet(lambda: register_cycle(m))
    assert (reg.as_tuple(), vmpin, unreg.as_tuple()) == ((256, 0), 1024, (0, 256))


def test_register_ext4_shared_mapping_fails_efault(need: Need) -> None:
    need("disk_fs")
    with HostMapping(MiB, "file", shared=True) as m, IoUring() as ring:
        if m.fs not in ("ext4", "xfs", "btrfs"):
            pytest.skip(f"temp dir is on {m.fs}; the EFAULT rule is for ext4/xfs/btrfs")
        with measure() as d, pytest.raises(OSError) as exc:
            ring.register_buffers([(m.addr, m.length)])
        assert exc.value.errno == errno.EFAULT
        assert vm_pin_kb() == 0
    # GUP-fast grabs the first folio, sees a writeback-capable file folio, drops it and
    # falls back to the slow path, which refuses the VMA before pinning anything: (1, 1)
    assert d.delta.as_tuple() == (1, 1)


def test_register_unpopulated_ext4_shared_pins_nothing(need: Need) -> None:
    need("disk_fs")
    with HostMapping(MiB, "file", shared=True, populate=False) as m, IoUring() as ring:
        with measure() as d, pytest.raises(OSError) as exc:
            ring.register_buffers([(m.addr, m.length)])
    assert exc.value.errno == errno.EFAULT
    assert d.delta.as_tuple() == (0, 0)  # no PTE for GUP-fast to grab


def test_keyboard_interrupt_releases_everything() -> None:
    with pytest.raises(KeyboardInterrupt), LiveStack() as stack:
        m = stack.enter_context(HostMapping(MiB))
        ring = stack.enter_context(IoUring())
        ring.register_buffers([(m.addr, m.length)])
        assert vm_pin_kb() == 1024
        raise KeyboardInterrupt
    # no_leak checks VmPin and the machine-wide count once the ring's release has run


def test_thp_buffer_keeps_one_pin_per_folio(quiet: Quiet, need: Need) -> None:
    """io_uring coalesces a buffer made of huge folios: it keeps one pin per folio."""
    need("thp")
    with HostMapping(4 * MiB, "thp") as m:
        if "thp" not in kpageflags(m.pagemap(0).pfn):
            pytest.skip("the area did not get a PMD THP")
        reg, vmpin, unreg = quiet(lambda: register_cycle(m))
        part = quiet(lambda: register_cycle(m, MiB))
    assert (reg.as_tuple(), vmpin, unreg.as_tuple()) == ((1024, 1022), 4096, (0, 2))
    # 1 MiB of a 2 MiB THP: 256 pinned, 255 dropped at once, the whole folio charged
    assert (part[0].as_tuple(), part[1], part[2].as_tuple()) == ((256, 255), 2048, (0, 1))


@pytest.mark.parametrize("kind", ["hugetlb", "memfd-hugetlb"])
def test_hugetlb_buffer_keeps_one_pin_per_folio(quiet: Quiet, need: Need, kind: str) -> None:
    need("hugetlb_2m")
    with hugepages(2) as hp:
        if int(hp.actual or 0) < 2:
            pytest.skip(f"only {hp.actual} huge pages available")
        with HostMapping(4 * MiB, kind, shared=kind == "memfd-hugetlb") as m:  # type: ignore[arg-type]
            reg, vmpin, unreg = quiet(lambda: register_cycle(m))
    assert (reg.as_tuple(), vmpin, unreg.as_tuple()) == ((1024, 1022), 4096, (0, 2))


def test_same_range_registered_twice_counts_twice() -> None:
    with HostMapping(MiB) as m, IoUring() as ring:
        with measure() as d:
            ring.register_buffers([(m.addr, MiB), (m.addr, MiB)])
        assert vm_pin_kb() == 2048
        ring.unregister_buffers()
    assert d.delta.as_tuple() == (512, 0)


def test_closing_the_ring_releases_later() -> None:
    with HostMapping(MiB) as m:
        ring = IoUring().__enter__()
        ring.register_buffers([(m.addr + i * PAGE_SIZE, PAGE_SIZE) for i in range(256)])
        with measure(settle=0.3) as d:
            ring.close()
    assert d.delta.as_tuple() == (0, 256)


def test_fixed_write_and_read_use_the_registered_pages(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with HostMapping(MiB, fill=0x5A) as m, IoUring() as ring:
            ring.register_buffers([(m.addr, m.length)])
            assert ring.write_fixed(fd, m.addr, 8192, 0) == 8192
            assert os.pread(fd, 8192, 0) == b"\x5a" * 8192
            os.pwrite(fd, b"from-file", 0)
            assert ring.read_fixed(fd, m.addr + 4096, 4096, 0) == 4096
            assert m.read(4096, 9) == b"from-file"
            with pytest.raises(ValueError, match="outside registered buffer"):
                ring.write_fixed(fd, m.addr + MiB, 4096)
            assert ring.read_fixed(-1, m.addr, 4096) == -errno.EBADF
    finally:
        os.close(fd)


def test_fork_with_fixed_buffer_child_gets_a_copy(tmp_path: os.PathLike[str]) -> None:
    """cow.c "fork() with an io_uring fixed buffer": the pinned page stays the parent's."""
    path = os.path.join(tmp_path, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with HostMapping(PAGE_SIZE * 4, fill=1) as m, IoUring() as ring:
            ring.register_buffers([(m.addr, m.length)])
            pfn = m.pagemap(0).pfn
            with Child(commands={"pfn": lambda: m.pagemap(0).pfn,
                                 "read": lambda: m.read(0, 4)}) as child:
                assert child.call("pfn") != pfn  # copied at fork: never COW-shared
                assert m.pagemap(0).pfn == pfn and m.pagemap(0).exclusive
                m.memset(0xFF)
                assert ring.write_fixed(fd, m.addr, m.length) == m.length
                assert os.pread(fd, m.length, 0) == m.read(0, m.length)
                assert child.call("read") == b"\x01" * 4
    finally:
        os.close(fd)


def _register(length: int) -> str:
    with HostMapping(256 << 10) as m, IoUring() as ring:
        ring.register_buffers([(m.addr, length)])
        return "ok"


def test_memlock_limit_without_cap_ipc_lock_gives_enomem() -> None:
    with pytest.raises(OSError) as exc:
        run_in_child(_register, 128 << 10, drop_cap_ipc_lock=True, memlock=64 << 10)
    assert exc.value.errno == errno.ENOMEM
    assert "raised in child" in exc.value.__notes__[0]


_uids = itertools.count(0x6A000000 + os.getpid() * 16)


def test_ring_itself_is_charged_two_pages_to_memlock() -> None:
    """A 4-entry ring costs 8 KiB of RLIMIT_MEMLOCK, buffers get the rest (fresh uid)."""
    limit = 64 << 10
    assert run_in_child(_register, limit - 8192, uid=next(_uids), memlock=limit) == "ok"
    with pytest.raises(OSError) as exc:
        run_in_child(_register, limit - 4096, uid=next(_uids), memlock=limit)
    assert exc.value.errno == errno.ENOMEM


def test_cap_ipc_lock_lifts_the_limit() -> None:
    assert run_in_child(_register, 128 << 10, memlock=64 << 10) == "ok"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="power of two"):
        IoUring(3)
    with IoUring() as ring:
        with pytest.raises(OSError) as exc:
            ring.register_buffers([])           # the kernel's answer, as the model's
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(OSError) as exc:
            ring.register_buffers([(4096, 4096)])  # nothing mapped there
        assert exc.value.errno == errno.EFAULT
    with pytest.raises(ValueError, match="closed"):
        ring.unregister_buffers()
