"""Host mappings and pagemap: the frames behind our addresses, before and after fork."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gupsim.live import Child, HostMapping, kpageflags, pagemap
from gupsim.live.libc import MADV_DONTNEED, PAGE_SIZE, PROT_READ

pytestmark = pytest.mark.host
Need = Callable[..., None]
MiB = 1 << 20


def _mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        return any(int(line.split("-")[0], 16) <= addr < int(line.split("-")[1].split()[0], 16)
                   for line in f)


@pytest.mark.parametrize(("kind", "shared"), [
    ("anon", False), ("anon", True), ("memfd", True), ("memfd", False), ("tmpfs", True),
    ("file", True), ("file", False),
])
def test_kinds_map_read_write_and_unmap(kind: str, shared: bool) -> None:
    with HostMapping(4 * PAGE_SIZE, kind, shared=shared, fill=9) as m:  # type: ignore[arg-type]
        assert m.read(PAGE_SIZE, 3) == b"\x09" * 3
        m.write(10, b"abc")
        assert m.read(9, 5) == b"\x09abc\x09"
        entry = m.pagemap(0)
        assert entry.present and entry.pfn > 0
        addr = m.addr
    assert not _mapped(addr)


def test_fork_shares_the_frame_until_the_parent_writes() -> None:
    with HostMapping(PAGE_SIZE, fill=1) as m:
        pfn = m.pagemap(0).pfn
        assert m.pagemap(0).exclusive
        with Child(lambda: m.pagemap(0).pfn,
                   commands={"pfn": lambda: m.pagemap(0).pfn}) as child:
            assert child.result == pfn  # same frame in both processes
            assert not m.pagemap(0).exclusive
            m.write(0, b"\xff")  # COW: the parent gets a new frame
            assert m.pagemap(0).pfn != pfn and m.pagemap(0).exclusive
            assert child.call("pfn") == pfn


def test_dontneed_drops_the_page() -> None:
    with HostMapping(2 * PAGE_SIZE, fill=5) as m:
        m.madvise(MADV_DONTNEED, PAGE_SIZE, PAGE_SIZE)
        assert not m.pagemap(PAGE_SIZE).present
        assert m.read(PAGE_SIZE, 1) == b"\x00"


def test_thp_area_is_one_huge_folio(need: Need) -> None:
    need("thp")
    with HostMapping(2 * MiB, "thp") as m:
        assert m.addr % (2 * MiB) == 0
        head = m.pagemap(0).pfn
        assert "thp" in kpageflags(head)
        assert m.pagemap(2 * MiB - PAGE_SIZE).pfn == head + 511


def test_read_only_mapping_populates_by_reading() -> None:
    with HostMapping(PAGE_SIZE, prot=PROT_READ) as m:
        assert m.pagemap(0).present  # the shared zero page
        assert m.read(0, 2) == b"\x00\x00"


def test_bad_input_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        HostMapping(100)
    with pytest.raises(ValueError, match="unknown mapping kind"):
        HostMapping(PAGE_SIZE, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 MiB"):
        HostMapping(PAGE_SIZE, "thp")
    with HostMapping(PAGE_SIZE) as m, pytest.raises(ValueError, match="outside"):
        m.read(PAGE_SIZE - 1, 2)
    with pytest.raises(ValueError, match="closed"):
        m.read(0, 1)


def test_hugetlb_without_pool_says_what_to_do() -> None:
    with open("/proc/sys/vm/nr_hugepages") as f:
        if int(f.read()) != 0:
            pytest.skip("huge pages are configured on this host")
    with pytest.raises(OSError, match="nr_hugepages"):
        HostMapping(2 * MiB, "hugetlb").__enter__()


def test_pagemap_rejects_negative() -> None:
    with pytest.raises(ValueError):
        pagemap(-1)
