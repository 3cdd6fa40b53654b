"""CPU access to user memory through the page tables, taking faults as the MMU would."""

from __future__ import annotations

import numpy as np

from ..constants import PAGE_SIZE
from ..memory.alloc import runs
from .env import MMEnv
from .fault import (
    FaultFlag,
    VMFault,
    anon_orders,
    handle_mm_fault,
    populate_anon_bulk,
    wp_copy_run,
)
from .mm_struct import MM, map_pte_range
from .vma import PTE, VM, VMA


class SegmentationFault(Exception):
    """The access would have delivered SIGSEGV to the process."""

    def __init__(self, addr: int, why: str) -> None:
        super().__init__(f"SIGSEGV at {addr:#x}: {why}")
        self.addr = addr


class BusError(Exception):
    """The access would have delivered SIGBUS (beyond EOF, hwpoison, no huge page left)."""

    def __init__(self, addr: int, why: str) -> None:
        super().__init__(f"SIGBUS at {addr:#x}: {why}")
        self.addr = addr


class OOMKilled(Exception):
    """The fault ran out of memory: the kernel's OOM killer would have ended the process."""


_WRITE_FAULT, _READ_FAULT = FaultFlag.WRITE, FaultFlag(0)    # built once (an IntFlag call)


def _vma_for(mm: MM, addr: int, write: bool) -> VMA:
    vma = mm.find_vma(addr)
    if vma is None:
        raise SegmentationFault(addr, "no mapping at this address")
    if write and not vma.flags & VM.WRITE:
        raise SegmentationFault(addr, "write to a mapping without PROT_WRITE")
    if not write and not vma.flags & (VM.READ | VM.WRITE | VM.EXEC):
        raise SegmentationFault(addr, "read of a PROT_NONE mapping")
    return vma


def resolve(env: MMEnv, mm: MM, addr: int, write: bool) -> tuple[VMA, int]:
    """Walk to the page for `addr`, faulting as needed; returns (vma, entry index)."""
    vma = _vma_for(mm, addr, write)
    i = vma.idx(addr)
    for _ in range(4):
        pte = int(vma.pte[i])
        if pte & PTE.PRESENT and (not write or pte & PTE.WRITE):
            vma.pte[i] |= PTE.YOUNG | (PTE.MKDIRTY if write else 0)
            return vma, i
        rc = handle_mm_fault(env, mm, vma, addr, _WRITE_FAULT if write else _READ_FAULT)
        if not rc:
            continue
        if rc & VMFault.SIGSEGV:
            raise SegmentationFault(addr, "guard region")
        if rc & VMFault.HWPOISON:
            raise BusError(addr, "hardware-poisoned page")
        if rc & VMFault.SIGBUS:
            raise BusError(addr, "no page can back this address (beyond end of file, or "
                                 "the hugetlb pool is empty)")
        if rc & VMFault.OOM:
            raise OOMKilled(f"out of memory faulting {addr:#x}")
    raise RuntimeError(f"fault at {addr:#x} did not make progress")  # a model bug


def access_read(env: MMEnv, mm: MM, addr: int, n: int) -> bytes:
    """A CPU load of `n` bytes at `addr`, page by page, faulting as the MMU would."""
    if addr % PAGE_SIZE + n > PAGE_SIZE:         # more than one page: fault in runs
        prefault_read(env, mm, addr, n)
    out = bytearray()
    end = addr + n
    mem = env.mem
    while addr < end:
        vma, i = resolve(env, mm, addr, False)
        for pfn in vma.pfn[i:i + 1 + ready_run(vma, i + 1, addr, end, False)].tolist():
            chunk = min(end - addr, PAGE_SIZE - addr % PAGE_SIZE)
            out += mem.read(pfn, addr % PAGE_SIZE, chunk)
            addr += chunk
    return bytes(out)


def access_write(env: MMEnv, mm: MM, addr: int, data: bytes) -> None:
    """A CPU store of `data` at `addr`: write faults break COW, dirty and age the PTEs."""
    if addr % PAGE_SIZE + len(data) > PAGE_SIZE:
        prefault_write(env, mm, addr, len(data))
    pos = 0
    end = addr + len(data)
    mem = env.mem
    while pos < len(data):
        vma, i = resolve(env, mm, addr + pos, True)
        for pfn in vma.pfn[i:i + 1 + ready_run(vma, i + 1, addr + pos, end, True)].tolist():
            chunk = min(len(data) - pos, PAGE_SIZE - (addr + pos) % PAGE_SIZE)
            mem.write(pfn, (addr + pos) % PAGE_SIZE, data[pos:pos + chunk])
            pos += chunk


def ready_run(vma: VMA, i: int, addr: int, end: int, write: bool) -> int:
    """How many entries from `i` on, of the pages after `addr` up to `end` inside `vma`,
    the CPU reaches without a fault (present, and writable for a store); they are made
    young (and dirty) as resolve() makes each. The access already passed the VMA's
    permission check for its first page, which holds for all of the VMA's pages, so a
    multi-page access walks the page table once per run, not once per page."""
    last = vma.idx(min(end, vma.end) - 1) + 1
    if i >= last:
        return 0
    need = PTE.PRESENT | (PTE.WRITE if write else 0)
    ok = (vma.pte[i:last] & need) == need
    n = int(np.argmin(ok)) if np.count_nonzero(ok) < len(ok) else len(ok)
    vma.pte[i:i + n] |= PTE.YOUNG | (PTE.MKDIRTY if write else 0)
    return n


def prefault_write(env: MMEnv, mm: MM, addr: int, n: int) -> None:
    """Take the write faults a store of `n` bytes at `addr` will take on private anonymous
    memory in runs, before the store walks it page by page: empty entries as
    populate_anon_bulk() and copy-on-write or reuse as wp_copy_run(), the same faults
    one after the other without a store between (a store to one page does not change
    another's fault). Stops at the first address the store could not write (no VMA, no
    PROT_WRITE), so pages beyond a SIGSEGV are never faulted; what is left, and every
    other kind of memory, faults page by page in resolve()."""
    end = addr + n
    while addr < end:
        vma = mm.find_vma(addr)
        if vma is None or not vma.contains(addr) or not vma.flags & VM.WRITE:
            return
        i0, i1 = vma.idx(addr), vma.idx(min(end, vma.end) - 1) + 1
        if vma.is_anonymous and not vma.is_shared and not vma.is_hugetlb:
            _fault_runs(env, mm, vma, i0, i1)
        addr = vma.end


def _fault_runs(env: MMEnv, mm: MM, vma: VMA, i0: int, i1: int) -> None:
    """The write faults of entries [i0, i1) of a private anonymous VMA, run by run."""
    for lo, hi in runs((vma.pte[i0:i1] == 0).nonzero()[0] + i0):
        populate_anon_bulk(env, mm, vma, lo, hi)
    pte = vma.pte[i0:i1]
    ro = ((pte & (PTE.PRESENT | PTE.WRITE)) == PTE.PRESENT).nonzero()[0] + i0
    for lo, hi in runs(ro):
        while lo < hi:
            done = wp_copy_run(env, mm, vma, lo, hi, False)
            if not done:
                break
            lo += done


def prefault_read(env: MMEnv, mm: MM, addr: int, n: int) -> None:
    """Take the read faults a load of `n` bytes at `addr` will take on private anonymous
    memory without THP in runs: each empty entry maps the shared zero page, as
    do_anonymous_page() does for a read, one run at a time. Stops where the load could
    not read (no VMA, PROT_NONE); THP-eligible and every other kind of memory fault page
    by page in resolve() (a THP read fault may map the huge zero page instead)."""
    end = addr + n
    zero = env.mem.zero_pfn
    while addr < end:
        vma = mm.find_vma(addr)
        if vma is None or not vma.contains(addr) or \
                not vma.flags & (VM.READ | VM.WRITE | VM.EXEC):
            return
        i0, i1 = vma.idx(addr), vma.idx(min(end, vma.end) - 1) + 1
        if (vma.is_anonymous and not vma.is_shared and not vma.is_hugetlb and zero >= 0
                and not anon_orders(env, vma)):
            for lo, hi in runs(np.flatnonzero(vma.pte[i0:i1] == 0) + i0):
                map_pte_range(mm, vma, lo, np.full(hi - lo, zero, dtype=np.int64),
                              PTE.SPECIAL | PTE.YOUNG)
                env.mem.vmstat["pgfault"] += hi - lo
        addr = vma.end
