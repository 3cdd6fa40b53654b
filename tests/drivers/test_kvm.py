"""The model KVM (drivers/kvm.py): a case-3 user that maps guest memory without pins.

What is checked is what a VMM could observe: the bytes the guest loads, whether its
second-level entry is there, the pin counters, page refcounts, the notifier events,
warnings and the sanitizer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from gupsim.constants import (
    EEXIST,
    EINVAL,
    MADV_DONTNEED,
    MADV_PAGEOUT,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PROT_NONE,
)
from gupsim.drivers.kvm import MAX_FAULT_RETRIES, KvmVm, kvm_create_vm
from gupsim.mm.mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_UNMAP,
    invalidate_end,
    invalidate_start,
    mmu_notifier_clear_young,
    mmu_notifier_test_young,
)

NPAGES = 4


def pins(k: gupsim.Kernel) -> tuple[int, int]:
    return k.vmstat["nr_foll_pin_acquired"], k.vmstat["nr_foll_pin_released"]


def guest(swap: int = 0, shared: bool = False
          ) -> tuple[gupsim.Kernel, gupsim.Process, int, KvmVm]:
    """A VMM whose slot 0 is NPAGES pages holding b"page<i>" at the start of page i."""
    k = gupsim.Kernel(memory="256MiB", swap=swap)
    p = k.spawn("vmm")
    a = p.mmap(0, NPAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
               (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS)
    for i in range(NPAGES):
        p.write(a + i * PAGE_SIZE, b"page%d" % i)
    vm = kvm_create_vm(k, p)
    assert vm.set_user_memory_region(0, 0, NPAGES * PAGE_SIZE, a) == 0
    return k, p, a, vm


def test_the_guest_reads_the_process_memory_through_references_not_pins() -> None:
    k, p, a, vm = guest()
    before = pins(k)
    vma = p.mm.find_vma(a)
    first = (a - vma.start) >> gupsim.constants.PAGE_SHIFT
    refs = [k.page(int(vma.pfn[first + i])).refcount for i in range(NPAGES)]
    assert vm.guest_read(0, 5) == b"page0"
    assert vm.guest_read(2 * PAGE_SIZE, 5) == b"page2"
    assert vm.guest_read(PAGE_SIZE - 2, 4) == b"\0\0pa"       # across a page boundary
    assert pins(k) == before, "KVM took pins"
    pfn = vm.spte(0)
    assert pfn is not None and pfn[1], "a read fault of a writable page maps it writable"
    # the secondary entry holds no reference: the frame's count is its mapping's only
    assert k.page(pfn[0]).refcount == 1
    assert [k.page(int(vma.pfn[first + i])).refcount for i in range(NPAGES)] == refs
    assert vm.stat["pf_fixed"] == 3 and vm.stat["pf_retry"] == 0
    assert k.sanitizer.reports == [] and not k.warnings.events


def test_a_read_of_untouched_memory_maps_the_zero_page_read_only_then_a_write_copies() -> None:
    k = gupsim.Kernel(memory="256MiB")
    p = k.spawn("vmm")
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    vm = kvm_create_vm(k, p)
    vm.set_user_memory_region(0, 0, PAGE_SIZE, a)
    assert vm.guest_read(0, 4) == bytes(4)
    zero = vm.spte(0)
    assert zero is not None and not zero[1], "the zero page must be mapped read-only"
    vm.guest_write(0, b"hi")
    now = vm.spte(0)
    assert now is not None and now[1] and now[0] != zero[0]
    assert p.read(a, 2) == b"hi", "the guest's write reaches the process's new page"
    assert pins(k) == (0, 0)


def _munmap(p: gupsim.Process, a: int) -> None:
    p.munmap(a, PAGE_SIZE)


def _dontneed(p: gupsim.Process, a: int) -> None:
    p.madvise(a, PAGE_SIZE, MADV_DONTNEED)


def _mprotect(p: gupsim.Process, a: int) -> None:
    p.mprotect(a, PAGE_SIZE, PROT_READ)


def _fork(p: gupsim.Process, a: int) -> None:
    p.fork()


def _mremap(p: gupsim.Process, a: int) -> None:
    dst = p.mmap(0, PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.mremap(a, PAGE_SIZE, PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst)


def _map_fixed(p: gupsim.Process, a: int) -> None:
    p.mmap(a, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | gupsim.MAP_FIXED)


def _pageout(p: gupsim.Process, a: int) -> None:
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)


PATHS: dict[str, tuple[Callable[[gupsim.Process, int], None], object, bytes | None]] = {
    # path: (what the VMM does to page 0, the event KVM hears, what the guest reads next)
    "munmap": (_munmap, MMU_NOTIFY_UNMAP, None),
    "MADV_DONTNEED": (_dontneed, MMU_NOTIFY_CLEAR, bytes(5)),
    "mprotect": (_mprotect, MMU_NOTIFY_PROTECTION_VMA, b"page0"),
    "fork": (_fork, MMU_NOTIFY_PROTECTION_PAGE, b"page0"),
    "mremap away": (_mremap, MMU_NOTIFY_UNMAP, None),
    "MAP_FIXED over it": (_map_fixed, MMU_NOTIFY_UNMAP, bytes(5)),
    "MADV_PAGEOUT (swap)": (_pageout, MMU_NOTIFY_CLEAR, b"page0"),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_invalidating_path_zaps_the_secondary_entry(path: str) -> None:
    change, event, then = PATHS[path]
    k, p, a, vm = guest(swap=1 << 20)
    assert vm.guest_read(0, 5) == b"page0" and vm.guest_read(PAGE_SIZE, 5) == b"page1"
    vm.notifier_calls.clear()
    change(p, a)
    assert vm.spte(0) is None, f"{path} left the guest's entry in place"
    if path != "fork":          # fork write-protects (so invalidates) the whole COW VMA
        assert vm.spte(PAGE_SIZE) is not None, f"{path} zapped a page outside its range"
    assert any(e == event and s <= a < end for e, s, end in vm.notifier_calls), \
        vm.notifier_calls
    if then is None:
        with pytest.raises(OSError) as err:
            vm.guest_read(0, 5)
        assert err.value.errno == gupsim.constants.EFAULT
    else:
        assert vm.guest_read(0, 5) == then
    assert pins(k) == (0, 0)
    assert k.sanitizer.reports == [] and not k.warnings.events


def test_without_the_zap_the_guest_would_read_a_freed_frame() -> None:
    """The check above can fail: a KVM that ignores invalidations reads stale memory."""
    k, p, a, vm = guest()
    vm.guest_read(0, 5)
    vm.kvm_unmap_gfn_range = lambda slot, i0, i1: 0     # type: ignore[method-assign]
    p.madvise(a, PAGE_SIZE, MADV_DONTNEED)
    assert vm.spte(0) is not None, "the stale entry stays"
    vm.guest_read(0, 5)
    assert any("free frame" in str(e) for e in k.warnings.events), \
        "the guest's load of the freed frame went unnoticed"


def test_after_fork_the_guest_follows_the_parent_and_the_child_keeps_its_copy() -> None:
    k, p, a, vm = guest()
    assert vm.guest_read(0, 5) == b"page0"
    child = p.fork()
    p.write(a, b"PARENT")
    assert vm.guest_read(0, 6) == b"PARENT"
    assert child.read(a, 5) == b"page0"
    vm.guest_write(PAGE_SIZE, b"GUEST")          # a guest write breaks COW for the parent
    assert p.read(a + PAGE_SIZE, 5) == b"GUEST" and child.read(a + PAGE_SIZE, 5) == b"page1"
    assert pins(k) == (0, 0)


def test_a_fault_racing_an_invalidation_retries_and_drops_its_reference() -> None:
    k, p, a, vm = guest()
    p.read(a, 1)
    vma = p.mm.find_vma(a)
    old = k.page(int(vma.pfn[(a - vma.start) >> gupsim.constants.PAGE_SHIFT]))
    assert old.refcount == 1
    vm.on_race("kvm:after_faultin", lambda: p.madvise(a, PAGE_SIZE, MADV_DONTNEED))
    assert vm.guest_read(0, 5) == bytes(5), "the retry must see the memory after the zap"
    assert vm.stat["pf_retry"] == 1
    assert vm.spte(0) is not None
    assert old.refcount == 0, "the raced lookup's reference was not dropped"
    assert k.sanitizer.reports == [] and not k.warnings.events


def test_a_fault_during_an_invalidation_of_its_frame_retries() -> None:
    k, p, a, vm = guest()
    rng = invalidate_start(p.mm, MMU_NOTIFY_CLEAR, a, a + PAGE_SIZE)
    assert vm.mmu_invalidate_in_progress == 1
    assert vm.page_fault(0, False) == -gupsim.constants.EAGAIN
    assert vm.page_fault(PAGE_SIZE, False) == 0, \
        "a frame outside the range in progress is mapped (the seq has not moved yet)"
    with pytest.raises(OSError) as err:
        vm.guest_read(0, 1)
    assert err.value.errno == gupsim.constants.EAGAIN
    assert vm.stat["pf_retry"] == MAX_FAULT_RETRIES
    seq = vm.mmu_invalidate_seq
    invalidate_end(rng)
    assert vm.mmu_invalidate_seq == seq + 1 and vm.mmu_invalidate_in_progress == 0
    assert vm.page_fault(0, False) == 0
    assert vm.guest_read(0, 5) == b"page0"


def test_an_invalidation_elsewhere_leaves_the_seq_alone() -> None:
    k, p, a, vm = guest()
    other = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(other, b"x")
    seq = vm.mmu_invalidate_seq
    p.madvise(other, PAGE_SIZE, MADV_DONTNEED)
    assert vm.mmu_invalidate_seq == seq


def test_exit_releases_every_secondary_entry_and_the_notifier() -> None:
    k, p, a, vm = guest()
    for i in range(NPAGES):
        vm.guest_read(i * PAGE_SIZE, 1)
    assert sum(s.mapped() for s in vm.memslots.values()) == NPAGES
    p.exit()
    assert sum(s.mapped() for s in vm.memslots.values()) == 0
    assert not vm.mmu_notifier.hashed
    vm.close()                          # the fd closes after exit_mmap: nothing more to do
    assert k.sanitizer.reports == [] and not k.warnings.events
    assert pins(k) == (0, 0)


def test_closing_the_vm_unregisters_it() -> None:
    k, p, a, vm = guest()
    vm.guest_read(0, 1)
    vm.close()
    assert sum(s.mapped() for s in vm.memslots.values()) == 0
    calls = len(vm.notifier_calls)
    p.munmap(a, PAGE_SIZE)
    assert len(vm.notifier_calls) == calls, "a closed VM still hears invalidations"
    with pytest.raises(OSError):
        vm.guest_read(0, 1)


def test_aging_tests_and_clears_the_guest_accessed_bits() -> None:
    k, p, a, vm = guest()
    assert mmu_notifier_test_young(p.mm, a) == 0
    vm.guest_read(0, 1)
    assert mmu_notifier_test_young(p.mm, a) == 1
    assert mmu_notifier_test_young(p.mm, a + PAGE_SIZE) == 0
    assert mmu_notifier_clear_young(p.mm, a, a + NPAGES * PAGE_SIZE) == 1
    assert mmu_notifier_test_young(p.mm, a) == 0
    assert vm.spte(0) is not None, "aging keeps the entry"
    vm.guest_read(0, 1)
    assert mmu_notifier_test_young(p.mm, a) == 1


def test_memslot_errors_and_deletion() -> None:
    k, p, a, vm = guest()
    assert vm.set_user_memory_region(1, 1, PAGE_SIZE, a) == -EINVAL
    assert vm.set_user_memory_region(1, PAGE_SIZE, PAGE_SIZE, a) == -EEXIST
    assert vm.set_user_memory_region(2, 0x100000, PAGE_SIZE, a + 1) == -EINVAL
    vm.guest_read(0, 1)
    assert vm.set_user_memory_region(0, 0, 0, a) == 0
    with pytest.raises(OSError) as err:
        vm.guest_read(0, 1)
    assert err.value.errno == gupsim.constants.EFAULT
    assert vm.set_user_memory_region(0, 0, 0, a) == -EINVAL


def test_a_guest_read_outside_every_slot_faults() -> None:
    k, p, a, vm = guest()
    with pytest.raises(OSError) as err:
        vm.guest_read(NPAGES * PAGE_SIZE, 1)
    assert err.value.errno == gupsim.constants.EFAULT


def test_unknown_race_point() -> None:
    k, p, a, vm = guest()
    with pytest.raises(ValueError, match="kvm:after_faultin"):
        vm.on_race("kvm:nowhere", lambda: None)
