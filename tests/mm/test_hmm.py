"""mm/hmm.py: hmm_range_fault() answers what mm/hmm.c answers, and takes no reference."""

from __future__ import annotations

import numpy as np
import pytest
from callcount import python_calls
from notifier_helpers import Mirror

import gupsim
from gupsim import (
    EBUSY,
    EFAULT,
    EINVAL,
    EPERM,
    HMM_PFN_ERROR,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGETLB,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    HmmRange,
    MmuIntervalNotifier,
    hmm_pfn_to_map_order,
    hmm_pfn_to_pfn,
    hmm_range_fault,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
)
from gupsim.mm.hmm import HMM_PFN_DMA_MAPPED, HMM_PFN_ORDER_SHIFT
from gupsim.mm.vma import VM

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
N = 8


def _setup(k: gupsim.Kernel | None = None, prot: int = RW, n: int = N
           ) -> tuple[gupsim.Kernel, gupsim.Process, int, MmuIntervalNotifier]:
    k = k or gupsim.Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, n * PAGE_SIZE, prot, ANON)
    sub = MmuIntervalNotifier()
    assert mmu_interval_notifier_insert(sub, p.mm, a, n * PAGE_SIZE, Mirror()) == 0
    return k, p, a, sub


def _fault(sub: MmuIntervalNotifier, start: int, end: int, flags: int = 0, mask: int = 0,
           pfns: np.ndarray | None = None) -> tuple[int, HmmRange]:
    """One locked call, after read_begin, as a driver makes it."""
    rng = HmmRange(sub, start, end, default_flags=flags, pfn_flags_mask=mask,
                   hmm_pfns=pfns if pfns is not None else np.zeros(0, dtype=np.uint64))
    rng.notifier_seq = mmu_interval_read_begin(sub)
    assert sub.mm is not None
    sub.mm.mmap_lock.readers += 1
    try:
        return hmm_range_fault(rng), rng
    finally:
        sub.mm.mmap_lock.readers -= 1


def _retry(sub: MmuIntervalNotifier, start: int, end: int, flags: int) -> tuple[int, HmmRange]:
    """The driver's loop: again while -EBUSY."""
    for _ in range(10):
        ret, rng = _fault(sub, start, end, flags)
        if ret != -EBUSY:
            return ret, rng
    raise AssertionError("hmm_range_fault kept answering -EBUSY")


def _pfn(p: gupsim.Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None
    return int(vma.pfn[vma.idx(addr)])


def test_flag_bits_are_the_kernels() -> None:
    """The 6.16 - 6.18 layout: VALID, WRITE, ERROR at the top bits, order field at 53."""
    assert (HMM_PFN_VALID, HMM_PFN_WRITE, HMM_PFN_ERROR) == (1 << 63, 1 << 62, 1 << 61)
    assert HMM_PFN_DMA_MAPPED == 1 << 60 and HMM_PFN_ORDER_SHIFT == 53
    assert HMM_PFN_REQ_FAULT == HMM_PFN_VALID and HMM_PFN_REQ_WRITE == HMM_PFN_WRITE
    e = 0x1234 | HMM_PFN_VALID | (9 << HMM_PFN_ORDER_SHIFT)
    assert hmm_pfn_to_pfn(e) == 0x1234 and hmm_pfn_to_map_order(e) == 9


def test_snapshot_without_faulting_reports_state() -> None:
    """No request: an untouched page is 0, a written one VALID|WRITE with its pfn, a
    read-only one VALID; nothing is faulted in."""
    k, p, a, sub = _setup()
    p.write(a, b"x")
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, PROT_READ)
    p.read(a + PAGE_SIZE, 1)            # the zero page, read-only
    faults = k.vmstat["pgfault"]
    ret, rng = _fault(sub, a, a + N * PAGE_SIZE)
    assert ret == 0
    assert int(rng.hmm_pfns[0]) == _pfn(p, a) | HMM_PFN_VALID | HMM_PFN_WRITE
    assert int(rng.hmm_pfns[1]) == k.mem.zero_pfn | HMM_PFN_VALID
    assert rng.hmm_pfns[2:].tolist() == [0] * (N - 2)
    assert k.vmstat["pgfault"] == faults


def test_req_fault_faults_in_and_takes_no_reference() -> None:
    """REQ_FAULT maps every page (the zero page for reads); no refcount or pin moves."""
    k, p, a, sub = _setup()
    ret, rng = _fault(sub, a, a + N * PAGE_SIZE, HMM_PFN_REQ_FAULT)
    assert ret == 0
    assert all(int(e) == k.mem.zero_pfn | HMM_PFN_VALID for e in rng.hmm_pfns)
    ret, rng = _retry(sub, a, a + N * PAGE_SIZE, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert ret == 0
    for i, e in enumerate(rng.hmm_pfns.tolist()):
        assert e & (HMM_PFN_VALID | HMM_PFN_WRITE) == HMM_PFN_VALID | HMM_PFN_WRITE
        assert hmm_pfn_to_pfn(e) == _pfn(p, a + i * PAGE_SIZE)
        assert k.page(hmm_pfn_to_pfn(e)).refcount == 1      # the mapping's, nothing more
    assert k.vmstat["nr_foll_pin_acquired"] == 0


def test_write_fault_of_the_zero_page_invalidates_and_answers_ebusy() -> None:
    """A REQ_WRITE fault that breaks COW from the zero page changes PTEs in the range:
    the notifier sequence moves and the call answers -EBUSY, as the kernel's does."""
    _, p, a, sub = _setup()
    p.read(a, 1)
    ret, _ = _fault(sub, a, a + PAGE_SIZE, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert ret == -EBUSY
    ret, rng = _fault(sub, a, a + PAGE_SIZE, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert ret == 0 and int(rng.hmm_pfns[0]) & HMM_PFN_WRITE


def test_ebusy_when_the_sequence_moved() -> None:
    """An invalidation between read_begin and the walk: -EBUSY, the pfns untouched."""
    _, p, a, sub = _setup()
    p.write(a, b"x" * N * PAGE_SIZE)
    rng = HmmRange(sub, a, a + N * PAGE_SIZE, default_flags=HMM_PFN_REQ_FAULT)
    rng.notifier_seq = mmu_interval_read_begin(sub)
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    p.mm.mmap_lock.readers += 1
    assert hmm_range_fault(rng) == -EBUSY
    p.mm.mmap_lock.readers -= 1
    assert rng.hmm_pfns.tolist() == [0] * N


def test_hole_is_error_or_efault() -> None:
    """No VMA: HMM_PFN_ERROR when nothing is required, -EFAULT when a fault is."""
    _, p, a, sub = _setup()
    p.munmap(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE)
    ret, rng = _fault(sub, a, a + N * PAGE_SIZE)
    assert ret == 0
    assert rng.hmm_pfns[2:4].tolist() == [HMM_PFN_ERROR] * 2
    assert rng.hmm_pfns[4:].tolist() == [0] * 4
    ret, _ = _fault(sub, a, a + N * PAGE_SIZE, HMM_PFN_REQ_FAULT)
    assert ret == -EFAULT


@pytest.mark.parametrize("how", ["PROT_NONE", "VM_PFNMAP", "VM_IO", "VM_MIXEDMAP"])
def test_unreadable_or_pfn_vmas(how: str) -> None:
    """hmm_vma_walk_test(): a VMA without read access or without struct pages is an error
    entry, and a hard -EFAULT when a fault is required."""
    _, p, a, sub = _setup()
    if how == "PROT_NONE":
        p.mprotect(a, N * PAGE_SIZE, PROT_NONE)
    else:
        vma = p.mm.find_vma(a)
        assert vma is not None
        vma.flags |= getattr(VM, how[3:])   # the model has no driver mmap that sets these
    ret, rng = _fault(sub, a, a + N * PAGE_SIZE)
    assert ret == 0 and rng.hmm_pfns.tolist() == [HMM_PFN_ERROR] * N
    assert _fault(sub, a, a + N * PAGE_SIZE, HMM_PFN_REQ_FAULT)[0] == -EFAULT


def test_write_to_a_read_only_vma_is_eperm() -> None:
    """REQ_WRITE on a VMA without VM_WRITE: -EPERM, and no page was written."""
    k, p, a, sub = _setup(prot=PROT_READ)
    ret, _ = _fault(sub, a, a + N * PAGE_SIZE, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)
    assert ret == -EPERM
    assert k.vmstat["cow_fault"] == 0


def test_per_page_requests_through_pfn_flags_mask() -> None:
    """pfn_flags_mask lets each input entry ask for itself: pages before the first one
    that asks are reported as they are (0), the one that asks is valid."""
    _, _, a, sub = _setup()
    pfns = np.zeros(N, dtype=np.uint64)
    pfns[2] = HMM_PFN_REQ_FAULT
    for _ in range(3):
        ret, rng = _fault(sub, a, a + N * PAGE_SIZE, 0, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE,
                          pfns.copy())
        if ret != -EBUSY:
            break
    assert ret == 0
    assert rng.hmm_pfns[:2].tolist() == [0, 0] and int(rng.hmm_pfns[2]) & HMM_PFN_VALID


def test_sticky_flags_pass_through() -> None:
    """HMM_PFN_DMA_MAPPED on input stays on output (HMM_PFN_INOUT_FLAGS)."""
    _, p, a, sub = _setup()
    p.write(a, b"x")
    pfns = np.full(N, HMM_PFN_DMA_MAPPED, dtype=np.uint64)
    ret, rng = _fault(sub, a, a + N * PAGE_SIZE, pfns=pfns)
    assert ret == 0 and all(int(e) & HMM_PFN_DMA_MAPPED for e in rng.hmm_pfns)
    assert int(rng.hmm_pfns[0]) & HMM_PFN_VALID


def test_huge_mappings_report_their_order() -> None:
    """A PMD-mapped THP and a 2 MiB hugetlb page are reported with order 9."""
    k = gupsim.Kernel(memory="256MiB", thp="always", nr_hugepages=2)
    p = k.spawn("app")
    size = 4 << 20
    a = p.mmap(0, size, RW, ANON)
    a2 = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.write(a2, b"huge")
    h = p.mmap(0, 2 << 20, RW, ANON | MAP_HUGETLB)
    p.write(h, b"tlb")
    for base in (a2, h):
        sub = MmuIntervalNotifier()
        assert mmu_interval_notifier_insert(sub, p.mm, base, 2 << 20, Mirror()) == 0
        ret, rng = _fault(sub, base, base + (2 << 20))
        assert ret == 0
        assert {hmm_pfn_to_map_order(int(e)) for e in rng.hmm_pfns} == {9}
        assert hmm_pfn_to_pfn(int(rng.hmm_pfns[1])) == hmm_pfn_to_pfn(int(rng.hmm_pfns[0])) + 1


def test_mmap_lock_is_asserted() -> None:
    """The kernel asserts mmap_lock is held; the model warns, takes it, and gives it back."""
    k, p, a, sub = _setup()
    rng = HmmRange(sub, a, a + PAGE_SIZE, default_flags=HMM_PFN_REQ_FAULT)
    rng.notifier_seq = mmu_interval_read_begin(sub)
    assert hmm_range_fault(rng) == 0
    assert "hmm_range_fault: mmap_lock not held" in k.warnings.sites()
    assert not p.mm.mmap_lock.held()


def test_bad_ranges() -> None:
    """An empty range is -EINVAL; a misaligned one or a short pfn array is a usage error."""
    _, _, a, sub = _setup()
    assert hmm_range_fault(HmmRange(sub, a, a)) == -EINVAL
    with pytest.raises(ValueError, match="page aligned"):
        HmmRange(sub, a + 1, a + PAGE_SIZE)
    with pytest.raises(ValueError, match="one entry per page"):
        hmm_range_fault(HmmRange(sub, a, a + 2 * PAGE_SIZE,
                                 hmm_pfns=np.zeros(1, dtype=np.uint64)))


def test_refault_after_munmap_and_new_mapping_finds_the_new_frame() -> None:
    """A mapping replaced at the same address: the next call reports the new frame."""
    _, p, a, sub = _setup()
    p.write(a, b"old")
    old = _pfn(p, a)
    ret, rng = _fault(sub, a, a + PAGE_SIZE, HMM_PFN_REQ_FAULT)
    assert ret == 0 and hmm_pfn_to_pfn(int(rng.hmm_pfns[0])) == old
    p.mmap(a, PAGE_SIZE, RW, ANON | MAP_FIXED)
    p.write(a, b"new")
    ret, rng = _fault(sub, a, a + PAGE_SIZE, HMM_PFN_REQ_FAULT)
    assert ret == 0 and hmm_pfn_to_pfn(int(rng.hmm_pfns[0])) == _pfn(p, a)



def test_vectorised_1gib_walk() -> None:
    """Walking a populated 1 GiB range runs the same Python as walking 1024 pages."""
    k = gupsim.Kernel(memory="2GiB")
    p = k.spawn("app")
    n = 262144
    big = p.mmap(0, n * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    small = p.mmap(0, 1024 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    subs = []
    for base, pages in ((big, n), (small, 1024)):
        sub = MmuIntervalNotifier()
        assert mmu_interval_notifier_insert(sub, p.mm, base, pages * PAGE_SIZE, Mirror()) == 0
        subs.append(sub)
    r_big = HmmRange(subs[0], big, big + n * PAGE_SIZE, default_flags=HMM_PFN_REQ_FAULT)
    r_small = HmmRange(subs[1], small, small + 1024 * PAGE_SIZE,
                       default_flags=HMM_PFN_REQ_FAULT)
    for r in (r_small, r_big):
        r.notifier_seq = mmu_interval_read_begin(r.notifier)
    p.mm.mmap_lock.readers += 1
    assert hmm_range_fault(r_small) == 0            # warm-up
    c_small, _, ret_small = python_calls(lambda: hmm_range_fault(r_small))
    c_big, _, ret_big = python_calls(lambda: hmm_range_fault(r_big))
    p.mm.mmap_lock.readers -= 1
    assert (ret_small, ret_big) == (0, 0)
    assert c_big <= c_small + 20, (c_small, c_big)
    vma = p.mm.find_vma(big)
    assert vma is not None
    assert np.array_equal(r_big.hmm_pfns & np.uint64((1 << 53) - 1), vma.pfn.astype(np.uint64))
