"""The generic page cache through ext4: read, write, i_size, writeback, truncate."""

from __future__ import annotations

import errno

import pytest
from conftest import Machine, make_machine

from gupsim.constants import O_CREAT, O_RDONLY, O_TRUNC, PAGE_SIZE
from gupsim.fs import folio_put
from gupsim.memory import PG, Kind

PIN_BIAS = 1024


def test_create_sets_size_and_reads_zeros_without_data(m: Machine) -> None:
    f = m.fss["ext4"].create("a", 10000)
    assert f.size == 10000
    assert f.pread(0, 20000) == bytes(10000)       # clamped at EOF
    assert f.pread(10000, 5) == b""
    assert f.pread(20000, 5) == b""


def test_pwrite_pread_round_trip_across_pages_and_extends_i_size(m: Machine) -> None:
    f = m.fss["ext4"].create("a")
    data = bytes(range(256)) * 40                   # 10240 bytes, three pages
    assert f.pwrite(PAGE_SIZE - 100, data) == len(data)
    assert f.size == PAGE_SIZE - 100 + len(data)
    assert f.pread(PAGE_SIZE - 100, len(data)) == data
    assert f.pread(0, PAGE_SIZE - 100) == bytes(PAGE_SIZE - 100)
    assert sorted(f.page_cache) == [0, 1, 2, 3]
    assert f.nrpages == 4


def test_page_cache_folio_state() -> None:
    m = make_machine(movable_pages=1 << 12)
    f = m.fss["ext4"].create("a")
    f.pwrite(PAGE_SIZE * 3, b"x")
    head = f.page_cache[3]
    assert m.mem.kind[head] == Kind.FILE
    assert m.mem.mapping[head] == f.inode_id
    assert m.mem.index[head] == 3
    assert m.mem.refcount[head] == 1                # the page cache's own reference
    for flag in (PG.uptodate, PG.lru, PG.dirty):
        assert m.mem.test(head, flag)
    assert head >= m.mem.movable_start              # movable user memory: ZONE_MOVABLE


def test_writeback_cleans_persists_and_mkcleans_each_dirty_folio(m: Machine) -> None:
    f = m.fss["ext4"].create("a", 5 * PAGE_SIZE)
    f.pwrite(0, b"zero")
    f.pwrite(2 * PAGE_SIZE, b"two")
    clean_head = f.get_folio(4)                     # cached by a fault, never written
    assert clean_head >= 0
    heads = [f.page_cache[0], f.page_cache[2]]
    assert f.writeback() == 2
    assert m.rmap.mkclean_calls == heads            # one folio_mkclean() per dirty folio
    assert clean_head not in m.rmap.mkclean_calls
    assert not any(m.mem.test(h, PG.dirty) or m.mem.test(h, PG.writeback) for h in heads)
    assert not any(m.mem.test(h, PG.locked) for h in heads)
    assert f.backing[0][:4] == b"zero" and f.backing[2][:3] == b"two"
    assert 4 not in f.backing
    assert m.mem.vmstat["nr_written"] == 2
    assert f.writeback() == 0                       # nothing dirty any more
    assert m.mem.vmstat["nr_written"] == 2


def test_read_after_drop_caches_comes_from_the_backing_store(m: Machine) -> None:
    f = m.fss["ext4"].create("a")
    f.pwrite(100, b"persisted")
    f.fsync()
    assert f.drop_caches() == 1
    assert f.nrpages == 0
    assert f.pread(100, 9) == b"persisted"          # read back in from "disk"
    assert f.nrpages == 1


def test_drop_caches_keeps_dirty_and_referenced_folios(m: Machine) -> None:
    f = m.fss["ext4"].create("a")
    f.pwrite(0, b"dirty")
    f.pwrite(PAGE_SIZE, b"pinned")
    f.fsync()
    f.pwrite(0, b"DIRTY")
    m.mem.refcount[f.page_cache[1]] += PIN_BIAS     # a FOLL_PIN on an order-0 folio
    assert f.drop_caches() == 0
    assert sorted(f.page_cache) == [0, 1]


def test_writeback_of_pinned_folio_proceeds_without_warning(m: Machine) -> None:
    """Spec 6.6: core writeback does not consult folio_maybe_dma_pinned()."""
    f = m.fss["ext4"].create("a")
    f.pwrite(0, b"before")
    head = f.page_cache[0]
    m.mem.refcount[head] += PIN_BIAS
    assert f.writeback() == 1
    assert m.rmap.mkclean_calls == [head]
    assert f.backing[0][:6] == b"before"
    assert len(m.mem.warnings) == 0
    # The pin holder's DMA after writeback: the folio changes but stays clean.
    m.mem.write(head, 0, b"dma!!!")
    assert not m.mem.test(head, PG.dirty)
    assert f.writeback() == 0
    assert f.backing[0][:6] == b"before"            # the new data never reaches the disk...
    f.mark_dirty(head)                              # ...unless unpin_*_dirty_lock() redirties
    f.fsync()
    assert f.backing[0][:6] == b"dma!!!"


def test_dma_during_in_flight_writeback_reaches_disk_on_completion(m: Machine) -> None:
    f = m.fss["ext4"].create("a")
    f.pwrite(0, b"old")
    head = f.page_cache[0]
    assert f.writeback(wait=False) == 1
    assert m.mem.test(head, PG.writeback) and not m.mem.test(head, PG.dirty)
    assert m.mem.vmstat["nr_written"] == 0
    m.mem.write(head, 0, b"new")                    # DMA into the folio under I/O
    assert f.end_writeback() == 1
    assert not m.mem.test(head, PG.writeback)
    assert f.backing[0][:3] == b"new"
    assert m.mem.vmstat["nr_written"] == 1


def test_page_mkwrite_dirties_and_waits_for_writeback(m: Machine) -> None:
    f = m.fss["ext4"].create("a", PAGE_SIZE)
    head = f.get_folio(0)
    assert not m.mem.test(head, PG.dirty)
    assert f.page_mkwrite(head) == 0
    assert m.mem.test(head, PG.dirty)
    m.mem.write(head, 0, b"mapped write")
    f.writeback(wait=False)
    assert m.mem.test(head, PG.writeback)
    assert f.page_mkwrite(head) == 0                # stable pages: the I/O ends first
    assert not m.mem.test(head, PG.writeback)
    assert m.mem.test(head, PG.dirty)
    assert f.backing[0][:12] == b"mapped write"


def test_page_mkwrite_on_truncated_folio_asks_for_a_retry(m: Machine) -> None:
    f = m.fss["ext4"].create("a", PAGE_SIZE)
    head = f.get_folio(0)
    m.mem.refcount[head] += 1                       # the mapping's reference
    f.truncate(0)
    assert f.page_mkwrite(head) == -errno.EAGAIN
    assert not m.mem.test(head, PG.dirty)


def test_get_folio_beyond_eof_is_efault_and_creates_nothing(m: Machine) -> None:
    f = m.fss["ext4"].create("a", PAGE_SIZE + 1)
    assert f.get_folio(1) >= 0
    assert f.get_folio(2) == -errno.EFAULT
    assert f.get_folio(-1) == -errno.EFAULT
    assert sorted(f.page_cache) == [1]


def test_get_folio_finds_the_same_folio_twice(m: Machine) -> None:
    f = m.fss["ext4"].create("a", PAGE_SIZE)
    assert f.get_folio(0) == f.get_folio(0)
    assert m.mem.refcount[f.get_folio(0)] == 1      # lookups take no reference


def test_get_folio_out_of_memory_is_enomem() -> None:
    small = make_machine(nr_pages=1024)
    for _ in range(1020):                           # leave four free frames
        small.alloc.alloc_folio(0, Kind.ANON)
    f = small.fss["ext4"].create("a", 8 * PAGE_SIZE)
    heads = [f.get_folio(i) for i in range(4)]
    assert all(h >= 0 for h in heads)
    assert f.get_folio(4) == -errno.ENOMEM
    with pytest.raises(OSError) as e:
        f.pwrite(5 * PAGE_SIZE, b"x")
    assert e.value.errno == errno.ENOMEM


def test_truncate_unmaps_drops_and_frees_unreferenced_folios(m: Machine) -> None:
    f = m.fss["ext4"].create("a")
    f.pwrite(0, b"a" * (4 * PAGE_SIZE))
    f.fsync()
    heads = dict(f.page_cache)
    free_before = m.alloc.nr_free_pages()
    f.truncate(PAGE_SIZE + 10)
    assert m.rmap.unmap_calls == [(f.inode_id, 2, 3)]
    assert sorted(f.page_cache) == [0, 1]
    for i in (2, 3):
        assert m.mem.refcount[heads[i]] == 0 and m.mem.kind[heads[i]] == Kind.FREE
    assert m.alloc.nr_free_pages() == free_before + 2
    assert f.size == PAGE_SIZE + 10
    assert f.pread(0, 3 * PAGE_SIZE) == b"a" * (PAGE_SIZE + 10)
    assert sorted(f.backing) == [0, 1]
    assert f.backing[1] == b"a" * 10 + bytes(PAGE_SIZE - 10)   # tail past EOF zeroed
    f.truncate(2 * PAGE_SIZE)                        # grow: the old tail reads as zeros
    assert f.pread(PAGE_SIZE, PAGE_SIZE) == b"a" * 10 + bytes(PAGE_SIZE - 10)


def test_truncate_keeps_referenced_folio_allocated_with_mapping_cleared(m: Machine) -> None:
    """Spec 6.4: a pinned folio leaves the page cache but stays allocated."""
    f = m.fss["ext4"].create("a")
    f.pwrite(0, b"pinned data")
    head = f.page_cache[0]
    m.mem.refcount[head] += PIN_BIAS
    f.truncate(0)
    assert f.page_cache == {}
    assert m.mem.mapping[head] == 0
    assert m.mem.refcount[head] == PIN_BIAS          # the cache's reference is gone
    assert m.mem.kind[head] == Kind.FILE             # still allocated
    assert not m.mem.test(head, PG.dirty)            # folio_cancel_dirty()
    assert m.mem.read(head, 0, 11) == b"pinned data"
    m.mem.write(head, 0, b"DMA")                     # DMA continues into orphaned memory
    assert f.pread(0, 3) == b""
    assert folio_put(m.mem, m.alloc, head, PIN_BIAS) # the unpin frees it
    assert m.mem.kind[head] == Kind.FREE


def test_unlink_frees_pages_at_last_close(m: Machine) -> None:
    fs = m.fss["ext4"]
    f = fs.create("a")
    f.pwrite(0, b"x" * PAGE_SIZE * 2)
    g = fs.open("a", O_RDONLY)
    heads = list(f.page_cache.values())
    fs.unlink("a")
    f.close()
    assert all(m.mem.refcount[h] == 1 for h in heads)
    assert g.pread(0, 1) == b"x"                     # still open: data still there
    g.close()
    assert all(m.mem.kind[h] == Kind.FREE for h in heads)
    assert fs.used_pages == 0
    with pytest.raises(OSError) as e:
        fs.open("a")
    assert e.value.errno == errno.ENOENT


def test_open_modes_and_o_trunc(m: Machine) -> None:
    fs = m.fss["ext4"]
    fs.create("a").pwrite(0, b"abc")
    r = fs.open("a", O_RDONLY)
    assert r.readable and not r.writable
    with pytest.raises(OSError) as e:
        r.pwrite(0, b"x")
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        r.ftruncate(0)
    assert e.value.errno == errno.EINVAL
    w = fs.open("a", O_TRUNC | 1)                   # O_WRONLY|O_TRUNC
    assert w.size == 0
    with pytest.raises(OSError) as e:
        w.pread(0, 1)
    assert e.value.errno == errno.EBADF
    n = fs.open("new", O_CREAT | O_RDONLY)
    assert n.size == 0 and not n.writable
    w.close()
    with pytest.raises(OSError) as e:
        w.pwrite(0, b"x")
    assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("call, code", [
    (lambda f: f.pread(-1, 1), errno.EINVAL),
    (lambda f: f.pread(0, -1), errno.EINVAL),
    (lambda f: f.pwrite(-4096, b"x"), errno.EINVAL),
    (lambda f: f.truncate(-1), errno.EINVAL),
    (lambda f: f.truncate(1 << 50), errno.EFBIG),
    (lambda f: f.pwrite(1 << 50, b"x"), errno.EFBIG),
])
def test_bad_offsets_and_sizes(m: Machine, call, code: int) -> None:
    f = m.fss["ext4"].create("a", 100)
    with pytest.raises(OSError) as e:
        call(f)
    assert e.value.errno == code
    assert f.size == 100


def test_namespace_errors(m: Machine) -> None:
    fs = m.fss["ext4"]
    fs.create("a")
    for call, code in [(lambda: fs.create("a"), errno.EEXIST),
                       (lambda: fs.open("missing"), errno.ENOENT),
                       (lambda: fs.unlink("missing"), errno.ENOENT),
                       (lambda: fs.create("x" * 256), errno.ENAMETOOLONG),
                       (lambda: fs.create("d/a"), errno.EINVAL),
                       (lambda: fs.create("b", -1), errno.EINVAL)]:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == code
    assert "b" not in fs.files                       # a failed create leaves no name


def test_enospc_when_the_device_is_full() -> None:
    m = make_machine()
    from gupsim.fs import Ext4
    fs = Ext4(m.mem, m.alloc, capacity=2 * PAGE_SIZE)
    f = fs.create("a")
    assert f.pwrite(0, b"y" * (3 * PAGE_SIZE)) == 2 * PAGE_SIZE   # a short write
    with pytest.raises(OSError) as e:
        f.pwrite(3 * PAGE_SIZE, b"z")
    assert e.value.errno == errno.ENOSPC
    f.truncate(3 * PAGE_SIZE + 1)
    head = f.get_folio(3)
    assert f.page_mkwrite(head) == -errno.ENOSPC     # no block for a mapped write: SIGBUS
    f.truncate(PAGE_SIZE)
    assert fs.used_pages == 1
    assert f.pwrite(PAGE_SIZE, b"z") == 1


def test_folio_put_frees_at_zero_and_warns_on_underflow(m: Machine) -> None:
    head = m.alloc.alloc_folio(0, Kind.FILE)
    m.mem.refcount[head] = 2
    assert not folio_put(m.mem, m.alloc, head)
    assert m.mem.refcount[head] == 1 and m.mem.kind[head] == Kind.FILE
    assert folio_put(m.mem, m.alloc, head)
    assert m.mem.kind[head] == Kind.FREE
    assert len(m.mem.warnings) == 0
    other = m.alloc.alloc_folio(0, Kind.FILE)
    folio_put(m.mem, m.alloc, other, 3)
    assert m.mem.warnings.sites() == ["folio_put: refcount underflow"]
    assert m.mem.refcount[other] == 0
