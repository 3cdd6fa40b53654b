"""dump_page(): the kernel's text, line by line, for the kinds of page the model has."""

from __future__ import annotations

import pytest

from gupsim.check.dump import dump_page
from gupsim.constants import PAGE_SIZE, PMD_SIZE
from gupsim.fs import filesystems
from gupsim.memory import PG, Allocator, Kind, MemMap


def machine(**kw: int) -> tuple[MemMap, Allocator]:
    mem = MemMap(nr_pages=kw.pop("nr_pages", 1 << 14), **kw)
    return mem, Allocator(mem)


def test_small_page_cache_page() -> None:
    mem, alloc = machine()
    fss = filesystems(mem, alloc)
    f = fss["ext4"].create("data.bin")
    f.pwrite(3 * PAGE_SIZE, b"x")
    head = f.page_cache[3]
    mem.mapcount[head] = 1
    mem.refcount[head] += 1
    text = dump_page(mem, head, describe_mapping=fss.describe_mapping)
    lines = text.splitlines()
    assert lines[0] == (f"page: refcount:2 mapcount:1 mapping:{f.inode_id:016x} "
                        f"index:0x3 pfn:{head:#x}")
    assert lines[1] == f'aops:ext4_da_aops ino:{f.inode_id:x} dentry name(?):"data.bin"'
    bits = int(mem.flags[head])
    assert lines[2] == f"flags: {bits:#x}(uptodate|dirty|lru|node=0|zone=2)"
    assert len(lines) == 3 and text.endswith("\n")


def test_reason_line_and_mapping_without_describer() -> None:
    mem, alloc = machine()
    f = filesystems(mem, alloc)["tmpfs"].create("s", PAGE_SIZE)
    head = f.get_folio(0)
    lines = dump_page(mem, head, "pinned page").splitlines()
    assert lines[1] == f"aops:shmem_aops ino:{f.inode_id:x}"
    assert lines[-1] == "page dumped because: pinned page"


def test_truncated_page_has_null_mapping_and_no_aops_line() -> None:
    mem, alloc = machine()
    f = filesystems(mem, alloc)["ext4"].create("a")
    f.pwrite(0, b"x")
    head = f.page_cache[0]
    mem.refcount[head] += 1
    f.truncate(0)
    lines = dump_page(mem, head).splitlines()
    assert "mapping:0000000000000000" in lines[0]
    assert not any(line.startswith("aops:") for line in lines)
    assert lines[1].startswith("flags: ")


def test_anon_and_ksm_prefix_and_null_mapping() -> None:
    mem, alloc = machine()
    a = alloc.alloc_folio(0, Kind.ANON, mapping=77)
    mem.set_flag(a, PG.anon_exclusive)
    lines = dump_page(mem, a).splitlines()
    assert "mapping:0000000000000000" in lines[0]
    assert lines[1].startswith("anon flags: ") and "anon_exclusive" in lines[1]
    k = alloc.alloc_folio(0, Kind.KSM)
    assert dump_page(mem, k).splitlines()[1].startswith("ksm flags: ")


def test_tail_page_of_a_pinned_hugetlb_folio() -> None:
    mem, alloc = machine()
    alloc.reserve_hugetlb(9, 1)
    fss = filesystems(mem, alloc)
    f = fss["hugetlbfs"].create("h", PMD_SIZE)
    head = f.get_folio(0)
    mem.entire_mapcount[head] = 1
    mem.pincount[head] = 2
    mem.refcount[head] += 3
    text = dump_page(mem, head + 5, describe_mapping=fss.describe_mapping)
    lines = text.splitlines()
    assert lines[0] == (f"page: refcount:515 mapcount:0 mapping:{f.inode_id:016x} "
                        f"index:0x5 pfn:{head + 5:#x}")
    assert lines[1] == ("head: order:9 mapcount:1 entire_mapcount:1 nr_pages_mapped:0 "
                        "pincount:2")
    assert lines[2].startswith("aops:hugetlbfs_aops")
    assert "hugetlb" not in lines[3] and "head" in lines[3]
    assert lines[4] == "page_type: f4(hugetlb)"


def test_pte_mapped_large_folio_counts_pages_mapped() -> None:
    mem, alloc = machine()
    h = alloc.alloc_folio(4, Kind.ANON)
    mem.mapcount[h + 1] = 1
    mem.mapcount[h + 2] = 2
    head_line = dump_page(mem, h + 2).splitlines()[1]
    assert head_line == "head: order:4 mapcount:3 entire_mapcount:0 nr_pages_mapped:2 pincount:0"
    assert "mapcount:2 " in dump_page(mem, h + 2).splitlines()[0]


def test_cma_and_movable_zone_are_shown() -> None:
    mem, alloc = machine(nr_pages=1 << 14, movable_pages=1 << 12, cma_pages=1 << 12)
    cma_pfn = mem.cma_start
    assert dump_page(mem, cma_pfn).splitlines()[-1].endswith(" CMA")
    movable = mem.movable_start
    assert "zone=3" in dump_page(mem, movable)
    assert "CMA" not in dump_page(mem, movable)


def test_pfn_outside_memory_is_refused() -> None:
    mem, _ = machine(nr_pages=1024)
    with pytest.raises(ValueError):
        dump_page(mem, 1024)
