"""File-backed mappings: shared write-notify and writeback, private COW, EOF, shmem, hugetlbfs."""

from __future__ import annotations

import errno

import pytest

import gupsim
from gupsim import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.memory import PG, Kind
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE


def entry(p, addr):
    vma = p.mm.find_vma(addr)
    return int(vma.pfn[vma.idx(addr)]), int(vma.pte[vma.idx(addr)])


def test_shared_ext4_mapping_is_write_notified_and_cleaned_by_writeback(k, p):
    f = k.fs("ext4").create("data", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    assert p.read(a, 4) == bytes(4)
    pfn, pte = entry(p, a)
    assert not pte & PTE.WRITE                     # read fault maps write-protected
    p.write(a, b"dirty")
    pfn, pte = entry(p, a)
    assert pte & PTE.WRITE and k.page(pfn).folio.dirty
    f.fsync()
    pfn, pte = entry(p, a)
    assert not pte & PTE.WRITE and not k.page(pfn).folio.dirty   # page_mkclean()
    assert f.pread(0, 5) == b"dirty"
    p.write(a, b"again")                            # write-notify fires again
    assert k.page(pfn).folio.dirty


def test_shared_mapping_is_visible_to_other_processes_and_to_pread(k, p):
    f = k.fs("ext4").create("shared", PAGE_SIZE)
    q = k.spawn("other")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    b = q.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    p.write(a + 10, b"visible")
    assert q.read(b + 10, 7) == b"visible" and f.pread(10, 7) == b"visible"


def test_private_file_mapping_copies_on_write(k, p):
    f = k.fs("ext4").create("lib", PAGE_SIZE)
    f.pwrite(0, b"original")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=f)
    assert p.read(a, 8) == b"original"
    cache_pfn, _ = entry(p, a)
    assert k.page(cache_pfn).folio.kind == Kind.FILE
    p.write(a, b"modified")
    anon_pfn, _ = entry(p, a)
    assert anon_pfn != cache_pfn and k.page(anon_pfn).folio.kind == Kind.ANON
    assert f.pread(0, 8) == b"original"


def test_access_beyond_end_of_file_is_sigbus(k, p):
    f = k.fs("ext4").create("short", PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    p.read(a, 1)
    with pytest.raises(gupsim.BusError):
        p.read(a + PAGE_SIZE, 1)


def test_truncate_unmaps_and_then_sigbus(k, p):
    f = k.fs("ext4").create("t", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a + PAGE_SIZE, b"x")
    f.truncate(PAGE_SIZE)
    assert not entry(p, a + PAGE_SIZE)[1] & PTE.PRESENT
    with pytest.raises(gupsim.BusError):
        p.read(a + PAGE_SIZE, 1)


def test_shared_writable_mapping_of_readonly_file_is_eacces(k, p):
    f = k.fs("ext4").create("ro", PAGE_SIZE)
    ro = k.fs("ext4").open("ro", gupsim.O_RDONLY)
    with pytest.raises(OSError) as e:
        p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=ro)
    assert e.value.errno == errno.EACCES
    assert f.size == PAGE_SIZE


def test_memfd_and_tmpfs_are_shmem_without_write_notify(k, p):
    f = p.memfd_create("buf")
    f.truncate(PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.read(a, 1)
    pfn, pte = entry(p, a)
    assert k.page(pfn).folio.kind == Kind.SHMEM and pte & PTE.WRITE
    assert p.proc_status()["RssShmem"] == 4


def test_hugetlbfs_shared_and_private(k, p):
    f = k.fs("hugetlbfs").create("huge", PMD_SIZE)
    a = p.mmap(0, PMD_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"H")
    pfn, pte = entry(p, a)
    assert pte & PTE.PMD and k.page(pfn).folio.kind == Kind.HUGETLBFS
    b = p.mmap(0, PMD_SIZE, RW, MAP_PRIVATE, fd=f)
    assert p.read(b, 1) == b"H"
    p.write(b, b"P")
    assert p.read(a, 1) == b"H" and k.page(entry(p, b)[0]).folio.kind == Kind.ANON


def test_memfd_hugetlb(k, p):
    f = p.memfd_create("h", gupsim.MFD_HUGETLB)
    f.truncate(PMD_SIZE)
    a = p.mmap(0, PMD_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"x")
    assert k.page(entry(p, a)[0]).folio.is_hugetlb


def test_dax_maps_device_blocks_without_page_cache(k, p):
    f = k.fs("dax").create("pmem", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"pmem")
    pfn, _ = entry(p, a)
    assert k.page(pfn).folio.kind == Kind.FSDAX


def test_shared_anonymous_mapping_is_shmem(k, p):
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.read(a, 1)
    assert k.page(entry(p, a)[0]).folio.kind == Kind.SHMEM      # no zero page for shmem


def test_writeback_flag_and_pages_stay_until_unmapped(k, p):
    f = k.fs("ext4").create("w", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"abc")
    pfn, _ = entry(p, a)
    f.fsync()
    assert not k.mem.test(pfn, PG.writeback)
    p.munmap(a, PAGE_SIZE)
    assert k.mem.kind[pfn] == Kind.FILE         # still in the page cache
