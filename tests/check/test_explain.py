"""k.explain() and k.why_unmovable(): the holders of a frame, with call sites, and what
each means; checked against what the model's migration and compaction actually do."""

from __future__ import annotations

import inspect

import pytest

from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
    Process,
)
from gupsim.check.explain import render_unmovable
from gupsim.memory.migrate import migrate_folio
from gupsim.mm.reclaim import compact_range

RW = PROT_READ | PROT_WRITE


def next_line() -> str:
    f = inspect.currentframe().f_back  # type: ignore[union-attr]
    assert f is not None
    return f"{f.f_code.co_filename}:{f.f_lineno + 1} in {f.f_code.co_name}"


@pytest.fixture
def k() -> Kernel:
    return Kernel(memory="64MiB")


@pytest.fixture
def p(k: Kernel) -> Process:
    return k.spawn("app")


def anon(p: Process, n: int) -> tuple[int, list[int]]:
    a = p.mmap(0, n * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(n):
        p.write(a + i * PAGE_SIZE, bytes([i + 1]))
    vma = p.mm.find_vma(a)
    return a, [int(x) for x in vma.pfn[:n]]


def test_pinned_page_names_the_pin_call_site(k: Kernel, p: Process) -> None:
    a, pfns = anon(p, 2)
    pages: list[Page | None] = []
    where = next_line()
    assert p.pin_user_pages(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    ex = k.explain(pages[0])
    [g] = ex.gup
    assert (g.how, g.call, g.site, g.longterm, g.pages) == (
        "FOLL_PIN", "pin_user_pages", where, True, 1)
    assert ex.maybe_dma_pinned and not ex.movable and ex.unaccounted_refs == 0
    [m] = ex.mappings
    assert (m.pid, m.address, m.writable, m.anon_exclusive) == (p.pid, a, True, True)
    assert where in ex.consequences["migration"] and "-EAGAIN" in ex.consequences["migration"]
    assert "copied for the child" in ex.consequences["fork"]
    assert where in str(ex) and ex.as_dict()["gup"][0]["site"] == where
    # the neighbour is held by its mapping only
    other = k.explain(pfns[1])
    assert other.gup == [] and other.movable and "shared copy-on-write" in \
        other.consequences["fork"]
    k.unpin_user_pages(pages)
    assert k.explain(pfns[0]).movable and k.explain(pfns[0]).gup == []


def test_foll_get_reference_is_named_and_blocks_migration(k: Kernel, p: Process) -> None:
    a, pfns = anon(p, 1)
    pages: list[Page | None] = []
    where = next_line()
    assert p.get_user_pages(a, 1, 0, pages) == 1
    ex = k.explain(pfns[0])
    [g] = ex.gup
    assert (g.how, g.call, g.site) == ("FOLL_GET", "get_user_pages", where)
    assert not ex.maybe_dma_pinned and not ex.movable
    assert ex.refcount == 2 and ex.unaccounted_refs == 0
    assert "shared copy-on-write" in ex.consequences["fork"]
    assert migrate_folio(k.alloc, ex.head, k.env.replace_cache).rc != 0   # as explained
    assert pages[0] is not None
    k.put_page(pages[0])
    ex = k.explain(pfns[0])
    assert ex.movable
    assert migrate_folio(k.alloc, ex.head, k.env.replace_cache).rc == 0


def test_page_cache_page(k: Kernel, p: Process) -> None:
    f = k.fs("ext4").create("data", 2 * PAGE_SIZE)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, f)
    p.write(a + PAGE_SIZE, b"x")
    pfn = int(p.mm.find_vma(a).pfn[1])
    ex = k.explain(pfn)
    assert ex.page_cache == {"mapping": f.inode_id, "index": 1}
    assert ex.kind == "FILE" and ex.gup == [] and ex.unaccounted_refs == 0
    assert [(m.pid, m.address) for m in ex.mappings] == [(p.pid, a + PAGE_SIZE)]
    assert "folio_mkclean" in ex.consequences["writeback"]
    assert ex.movable
    pages: list[Page | None] = []
    assert p.pin_user_pages(a + PAGE_SIZE, 1, FOLL_WRITE, pages) == 1
    ex = k.explain(pfn)
    assert "folio_maybe_dma_pinned" in ex.consequences["writeback"] and not ex.movable
    k.unpin_user_pages(pages)


def test_unaccounted_reference(k: Kernel, p: Process) -> None:
    """A reference nobody recorded (a kernel user outside GUP) shows as unaccounted."""
    _, pfns = anon(p, 1)
    k.mem.refcount[pfns[0]] += 1
    ex = k.explain(pfns[0])
    assert ex.unaccounted_refs == 1 and not ex.movable and ex.gup == []
    k.mem.refcount[pfns[0]] -= 1


def test_free_frame_and_bad_input(k: Kernel) -> None:
    free = k.mem.nr_pages - 1
    ex = k.explain(free)
    assert ex.kind == "FREE" and ex.mappings == [] and "free" in ex.consequences["state"]
    with pytest.raises(ValueError, match="outside memory"):
        k.explain(k.mem.nr_pages)
    with pytest.raises(TypeError, match="Page or a PFN"):
        k.explain("0x10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_pfn < end_pfn"):
        k.why_unmovable(10, 5)


def test_why_unmovable_lists_exactly_the_pinned_frames_and_matches_compaction(
        k: Kernel, p: Process) -> None:
    a, pfns = anon(p, 8)
    pin_a: list[Page | None] = []
    site_a = next_line()
    assert p.pin_user_pages(a + PAGE_SIZE, 2, FOLL_WRITE, pin_a) == 2
    get_b: list[Page | None] = []
    site_b = next_line()
    assert p.get_user_pages(a + 5 * PAGE_SIZE, 1, 0, get_b) == 1
    lo, hi = min(pfns), max(pfns) + 1
    rep = k.why_unmovable(lo, hi)
    held = {pfns[1], pfns[2], pfns[5]}
    assert {u.head for us in rep.values() for u in us} & set(pfns) == held
    assert sorted(u.head for u in rep[site_a]) == sorted([pfns[1], pfns[2]])
    assert [u.head for u in rep[site_b]] == [pfns[5]]
    text = render_unmovable(rep)
    assert site_a in text and "2 folio(s)" in text
    # what compaction of the same range actually does agrees
    res = compact_range(k.env, lo, hi)
    stuck = set(res.skipped) | set(res.failed)
    assert stuck == {u.head for us in rep.values() for u in us}
    assert held <= stuck
    moved = [int(x) for x in p.mm.find_vma(a).pfn[:8]]
    assert all(moved[i] == pfns[i] for i in (1, 2, 5))
    assert all(moved[i] != pfns[i] for i in (0, 3, 4, 6, 7))
    k.unpin_user_pages(pin_a)
    assert get_b[0] is not None
    k.put_page(get_b[0])
    assert k.why_unmovable(lo, hi) == {}


def test_movable_zone_frame_blocks_offline_while_pinned_as_compaction_shows() -> None:
    k = Kernel(memory="64MiB", movable="16MiB")
    p = k.spawn("app")
    a, pfns = anon(p, 4)
    assert k.explain(pfns[0]).zone == "MOVABLE"
    pages: list[Page | None] = []
    assert p.pin_user_pages(a, 1, FOLL_WRITE, pages) == 1        # short-term: stays put
    ex = k.explain(pfns[0])
    assert "blocks alloc_contig_range()" in ex.consequences["cma_offline"]
    assert compact_range(k.env, pfns[0], pfns[0] + 1).rc != 0
    k.unpin_user_pages(pages)
    assert "can be cleared" in k.explain(pfns[0]).consequences["cma_offline"]
    assert compact_range(k.env, pfns[0], pfns[0] + 1).rc == 0
    long: list[Page | None] = []
    assert p.pin_user_pages(a + PAGE_SIZE, 1, FOLL_WRITE | FOLL_LONGTERM, long) == 1
    assert long[0] is not None
    ex = k.explain(long[0])       # FOLL_LONGTERM migrated it out of ZONE_MOVABLE first
    assert ex.zone != "MOVABLE" and ex.pfn != pfns[1]
    assert "not in CMA or ZONE_MOVABLE" in ex.consequences["cma_offline"]
    k.unpin_user_pages(long)
