"""KVM as an MMU-notifier user (pin_user_pages.rst case 3): guest memory without pins.

What it models (virt/kvm/kvm_main.c and the x86 TDP MMU, Linux 6.13 and later):

- A VM (`KvmVm`, KVM_CREATE_VM) holds the creating process's mm (`mmgrab()`) and a
  classic MMU notifier on it (`mmu_notifier_register()` with `kvm_mmu_notifier_ops`).
  Memory slots (`KvmMemorySlot`, KVM_SET_USER_MEMORY_REGION) map guest frames
  [base_gfn, base_gfn + npages) onto the user range at `userspace_addr`.
- The secondary page table (EPT/NPT: gfn -> pfn, writable, accessed) is empty at first
  and filled on a guest access that misses it, as `kvm_tdp_page_fault()` does: read
  `mmu_invalidate_seq`, look the frame up with `__kvm_faultin_pfn()` ->
  `kvm_follow_pfn()` -> `hva_to_pfn()`: `hva_to_pfn_fast()` tries
  `get_user_page_fast_only(hva, FOLL_WRITE)` (x86 always passes `map_writable`, so a
  read fault tries it too); failing that, `hva_to_pfn_slow()` calls
  `get_user_pages_unlocked(hva, 1, FOLL_HWPOISON | FOLL_HONOR_NUMA_FAULT [| FOLL_WRITE])`
  and, for a read fault, upgrades to a writable mapping when
  `get_user_page_fast_only(FOLL_WRITE)` now succeeds. Both take a FOLL_GET reference,
  never a pin. Then, under `mmu_lock`, a fault that raced an invalidation
  (`mmu_invalidate_retry_gfn()`: one in progress over the gfn, or the seq moved) drops
  its reference and retries; otherwise it installs the entry and drops the reference
  (`kvm_release_faultin_page()` -> `put_page()`): the secondary mapping holds none.
- `invalidate_range_start` (`kvm_mmu_notifier_invalidate_range_start()`) counts
  itself in `mmu_invalidate_in_progress`, widens the in-progress gfn range, and zaps
  every secondary entry of every slot that the hva range covers (`kvm_unmap_gfn_range()`),
  whatever the event; `invalidate_range_end` bumps `mmu_invalidate_seq` and leaves the
  in-progress count. `release` (exit_mmap) zaps everything (`kvm_flush_shadow_all()`);
  `clear_young`, `clear_flush_young` and `test_young` age the secondary accessed bits.
- The pinning path, `__kvm_vcpu_map()` (`kfp->pin`: `pin_user_pages*` for KVM's own
  direct accesses, nested virtualisation and the like), is not modelled: a guest's own
  loads and stores never use it.

Simplifications: one address space, 4 KiB secondary entries only (no huge SPTEs), no
dirty logging, no memory attributes or guest_memfd, one vCPU whose accesses are
`guest_read()` / `guest_write()` of guest-physical addresses. The model is
single-threaded: a fault met while an invalidation is in progress (from a race hook or
a notifier callback) retries at once, and after `MAX_FAULT_RETRIES` gives -EAGAIN
instead of spinning. `race_hooks["kvm:after_faultin"]` run once between the lookup and
`mmu_lock`, the window where a concurrent invalidation forces a retry.

Checked against a real guest (`live/kvm.py`, catalogue cases `kvm: ...`): after
MADV_DONTNEED the guest reads zeros (anon) or the page cache's data (shared memfd);
after fork and a parent write it reads the parent's new data (the VM follows the mm
that created it, and the child cannot run the VM); after munmap its load fails, and
after a new mmap at the same address it reads the new memory, since a memory slot keeps
a user address, not pages. No step moves nr_foll_pin_acquired/released. Where the
slot's address has no mapping the host answers with an MMIO exit (KVM emulates the load
and finds nothing to read) rather than KVM_RUN's -EFAULT; both are EFAULT at the
protocol level. A read fault of untouched anonymous memory maps the shared zero page
read-only (the FOLL_WRITE fast lookup fails, the slow one without FOLL_WRITE finds the
zero page), and a later guest write faults again and breaks COW.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import (
    EAGAIN,
    EBADF,
    EEXIST,
    EFAULT,
    EINVAL,
    FOLL_HONOR_NUMA_FAULT,
    FOLL_HWPOISON,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from ..gup import FOLL_WRITE
from ..mm.mmu_notifier import (
    MmuNotifier,
    MmuNotifierOps,
    MmuNotifierRange,
    mmu_notifier_register,
    mmu_notifier_unregister,
)

if TYPE_CHECKING:
    from ..kernel import Kernel, Process
    from ..memory.page import Page
    from ..mm.mm_struct import MM

__gupsim_call_site__ = True     # the sanitizer names this driver's lines (see warn.py)

KVM_API_VERSION = 12
KVM_USER_MEM_SLOTS = 32767          # x86's KVM_MAX_NR_USER_MEMSLOTS
MAX_FAULT_RETRIES = 8               # model: a vCPU would spin; we give up with -EAGAIN
RACE_POINTS = ("kvm:after_faultin",)
NO_PFN = -1


@dataclass(eq=False)
class KvmMemorySlot:
    """struct kvm_memory_slot plus its part of the secondary page table (per gfn)."""

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    spte_pfn: np.ndarray = field(init=False)        # NO_PFN where nothing is mapped
    spte_writable: np.ndarray = field(init=False)
    spte_young: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.spte_pfn = np.full(self.npages, NO_PFN, dtype=np.int64)
        self.spte_writable = np.zeros(self.npages, dtype=bool)
        self.spte_young = np.zeros(self.npages, dtype=bool)

    @property
    def hva_end(self) -> int:
        """The exclusive end of the user range behind the slot."""
        return self.userspace_addr + (self.npages << PAGE_SHIFT)

    def gfn_to_hva(self, gfn: int) -> int:
        """__gfn_to_hva_memslot()."""
        return self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)

    def hva_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The slot-relative page indexes [i0, i1) that hva [start, end) covers, if any."""
        lo, hi = max(start, self.userspace_addr), min(end, self.hva_end)
        if lo >= hi:
            return None
        i0 = (lo - self.userspace_addr) >> PAGE_SHIFT
        i1 = (hi - self.userspace_addr + PAGE_SIZE - 1) >> PAGE_SHIFT
        return i0, i1

    def mapped(self) -> int:
        """How many secondary entries are present."""
        return int((self.spte_pfn != NO_PFN).sum())


class KvmMmuNotifierOps(MmuNotifierOps):
    """kvm_mmu_notifier_ops: every callback finds its VM through the subscription."""

    def __init__(self, vm: KvmVm) -> None:
        self.vm = vm

    def invalidate_range_start(self, sub: MmuNotifier, range: MmuNotifierRange) -> int:
        """kvm_mmu_notifier_invalidate_range_start(): begin (kvm_mmu_invalidate_begin()
        and range_add(), once a slot overlaps), then zap what the range covers."""
        vm = self.vm
        vm.notifier_calls.append((range.event, range.start, range.end))
        spans = vm.hva_spans(range.start, range.end)
        if not spans:
            return 0
        vm.mmu_invalidate_in_progress += 1
        for slot, i0, i1 in spans:
            g0, g1 = slot.base_gfn + i0, slot.base_gfn + i1
            if vm.invalidate_range is None:
                vm.invalidate_range = (g0, g1)
            else:       # kvm_mmu_invalidate_range_add(): widen to cover both
                lo, hi = vm.invalidate_range
                vm.invalidate_range = (min(lo, g0), max(hi, g1))
            vm.kvm_unmap_gfn_range(slot, i0, i1)
        return 0

    def invalidate_range_end(self, sub: MmuNotifier, range: MmuNotifierRange) -> None:
        """kvm_mmu_notifier_invalidate_range_end(): kvm_mmu_invalidate_end() bumps the
        seq and leaves the in-progress count (for a range that overlapped a slot)."""
        vm = self.vm
        if not vm.hva_spans(range.start, range.end):
            return
        vm.mmu_invalidate_seq += 1
        vm.mmu_invalidate_in_progress -= 1
        vm.k.warnings.warn_on_once(vm.mmu_invalidate_in_progress < 0,
                                   "kvm_mmu_invalidate_end: negative in-progress count")
        if vm.mmu_invalidate_in_progress <= 0:
            vm.mmu_invalidate_in_progress = max(vm.mmu_invalidate_in_progress, 0)
            vm.invalidate_range = None

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The VM's secondary page table, for pictures and invariants: see KvmVm."""
        return self.vm.device_mappings()

    def release(self, sub: MmuNotifier, mm: MM) -> None:
        """kvm_mmu_notifier_release(): the mm is going away; drop every secondary entry."""
        self.vm.kvm_flush_shadow_all()

    def clear_flush_young(self, sub: MmuNotifier, mm: MM, start: int, end: int) -> int:
        """kvm_mmu_notifier_clear_flush_young(): test and clear the accessed bits."""
        return self.vm.age_range(start, end, clear=True)

    def clear_young(self, sub: MmuNotifier, mm: MM, start: int, end: int) -> int:
        """kvm_mmu_notifier_clear_young(): the same without a TLB flush."""
        return self.vm.age_range(start, end, clear=True)

    def test_young(self, sub: MmuNotifier, mm: MM, address: int) -> int:
        """kvm_mmu_notifier_test_young(): 1 if the page at `address` is young in the guest."""
        return self.vm.age_range(address, address + 1, clear=False)


class KvmVm:
    """A VM of the model (KVM_CREATE_VM): memory slots over the creator's mm and a
    secondary page table kept coherent by an MMU notifier, never by pins.

    Kernel-side methods return 0 or a -errno; `guest_read()` / `guest_write()` raise
    OSError as the vCPU's KVM_RUN would fail (EFAULT: no slot or no page behind it).
    """

    def __init__(self, kernel: Kernel, p: Process) -> None:
        self.k = kernel
        self.p = p
        self.mm = p.mm
        self.memslots: dict[int, KvmMemorySlot] = {}
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.invalidate_range: tuple[int, int] | None = None   # gfns [start, end)
        self.notifier_calls: list[tuple[Any, int, int]] = []
        self.race_hooks: dict[str, list[Callable[[], Any]]] = {}
        self.stat = {"pf_taken": 0, "pf_fixed": 0, "pf_retry": 0, "zapped": 0}
        self.closed = False
        self.mmu_notifier = MmuNotifier(KvmMmuNotifierOps(self))
        ret = mmu_notifier_register(self.mmu_notifier, self.mm)
        if ret:
            raise OSError(-ret, "KVM_CREATE_VM: mmu_notifier_register failed")

    def __repr__(self) -> str:
        return (f"<kvm pid {self.p.pid} slots={sorted(self.memslots)} "
                f"mapped={sum(s.mapped() for s in self.memslots.values())}"
                f"{' closed' if self.closed else ''}>")

    # -- ioctls ------------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> int:
        """KVM_SET_USER_MEMORY_REGION: 0, or -EINVAL (unaligned, bad slot), -EEXIST
        (overlapping guest frames); a size of 0 deletes the slot (and zaps it)."""
        if self.closed:
            return -EBADF
        if (not 0 <= slot < KVM_USER_MEM_SLOTS or guest_phys_addr % PAGE_SIZE
                or memory_size % PAGE_SIZE or userspace_addr % PAGE_SIZE or memory_size < 0):
            return -EINVAL
        old = self.memslots.get(slot)
        if memory_size == 0:
            if old is None:
                return -EINVAL
            self.kvm_unmap_gfn_range(old, 0, old.npages)
            del self.memslots[slot]
            return 0
        base, npages = guest_phys_addr >> PAGE_SHIFT, memory_size >> PAGE_SHIFT
        for other in self.memslots.values():
            if other.id != slot and base < other.base_gfn + other.npages \
                    and other.base_gfn < base + npages:
                return -EEXIST
        if old is not None:     # the model moves or resizes by delete and create
            self.kvm_unmap_gfn_range(old, 0, old.npages)
        self.memslots[slot] = KvmMemorySlot(slot, base, npages, userspace_addr, flags)
        return 0

    def close(self) -> None:
        """The last VM fd closes: kvm_destroy_vm() unregisters the notifier (whose
        release zaps everything, unless exit_mmap already did) and frees the slots."""
        if self.closed:
            return
        self.closed = True
        mmu_notifier_unregister(self.mmu_notifier, self.mm)
        self.kvm_flush_shadow_all()
        self.memslots.clear()

    # -- the secondary MMU -------------------------------------------------------------------
    def kvm_unmap_gfn_range(self, slot: KvmMemorySlot, i0: int, i1: int) -> int:
        """Zap slot entries [i0, i1); returns how many were present."""
        present = int((slot.spte_pfn[i0:i1] != NO_PFN).sum())
        slot.spte_pfn[i0:i1] = NO_PFN
        slot.spte_writable[i0:i1] = False
        slot.spte_young[i0:i1] = False
        self.stat["zapped"] += present
        return present

    def hva_spans(self, start: int, end: int) -> list[tuple[KvmMemorySlot, int, int]]:
        """Every slot that hva [start, end) overlaps, with its page indexes [i0, i1)."""
        out = []
        for slot in self.memslots.values():
            span = slot.hva_span(start, end)
            if span is not None:
                out.append((slot, span[0], span[1]))
        return out

    def kvm_flush_shadow_all(self) -> None:
        """Drop every secondary entry of every slot."""
        for slot in self.memslots.values():
            self.kvm_unmap_gfn_range(slot, 0, slot.npages)

    def age_range(self, start: int, end: int, *, clear: bool) -> int:
        """1 if some entry behind hva [start, end) is young (cleared when `clear`)."""
        young = 0
        for slot in self.memslots.values():
            span = slot.hva_span(start, end)
            if span is None:
                continue
            bits = slot.spte_young[span[0]:span[1]]
            young |= int(bits.any())
            if clear:
                bits[:] = False
        return young

    def gfn_to_memslot(self, gfn: int) -> KvmMemorySlot | None:
        """The slot holding `gfn`, if any."""
        for slot in self.memslots.values():
            if slot.base_gfn <= gfn < slot.base_gfn + slot.npages:
                return slot
        return None

    def device_mappings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(host virtual address, frame, writable) of every present secondary entry: the
        frames the guest reaches with no pin held, kept coherent by the notifier only."""
        va, pfns, writable = [], [], []
        for slot in self.memslots.values():
            present = np.flatnonzero(slot.spte_pfn != NO_PFN)
            va.append(slot.userspace_addr + (present.astype(np.int64) << PAGE_SHIFT))
            pfns.append(slot.spte_pfn[present])
            writable.append(slot.spte_writable[present])
        if not va:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0, dtype=bool)
        return np.concatenate(va), np.concatenate(pfns), np.concatenate(writable)

    def spte(self, gpa: int) -> tuple[int, bool, bool] | None:
        """The secondary entry behind guest-physical `gpa`: (pfn, writable, young)."""
        slot = self.gfn_to_memslot(gpa >> PAGE_SHIFT)
        if slot is None:
            return None
        i = (gpa >> PAGE_SHIFT) - slot.base_gfn
        pfn = int(slot.spte_pfn[i])
        if pfn == NO_PFN:
            return None
        return pfn, bool(slot.spte_writable[i]), bool(slot.spte_young[i])

    def mmu_invalidate_retry_gfn(self, mmu_seq: int, gfn: int) -> bool:
        """Did an invalidation cover `gfn` or complete since `mmu_seq` was read?"""
        if self.mmu_invalidate_in_progress and self.invalidate_range is not None:
            lo, hi = self.invalidate_range
            if lo <= gfn < hi:
                return True
        return self.mmu_invalidate_seq != mmu_seq

    def hva_to_pfn(self, hva: int, write_fault: bool) -> tuple[Page | None, bool]:
        """hva_to_pfn(): the page (with a FOLL_GET reference) and whether it may be
        mapped writable; (None, False) where the kernel returns KVM_PFN_ERR_FAULT."""
        p = self.p
        got: list[Page | None] = [None]
        if p.get_user_page_fast_only(hva, FOLL_WRITE, got):        # hva_to_pfn_fast()
            return got[0], True
        flags = FOLL_HWPOISON | FOLL_HONOR_NUMA_FAULT | (FOLL_WRITE if write_fault else 0)
        pages: list[Page | None] = [None]
        if p.get_user_pages_unlocked(hva, 1, pages, flags) != 1:   # hva_to_pfn_slow()
            return None, False
        page = pages[0]
        assert page is not None
        if not write_fault:             # map a read fault writable if that is possible now
            wpage: list[Page | None] = [None]
            if p.get_user_page_fast_only(hva, FOLL_WRITE, wpage):
                self.k.put_page(page)
                return wpage[0], True
        return page, write_fault

    def _race(self, point: str) -> None:
        for fn in self.race_hooks.pop(point, []):
            fn()

    def on_race(self, point: str, fn: Callable[[], Any]) -> None:
        """Run `fn()` once, the next time a guest fault passes `point` (see RACE_POINTS)."""
        if point not in RACE_POINTS:
            raise ValueError(f"no KVM race point {point!r}: choose one of {RACE_POINTS}")
        self.race_hooks.setdefault(point, []).append(fn)

    def page_fault(self, gpa: int, write: bool) -> int:
        """kvm_tdp_page_fault() for one guest frame: 0 (mapped), -EAGAIN (retry: an
        invalidation raced), -EFAULT (no slot, or no page behind its hva)."""
        gfn = gpa >> PAGE_SHIFT
        slot = self.gfn_to_memslot(gfn)
        if slot is None:
            return -EFAULT          # an MMIO exit in the kernel; the model has no devices
        self.stat["pf_taken"] += 1
        mmu_seq = self.mmu_invalidate_seq
        if self.mmu_invalidate_retry_gfn(mmu_seq, gfn):     # the _unsafe early check
            return -EAGAIN
        page, writable = self.hva_to_pfn(slot.gfn_to_hva(gfn), write)
        if page is None:
            return -EFAULT
        self._race("kvm:after_faultin")
        if self.mmu_invalidate_retry_gfn(mmu_seq, gfn):     # under mmu_lock
            self.k.put_page(page)
            return -EAGAIN
        i = gfn - slot.base_gfn
        slot.spte_pfn[i] = page.pfn
        slot.spte_writable[i] = writable
        slot.spte_young[i] = True
        self.k.put_page(page)       # kvm_release_faultin_page(): the entry holds nothing
        self.stat["pf_fixed"] += 1
        return 0

    def _frame(self, gpa: int, write: bool) -> int:
        """The pfn behind `gpa`, faulting it in (with retries) when the entry is absent."""
        for _ in range(MAX_FAULT_RETRIES):
            entry = self.spte(gpa)
            if entry is not None and (entry[1] or not write):
                slot = self.gfn_to_memslot(gpa >> PAGE_SHIFT)
                assert slot is not None
                slot.spte_young[(gpa >> PAGE_SHIFT) - slot.base_gfn] = True
                return entry[0]
            ret = self.page_fault(gpa, write)
            if ret == -EAGAIN:
                self.stat["pf_retry"] += 1
                continue
            if ret:
                raise OSError(-ret, f"KVM_RUN: guest access at gpa {gpa:#x} failed "
                              "(no memory slot, or no page behind its user address)")
        raise OSError(EAGAIN, f"KVM_RUN: the fault at gpa {gpa:#x} kept racing "
                      "invalidations (model limit)")

    def _access(self, gpa: int, n: int, write: bool,
                fn: Callable[[Page, int, int, int], None]) -> None:
        if self.closed:
            raise OSError(EBADF, "the VM is closed")
        if gpa < 0 or n < 0:
            raise OSError(EINVAL, "guest-physical address and length must be >= 0")
        done = 0
        while done < n:
            at = gpa + done
            off = at & (PAGE_SIZE - 1)
            k = min(n - done, PAGE_SIZE - off)
            fn(self.k.page(self._frame(at, write)), off, done, k)
            done += k

    def guest_read(self, gpa: int, n: int) -> bytes:
        """The vCPU loads n bytes at guest-physical `gpa` through the secondary MMU."""
        out = bytearray()

        def load(page: Page, off: int, done: int, k: int) -> None:
            out.extend(self.k.dma_read(page, off, k))
        self._access(gpa, n, False, load)
        return bytes(out)

    def guest_write(self, gpa: int, data: bytes) -> None:
        """The vCPU stores `data` at guest-physical `gpa` (a write fault maps writable,
        breaking COW through GUP's FOLL_WRITE fault)."""
        def store(page: Page, off: int, done: int, k: int) -> None:
            self.k.dma_write(page, off, data[done:done + k])
        self._access(gpa, len(data), True, store)


def kvm_create_vm(kernel: Kernel, p: Process) -> KvmVm:
    """KVM_CREATE_VM from process `p`: a VM over p's mm (OSError if registration fails)."""
    return KvmVm(kernel, p)


__all__ = ["KVM_API_VERSION", "MAX_FAULT_RETRIES", "RACE_POINTS", "KvmMemorySlot",
           "KvmMmuNotifierOps", "KvmVm", "kvm_create_vm"]
