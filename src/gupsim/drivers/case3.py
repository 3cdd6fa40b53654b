"""Case 3 of pin_user_pages.rst as step records: mirror with MMU notifiers, do not pin.

`case3()`: the dmirror device of lib/test_hmm.c (drivers/hmm_mirror.py), which faults
through hmm_range_fault() and drops device entries on invalidation, beside the same
device ignoring invalidations: after fork + COW, the child's exit and munmap, the wrong
one reads a frame that is now the child's, then a freed frame, then stale data, while
the right one refaults and reads what the process maps. `case3_userptr()`: the pinning
variant (i915 userptr of v5.6 - v5.12, pin + interval notifier, unpin on invalidation)
beside I915_USERPTR_UNSYNCHRONIZED (pin, no notifier). Listed in drivers/cases.py's
CASES as "3" and "3-userptr"; the CaseRun/CaseStep records are those of cases.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..constants import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from ..kernel import Kernel, Process
from .hmm_mirror import DmirrorDevice, dmirror_open
from .mirror_frames import MirrorWatch
from .userptr import I915_USERPTR_UNSYNCHRONIZED, i915_gem_userptr_ioctl

if TYPE_CHECKING:
    from .cases import CaseRun, CaseStep

NPAGES3 = 4
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def _machine() -> tuple[Kernel, Process, int]:
    k = Kernel(memory="64MiB")
    p = k.spawn("gpu-app")
    a = p.mmap(0, NPAGES3 * PAGE_SIZE, RW, ANON)
    p.write(a, b"m" * NPAGES3 * PAGE_SIZE)
    return k, p, a


def _pfn(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None
    return int(vma.pfn[vma.idx(addr)])


def _mirror(ignore: bool) -> list[CaseStep]:
    from .cases import CaseStep
    k, p, a = _machine()
    d = dmirror_open(DmirrorDevice(k), p, ignore_invalidation=ignore)
    watch = MirrorWatch(k)
    watch.watch(d, "dmirror")
    cmd = d.read(a, NPAGES3)
    frame = _pfn(p, a)
    facts: dict[str, Any] = {"device read": cmd.data[:4], "device faults": cmd.faults,
                             "nr_foll_pin_acquired": k.vmstat.count("nr_foll_pin_acquired"),
                             "refcount of the first frame": k.page(frame).refcount,
                             "VmPin kB": p.proc_status()["VmPin"]}
    steps = [CaseStep(
        "HMM_DMIRROR_READ: a device fault runs hmm_range_fault(), no pin, no reference",
        "The device page table is empty, so the read faults: the driver runs the "
        "read_begin / hmm_range_fault / read_retry loop and fills its entries from the "
        "pfns, then replays the read. The frame's only reference is the process's mapping.",
        facts, ok=cmd.ret == 0 and cmd.data[:4] == b"mmmm" and cmd.faults == 1
        and facts["nr_foll_pin_acquired"] == 0 and facts["refcount of the first frame"] == 1)]
    child = p.fork("child")
    p.write(a, b"parent")
    cmd = d.read(a, 1)
    facts = {"device read": cmd.data[:6], "device faults": cmd.faults,
             "parent reads": p.read(a, 6), "child reads": child.read(a, 6),
             "invariant violations": watch.violations()}
    if not ignore:
        steps.append(CaseStep(
            "fork(), the parent writes (COW), the device reads: it sees the parent's data",
            "fork() write-protected the parent's PTEs (MMU_NOTIFY_PROTECTION_PAGE) and the "
            "COW break cleared the old PTE (MMU_NOTIFY_CLEAR): both reached the mirror, "
            "which dropped its entries, so the device faulted again and found the new page.",
            facts, ok=facts["device read"] == b"parent" and cmd.faults == 1
            and not facts["invariant violations"]))
    else:
        steps.append(CaseStep(
            "fork(), the parent writes (COW), the device reads stale data from the child's page",
            "The driver ignored the invalidations, so its entry still points at the old frame, "
            "which after the COW break belongs to the child alone.",
            facts, ok=facts["device read"] == b"mmmmmm" and cmd.faults == 0
            and bool(facts["invariant violations"])))
    child.exit()
    warned = len(k.warnings.sites())
    cmd = d.read(a, 1)
    facts = {"device read": cmd.data[:6],
             "new warnings": k.warnings.sites()[warned:],
             "invariant violations": watch.violations()}
    if not ignore:
        steps.append(CaseStep(
            "The child exits, the device reads again: nothing changes for the mirror",
            "The device's entries point at the parent's frames, which the child's exit "
            "does not touch.", facts, ok=facts["device read"] == b"parent"
            and not facts["new warnings"] and not facts["invariant violations"]))
    else:
        steps.append(CaseStep(
            "The child exits and frees the old frame; the device reads freed memory",
            "hmm_range_fault() took no reference, so nothing kept the old frame alive: the "
            "device now reads a free frame (a use-after-free in the kernel; the model "
            "warns at the DMA).", facts, ok=bool(facts["invariant violations"])
            and "dma: access to a free frame" in k.warnings.sites()))
    p.munmap(a, NPAGES3 * PAGE_SIZE)
    other = k.spawn("other")
    b = other.mmap(0, NPAGES3 * PAGE_SIZE, RW, ANON)
    other.write(b, b"secret" * (NPAGES3 * PAGE_SIZE // 6))
    p.mmap(a, NPAGES3 * PAGE_SIZE, RW, ANON | MAP_FIXED)
    p.write(a, b"fresh" * (NPAGES3 * PAGE_SIZE // 5))
    cmd = d.read(a, NPAGES3)
    mine = p.read(a, NPAGES3 * PAGE_SIZE)
    facts = {"device read matches the process": cmd.data == mine,
             "device read another process's data": b"secret" in cmd.data,
             "invariant violations": watch.violations()}
    d.close()
    if not ignore:
        steps.append(CaseStep(
            "munmap(), another process reuses the frames, a new mapping: the device reads it",
            "munmap's MMU_NOTIFY_UNMAP emptied the device page table; the next access "
            "faulted in the new mapping.", facts, ok=bool(cmd.data == mine)
            and not facts["device read another process's data"]
            and not facts["invariant violations"]))
    else:
        steps.append(CaseStep(
            "munmap(), another process reuses the frames: the device reads that process's data",
            "The process sees its new data; the device keeps the translations it had before "
            "the munmap, to frames that were freed and now belong to someone else.",
            facts, ok=cmd.data != mine and facts["device read another process's data"]
            and bool(facts["invariant violations"])))
    return steps


def case3() -> CaseRun:
    """Case 3, MMU notifier registration: mirror with hmm_range_fault(), never pin."""
    from .cases import CaseRun
    return CaseRun("case 3: HMM mirror (lib/test_hmm.c dmirror)",
                   "no FOLL_PIN: mmu_interval_notifier + hmm_range_fault(), entries dropped "
                   "on invalidation", "hmm_range_fault() mirror that ignores invalidations",
                   "A device that can take page faults mirrors the process's page tables and "
                   "drops entries whenever the CPU's change; it pins nothing.",
                   _mirror(False), _mirror(True))


def _userptr(unsync: bool) -> list[CaseStep]:
    from .cases import CaseStep
    k, p, a = _machine()
    obj = i915_gem_userptr_ioctl(k, p, a, NPAGES3 * PAGE_SIZE,
                                 I915_USERPTR_UNSYNCHRONIZED if unsync else 0)
    watch = MirrorWatch(k)
    watch.watch(obj, "userptr")
    data = obj.gpu_read(0, 4)
    held = k.vmstat.count("nr_foll_pin_acquired") - k.vmstat.count("nr_foll_pin_released")
    steps = [CaseStep(
        "The GPU uses the object: its pages are pinned (FOLL_PIN, FOLL_WRITE)",
        "get_pages pins every page of the object; the "
        + ("UNSYNCHRONIZED object registered no notifier."
           if unsync else "object's interval notifier covers the range."),
        {"GPU read": data, "pins held": held, "notifier": obj.notifier is not None},
        ok=data == b"mmmm" and held == NPAGES3 and (obj.notifier is None) == unsync)]
    p.munmap(a, NPAGES3 * PAGE_SIZE)
    p.mmap(a, NPAGES3 * PAGE_SIZE, RW, ANON | MAP_FIXED)
    p.write(a, b"fresh")
    data = obj.gpu_read(0, 5)
    held = k.vmstat.count("nr_foll_pin_acquired") - k.vmstat.count("nr_foll_pin_released")
    facts = {"GPU read": data, "process reads": p.read(a, 5), "pins held": held,
             "unpinned by the notifier": obj.unpins_by_notifier,
             "invariant violations": watch.violations()}
    obj.close()
    facts["pins held after close"] = k.vmstat.count("nr_foll_pin_acquired") - \
        k.vmstat.count("nr_foll_pin_released")
    if not unsync:
        steps.append(CaseStep(
            "munmap(), a new mapping, the GPU reads: the notifier unpinned, the GPU re-pinned",
            "MMU_NOTIFY_UNMAP reached the object: it unbound and unpinned its pages (so "
            "munmap freed them), and the GPU's next use pinned the new mapping's pages.",
            facts, ok=data == b"fresh" and facts["unpinned by the notifier"] == 1
            and not facts["invariant violations"] and facts["pins held after close"] == 0))
    else:
        steps.append(CaseStep(
            "munmap(), a new mapping, the GPU reads: stale data from frames still pinned",
            "Nothing told the driver: the old frames stay pinned (and allocated) until the "
            "object is closed, and the GPU keeps reading them instead of the new mapping.",
            facts, ok=data == b"mmmmm" and facts["process reads"] == b"fresh"
            and bool(facts["invariant violations"]) and facts["pins held"] == NPAGES3))
    return steps


def case3_userptr() -> CaseRun:
    """Case 3's pinning variant: pin, but unpin when the notifier says the range changed."""
    from .cases import CaseRun
    return CaseRun("case 3: GPU userptr that pins (i915, v5.6 - v5.12)",
                   "FOLL_PIN + mmu_interval_notifier, unpin on invalidation",
                   "FOLL_PIN without a notifier (I915_USERPTR_UNSYNCHRONIZED)",
                   "A device that cannot take page faults may pin, but must listen to the "
                   "notifier and let go when the CPU's page tables change.",
                   _userptr(False), _userptr(True))


__all__ = ["case3", "case3_userptr"]
