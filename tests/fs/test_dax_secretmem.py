"""fs-dax (no page cache, frames mapped directly) and secretmem (memfd_secret)."""

from __future__ import annotations

import errno

import pytest
from conftest import Machine, make_machine

from gupsim.constants import PAGE_SIZE
from gupsim.fs import Dax, folio_is_secretmem, folio_put
from gupsim.memory import PG, Kind


def test_dax_has_no_page_cache_and_allocates_frames_at_create(m: Machine) -> None:
    free = m.alloc.nr_free_pages()
    f = m.fss["dax"].create("d", 3 * PAGE_SIZE)
    assert m.alloc.nr_free_pages() == free - 3
    assert f.kind == Kind.FSDAX and f.needs_writenotify
    pfn = f.get_folio(1)
    assert pfn >= 0 and m.mem.kind[pfn] == Kind.FSDAX
    assert m.mem.mapping[pfn] == f.inode_id and m.mem.index[pfn] == 1
    f.pwrite(PAGE_SIZE + 5, b"pmem")
    assert m.mem.read(pfn, 5, 4) == b"pmem"         # written straight to the frame
    assert f.pread(PAGE_SIZE + 5, 4) == b"pmem"
    assert f.page_cache == {} and f.nrpages == 0
    assert not m.mem.test(pfn, PG.dirty)            # write() needs no writeback
    assert f.get_folio(3) == -errno.EFAULT


def test_dax_pwrite_extends_with_new_frames(m: Machine) -> None:
    f = m.fss["dax"].create("d")
    assert f.pwrite(2 * PAGE_SIZE, b"x") == 1
    assert f.size == 2 * PAGE_SIZE + 1
    assert f.get_folio(2) >= 0 and f.pread(0, 2) == bytes(2)


def test_dax_fsync_write_protects_frames_dirtied_through_mappings(m: Machine) -> None:
    f = m.fss["dax"].create("d", 2 * PAGE_SIZE)
    pfn = f.get_folio(0)
    assert f.page_mkwrite(pfn) == 0 and m.mem.test(pfn, PG.dirty)
    assert f.writeback() == 1
    assert m.rmap.mkclean_calls == [pfn]
    assert not m.mem.test(pfn, PG.dirty)
    assert m.mem.vmstat["nr_written"] == 0          # no folio I/O on dax


def test_dax_truncate_frees_idle_frames(m: Machine) -> None:
    f = m.fss["dax"].create("d", 3 * PAGE_SIZE)
    frames = [f.get_folio(i) for i in range(3)]
    f.truncate(PAGE_SIZE)
    assert m.rmap.unmap_calls[0] == (f.inode_id, 0, 2)   # break layouts: the whole file
    assert [m.mem.kind[p] for p in frames] == [Kind.FSDAX, Kind.FREE, Kind.FREE]
    assert m.fss["dax"].used_pages == 1


def test_dax_truncate_with_a_pinned_frame_would_block(m: Machine) -> None:
    f = m.fss["dax"].create("d", 2 * PAGE_SIZE)
    pfn = f.get_folio(1)
    m.mem.refcount[pfn] += 1024
    with pytest.raises(OSError) as e:
        f.truncate(0)
    assert e.value.errno == errno.EINTR
    assert f.size == 2 * PAGE_SIZE and f.get_folio(1) == pfn
    m.mem.refcount[pfn] -= 1024
    f.truncate(0)
    assert m.mem.kind[pfn] == Kind.FREE


def test_dax_eviction_orphans_a_pinned_frame(m: Machine) -> None:
    fs = m.fss["dax"]
    f = fs.create("d", PAGE_SIZE)
    pfn = f.get_folio(0)
    m.mem.refcount[pfn] += 1024
    fs.unlink("d")
    f.close()
    assert m.mem.mapping[pfn] == 0 and m.mem.refcount[pfn] == 1024
    folio_put(m.mem, m.alloc, pfn, 1024)
    assert m.mem.kind[pfn] == Kind.FREE


def test_dax_device_full_is_enospc() -> None:
    m = make_machine()
    fs = Dax(m.mem, m.alloc, capacity=2 * PAGE_SIZE)
    with pytest.raises(OSError) as e:
        fs.create("d", 3 * PAGE_SIZE)
    assert e.value.errno == errno.ENOSPC
    assert fs.used_pages == 0 and "d" not in fs.files


def test_memfd_secret_size_once_and_no_read_write() -> None:
    m = make_machine(nr_pages=1 << 14, movable_pages=1 << 12)
    f = m.fss.memfd_secret()
    assert f.is_secretmem and f.size == 0 and f.kind == Kind.SECRETMEM
    f.ftruncate(2 * PAGE_SIZE)
    with pytest.raises(OSError) as e:
        f.ftruncate(4 * PAGE_SIZE)
    assert e.value.errno == errno.EINVAL
    for call in (lambda: f.pread(0, 1), lambda: f.pwrite(0, b"x")):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EINVAL
    head = f.get_folio(0)
    assert folio_is_secretmem(m.mem, head)
    assert head < m.mem.movable_start               # unmovable: never in ZONE_MOVABLE
    assert m.mem.test(head, PG.unevictable)
    assert not m.fss["ext4"].create("plain").is_secretmem


def test_memfd_secret_rejects_unknown_flags(m: Machine) -> None:
    with pytest.raises(OSError) as e:
        m.fss.memfd_secret(1)
    assert e.value.errno == errno.EINVAL
