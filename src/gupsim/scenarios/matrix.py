"""The selftest matrix beyond the default catalogue, and the cases issue 11 added to it.

`catalogue.catalogue()` is the representative default (`gupsim live`, `make demo`). This
module adds to it the memfd_secret rows (selftests 3.6) and the page-identity cases (the
regressions found by comparing page identity step by step), and builds the rest of
cow.c's matrix (3.2), which is long: every anonymous mTHP size this kernel offers, and
the swapped variants. `full_matrix()` is everything (`gupsim live --full-matrix`,
`make matrix`). What the host cannot run (no such mTHP size, no swap, THP allocation
failed) is skipped with the reason, never counted as agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from ..constants import MADV_DONTNEED, MADV_PAGEOUT, PAGE_SIZE, PMD_SIZE
from ..live.errors import HostUnsupported
from .catalogue import (
    Kinds,
    Maker,
    all_of,
    cow_cases,
    cow_more_cases,
    expect,
    large,
    make_base,
    make_pte_mapped_thp,
    partially_mremapped,
    partially_shared,
    pins_balance,
    single_pte,
    steps_named,
)
from .protocol import MapKind, Proc, Region, System, Trace
from .records import MTHP_KINDS, MTHP_SIZE
from .runner import Case

# -- expectations on page identity ----------------------------------------------------------


def pages_are(*want: str) -> Callable[[Trace], list[str]]:
    """The `pages` steps observed exactly these identities, in order (identity.py)."""
    def check(trace: Trace) -> list[str]:
        got = tuple(s.pages for s in steps_named(trace, "pages"))
        return [] if got == want else [f"pages observed {got}, documented {want}"]
    return check


# -- page identity: what fork and faults do to frames -----------------------------------------


def fork_with_a_pinned_page(sys: System) -> None:
    """A page pinned long-term is copied for the child at fork; the rest is shared."""
    p = sys.spawn("parent")
    r = p.map("anon", 4 * PAGE_SIZE, fill=1)
    p.uring_register([(r, PAGE_SIZE, PAGE_SIZE)])
    child = p.fork()
    p.pages(r, 0, r.length, child)
    child.write(r, 2 * PAGE_SIZE, b"c")
    p.pages(r, 0, r.length, child)
    p.uring_unregister()


def ro_pin_reuses_a_thp(sys: System) -> None:
    """A R/O pin of a THP its fork child shared (the child has exited) unshares it by
    reusing the whole PMD mapping: no copy, no split."""
    p = sys.spawn("parent")
    r = p.map("thp", PMD_SIZE, fill=1)
    p.fork().exit()
    reader = sys.spawn("reader")
    reader.process_vm_readv(p, r, 0, PAGE_SIZE)
    p.pages(r, 0, 4 * PAGE_SIZE)


def ro_pin_copies_a_lone_pte(sys: System) -> None:
    """A R/O pin of the last mapped page of an mTHP its fork child shared copies that
    page (the folio is not reused for one page: the rest of it can then be freed)."""
    p = sys.spawn("parent")
    r = p.map("mthp", MTHP_SIZE, fill=1)
    p.madvise(r, PAGE_SIZE, MTHP_SIZE - PAGE_SIZE, MADV_DONTNEED)
    p.pages(r, 0, PAGE_SIZE)
    p.fork().exit()
    reader = sys.spawn("reader")
    reader.process_vm_readv(p, r, 0, PAGE_SIZE)
    p.pages(r, 0, PAGE_SIZE)


def huge_zero_write(sys: System) -> None:
    """A write to the huge zero page maps a new zeroed THP (6.13+), not one small copy."""
    p = sys.spawn("app")
    r = p.map("thp", PMD_SIZE, populate="read")
    seen = p.pages(r, 0, 4 * PAGE_SIZE)
    if seen.ok and seen.value != "0 0 0 0":
        raise HostUnsupported(f"the read did not map the huge zero page ({seen.value}): "
                              "transparent_hugepage/use_zero_page is off?")
    p.write(r, PAGE_SIZE, b"w")
    p.pages(r, 0, 4 * PAGE_SIZE)


def identity_cases() -> list[Case]:
    """Page identity compared directly (the regressions found with `live --pages`)."""
    return [
        Case("identity: fork copies the pinned page, shares the others",
             fork_with_a_pinned_page,
             pages_are("1 2x 3 4 | 1 5x 3 4", "1 2x 3x 4 | 1 5x 6x 4"),
             "selftests 3.2 fork() with an io_uring fixed buffer",
             "copy_present_page(): a maybe-pinned exclusive anon page is copied for the "
             "child at fork, the others are write-protected and shared; the child's write "
             "fault then copies page 2 (wp_page_copy)", needs=("io_uring",)),
        Case("identity: R/O pin of a previously shared THP reuses it whole",
             ro_pin_reuses_a_thp, pages_are("1tx 2tx 3tx 4tx"),
             "selftests 3.2 R/O GUP pin on R/O-mapped previously-shared page",
             "do_huge_pmd_wp_page() with FAULT_FLAG_UNSHARE: the folio's only reference is "
             "our PMD, so it is marked exclusive in place (no split, no copy)",
             needs=("thp",)),
        Case("identity: R/O pin of a previously shared lone PTE of an mTHP copies it",
             ro_pin_copies_a_lone_pte, pages_are("1tx", "1x"),
             "selftests 3.2 R/O GUP pin on R/O-mapped previously-shared page",
             "wp_can_reuse_anon_folio() (6.15+) reuses a large folio only while more than "
             "one of its pages is mapped; a lone PTE is unshared by copying it "
             "(wp_page_copy), so a small page replaces it", needs=("thp", "mthp_64k")),
        Case("identity: a write to the huge zero page maps a new THP",
             huge_zero_write, pages_are("0 0 0 0", "1tx 2tx 3tx 4tx"),
             "selftests 3.4 huge zeropage",
             "do_huge_zero_wp_pmd() (6.13+, 'mm: allocate THP on hugezeropage wp-fault') "
             "replaces the huge zero PMD by a fresh zeroed THP", needs=("thp",)),
    ]


# -- memfd_secret.c (3.6) ----------------------------------------------------------------------


def secret_over_limit(sys: System) -> None:
    """An unprivileged mmap of a memfd_secret file larger than RLIMIT_MEMLOCK fails:
    secretmem mappings are locked (VM_LOCKED) and charged like mlock."""
    p = sys.spawn("app")
    p.limit_memlock(PAGE_SIZE)
    p.map("secretmem", PAGE_SIZE, shared=True, fill=1)
    p.map("secretmem", 2 * PAGE_SIZE, shared=True, fill=1)


def secret_unreachable(sys: System) -> None:
    """Nothing outside the owner's page tables reaches secretmem pages: another process's
    process_vm_readv and /proc/PID/mem read (PTRACE_PEEKDATA's path) fail, and so do
    O_DIRECT and io_uring registration of them (GUP refuses the VMA)."""
    p = sys.spawn("owner")
    r = p.map("secretmem", 2 * PAGE_SIZE, shared=True, fill=7)
    p.read(r, 0, 2)
    other = sys.spawn("reader")
    other.process_vm_readv(p, r, 0, PAGE_SIZE)
    other.proc_mem_read(p, r, 0, PAGE_SIZE)
    p.odirect_write(r, 0, PAGE_SIZE)
    p.uring_register([(r, 0, PAGE_SIZE)])


def secretmem_cases() -> list[Case]:
    """memfd_secret.c's rows that user space can ask (3.6)."""
    return [
        Case("memfd_secret: an mmap beyond RLIMIT_MEMLOCK fails", secret_over_limit,
             lambda t: [] if [s.outcome for s in steps_named(t, "map")] == ["ok", "EAGAIN"]
             else [f"maps: {[s.outcome for s in steps_named(t, 'map')]}, documented "
                   "ok then EAGAIN"],
             "selftests 3.6 memfd_secret",
             "secretmem_mmap() marks the VMA VM_LOCKED and checks mlock_future_ok(): over "
             "RLIMIT_MEMLOCK without CAP_IPC_LOCK it is EAGAIN; VmLck counts the mapping",
             needs=("root",)),
        Case("memfd_secret: remote reads, O_DIRECT and io_uring cannot reach it",
             secret_unreachable,
             all_of(expect(process_vm_readv="EFAULT", proc_mem_read="EIO",
                           odirect_write="EFAULT", uring_register="EFAULT"), pins_balance),
             "selftests 3.6 memfd_secret",
             "GUP refuses secretmem VMAs (vma_is_secretmem in check_vma_flags; GUP-fast "
             "checks the folio): process_vm_readv fails with EFAULT, access_remote_vm reads "
             "nothing so /proc/PID/mem answers EIO, and pinning users fail",
             needs=("io_uring", "o_direct")),
    ]


# -- cow.c (3.2): every mTHP size and the swapped variants -------------------------------------


def page_out(p: Proc, r: Region, n: int) -> None:
    """MADV_PAGEOUT of [0, n); as cow.c, skip when the first page stayed resident."""
    p.madvise(r, 0, n, MADV_PAGEOUT)
    seen = p.pages(r, 0, PAGE_SIZE)
    if seen.ok and seen.value != "s":
        raise HostUnsupported(f"MADV_PAGEOUT left the page resident ({seen.value})")


def swapped(make: Maker) -> Maker:
    """cow.c's swapped variants: the kind, then paged out."""
    def run(p: Proc) -> tuple[Region, int]:
        r, n = make(p)
        page_out(p, r, n)
        return r, n
    return run


def single_pte_swapped(p: Proc) -> tuple[Region, int]:
    """cow.c "single PTE of swapped THP": DONTNEED all but the first page, page it out."""
    r = p.map("thp", PMD_SIZE, fill=1)
    p.madvise(r, PAGE_SIZE, PMD_SIZE - PAGE_SIZE, MADV_DONTNEED)
    page_out(p, r, PAGE_SIZE)
    return r, PAGE_SIZE


def mthp_kinds() -> Kinds:
    """The mTHP kinds of cow.c for every size but the default 64 KiB (which the default
    catalogue runs): as mapped, single PTE, partially mremap()'ed, partially shared."""
    kinds: Kinds = {}
    for name, size in MTHP_KINDS.items():
        if size == MTHP_SIZE:
            continue
        kind = cast(MapKind, name)
        label = f"mTHP {size >> 10}KiB"
        kinds[label] = (large(kind, size), ("thp",))
        kinds[f"single PTE of {label}"] = (single_pte(kind, size), ("thp",))
        kinds[f"partially mremap()'ed {label}"] = (partially_mremapped(kind, size), ("thp",))
        kinds[f"partially shared {label}"] = (partially_shared(kind, size), ("thp",))
    return kinds


SWAPPED_KINDS: Kinds = {
    "base page, swapped": (swapped(make_base), ("swap",)),
    "THP, swapped": (swapped(large("thp", PMD_SIZE)), ("thp", "swap")),
    "PTE-mapped THP, swapped": (swapped(make_pte_mapped_thp), ("thp", "swap")),
    "single PTE of swapped THP": (single_pte_swapped, ("thp", "swap")),
    "mTHP 64KiB, swapped": (swapped(large("mthp", MTHP_SIZE)), ("thp", "mthp_64k", "swap")),
}


def matrix_cases() -> list[Case]:
    """The cow.c rows the default catalogue leaves out: every other mTHP size, and the
    swapped variants, each through the basic and the further cow.c rows."""
    kinds = {**mthp_kinds(), **SWAPPED_KINDS}
    return cow_cases(kinds) + cow_more_cases(kinds)


def full_matrix() -> list[Case]:
    """The default catalogue and the rest of the matrix: every case, in a stable order."""
    from .catalogue import catalogue
    return catalogue() + matrix_cases()
