"""VMAs and their page tables.

Simplification: the kernel keeps one page-table tree per mm; the model keeps, for each
VMA, two flat arrays with one entry per base page of the VMA (`pfn`, `pte`). Since VMAs
never overlap this describes the same translations, and it lets range operations
(populate, zap, fork, the GUP-fast walk) be single numpy operations. A PMD mapping is
recorded on each of its 512 entries with the `PTE.PMD` bit (a PUD mapping with
`PTE.PUD`), so splitting a PMD mapping is clearing that bit.
"""

from __future__ import annotations

import numpy as np

from ..constants import PAGE_SHIFT, PAGE_SIZE
from .file import MappableFile


class VM:
    """vm_flags bits (the kernel's values), plain ints as `PTE`'s: IntFlag arithmetic costs
    about 0.7 us an operation, and fork, faults and GUP test these bits many times a step."""

    NONE = 0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4
    ACCESS_FLAGS = READ | WRITE | EXEC      # VM_ACCESS_FLAGS: none of them is PROT_NONE
    SHARED = 0x8
    MAYREAD = 0x10
    MAYWRITE = 0x20
    MAYEXEC = 0x40
    MAYSHARE = 0x80
    GROWSDOWN = 0x100
    PFNMAP = 0x400
    LOCKED = 0x2000
    IO = 0x4000
    DONTCOPY = 0x20000
    DONTEXPAND = 0x40000
    LOCKONFAULT = 0x80000
    NORESERVE = 0x200000
    HUGETLB = 0x400000
    SEQ_READ = 0x8000       # MADV_SEQUENTIAL
    RAND_READ = 0x10000     # MADV_RANDOM
    WIPEONFORK = 0x2000000
    SOFTDIRTY = 0x8000000   # every page reads soft-dirty (a new VMA) until clear_refs
    DONTDUMP = 0x4000000
    MIXEDMAP = 0x10000000
    HUGEPAGE = 0x20000000
    NOHUGEPAGE = 0x40000000
    MERGEABLE = 0x80000000


class PTE:
    """Bits of a page-table entry in the model (plain ints, so numpy keeps uint16 arrays).

    An entry is 0 (none), PRESENT with other bits, or a non-present SWAP, HWPOISON or
    MARKER entry: fork and zap rely on it to take "not 0" for "present" where the OR of
    a range's entries holds none of the non-present kinds.
    """

    NONE = 0
    PRESENT = 1 << 0
    WRITE = 1 << 1
    DIRTY = 1 << 2
    YOUNG = 1 << 3
    SPECIAL = 1 << 4      # no struct page refcounting: zero page, huge zero page, PFN maps
    PMD = 1 << 5          # part of a PMD (2 MiB) mapping
    PUD = 1 << 6          # part of a PUD (1 GiB) mapping
    SWAP = 1 << 7         # not present; `pfn` holds the swap slot
    SOFT_DIRTY = 1 << 8   # x86's pte_mkdirty sets it with DIRTY; only clear_refs clears it
    HWPOISON = 1 << 9     # not present; hwpoison entry
    MARKER = 1 << 10      # not present; guard marker
    SWP_EXCLUSIVE = 1 << 11  # swap entry of a page that was anon-exclusive when swapped out
    MKDIRTY = DIRTY | SOFT_DIRTY   # what pte_mkdirty() sets (x86, CONFIG_MEM_SOFT_DIRTY)
    LEAF = PMD | PUD               # part of a huge (PMD or PUD) leaf
    # any entry but none and a present small page: a range whose OR has none of these
    # needs no huge, special, swap or marker pass
    NOT_SMALL = PMD | PUD | SPECIAL | SWAP | HWPOISON | MARKER


_vma_ids = iter(range(1, 1 << 62))

# A page table entry's frame (or swap slot) in 4 bytes, not 8: entries are most of the
# model's memory per mapped page; int32 numbers the frames of up to 8 TiB (MAX_PFNS,
# which Kernel() enforces), and keeps the arithmetic signed as the int64 it replaced.
PFN_DTYPE = np.int32
MAX_PFNS = 1 << 31


class VMA:
    """One vm_area_struct: [start, end), flags, backing file, and its page table."""

    def __init__(self, start: int, end: int, flags: int, file: MappableFile | None = None,
                 pgoff: int = 0, anon_name: str = "") -> None:
        self.id = next(_vma_ids)
        self.start = start
        self.end = end
        self.flags = int(flags)
        self.file = file
        self.pgoff = pgoff            # page offset of `start` in the file (or the anon index)
        self.anon_name = anon_name
        self.huge_order = 0           # hugetlb VMAs: order of their huge pages
        self.anon_id = 0              # the anon_vma its anonymous folios point to
        n = (end - start) >> PAGE_SHIFT
        self.pfn = np.zeros(n, dtype=PFN_DTYPE)
        self.pte = np.zeros(n, dtype=np.uint16)

    # -- geometry ------------------------------------------------------------------------

    @property
    def nr_pages(self) -> int:
        """vma_pages(): base pages in [start, end), the length of `pfn` and `pte`."""
        return (self.end - self.start) >> PAGE_SHIFT

    def idx(self, addr: int) -> int:
        """The page-table entry (index into `pfn`/`pte`) of an address in this VMA."""
        return (addr - self.start) >> PAGE_SHIFT

    def addr_of(self, i: int) -> int:
        """The address of page-table entry `i` (the inverse of `idx`)."""
        return self.start + (i << PAGE_SHIFT)

    def file_index(self, addr: int) -> int:
        """linear_page_index(): the page offset in the backing file that `addr` maps."""
        return self.pgoff + ((addr - self.start) >> PAGE_SHIFT)

    def contains(self, addr: int) -> bool:
        """Is `addr` inside [start, end)? (`end` is exclusive, as everywhere in mm/)."""
        return self.start <= addr < self.end

    # -- kinds -----------------------------------------------------------------------------

    @property
    def is_anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous memory (MAP_SHARED|MAP_ANONYMOUS is shmem)."""
        return self.file is None and not self.flags & (VM.PFNMAP | VM.IO | VM.MIXEDMAP)

    @property
    def is_shared(self) -> bool:
        """VM_SHARED: writes reach the file or shmem object, never a private copy."""
        return bool(self.flags & VM.SHARED)

    @property
    def is_cow(self) -> bool:
        """is_cow_mapping(): private and may be written."""
        return (self.flags & (VM.SHARED | VM.MAYWRITE)) == VM.MAYWRITE

    @property
    def is_hugetlb(self) -> bool:
        """is_vm_hugetlb_page(): mapped with huge pages of `huge_order` from the pool."""
        return bool(self.flags & VM.HUGETLB)

    def split(self, addr: int) -> VMA:
        """Cut this VMA at `addr`; self keeps [start, addr), the returned VMA is [addr, end)."""
        i = self.idx(addr)
        tail = VMA(addr, self.end, self.flags, self.file, self.pgoff + i, self.anon_name)
        tail.huge_order = self.huge_order
        tail.pfn = self.pfn[i:].copy()
        tail.pte = self.pte[i:].copy()
        tail.anon_id = self.anon_id
        if self.file is not None:
            self.file.get_file()
        self.pfn = self.pfn[:i].copy()
        self.pte = self.pte[:i].copy()
        self.end = addr
        return tail

    def __repr__(self) -> str:
        kind = self.file.fs_name if self.file else ("anon" if self.is_anonymous else "special")
        return f"<VMA {self.start:#x}-{self.end:#x} {describe_flags(self.flags)} {kind}>"


def describe_flags(flags: int) -> str:
    """The permission column of /proc/<pid>/maps: "rw-p", "r--s", ..."""
    return "".join(c if flags & f else "-" for c, f in
                   (("r", VM.READ), ("w", VM.WRITE), ("x", VM.EXEC))) + (
        "s" if flags & VM.SHARED else "p")


def pages_in(length: int) -> int:
    """Pages needed to cover `length` bytes (rounded up)."""
    return (length + PAGE_SIZE - 1) >> PAGE_SHIFT


def vma_close(vma: VMA) -> None:
    """remove_vma(): the VMA's file reference goes with it."""
    if vma.file is not None:
        vma.file.fput()
