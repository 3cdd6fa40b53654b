"""A write fault on a PTE-mapped large anonymous folio reuses it (6.15+,
wp_can_reuse_anon_folio()) when every reference is a mapping and every mapping is this
mm's. The faulting VMA's own entries answer that without walking every mm's page tables
when they account for all the mappings; the answer must be the walk's in every case:
mapped by this VMA alone, by two VMAs of this mm, by another mm too, or pinned."""

from __future__ import annotations

import pytest

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from gupsim.constants import MADV_HUGEPAGE, MADV_POPULATE_WRITE
from gupsim.gup import FOLL_LONGTERM, FOLL_WRITE
from gupsim.mm import fault

RW = PROT_READ | PROT_WRITE
THP = 2 << 20


def _split_thp(how: str) -> tuple[gupsim.Kernel, gupsim.Process, int, int, object]:
    """A 2 MiB anonymous THP mapped by PTEs in `p`, arranged as `how` says; returns
    (kernel, process, address, head PFN, something to keep alive)."""
    k = gupsim.Kernel(memory="128MiB", thp="always")
    p = k.spawn("owner")
    a = p.mmap(0, 2 * THP, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    a = (a + THP - 1) // THP * THP
    p.madvise(a, THP, MADV_HUGEPAGE)
    p.madvise(a, THP, MADV_POPULATE_WRITE)
    keep: object = None
    if how == "child-pmd":                         # the child keeps the folio whole (PMD)
        keep = p.fork()
    p.mprotect(a, THP // 2, PROT_READ)             # splits the VMA, and the PMD into PTEs
    if how == "child-pmd":
        p.mprotect(a, THP // 2, RW)
    if how == "one-vma":
        p.mprotect(a, THP // 2, RW)                # the VMAs merge again
    elif how == "child":
        keep = p.fork()
    elif how == "pinned":
        p.mprotect(a, THP // 2, RW)
        keep = gupsim.PageArray(1)
        assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, keep) == 1
    elif how == "child-gone":
        child = p.fork()
        child.exit()
        p.mprotect(a, THP // 2, RW)
    vma = p.mm.find_vma(a)
    assert vma is not None
    head = k.mem.head_of(int(vma.pfn[vma.idx(a)]))
    assert k.mem.order[head] > 0, "the THP is still one large folio"
    return k, p, a, head, keep


@pytest.mark.parametrize("how,reused", [("one-vma", True), ("two-vmas", True),
                                        ("child", False), ("pinned", False),
                                        ("child-gone", True), ("child-pmd", False)])
def test_the_faulting_vmas_answer_is_the_walks(how: str, reused: bool) -> None:
    k, p, a, head, keep = _split_thp(how)
    env = k.env
    vma = p.mm.find_vma(a)
    walk = fault._anon_reusable_large(env, p.mm, head)
    local = fault._anon_reusable_large(env, p.mm, head, vma)
    assert walk == local == reused
    if how == "one-vma":                           # every mapping is in this VMA
        assert len(fault.entries_mapping(vma, head, 512)) == 512
    if how == "child":                 # this VMA maps half; the rest, and the child, elsewhere
        assert len(fault.entries_mapping(vma, head, 512)) == 256
    if how == "child-pmd":             # all 512 PTEs here, and the child's PMD
        assert len(fault.entries_mapping(vma, head, 512)) == 512
        assert k.mem.entire_mapcount[head] == 1
