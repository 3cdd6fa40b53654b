"""dump_page(): a page's state as the kernel's dump_page() prints it (mm/debug.c, 6.x).

Lines, in the kernel's order (the format of __dump_folio() since 6.9):

    page: refcount:R mapcount:M mapping:PTR index:0xI pfn:0xP
    head: order:O mapcount:M entire_mapcount:E nr_pages_mapped:N pincount:C   (large)
    aops:NAME ino:INO dentry name(?):"NAME"     (page cache: dump_mapping())
    [anon |ksm ]flags: 0xF(name|...|node=0|zone=Z)[ CMA]
    page_type: f4(hugetlb)                       (hugetlb folios)
    page dumped because: REASON                  (when a reason is given)

Simplifications: `mapping:%p` prints the model's mapping id as 16 hex digits where the
kernel prints a hashed pointer (NULL is 0000000000000000 in both); the flag word is the
model's bit layout (names are the kernel's PG_* names) and carries no node/zone bits;
the fields list stops at node and zone (no lastcpupid); the "raw:" hex dump of struct
page and the memcg line are omitted.
"""

from __future__ import annotations

from collections.abc import Callable

from ..memory import PG, Kind, MemMap, Zone

# Kernel zone numbers on x86-64 (ZONE_DMA=0, ZONE_DMA32=1, ZONE_NORMAL=2, ZONE_MOVABLE=3).
_KERNEL_ZONE = {Zone.NORMAL: 2, Zone.MOVABLE: 3}
# Default address_space_operations per kind, when no file system describes the mapping.
_DEFAULT_AOPS = {Kind.FILE: "ext4_da_aops", Kind.SHMEM: "shmem_aops",
                 Kind.HUGETLBFS: "hugetlbfs_aops", Kind.SECRETMEM: "secretmem_aops",
                 Kind.FSDAX: "ext4_dax_aops"}
PGTY_HUGETLB = 0xF4

MappingDescriber = Callable[[int], "tuple[str, int, str] | None"]


def _ptr(value: int) -> str:
    return f"{value:016x}"


def _flags_text(mem: MemMap, head: int) -> str:
    """%pGp: the flag word, then the set flags' names and the node/zone fields."""
    bits = int(mem.flags[head])
    names = [f.name for f in PG if bits & f and f is not PG.hugetlb]
    zone = _KERNEL_ZONE[Zone(int(mem.zone_of(head)))]
    names += ["node=0", f"zone={zone}"]
    return f"{bits:#x}({'|'.join(names)})"


def dump_page(mem: MemMap, pfn: int, reason: str | None = None,
              describe_mapping: MappingDescriber | None = None) -> str:
    """The text dump_page(page, reason) prints for the page at `pfn`.

    `describe_mapping(mapping_id)` may return (aops name, inode number, dentry name)
    for a page-cache mapping (`FileSystems.describe_mapping` does); without it the
    aops line names the kind's usual aops and the mapping id as the inode number.
    """
    pfn = int(pfn)
    if not 0 <= pfn < mem.nr_pages:
        raise ValueError(f"pfn {pfn:#x} is outside memory (0..{mem.nr_pages - 1:#x})")
    head = int(mem.head_of(pfn))
    idx = pfn - head
    order = int(mem.order[head])
    kind = Kind(int(mem.kind[head]))
    anon = kind in (Kind.ANON, Kind.KSM)
    mapping = 0 if anon else int(mem.mapping[head])   # folio_mapping(): NULL for anon
    lines = [f"page: refcount:{int(mem.refcount[head])} mapcount:{int(mem.mapcount[pfn])} "
             f"mapping:{_ptr(mapping)} index:{int(mem.index[head]) + idx:#x} pfn:{pfn:#x}"]
    if order > 0:
        n = 1 << order
        ptes = mem.mapcount[head:head + n]
        entire = int(mem.entire_mapcount[head])
        lines.append(f"head: order:{order} mapcount:{int(ptes.sum()) + entire} "
                     f"entire_mapcount:{entire} nr_pages_mapped:{int((ptes > 0).sum())} "
                     f"pincount:{int(mem.pincount[head])}")
    prefix = "ksm " if kind == Kind.KSM else "anon " if kind == Kind.ANON else ""
    if not anon and mapping:
        lines.append(_mapping_line(mapping, kind, describe_mapping))
    cma = " CMA" if bool(mem.is_cma(pfn)) else ""
    lines.append(f"{prefix}flags: {_flags_text(mem, head)}{cma}")
    if mem.test(head, PG.hugetlb):
        lines.append(f"page_type: {PGTY_HUGETLB:x}(hugetlb)")
    if reason:
        lines.append(f"page dumped because: {reason}")
    return "\n".join(lines) + "\n"


def _mapping_line(mapping: int, kind: Kind, describe: MappingDescriber | None) -> str:
    """dump_mapping(): aops, inode number and, when the inode has one, its dentry name."""
    found = describe(mapping) if describe is not None else None
    if found is not None:
        aops, ino, name = found
        return f'aops:{aops} ino:{ino:x} dentry name(?):"{name}"'
    aops = _DEFAULT_AOPS.get(kind, "0x0")
    return f"aops:{aops} ino:{mapping:x}"
