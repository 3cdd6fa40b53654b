"""hugetlbfs: huge folios from the pool, pool exhaustion, sizes in huge pages."""

from __future__ import annotations

import errno

import pytest
from conftest import make_machine

from gupsim.constants import MFD_HUGETLB, PAGE_SIZE, PMD_SIZE
from gupsim.fs import Hugetlbfs, folio_put
from gupsim.memory import PG, Kind

MFD_HUGE_1GB = 30 << 26


def test_get_folio_hands_out_pool_folios_with_nr_pages_cache_references() -> None:
    m = make_machine(hugetlb_2m=2)
    f = m.fss["hugetlbfs"].create("h", PMD_SIZE)
    assert f.folio_order == 9 and f.kind == Kind.HUGETLBFS
    head = f.get_folio(5)
    assert head >= 0 and head % 512 == 0
    assert f.get_folio(511) == head                 # same folio for every page in it
    assert m.mem.order[head] == 9 and m.mem.index[head] == 0
    assert m.mem.refcount[head] == 512              # folio_nr_pages() cache references
    assert m.mem.kind[head] == Kind.HUGETLBFS and m.mem.test(head, PG.hugetlb)
    assert not m.mem.test(head, PG.lru)
    assert m.alloc.hugetlb_free_count(9) == 1


def test_pool_exhaustion_is_enomem() -> None:
    m = make_machine(hugetlb_2m=1)
    f = m.fss["hugetlbfs"].create("h", 2 * PMD_SIZE)
    assert f.get_folio(0) >= 0
    assert f.get_folio(512) == -errno.ENOMEM
    assert f.page_cache.keys() == {0}


def test_create_rounds_up_and_ftruncate_must_be_aligned() -> None:
    m = make_machine()
    f = m.fss["hugetlbfs"].create("h", 1)
    assert f.size == PMD_SIZE
    with pytest.raises(OSError) as e:
        f.ftruncate(PMD_SIZE + PAGE_SIZE)
    assert e.value.errno == errno.EINVAL
    assert f.size == PMD_SIZE
    f.ftruncate(3 * PMD_SIZE)
    assert f.size == 3 * PMD_SIZE


def test_pwrite_is_einval_and_holes_read_as_zeros() -> None:
    m = make_machine(hugetlb_2m=1)
    f = m.fss["hugetlbfs"].create("h", PMD_SIZE)
    with pytest.raises(OSError) as e:
        f.pwrite(0, b"x")
    assert e.value.errno == errno.EINVAL
    assert f.pread(0, 8) == bytes(8) and f.nrpages == 0
    head = f.get_folio(0)
    m.mem.write(head + 3, 0, b"via mmap")
    assert f.pread(3 * PAGE_SIZE, 8) == b"via mmap"


def test_truncate_returns_folio_to_pool_unless_pinned() -> None:
    m = make_machine(hugetlb_2m=2)
    f = m.fss["hugetlbfs"].create("h", 2 * PMD_SIZE)
    a, b = f.get_folio(0), f.get_folio(512)
    m.mem.pincount[b] += 1                          # a pin on a large folio
    m.mem.refcount[b] += 1
    f.ftruncate(0)
    assert m.rmap.unmap_calls == [(f.inode_id, 0, 1023)]
    assert m.alloc.hugetlb_free_count(9) == 1       # a is back in the pool, b is not
    assert m.mem.kind[b] == Kind.HUGETLBFS and m.mem.mapping[b] == 0
    assert m.mem.refcount[b] == 1
    m.mem.pincount[b] -= 1
    folio_put(m.mem, m.alloc, b)
    assert m.alloc.hugetlb_free_count(9) == 2
    assert a != b


def test_memfd_hugetlb_is_empty_until_ftruncate() -> None:
    m = make_machine(hugetlb_2m=1)
    f = m.fss.memfd_create("hb", MFD_HUGETLB)
    assert f.fs_name == "hugetlbfs" and f.size == 0 and f.folio_order == 9
    assert f.get_folio(0) == -errno.EFAULT
    f.ftruncate(PMD_SIZE)
    assert f.get_folio(0) >= 0


def test_memfd_hugetlb_1g_uses_the_gigantic_pool() -> None:
    m = make_machine()
    f = m.fss.memfd_create("g", MFD_HUGETLB | MFD_HUGE_1GB)
    assert f.folio_order == 18
    f.ftruncate(PAGE_SIZE << 18)
    assert f.get_folio(0) == -errno.ENOMEM          # no 1 GiB pages reserved


def test_bad_huge_order_is_refused() -> None:
    m = make_machine()
    with pytest.raises(ValueError):
        Hugetlbfs(m.mem, m.alloc, huge_order=10)
