"""CPU access to user memory through the page tables, taking faults as the MMU would."""

from __future__ import annotations

from ..constants import PAGE_SIZE
from .env import MMEnv
from .fault import FaultFlag, VMFault, handle_mm_fault
from .mm_struct import MM
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
        rc = handle_mm_fault(env, mm, vma, addr, FaultFlag.WRITE if write else FaultFlag(0))
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
    out = bytearray()
    end = addr + n
    while addr < end:
        chunk = min(end - addr, PAGE_SIZE - addr % PAGE_SIZE)
        vma, i = resolve(env, mm, addr, False)
        out += env.mem.read(int(vma.pfn[i]), addr % PAGE_SIZE, chunk)
        addr += chunk
    return bytes(out)


def access_write(env: MMEnv, mm: MM, addr: int, data: bytes) -> None:
    """A CPU store of `data` at `addr`: write faults break COW, dirty and age the PTEs."""
    pos = 0
    while pos < len(data):
        chunk = min(len(data) - pos, PAGE_SIZE - (addr + pos) % PAGE_SIZE)
        vma, i = resolve(env, mm, addr + pos, True)
        env.mem.write(int(vma.pfn[i]), (addr + pos) % PAGE_SIZE, data[pos:pos + chunk])
        pos += chunk
