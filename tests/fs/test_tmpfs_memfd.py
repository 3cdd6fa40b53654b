"""tmpfs/shmem, memfd_create() and the MAP_SHARED|MAP_ANONYMOUS file."""

from __future__ import annotations

import errno

import pytest
from conftest import Machine, make_machine

from gupsim.constants import MFD_ALLOW_SEALING, MFD_CLOEXEC, MFD_HUGETLB, PAGE_SIZE
from gupsim.fs import MFD_EXEC, MFD_NOEXEC_SEAL, Tmpfs, memfd_create
from gupsim.memory import PG, Kind


def test_shmem_folios_are_swapbacked_and_not_write_notified(m: Machine) -> None:
    f = m.fss["tmpfs"].create("s", PAGE_SIZE)
    assert f.kind == Kind.SHMEM and f.fs_name == "tmpfs"
    assert not f.needs_writenotify
    head = f.get_folio(0)
    assert m.mem.kind[head] == Kind.SHMEM and m.mem.mapping[head] == f.inode_id
    assert m.mem.test(head, PG.swapbacked) and m.mem.test(head, PG.lru)


def test_shmem_has_no_writeback(m: Machine) -> None:
    f = m.fss["tmpfs"].create("s")
    f.pwrite(0, b"only in memory")
    head = f.page_cache[0]
    assert m.mem.test(head, PG.dirty)
    assert f.writeback() == 0 and f.fsync() == 0
    assert m.rmap.mkclean_calls == []
    assert f.backing == {}
    assert m.mem.vmstat["nr_written"] == 0
    assert f.drop_caches() == 0                     # contents live only in the cache
    assert f.pread(0, 14) == b"only in memory"


def test_reading_a_hole_allocates_nothing(m: Machine) -> None:
    f = m.fss["tmpfs"].create("s", 3 * PAGE_SIZE)
    assert f.pread(0, 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
    assert f.nrpages == 0


def test_tmpfs_size_limit_is_enospc() -> None:
    m = make_machine()
    fs = Tmpfs(m.mem, m.alloc, capacity=2 * PAGE_SIZE)
    f = fs.create("s", 4 * PAGE_SIZE)
    assert f.get_folio(0) >= 0 and f.get_folio(1) >= 0
    assert f.get_folio(2) == -errno.ENOSPC          # the fault path's SIGBUS
    f.truncate(PAGE_SIZE)
    assert fs.used_pages == 1
    assert f.get_folio(0) >= 0


def test_default_tmpfs_size_is_half_of_memory(m: Machine) -> None:
    assert m.fss["tmpfs"].capacity_pages == m.mem.nr_pages // 2


def test_memfd_create_gives_an_unnamed_shmem_file(m: Machine) -> None:
    f = m.fss.memfd_create("buf", MFD_CLOEXEC | MFD_ALLOW_SEALING)
    assert f.name == "memfd:buf" and f.size == 0 and f.kind == Kind.SHMEM
    assert "memfd:buf" not in m.fss["tmpfs"].files
    assert f.get_folio(0) == -errno.EFAULT          # size 0 until ftruncate
    f.ftruncate(2 * PAGE_SIZE)
    head = f.get_folio(1)
    assert head >= 0 and m.mem.index[head] == 1
    f.pwrite(PAGE_SIZE, b"x")
    assert m.mem.read(head, 0, 1) == b"x"
    heads = list(f.page_cache.values())
    f.close()                                       # last reference: pages freed
    assert all(m.mem.kind[h] == Kind.FREE for h in heads)


def test_memfd_create_function_form(m: Machine) -> None:
    f = memfd_create(m.fss, "x")
    assert f.fs_name == "tmpfs" and f.name == "memfd:x"


@pytest.mark.parametrize("name, flags, code", [
    ("x", 0x100, errno.EINVAL),
    ("x", 21 << 26, errno.EINVAL),                  # a huge page size without MFD_HUGETLB
    ("x", MFD_EXEC | MFD_NOEXEC_SEAL, errno.EINVAL),
    ("x" * 250, 0, errno.EINVAL),
    ("x", MFD_HUGETLB | (25 << 26), errno.ENODEV),
])
def test_memfd_create_errors(m: Machine, name: str, flags: int, code: int) -> None:
    with pytest.raises(OSError) as e:
        m.fss.memfd_create(name, flags)
    assert e.value.errno == code


def test_memfd_name_of_249_bytes_is_accepted(m: Machine) -> None:
    assert m.fss.memfd_create("y" * 249).name == "memfd:" + "y" * 249


def test_shmem_zero_setup_backs_shared_anonymous_mappings(m: Machine) -> None:
    f = m.fss.shmem_zero_setup(3 * PAGE_SIZE)
    assert f.size == 3 * PAGE_SIZE and f.name == "dev/zero" and f.kind == Kind.SHMEM
    assert f.get_folio(2) >= 0 and f.get_folio(3) == -errno.EFAULT


def test_a_mapping_reference_keeps_a_closed_memfd_alive(m: Machine) -> None:
    f = m.fss.memfd_create("held")
    f.ftruncate(PAGE_SIZE)
    head = f.get_folio(0)
    vma_ref = f.get_file()                          # what mmap() holds in vma->vm_file
    f.close()
    assert m.mem.kind[head] == Kind.SHMEM and f.f_count == 1
    with pytest.raises(OSError) as e:
        f.pread(0, 1)                               # the descriptor itself is gone
    assert e.value.errno == errno.EBADF
    vma_ref.fput()                                  # munmap(): the last reference
    assert m.mem.kind[head] == Kind.FREE
    with pytest.raises(OSError):
        f.fput()


def test_shared_anonymous_file_freed_at_last_fput(m: Machine) -> None:
    f = m.fss.shmem_zero_setup(2 * PAGE_SIZE)
    heads = [f.get_folio(0), f.get_folio(1)]
    f.get_file()
    f.fput()
    assert all(m.mem.kind[h] == Kind.SHMEM for h in heads)
    f.fput()
    assert all(m.mem.kind[h] == Kind.FREE for h in heads)
