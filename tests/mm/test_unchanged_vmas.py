"""mprotect and madvise leave a VMA they do not change as it is: no VMA split, so no
THP split either, and no EINVAL for a hugetlb range that is not huge-page aligned
(mprotect_fixup and madvise_update_vma return before splitting). Found by `gupsim fuzz`
on the host; the scenario-level cases are in tests/regressions/."""

from __future__ import annotations

import errno

import pytest
from test_memory_kinds import entry, thp

from gupsim import (
    MADV_DONTFORK,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.mm import PTE

RW = PROT_READ | PROT_WRITE


def test_noop_mprotect_of_part_of_a_thp_keeps_the_pmd(k, p) -> None:
    a, n = thp(k, p)
    vmas = len(p.mm.vmas)
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, RW)          # it is RW already
    assert entry(p, a)[1] & PTE.PMD
    assert len(p.mm.vmas) == vmas
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, PROT_READ)   # a real change splits
    assert not entry(p, a)[1] & PTE.PMD


def test_noop_madvise_of_part_of_a_thp_keeps_the_pmd(k, p) -> None:
    a, n = thp(k, p)
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_NOHUGEPAGE)
    assert not entry(p, a)[1] & PTE.PMD               # a real change splits
    b, _ = thp(k, p)
    p.madvise(b, n, MADV_NOHUGEPAGE)
    p.madvise(b, n, MADV_NOHUGEPAGE)                  # the same again: nothing changes
    p.madvise(b + PAGE_SIZE, PAGE_SIZE, MADV_NOHUGEPAGE)
    assert entry(p, b)[1] & PTE.PMD


def test_hugetlb_splits_only_at_huge_page_boundaries(k, p) -> None:
    a = p.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
    p.mprotect(a, PAGE_SIZE, RW)                      # unchanged: fine, unaligned or not
    p.madvise(a, PAGE_SIZE, MADV_MERGEABLE)           # KSM leaves hugetlb alone
    for change in (lambda: p.mprotect(a, PAGE_SIZE, PROT_READ),
                   lambda: p.madvise(a, PAGE_SIZE, MADV_DONTFORK),
                   lambda: p.munmap(a + PAGE_SIZE, PMD_SIZE)):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EINVAL
    p.madvise(a, PMD_SIZE, MADV_DONTFORK)             # whole huge pages: fine
    assert len(p.mm.vmas) == 2
