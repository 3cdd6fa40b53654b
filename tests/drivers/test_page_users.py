"""Cases 4 and 5: the struct-page-only query and the pin-and-write kernel user.

Each right driver is checked against its wrong twin on what users can observe: fork's
copies, MMF_HAS_PINNED, the pin counters, the data the file and the processes end with.
"""

from __future__ import annotations

import pytest
from drivers_helpers import anon_buffer, held, mapped_pfn

from gupsim import EFAULT, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, Kernel, Process
from gupsim.drivers.kernel_write import get_and_write_incorrect, pin_and_write
from gupsim.drivers.struct_page_query import (
    DO_PAGES_STAT_CHUNK_NR,
    page_status_query,
    page_status_query_pinned,
)
from gupsim.mm import MMF

# -- case 4 -------------------------------------------------------------------------------


def test_status_query_reports_struct_page_facts_with_plain_references(
        k: Kernel, p: Process) -> None:
    """40 pages in chunks of 16: each status names the frame the process maps; no pin is
    counted and the mm is not marked as ever pinned; every reference is put back."""
    a = anon_buffer(p, 40)
    before = [k.page(mapped_pfn(p, a + i * PAGE_SIZE)).refcount for i in range(40)]
    out = page_status_query(k, a, 40, current=p)
    assert not isinstance(out, int) and len(out) == 40
    assert [s.pfn for s in out] == [mapped_pfn(p, a + i * PAGE_SIZE) for i in range(40)]
    assert {s.zone for s in out} == {"NORMAL"} and all(s.anon and s.mapcount == 1 for s in out)
    assert k.vmstat["nr_foll_pin_acquired"] == 0 and not p.mm.flags & MMF.HAS_PINNED
    assert [k.page(s.pfn).refcount for s in out] == before
    recs = list(k.sanitizer.released)[-3:]
    assert [(r.how, r.call, len(r.pfns)) for r in recs] == \
        [("FOLL_GET", "get_user_pages_fast", n) for n in (DO_PAGES_STAT_CHUNK_NR,
                                                          DO_PAGES_STAT_CHUNK_NR, 8)]
    assert k.sanitizer.outstanding() == []


def test_status_query_of_an_unmapped_range_is_the_gup_error(k: Kernel, p: Process) -> None:
    assert page_status_query(k, 0x10000, 4, current=p) == -EFAULT


@pytest.mark.parametrize("pinned", [False, True])
def test_a_fork_while_the_query_holds_the_pages(k: Kernel, p: Process, pinned: bool) -> None:
    """FOLL_GET: fork shares the pages (the query sees mapcount 2). FOLL_PIN (wrong): fork
    copies every page for the child, the query reads mapcount 1, the mm is marked
    MMF_HAS_PINNED for good."""
    a = anon_buffer(p, 4)
    kids: list[Process] = []
    query = page_status_query_pinned if pinned else page_status_query
    out = query(k, a, 4, current=p, while_held=lambda: kids.append(p.fork()))
    assert not isinstance(out, int)
    shared = [mapped_pfn(p, a + i * PAGE_SIZE) == mapped_pfn(kids[0], a + i * PAGE_SIZE)
              for i in range(4)]
    if pinned:
        assert shared == [False] * 4 and k.vmstat["fork_copy_pinned"] == 4
        assert [s.mapcount for s in out] == [1] * 4 and p.mm.flags & MMF.HAS_PINNED
        assert k.vmstat["nr_foll_pin_acquired"] == 4
    else:
        assert shared == [True] * 4 and k.vmstat["fork_copy_pinned"] == 0
        assert [s.mapcount for s in out] == [2] * 4 and not p.mm.flags & MMF.HAS_PINNED
    assert held(k) == 0 and k.sanitizer.reports == []


# -- case 5 -------------------------------------------------------------------------------


def file_page(k: Kernel, p: Process):
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd=f)
    p.write(a, b"user")
    return f, a


@pytest.mark.parametrize("right", [True, False])
def test_writeback_in_the_window(k: Kernel, p: Process, right: bool) -> None:
    """Writeback cleans the folio while the kernel holds it, in both patterns. The pin
    pattern's release redirties it and the file gets the kernel's bytes; the INCORRECT
    pattern's put_page() leaves it clean and the write is lost once the cache is dropped."""
    f, a = file_page(k, p)
    wrote: list[int] = []
    fn = pin_and_write if right else get_and_write_incorrect
    assert fn(k, a + 1, b"KERNEL", current=p, while_held=lambda: wrote.append(f.writeback())) \
        == 6
    assert wrote == [1]
    assert f.writeback() == (1 if right else 0)
    p.munmap(a, PAGE_SIZE)
    f.drop_caches()
    assert f.pread(0, 7) == (b"uKERNEL" if right else b"user\0\0\0")
    assert held(k) == 0 and k.sanitizer.reports == []


@pytest.mark.parametrize("right", [True, False])
def test_fork_and_parent_write_in_the_window(k: Kernel, p: Process, right: bool) -> None:
    """Anonymous memory: with the pin, fork copies the page for the child and the
    kernel's write reaches the parent; with get_user_pages() it reaches only the child."""
    a = anon_buffer(p, 1, b"u")
    kids: list[Process] = []

    def fork_and_write() -> None:
        kids.append(p.fork())
        p.write(a + 100, b"!")

    fn = pin_and_write if right else get_and_write_incorrect
    assert fn(k, a, b"KERN", current=p, while_held=fork_and_write) == 4
    parent, child = p.read(a, 4), kids[0].read(a, 4)
    assert (parent, child) == ((b"KERN", b"uuuu") if right else (b"uuuu", b"KERN"))


def test_pin_and_write_errors_leave_nothing_held(k: Kernel, p: Process) -> None:
    """A range running into unmapped memory: -EFAULT and no pin or reference kept."""
    a = anon_buffer(p, 2)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    assert pin_and_write(k, a, b"x" * (PAGE_SIZE + 1), current=p) == -EFAULT
    assert get_and_write_incorrect(k, a, b"x" * (PAGE_SIZE + 1), current=p) == -EFAULT
    assert p.read(a, 1) == b"u" and held(k) == 0
    assert k.sanitizer.outstanding() == [] and k.sanitizer.reports == []
