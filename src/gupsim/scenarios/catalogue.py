"""The built-in catalogue: cases drawn from the kernel's own selftests, run on both back-ends.

Sources (see ../shared/reference/selftests.md): gup_longterm.c (section 3.1), cow.c over
anonymous memory kinds (3.2), hugetlb_dio.c and O_DIRECT extras (3.6), remote pins,
and the accounting of io_uring, AF_XDP and O_DIRECT in VmPin, VmLck and the counters,
with RLIMIT_MEMLOCK limits as an unprivileged user meets them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..constants import (
    MADV_COLLAPSE,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_PAGEOUT,
    PAGE_SIZE,
    PMD_SIZE,
)
from .protocol import MTHP_SIZE, MapKind, Proc, Region, Step, System, Trace
from .runner import Case

KiB, MiB = 1 << 10, 1 << 20

Check = Callable[[Trace], list[str]]   # a case's expectation: the problems it finds


# -- expectation helpers -------------------------------------------------------------------


def steps_named(trace: Trace, op: str) -> list[Step]:
    """The steps of op `op`, including its labelled forms ("map anon", ...), in trace order."""
    return [s for s in trace.steps if s.op == op or s.op.startswith(op + " ")]


def expect(**want: str) -> Callable[[Trace], list[str]]:
    """Each named op's first step must have this outcome ("ok", "EFAULT", ...)."""
    def check(trace: Trace) -> list[str]:
        out = []
        for op, outcome in want.items():
            got = steps_named(trace, op)
            if not got:
                out.append(f"no {op} step")
            elif got[0].outcome != outcome:
                out.append(f"{op}: {got[0].outcome}, documented {outcome}")
        return out
    return check


def all_of(*checks: Callable[[Trace], list[str]]) -> Callable[[Trace], list[str]]:
    """Every problem each of `checks` finds, in order: one expectation from several."""
    def check(trace: Trace) -> list[str]:
        return [p for c in checks for p in c(trace)]
    return check


def reads_equal(first: str, second: str) -> Callable[[Trace], list[str]]:
    """The data of the steps named `first` and `second` (first occurrences) are equal."""
    def check(trace: Trace) -> list[str]:
        a, b = steps_named(trace, first), steps_named(trace, second)
        if not a or not b:
            return [f"missing {first} or {second} step"]
        if a[0].data != b[-1].data:
            return [f"{first} and {second} differ: the pin does not see what the process sees"]
        return []
    return check


def read_is(value: bytes, nth: int = -1) -> Callable[[Trace], list[str]]:
    """The `nth` read step (default the last) yielded exactly `value`."""
    def check(trace: Trace) -> list[str]:
        reads = steps_named(trace, "read")
        if not reads:
            return ["no read step"]
        got = reads[nth].data
        if got is None:
            return ["no read data"]
        return [] if got == value else [f"read {got[:8]!r}…, documented {value[:8]!r}…"]
    return check


def all_ok(trace: Trace) -> list[str]:
    """Every step succeeded (for cases where any refusal means the set-up went wrong)."""
    return [f"{s.op}: {s.outcome}" for s in trace.steps if s.outcome != "ok"]


def pins_balance(trace: Trace) -> list[str]:
    """Every pin the case acquired was released again (the counters net to zero);
    nothing to check on a kernel without the counters (before 5.7)."""
    if not trace.counted:
        return []
    acq = sum(s.acquired for s in trace.steps)
    rel = sum(s.released for s in trace.steps)
    return [] if acq == rel else [f"{acq} pins acquired but {rel} released"]


def step_pins(op: str, acquired: int | None = None, released: int | None = None,
              vm_pin_kb: int | None = None, vm_lck_kb: int | None = None
              ) -> Callable[[Trace], list[str]]:
    """The first `op` step moved the counters as documented; None leaves one unchecked,
    and so does a kernel without the counters (before 5.7: `trace.counted` false)."""
    def check(trace: Trace) -> list[str]:
        got = steps_named(trace, op)
        if not got:
            return [f"no {op} step"]
        s, out = got[0], []
        counted = trace.counted
        for name, want, have in (("acquired", acquired if counted else None, s.acquired),
                                 ("released", released if counted else None, s.released),
                                 ("VmPin", vm_pin_kb, s.vm_pin_kb),
                                 ("VmLck", vm_lck_kb, s.vm_lck_kb)):
            if want is not None and have != want:
                out.append(f"{op}: {name} {have}, documented {want}")
        return out
    return check


# -- memory kinds (cow.c 3.2) ----------------------------------------------------------------


def make_base(p: Proc) -> tuple[Region, int]:
    """One base page of anon memory, written: cow.c's "base page" kind."""
    return p.map("anon", PAGE_SIZE, fill=1), PAGE_SIZE


Maker = Callable[[Proc], tuple[Region, int]]


def large(kind: MapKind, size: int) -> Maker:
    """A large folio as mapped: "thp" (PMD-mapped, 2 MiB) or "mthp" (64 KiB, PTE-mapped)."""
    def make(p: Proc) -> tuple[Region, int]:
        return p.map(kind, size, fill=1), size
    return make


def make_pte_mapped_thp(p: Proc) -> tuple[Region, int]:
    """A THP split into PTE mappings by mprotect()ing one page R/O and back."""
    r = p.map("thp", PMD_SIZE, fill=1)
    p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=False)
    p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=True)
    return r, PMD_SIZE


def single_pte(kind: MapKind, size: int) -> Maker:
    """cow.c: MADV_DONTNEED all but the first page; the test size is one page."""
    def make(p: Proc) -> tuple[Region, int]:
        r = p.map(kind, size, fill=1)
        p.madvise(r, PAGE_SIZE, size - PAGE_SIZE, MADV_DONTNEED)
        return r, PAGE_SIZE
    return make


def partially_shared(kind: MapKind, size: int) -> Maker:
    """cow.c: only the first page is shared with a child that exits at once."""
    def make(p: Proc) -> tuple[Region, int]:
        r = p.map(kind, size, fill=1)
        p.madvise(r, PAGE_SIZE, size - PAGE_SIZE, MADV_DONTFORK)
        p.fork().exit()
        p.madvise(r, PAGE_SIZE, size - PAGE_SIZE, MADV_DOFORK)
        return r, size
    return make


def partially_mremapped(kind: MapKind, size: int) -> Maker:
    """cow.c: move the upper half of the folio elsewhere; the test uses the lower half."""
    def make(p: Proc) -> tuple[Region, int]:
        r = p.map(kind, size, fill=1)
        p.mremap_move(r, size // 2, size // 2)
        return r, size // 2
    return make


def make_hugetlb(p: Proc) -> tuple[Region, int]:
    """One written 2 MiB hugetlb page."""
    return p.map("hugetlb", PMD_SIZE, fill=1), PMD_SIZE


MTHP = ("thp", "mthp_64k")
ANON_KINDS: dict[str, tuple[Maker, tuple[str, ...]]] = {
    "base page": (make_base, ()),
    "THP": (large("thp", PMD_SIZE), ("thp",)),
    "PTE-mapped THP": (make_pte_mapped_thp, ("thp",)),
    "single PTE of THP": (single_pte("thp", PMD_SIZE), ("thp",)),
    "partially mremap()'ed THP": (partially_mremapped("thp", PMD_SIZE), ("thp",)),
    "partially shared THP": (partially_shared("thp", PMD_SIZE), ("thp",)),
    "mTHP 64KiB": (large("mthp", MTHP_SIZE), MTHP),
    "single PTE of mTHP 64KiB": (single_pte("mthp", MTHP_SIZE), MTHP),
    "partially mremap()'ed mTHP 64KiB": (partially_mremapped("mthp", MTHP_SIZE), MTHP),
    "partially shared mTHP 64KiB": (partially_shared("mthp", MTHP_SIZE), MTHP),
    "hugetlb 2MiB": (make_hugetlb, ("hugetlb_2m",)),
}
# the kinds the rows added later run over: base pages, PMD THP (as mapped and
# PTE-mapped), one mTHP size and 2 MiB hugetlb
CORE_KINDS = ("base page", "THP", "PTE-mapped THP", "mTHP 64KiB", "hugetlb 2MiB")


def cow_basic(make: Maker, mprotect_first: bool) -> Callable[[System], None]:
    """cow.c "Basic COW after fork()": the child must keep its snapshot after the
    parent writes (with `mprotect_first`, after a R/O and R/W mprotect() too)."""
    def run(sys: System) -> None:
        parent = sys.spawn("parent")
        r, n = make(parent)
        child = parent.fork()
        child.read(r, 0, n)                       # the child's snapshot
        if mprotect_first:
            parent.mprotect(r, 0, n, writable=False)
            parent.mprotect(r, 0, n, writable=True)
        parent.write(r, 0, b"\xff" * n)
        child.read(r, 0, n)                       # must still be the snapshot
        child.exit()
    return run


def snapshot_kept(trace: Trace) -> list[str]:
    """The child read the same bytes before and after the parent's write."""
    reads = steps_named(trace, "read")
    if len(reads) < 2:
        return ["missing reads"]
    return [] if reads[0].data == reads[1].data else ["the parent's write leaked into the child"]


def uring_ro_mapping(make: Maker) -> Callable[[System], None]:
    """cow.c: R/O-mapping a page registered as io_uring fixed buffer."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r, n = make(p)
        p.uring_register([(r, 0, n)])
        p.mprotect(r, 0, n, writable=False)
        p.clear_refs()            # as cow.c: soft-dirty reset, so mprotect keeps it R/O
        p.mprotect(r, 0, n, writable=True)
        p.write(r, 0, b"\xff" * n)
        p.uring_write_fixed(0, n)
        p.read(r, 0, n)
        p.uring_unregister()
    return run


def uring_fork(make: Maker) -> Callable[[System], None]:
    """cow.c: fork() with an io_uring fixed buffer; the child stays alive."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r, n = make(p)
        p.uring_register([(r, 0, n)])
        child = p.fork()
        p.write(r, 0, b"\xff" * n)
        p.uring_write_fixed(0, n)
        p.read(r, 0, n)
        child.exit()
        p.uring_unregister()
    return run


COW_WHY = ("fork() write-protects the anon pages it shares and clears their exclusive "
           "mark, so the parent's write fault copies (do_wp_page -> wp_page_copy; "
           "hugetlb_wp for hugetlb) and the child keeps the original")


Kinds = dict[str, tuple[Maker, tuple[str, ...]]]


def cow_cases(kinds: Kinds | None = None) -> list[Case]:
    """cow.c 3.2 basic COW and io_uring rows over every anon kind (or `kinds`)."""
    cases = []
    for kind, (make, needs) in (ANON_KINDS if kinds is None else kinds).items():
        cases += [
            Case(f"cow: basic COW after fork, {kind}", cow_basic(make, False),
                 snapshot_kept, "selftests 3.2 Basic COW after fork()", COW_WHY, needs=needs),
            Case(f"cow: COW after fork with mprotect(), {kind}", cow_basic(make, True),
                 snapshot_kept, "selftests 3.2 ... with mprotect() optimization",
                 COW_WHY + "; mprotect() must not make the shared PTEs writable again",
                 needs=needs),
            Case(f"cow: R/O-mapping an io_uring fixed buffer, {kind}", uring_ro_mapping(make),
                 all_of(expect(uring_register="ok"),
                        reads_equal("uring_write_fixed", "read")),
                 "selftests 3.2 R/O-mapping a page registered as io_uring fixed buffer",
                 "A long-term R/W pin keeps the page exclusive: mprotect() and the write "
                 "fault reuse it in place (do_wp_page on an anon-exclusive page).",
                 needs=needs + ("io_uring",)),
            Case(f"cow: fork() with an io_uring fixed buffer, {kind}", uring_fork(make),
                 all_of(expect(uring_register="ok"),
                        reads_equal("uring_write_fixed", "read")),
                 "selftests 3.2 fork() with an io_uring fixed buffer",
                 "fork copies maybe-pinned exclusive anon pages for the child "
                 "(folio_needs_cow_for_dma), so the parent keeps the pinned page.",
                 needs=needs + ("io_uring",)),
        ]
    return cases


def vmsplice_in_child(make: Maker, mprotect_first: bool) -> Callable[[System], None]:
    """cow.c: the child vmsplices the area (FOLL_GET references) and unmaps it; the
    parent writes; the pipe must still yield the old data."""
    def run(sys: System) -> None:
        parent = sys.spawn("parent")
        r, n = make(parent)
        child = parent.fork()
        child.vmsplice(r, 0, n)
        child.munmap(r)
        if mprotect_first:
            parent.mprotect(r, 0, n, writable=False)
            parent.mprotect(r, 0, n, writable=True)
        parent.write(r, 0, b"\xff" * n)
        child.pipe_read(n)
        child.exit()
    return run


def vmsplice_in_parent(make: Maker, before_fork: bool) -> Callable[[System], None]:
    """cow.c: the parent vmsplices (before or after fork) and unmaps; the child writes;
    the parent's pipe must still yield the old data."""
    def run(sys: System) -> None:
        parent = sys.spawn("parent")
        r, n = make(parent)
        if before_fork:
            parent.vmsplice(r, 0, n)
        child = parent.fork()
        if not before_fork:
            parent.vmsplice(r, 0, n)
        parent.munmap(r)
        child.write(r, 0, b"\xff" * n)
        parent.pipe_read(n)
        child.exit()
    return run


def pipe_yields(value: int) -> Callable[[Trace], list[str]]:
    """The last pipe_read yielded only bytes `value`: what the vmsplice saw."""
    def check(trace: Trace) -> list[str]:
        reads = steps_named(trace, "pipe_read")
        if not reads or reads[-1].data is None:
            return ["no pipe_read data"]
        data = reads[-1].data
        if data == bytes([value]) * len(data) and data:
            return []
        return [f"the pipe yielded {data[:4]!r}…, documented {bytes([value]) * 4!r}…"]
    return check


def ro_pin(make: Maker, sharing: str) -> Callable[[System], None]:
    """cow.c R/O pin tests, short-term analog: pin R/O, write through the page tables,
    read through the pins (see ro_pin_then_write)."""
    def run(sys: System) -> None:
        parent = sys.spawn("parent")
        r, n = make(parent)
        child = None
        if sharing in ("shared", "previously shared"):
            child = parent.fork()
            if sharing == "previously shared":
                child.exit()
                child = None
        else:                                     # exclusive, mapped R/O then R/W again
            parent.mprotect(r, 0, n, writable=False)
            parent.clear_refs()                   # as cow.c, between the two
            parent.mprotect(r, 0, n, writable=True)
        parent.ro_pin_then_write(r, 0, n, 0xff)
        parent.read(r, 0, n)
        if child is not None:
            child.exit()
    return run


def pins_see_the_write(trace: Trace) -> list[str]:
    """The bytes the R/O pins held equal what the process reads afterwards (0xff)."""
    pins, reads = steps_named(trace, "ro_pin_then_write"), steps_named(trace, "read")
    if not pins or not reads or pins[0].data is None:
        return ["missing ro_pin_then_write or read step"]
    if pins[0].data != reads[-1].data:
        return ["the R/O pin does not see what the process wrote (no unshare before the pin)"]
    return []


def pins_miss_the_write(trace: Trace) -> list[str]:
    """The short-term R/O pins kept the old bytes: the write copied away from them."""
    pins, reads = steps_named(trace, "ro_pin_then_write"), steps_named(trace, "read")
    if not pins or not reads or pins[0].data is None:
        return ["missing ro_pin_then_write or read step"]
    if pins[0].data == reads[-1].data:
        return ["the short-term R/O pin saw the write: the page was unshared, which "
                "gup_must_unshare() only asks for long-term pins of non-anon pages"]
    return []


HUGETLB_VMSPLICE = ("hugetlb_wp() reuses a hugetlb page mapped only once without looking "
                    "at its reference count, so the vmspliced reference sees the write: "
                    "cow.c marks this an expected failure (xfail)")


def cow_more_cases(kinds: Kinds | None = None) -> list[Case]:
    """The cow.c rows beyond basic COW and io_uring, over the core kinds (or `kinds`)."""
    cases = []
    if kinds is None:
        kinds = {kind: ANON_KINDS[kind] for kind in CORE_KINDS}
    for kind, (make, needs) in kinds.items():
        leak = kind.startswith("hugetlb")
        old = pipe_yields(0xff if leak else 1)
        for mprotect_first in (False, True):
            cases.append(Case(
                f"cow: vmsplice() + unmap in child{' with mprotect()' if mprotect_first else ''}"
                f", {kind}", vmsplice_in_child(make, mprotect_first), all_of(old, pins_balance),
                "selftests 3.2 " + ("... with mprotect() optimization" if mprotect_first
                                    else "vmsplice() + unmap in child"),
                HUGETLB_VMSPLICE if leak else "the parent's write fault finds the page "
                "referenced by the pipe (wp_can_reuse_anon_folio: refcount > 1) and copies",
                needs=needs))
        for before in (True, False):
            row = ("vmsplice() before fork(), unmap in parent after fork()" if before
                   else "vmsplice() + unmap in parent after fork()")
            cases.append(Case(
                f"cow: {row}, {kind}", vmsplice_in_parent(make, before),
                all_of(old, pins_balance), f"selftests 3.2 {row}",
                HUGETLB_VMSPLICE if leak else "the child's write fault copies the page the "
                "parent's pipe references", needs=needs))
        for sharing, row in (("shared", "R/O GUP pin on R/O-mapped shared page"),
                             ("previously shared",
                              "R/O GUP pin on R/O-mapped previously-shared page"),
                             ("exclusive", "R/O GUP pin on R/O-mapped exclusive page")):
            cases.append(Case(
                f"cow: short-term R/O pin (process_vm_readv) of a {sharing} page, {kind}",
                ro_pin(make, sharing), all_of(pins_see_the_write, pins_balance),
                f"selftests 3.2 {row}",
                "a FOLL_PIN R/O pin of an anon page that is not exclusive unshares it first "
                "(gup_must_unshare -> FAULT_FLAG_UNSHARE), short-term pins included, so a "
                "later write lands in the pinned page" if sharing != "exclusive" else
                "the page stays anon-exclusive, so the pin and the later write share it",
                needs=needs + ("userfaultfd",)))
    return cases


# -- cow.c (3.3): anonymous THP collapse ------------------------------------------------------


def collapse(when: str) -> Callable[[System], None]:
    """cow.c 3.3: MADV_COLLAPSE of a PTE-mapped THP with `when` shared with a child;
    the child's view must survive the parent's write."""
    half = PMD_SIZE // 2

    def run(sys: System) -> None:
        p = sys.spawn("parent")
        r = p.map("thp", PMD_SIZE, fill=1)
        p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=False)     # PTE-map it
        p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=True)
        if when == "unshared":
            p.madvise(r, 0, PMD_SIZE, MADV_COLLAPSE)
        elif when == "lower half shared":
            p.madvise(r, half, half, MADV_DONTFORK)
        elif when == "upper half shared":
            p.madvise(r, 0, half, MADV_DONTFORK)
        child = p.fork()
        lo, n = (half, half) if when == "upper half shared" else (0, PMD_SIZE)
        if when == "lower half shared":
            n = half
        child.read(r, lo, n)                                  # the child's snapshot
        if when in ("lower half shared", "upper half shared"):
            p.madvise(r, 0, PMD_SIZE, MADV_DOFORK)
        if when != "unshared":
            p.madvise(r, 0, PMD_SIZE, MADV_COLLAPSE)
        p.write(r, 0, b"\xff" * PMD_SIZE)
        child.read(r, lo, n)
        child.exit()
    return run


def collapse_cases() -> list[Case]:
    """cow.c 3.3 rows: MADV_COLLAPSE with none, all, the lower or the upper half shared."""
    rows = {"unshared": "MADV_COLLAPSE before fork",
            "fully shared": "after fork with the whole THP shared",
            "lower half shared": "with only the lower half shared",
            "upper half shared": "only the upper half shared"}
    return [Case(f"cow: THP collapse, {when}", collapse(when),
                 all_of(snapshot_kept, all_ok, pins_balance),
                 f"selftests 3.3 {row}",
                 "MADV_COLLAPSE copies into a new THP; a page still shared with the child "
                 "stays shared, so the parent's write copies and the child keeps its view",
                 needs=("thp",)) for when, row in rows.items()]


# -- cow.c (3.4): non-anonymous pages in private mappings ------------------------------------


# the pages of cow.c 3.4: a file kind, or anon memory that maps a zero page
NonAnonKind = Literal["zeropage", "huge zeropage", "memfd", "file", "memfd-hugetlb"]
NonAnonMaker = Callable[[Proc], tuple[Region, Region, int]]


def nonanon(kind: NonAnonKind) -> NonAnonMaker:
    """The private R/W mapping under test and a second view of the same page."""
    def make(p: Proc) -> tuple[Region, Region, int]:
        if kind == "zeropage" or kind == "huge zeropage":
            k: MapKind = "anon" if kind == "zeropage" else "thp"
            n = PAGE_SIZE if kind == "zeropage" else PMD_SIZE
            mem = p.map(k, n, populate="read")
            other = p.map(k, n, writable=False, populate="read")
            return mem, other, n
        n = PMD_SIZE if kind == "memfd-hugetlb" else PAGE_SIZE
        mem = p.map(kind, n, populate="read")
        return mem, p.map_view(mem, shared=True, writable=False), n
    return make


def nonanon_cow(make: NonAnonMaker) -> Callable[[System], None]:
    """cow.c 3.4 basic COW: a write to the private mapping leaves the other view alone."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        mem, other, n = make(p)
        p.read(other, 0, n)
        p.write(mem, 0, b"\xff" * n)
        p.read(other, 0, n)
    return run


def nonanon_ro_pin(make: NonAnonMaker) -> Callable[[System], None]:
    """cow.c 3.4 R/O pin, short-term analog: pin, write through the page tables, read."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        mem, _, n = make(p)
        p.ro_pin_then_write(mem, 0, n, 0xff)
        p.read(mem, 0, n)
    return run


def nonanon_cases() -> list[Case]:
    """cow.c 3.4 rows over the zero pages, memfd, an ext4 file and memfd hugetlb."""
    kinds: dict[str, tuple[NonAnonKind, tuple[str, ...]]] = {
        "shared zeropage": ("zeropage", ()), "memfd page": ("memfd", ()),
        "tmpfile page (ext4)": ("file", ()),
        "huge zeropage": ("huge zeropage", ("thp",)),
        "memfd hugetlb 2MiB page": ("memfd-hugetlb", ("hugetlb_2m",))}
    cases = []
    for name, (kind, needs) in kinds.items():
        make = nonanon(kind)
        cases.append(Case(
            f"non-anon: basic COW, {name}", nonanon_cow(make), all_of(snapshot_kept, pins_balance),
            "selftests 3.4 Basic COW: write 0xff to the private mapping",
            "the write fault in the private mapping copies the page (wp_page_copy); the "
            "other mapping keeps the original", needs=needs))
        cases.append(Case(
            f"non-anon: short-term R/O pin (process_vm_readv), {name}", nonanon_ro_pin(make),
            all_of(pins_miss_the_write, pins_balance),
            "selftests 3.4 R/O longterm GUP pin",
            "the selftest's long-term R/O pin sees the write, because gup_must_unshare() "
            "breaks COW early for long-term pins in private mappings; a short-term pin of a "
            "page that is not anon (page cache, zero page, huge zero page) is taken as is, "
            "and the write then copies away from it: the pin keeps the old data"
            + ("; and unlike the 4 KiB zero page (never pin-counted), the huge zero folio "
               "is pinned and counted like any large folio: +512/-512"
               if kind == "huge zeropage" else ""),
            needs=needs + ("userfaultfd",)))
    return cases


# -- gup_longterm.c (3.1): long-term R/W pins on file-backed memory --------------------------


BACKINGS: dict[str, tuple[MapKind, int, tuple[str, ...]]] = {
    "anon": ("anon", PAGE_SIZE, ()), "memfd": ("memfd", PAGE_SIZE, ()),
    "tmpfs file": ("tmpfs", PAGE_SIZE, ()), "ext4 file": ("file", PAGE_SIZE, ()),
    "memfd hugetlb 2MiB": ("memfd-hugetlb", PMD_SIZE, ("hugetlb_2m",))}


def longterm(kind: MapKind, size: int, shared: bool, via: str) -> Callable[[System], None]:
    """A long-term R/W pin of one `kind` mapping via io_uring or AF_XDP, then released."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r = p.map(kind, size, shared=shared)
        if via == "io_uring":
            p.uring_register([(r, 0, size)])
            p.uring_unregister()
        else:
            p.xdp_umem_reg(r)
            p.xdp_close()
    return run


def longterm_cases() -> list[Case]:
    """gup_longterm.c 3.1 R/W rows: which backings a long-term write pin accepts."""
    cases = []
    for name, (kind, size, needs) in BACKINGS.items():
        for shared in (True, False):
            refused = shared and kind == "file"
            for via, op, needs_via in (("io_uring", "uring_register", "io_uring"),
                                       ("AF_XDP", "xdp_umem_reg", "af_xdp")):
                outcome = "EFAULT" if refused else "ok"
                cases.append(Case(
                    f"longterm: R/W {via} pin of {name}, MAP_{'SHARED' if shared else 'PRIVATE'}",
                    longterm(kind, size, shared, via),
                    all_of(expect(**{op: outcome}), pins_balance),
                    "selftests 3.1 R/W longterm GUP" + ("-fast" if via == "io_uring" else "")
                    + f" pin / io_uring fixed buffer, MAP_{'SHARED' if shared else 'PRIVATE'}",
                    "check_vma_flags refuses writable long-term pins of dirty-tracked shared "
                    "file mappings with -EFAULT" if refused else
                    ("a private mapping's write pin breaks COW into an anon page"
                     if not shared else "shmem and hugetlbfs need no write-notify"),
                    needs=needs + (needs_via,)))
    return cases


def readonly(kind: MapKind, size: int, shared: bool, via: str) -> Callable[[System], None]:
    """gup_longterm.c R/O rows as the current selftest runs them: map R/W, write zeros,
    mprotect(PROT_READ), then pin R/O (short-term analogs: O_DIRECT write is a R/O
    GUP-fast pin, process_vm_readv a R/O remote GUP pin)."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r = p.map(kind, size, shared=shared)
        p.mprotect(r, 0, size, writable=False)
        if via == "O_DIRECT":
            p.odirect_write(r, 0, size)
        else:
            sys.spawn("reader").process_vm_readv(p, r, 0, size)
    return run


def readonly_cases() -> list[Case]:
    """gup_longterm.c 3.1 R/O rows, each through an O_DIRECT and a remote pin."""
    cases = []
    for name, (kind, size, needs) in BACKINGS.items():
        for shared in (True, False):
            mapping = f"MAP_{'SHARED' if shared else 'PRIVATE'}"
            for via, op, fast, needs_via in (("O_DIRECT", "odirect_write", True, ("o_direct",)),
                                             ("process_vm_readv", "process_vm_readv", False,
                                              ())):
                row = (f"R/O longterm GUP{'-fast' if fast else ''} pin, MAP_SHARED" if shared
                       else "R/O longterm GUP (and GUP-fast) pin, MAP_PRIVATE")
                n = size // PAGE_SIZE
                cases.append(Case(
                    f"longterm: R/O short-term {via} pin of {name}, {mapping}",
                    readonly(kind, size, shared, via),
                    all_of(expect(**{op: "ok"}), step_pins(op, acquired=n, released=n),
                           pins_balance),
                    f"selftests 3.1 {row}",
                    "R/O pins need no write-notify, so every file system allows them; each "
                    "page is pinned once and released after the copy",
                    needs=needs + needs_via))
    return cases


# -- O_DIRECT (hugetlb_dio.c and extras) -------------------------------------------------------


def dio(kind: MapKind, size: int, write: bool, offset: int = 0, length: int | None = None,
        populate: bool = True) -> Callable[[System], None]:
    """An O_DIRECT read or write of [offset, offset+length) of a `kind` mapping, then unmap."""
    length = size - offset if length is None else length

    def run(sys: System) -> None:
        p = sys.spawn("app")
        r = p.map(kind, size, populate=populate, fill=7)
        if write:
            p.odirect_write(r, offset, length)
        else:
            p.odirect_read(r, offset, length, fill=9)
            p.read(r, offset, length)
        p.munmap(r)
    return run


def dio_cases() -> list[Case]:
    """hugetlb_dio.c and O_DIRECT over anon, THP and hugetlb: pins balance, reads land."""
    pg = PAGE_SIZE
    specs: list[tuple[str, MapKind, int, bool, int, int | None, tuple[str, ...], bool]] = [
        ("O_DIRECT write from anon, 4 pages", "anon", 4 * pg, True, 0, None, (), True),
        ("O_DIRECT read into anon, 4 pages", "anon", 4 * pg, False, 0, None, (), True),
        ("O_DIRECT write from untouched anon (zero page)", "anon", 4 * pg, True, 0, None, (),
         False),
        ("O_DIRECT write from THP", "thp", PMD_SIZE, True, 0, 4 * pg, ("thp",), True),
        ("O_DIRECT read into THP", "thp", PMD_SIZE, False, 0, 4 * pg, ("thp",), True),
        ("hugetlb_dio: write [0, 3 pages) of hugetlb", "hugetlb", PMD_SIZE, True, 0, 3 * pg,
         ("hugetlb_2m",), True),
        ("hugetlb_dio: write [0.5, 3.5 pages) of hugetlb", "hugetlb", PMD_SIZE, True, pg // 2,
         3 * pg, ("hugetlb_2m",), True),
        ("O_DIRECT read into hugetlb", "hugetlb", PMD_SIZE, False, 0, 4 * pg, ("hugetlb_2m",),
         True),
    ]
    cases = []
    for name, kind, size, write, off, length, needs, populate in specs:
        check: list[Check] = [pins_balance]
        if not populate:
            check.append(step_pins("odirect_write", acquired=0, released=0))
        if not write:
            check.append(read_is(bytes([9]) * (length or size)))
        cases.append(Case(
            f"dio: {name}", dio(kind, size, write, off, length, populate), all_of(*check),
            "selftests 3.6 hugetlb_dio" if "hugetlb_dio" in name
            else "selftests 4 O_DIRECT read / write",
            "reads of never-touched anon memory pin the shared zero page, which is never "
            "pin-counted (spec 3.1)" if not populate else
            "the block layer pins each page with FOLL_PIN through iov_iter extraction",
            needs=needs + ("o_direct",)))
    return cases


# -- remote pins --------------------------------------------------------------------------------


def remote_after_fork(sys: System) -> None:
    """Parent and child read each other's memory with process_vm_readv after a
    fork and one write by the parent."""
    parent = sys.spawn("parent")
    r = parent.map("anon", 4 * PAGE_SIZE, fill=3)
    child = parent.fork()
    parent.write(r, 0, b"\x05" * PAGE_SIZE)
    child.process_vm_readv(parent, r, 0, 4 * PAGE_SIZE)
    parent.process_vm_readv(child, r, 0, 4 * PAGE_SIZE)
    child.exit()


def remote_zero_page(sys: System) -> None:
    """A remote read of untouched anon memory, which maps only the zero page."""
    a = sys.spawn("target")
    r = a.map("anon", 4 * PAGE_SIZE, populate=False)
    b = sys.spawn("reader")
    b.process_vm_readv(a, r, 0, 4 * PAGE_SIZE)


def remote_cases() -> list[Case]:
    """process_vm_readv (pin_user_pages_remote) between processes."""
    def first_remote_sees_parent(trace: Trace) -> list[str]:
        reads = steps_named(trace, "process_vm_readv")
        if len(reads) != 2:
            return ["expected two process_vm_readv steps"]
        if reads[0].data is None or reads[1].data is None:
            return ["no process_vm_readv data"]
        out = []
        if reads[0].data[:PAGE_SIZE] != b"\x05" * PAGE_SIZE:
            out.append("the child did not read the parent's new data")
        if reads[1].data[:PAGE_SIZE] != b"\x03" * PAGE_SIZE:
            out.append("the parent did not read the child's unchanged data")
        return out
    return [
        Case("remote: process_vm_readv across fork", remote_after_fork,
             all_of(first_remote_sees_parent, pins_balance,
                    step_pins("process_vm_readv", acquired=4, released=4)),
             "spec 2.3 pin_user_pages_remote", "each page of the remote range is pinned "
             "short-term (FOLL_PIN) and released after the copy"),
        Case("remote: process_vm_readv of untouched memory", remote_zero_page,
             all_of(step_pins("process_vm_readv", acquired=0, released=0), pins_balance),
             "spec 3.1 zero page", "a R/O remote pin of never-touched anon memory returns the "
             "shared zero page, which pins do not count"),
    ]


# -- accounting ------------------------------------------------------------------------------


def uring_anon_1m(sys: System) -> None:
    """Register 1 MiB of anon memory as an io_uring fixed buffer, then unregister."""
    p = sys.spawn("app")
    r = p.map("anon", MiB)
    p.uring_register([(r, 0, MiB)])
    p.uring_unregister()


def uring_half_thp(sys: System) -> None:
    """Register the first half of a THP as an io_uring fixed buffer, then unregister."""
    p = sys.spawn("app")
    r = p.map("thp", PMD_SIZE)
    p.uring_register([(r, 0, MiB)])
    p.uring_unregister()


def uring_two_buffers_one_thp(sys: System) -> None:
    """Register both halves of one THP as two io_uring buffers."""
    p = sys.spawn("app")
    r = p.map("thp", PMD_SIZE)
    p.uring_register([(r, 0, MiB), (r, MiB, MiB)])
    p.uring_unregister()


def xdp_anon(sys: System) -> None:
    """Register 1 MiB of anon memory as an AF_XDP umem, then close the socket."""
    p = sys.spawn("app")
    r = p.map("anon", MiB)
    p.xdp_umem_reg(r)
    p.xdp_close()


def uring_limit(size: int, offset: int = 0, limit_bytes: int = 64 * KiB
                ) -> Callable[[System], None]:
    """Register one buffer as a user without CAP_IPC_LOCK under a small RLIMIT_MEMLOCK."""
    def run(sys: System) -> None:
        p = sys.spawn("user")
        p.limit_memlock(limit_bytes)
        r = p.map("anon", 256 * KiB)
        p.uring_register([(r, offset, size)])
        p.uring_unregister()
    return run


def accounting_cases() -> list[Case]:
    """Where io_uring, AF_XDP and O_DIRECT pins are charged (VmPin, locked_vm) and
    RLIMIT_MEMLOCK refusals."""
    return [
        Case("account: io_uring 1MiB anon in VmPin", uring_anon_1m,
             all_of(step_pins("uring_register", acquired=256, released=0, vm_pin_kb=1024),
                    step_pins("uring_unregister", released=256, vm_pin_kb=0)),
             "spec 8 io_uring accounting", "io_account_mem charges mm->pinned_vm",
             needs=("io_uring",)),
        Case("account: io_uring half a THP charges the whole folio", uring_half_thp,
             all_of(step_pins("uring_register", acquired=256, released=255, vm_pin_kb=2048),
                    step_pins("uring_unregister", released=1, vm_pin_kb=0)),
             "spec 11.2 #30", "io_coalesce_buffer keeps one pin per folio, and "
             "io_buffer_account_pin charges a compound page's full size once",
             needs=("io_uring", "thp")),
        Case("account: two io_uring buffers in one THP charge it once",
             uring_two_buffers_one_thp,
             all_of(step_pins("uring_register", acquired=512, released=510, vm_pin_kb=2048)),
             "spec 11.2 #30", "headpage_already_acct finds the folio among the previously "
             "registered buffers", needs=("io_uring", "thp")),
        Case("account: AF_XDP umem pins but does not show in VmPin", xdp_anon,
             all_of(step_pins("xdp_umem_reg", acquired=256, released=0, vm_pin_kb=0),
                    pins_balance),
             "spec 8 AF_XDP", "xdp_umem_account_pages charges user->locked_vm only",
             needs=("af_xdp",)),
        Case("limit: io_uring 128KiB over a 64KiB RLIMIT_MEMLOCK", uring_limit(128 * KiB),
             all_of(expect(uring_register="ENOMEM"), pins_balance),
             "spec 8 RLIMIT_MEMLOCK", "__io_account_mem refuses past the limit; the pins "
             "already taken are dropped", needs=("io_uring",)),
        Case("limit: io_uring 56KiB fits beside the ring's 8KiB", uring_limit(56 * KiB),
             all_of(expect(uring_register="ok"), pins_balance),
             "spec 8 RLIMIT_MEMLOCK", "the ring's own pages are charged to the same limit",
             needs=("io_uring",)),
        Case("limit: a 56KiB buffer straddling pages costs 15 pages",
             uring_limit(56 * KiB, offset=2048),
             all_of(expect(uring_register="ENOMEM"), pins_balance),
             "spec 8 RLIMIT_MEMLOCK", "an unaligned buffer pins (and charges) the partial "
             "pages at both ends", needs=("io_uring",)),
    ]


# -- io_uring's other long-term pinners (case 2): ring memory and buffer rings in user memory --


def uring_user_ring(then: str) -> Callable[[System], None]:
    """A NO_MMAP ring in two pages of anon memory; `then`: "close", "munmap" (the memory
    goes, the pins stay until close), or "buffers" (a fixed buffer too, one close)."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r = p.map("anon", 4 * PAGE_SIZE)
        p.uring_setup_user(r, 0)
        if then == "munmap":
            p.munmap(r)
        elif then == "buffers":
            b = p.map("anon", 64 * KiB)
            p.uring_register([(b, 0, 64 * KiB)])
        p.uring_close()
    return run


def uring_user_ring_at(kind: MapKind, offset: int, shared: bool = False
                       ) -> Callable[[System], None]:
    """A NO_MMAP ring whose memory the kernel should refuse."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r = p.map(kind, 4 * PAGE_SIZE, shared=shared)
        p.uring_setup_user(r, offset)
    return run


def uring_pbuf_ring(entries: int, offset: int = 0, release: str = "unregister",
                    limit_bytes: int | None = None) -> Callable[[System], None]:
    """A provided-buffer ring in anon memory, released by unregistering or by closing the
    ring; with `limit_bytes` as a user without CAP_IPC_LOCK under that RLIMIT_MEMLOCK."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        if limit_bytes is not None:
            p.limit_memlock(limit_bytes)
        r = p.map("anon", 4 * PAGE_SIZE)
        p.uring_register_pbuf_ring(r, offset, entries, bgid=1)
        if release == "again":
            p.uring_register_pbuf_ring(r, offset, entries, bgid=1)
        if release == "close":
            p.uring_close()
        else:
            p.uring_unregister_pbuf_ring(bgid=1)
    return run


def uring_user_cases() -> list[Case]:
    """io_uring memory the kernel pins besides fixed buffers (io_pin_pages: FOLL_WRITE |
    FOLL_LONGTERM): rings set up with IORING_SETUP_NO_MMAP, provided-buffer rings
    registered without IOU_PBUF_RING_MMAP. Charged to the user's locked_vm only."""
    src = "spec 8.4 io_uring, io_pin_pages (rings and buffer rings in user memory)"
    user_only = ("io_create_region charges the user's locked_vm, never mm->pinned_vm or "
                 "mm->locked_vm, so VmPin and VmLck stay 0")
    return [
        Case("uring-user: NO_MMAP ring pins its 2 pages until close", uring_user_ring("close"),
             all_of(step_pins("uring_setup_user", acquired=2, released=0, vm_pin_kb=0,
                              vm_lck_kb=0),
                    step_pins("uring_close", acquired=0, released=2), pins_balance),
             src, "io_allocate_scq_urings pins the rings page (cq_off.user_addr) and the SQE "
             "page (sq_off.user_addr); " + user_only, needs=("io_uring",)),
        Case("uring-user: NO_MMAP ring memory stays pinned after munmap",
             uring_user_ring("munmap"),
             all_of(step_pins("munmap", acquired=0, released=0),
                    step_pins("uring_close", released=2), pins_balance),
             src, "the pins hold the frames, not the mapping: they go with the ring",
             needs=("io_uring",)),
        Case("uring-user: closing a NO_MMAP ring releases its memory and its buffers",
             uring_user_ring("buffers"),
             all_of(step_pins("uring_register", acquired=16, vm_pin_kb=64),
                    step_pins("uring_close", released=18, vm_pin_kb=0), pins_balance),
             src, "fixed buffers are charged to VmPin, the ring's own pages are not",
             needs=("io_uring",)),
        Case("uring-user: NO_MMAP ring at an unaligned address",
             uring_user_ring_at("anon", 64),
             all_of(expect(uring_setup_user="EINVAL"),
                    step_pins("uring_setup_user", acquired=0, released=0)),
             src, "io_create_region wants page-aligned user memory, checked before any pin",
             needs=("io_uring",)),
        Case("uring-user: NO_MMAP ring in a MAP_SHARED ext4 file",
             uring_user_ring_at("file", 0, shared=True),
             all_of(expect(uring_setup_user="EFAULT"), pins_balance),
             src, "io_pin_pages pins long-term and writable: GUP-fast takes the first page, "
             "finds a dirty-tracked file folio and drops it (+1/-1), then check_vma_flags "
             "refuses the mapping", needs=("io_uring",)),
        Case("uring-user: provided-buffer ring pins its pages until unregistered",
             uring_pbuf_ring(512, release="again"),
             all_of(step_pins("uring_register_pbuf_ring", acquired=2, released=0, vm_pin_kb=0,
                              vm_lck_kb=0),
                    step_pins("uring_unregister_pbuf_ring", released=2), pins_balance,
                    lambda t: [] if [s.outcome for s in steps_named(
                        t, "uring_register_pbuf_ring")] == ["ok", "EEXIST"] else
                    ["a second ring for the same group must be refused (EEXIST)"]),
             src, "512 entries of 16 bytes are two pages, pinned by io_pin_pages; a group "
             "that has a ring is refused before anything is pinned; " + user_only,
             needs=("io_uring",)),
        Case("uring-user: provided-buffer ring released when the ring closes",
             uring_pbuf_ring(256, release="close"),
             all_of(step_pins("uring_register_pbuf_ring", acquired=1),
                    step_pins("uring_close", released=1), pins_balance),
             src, "io_ring_ctx_free destroys the buffer lists, freeing each ring's region",
             needs=("io_uring",)),
        Case("uring-user: provided-buffer ring at an unaligned address",
             uring_pbuf_ring(8, offset=512),
             all_of(expect(uring_register_pbuf_ring="EINVAL",
                           uring_unregister_pbuf_ring="ENOENT"), pins_balance),
             src, "the ring's address must be page aligned", needs=("io_uring",)),
        Case("limit: provided-buffer ring fits beside the ring's 8KiB",
             uring_pbuf_ring(256, limit_bytes=12 * KiB),
             all_of(expect(uring_register_pbuf_ring="ok"), pins_balance),
             src, "ring (2 pages) + buffer ring (1 page) = the 12KiB RLIMIT_MEMLOCK",
             needs=("io_uring",)),
        Case("limit: provided-buffer ring over RLIMIT_MEMLOCK",
             uring_pbuf_ring(512, limit_bytes=12 * KiB),
             all_of(expect(uring_register_pbuf_ring="ENOMEM"),
                    step_pins("uring_register_pbuf_ring", acquired=0), pins_balance),
             src, "__io_account_mem refuses before io_pin_pages runs: 2 + 2 pages exceed a "
             "12KiB RLIMIT_MEMLOCK", needs=("io_uring",)),
    ]


# -- KVM: a case-3 user (spec 9): MMU notifiers instead of pins ------------------------------
#
# A guest's loads go through KVM's second-level page table, which KVM fills with FOLL_GET
# lookups (get_user_page_fast_only, then GUP) and empties in invalidate_range_start: so
# after any change the host makes to the mapping the guest sees what the process would
# see, and no step moves the pin counters.

GUEST = 16          # bytes the guest reads per step


def guest_reads(*want: bytes | str) -> Callable[[Trace], list[str]]:
    """The kvm_guest_read steps, in order: these bytes, or this outcome ("EFAULT")."""
    def check(trace: Trace) -> list[str]:
        got = steps_named(trace, "kvm_guest_read")
        if len(got) != len(want):
            return [f"{len(got)} guest reads, expected {len(want)}"]
        out = []
        for i, (s, w) in enumerate(zip(got, want, strict=True)):
            if isinstance(w, str):
                if s.outcome != w:
                    out.append(f"guest read {i + 1}: {s.outcome}, documented {w}")
            elif s.outcome != "ok" or s.data != w:
                out.append(f"guest read {i + 1}: {s.outcome} {(s.data or b'')[:8]!r}…, "
                           f"documented {w[:8]!r}…")
        return out
    return check


def no_pins(trace: Trace) -> list[str]:
    """No step acquired or released a pin (KVM maps guest memory without pinning it)."""
    return [f"{s.op}: {s.acquired} pins acquired, {s.released} released"
            for s in trace.steps if s.acquired or s.released]


def kvm_dontneed(sys: System) -> None:
    """The guest reads a page, the process drops it, the guest reads again."""
    p = sys.spawn("vmm")
    r = p.map("anon", 4 * PAGE_SIZE, fill=0x11)
    p.kvm_create(r)
    p.kvm_guest_read(0, GUEST)
    p.madvise(r, 0, PAGE_SIZE, MADV_DONTNEED)
    p.kvm_guest_read(0, GUEST)
    p.kvm_guest_read(PAGE_SIZE, GUEST)


def kvm_memfd_dontneed(sys: System) -> None:
    """As kvm_dontneed over a shared memfd: the page cache keeps the data."""
    p = sys.spawn("vmm")
    r = p.map("memfd", 4 * PAGE_SIZE, shared=True, fill=0x12)
    p.kvm_create(r)
    p.kvm_guest_read(0, GUEST)
    p.madvise(r, 0, PAGE_SIZE, MADV_DONTNEED)
    p.kvm_guest_read(0, GUEST)


def kvm_fork_write(sys: System) -> None:
    """The guest reads, the VMM forks and writes, the guest and the child read."""
    p = sys.spawn("vmm")
    r = p.map("anon", 4 * PAGE_SIZE, fill=0x22)
    p.kvm_create(r)
    p.kvm_guest_read(0, GUEST)
    child = p.fork()
    p.write(r, 0, b"\x33" * GUEST)
    p.kvm_guest_read(0, GUEST)
    child.read(r, 0, GUEST)
    child.kvm_guest_read(0, GUEST)
    child.exit()


def kvm_unmap_remap(sys: System) -> None:
    """The guest reads, the VMM unmaps (guest read), maps anew there (guest read)."""
    p = sys.spawn("vmm")
    r = p.map("anon", 4 * PAGE_SIZE, fill=0x44)
    p.kvm_create(r)
    p.kvm_guest_read(0, GUEST)
    p.munmap(r)
    p.kvm_guest_read(0, GUEST)
    p.map_fixed(r, 0x55)
    p.kvm_guest_read(0, GUEST)


def kvm_pageout(sys: System) -> None:
    """The guest reads, the VMM swaps the pages out, the guest reads again."""
    p = sys.spawn("vmm")
    r = p.map("anon", 4 * PAGE_SIZE, fill=0x66)
    p.kvm_create(r)
    p.kvm_guest_read(0, GUEST)
    p.madvise(r, 0, 4 * PAGE_SIZE, MADV_PAGEOUT)
    p.kvm_guest_read(0, GUEST)


def kvm_cases() -> list[Case]:
    """KVM guests over memory the host changes: data as the process sees it, no pins."""
    src = "spec 9 case 3: KVM mirrors the CPU page tables under MMU notifiers"
    zap = ("kvm_mmu_notifier_invalidate_range_start zaps the guest's second-level entries; "
           "the next guest load faults them back through get_user_page_fast_only / GUP "
           "(FOLL_GET, dropped once mapped), so it finds ")
    return [
        Case("kvm: guest read after MADV_DONTNEED", kvm_dontneed,
             all_of(all_ok, guest_reads(b"\x11" * GUEST, bytes(GUEST), b"\x11" * GUEST),
                    no_pins),
             src, zap + "the zero page where the process now has none (MMU_NOTIFY_CLEAR)",
             needs=("kvm",)),
        Case("kvm: guest read of a shared memfd after MADV_DONTNEED", kvm_memfd_dontneed,
             all_of(all_ok, guest_reads(b"\x12" * GUEST, b"\x12" * GUEST), no_pins),
             src, zap + "the page cache page again: MADV_DONTNEED drops only the mapping",
             needs=("kvm",)),
        Case("kvm: guest read after fork and a parent write", kvm_fork_write,
             all_of(guest_reads(b"\x22" * GUEST, b"\x33" * GUEST, "EBADF"),
                    read_is(b"\x22" * GUEST), no_pins),
             src, "fork write-protects the parent (MMU_NOTIFY_PROTECTION_PAGE) and the "
             "parent's write copies the page (MMU_NOTIFY_CLEAR): " + zap + "the parent's "
             "new page, since the VM follows the mm that created it; the child keeps the "
             "old data and cannot run the VM (its copy of the fds is closed)",
             needs=("kvm",)),
        Case("kvm: guest read after munmap and mmap at the same address", kvm_unmap_remap,
             all_of(guest_reads(b"\x44" * GUEST, "EFAULT", b"\x55" * GUEST), no_pins),
             src, "munmap zaps the slot (MMU_NOTIFY_UNMAP) but the memslot keeps its user "
             "address: with nothing mapped there the guest's load fails (hva_to_pfn gives "
             "KVM_PFN_ERR_FAULT; the host reports an MMIO exit), and once new memory is "
             "mapped at that address the guest sees it",
             needs=("kvm",)),
        Case("kvm: guest read after MADV_PAGEOUT", kvm_pageout,
             all_of(all_ok, guest_reads(b"\x66" * GUEST, b"\x66" * GUEST), no_pins),
             src, "swap-out unmaps through try_to_unmap (MMU_NOTIFY_CLEAR), which zaps the "
             "guest's entries; the guest's next load faults the page back in from swap",
             needs=("kvm", "swap")),
    ]


def catalogue() -> list[Case]:
    """Every case of the default run (`gupsim live`, `make demo`), in a stable order; the
    whole selftest matrix is `matrix.full_matrix()`."""
    from .matrix import identity_cases, secretmem_cases
    return (cow_cases() + cow_more_cases() + collapse_cases() + nonanon_cases()
            + longterm_cases() + readonly_cases() + dio_cases() + remote_cases()
            + accounting_cases() + uring_user_cases() + kvm_cases() + secretmem_cases()
            + identity_cases())
