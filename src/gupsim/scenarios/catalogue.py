"""The built-in catalogue: cases drawn from the kernel's own selftests, run on both back-ends.

Sources (see ../shared/reference/selftests.md): gup_longterm.c (section 3.1), cow.c over
anonymous memory kinds (3.2), hugetlb_dio.c and O_DIRECT extras (3.6), remote pins,
and the accounting of io_uring, AF_XDP and O_DIRECT in VmPin, VmLck and the counters,
with RLIMIT_MEMLOCK limits as an unprivileged user meets them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..constants import MADV_DOFORK, MADV_DONTFORK, MADV_DONTNEED, PAGE_SIZE, PMD_SIZE
from .protocol import Proc, Region, System, Trace
from .runner import Case

KiB, MiB = 1 << 10, 1 << 20


# -- expectation helpers -------------------------------------------------------------------


def steps_named(trace: Trace, op: str) -> list:
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
    def check(trace: Trace) -> list[str]:
        reads = steps_named(trace, "read")
        if not reads:
            return ["no read step"]
        got = reads[nth].data
        return [] if got == value else [f"read {got[:8]!r}…, documented {value[:8]!r}…"]
    return check


def pins_balance(trace: Trace) -> list[str]:
    acq = sum(s.acquired for s in trace.steps)
    rel = sum(s.released for s in trace.steps)
    return [] if acq == rel else [f"{acq} pins acquired but {rel} released"]


def step_pins(op: str, acquired: int | None = None, released: int | None = None,
              vm_pin_kb: int | None = None, vm_lck_kb: int | None = None
              ) -> Callable[[Trace], list[str]]:
    def check(trace: Trace) -> list[str]:
        got = steps_named(trace, op)
        if not got:
            return [f"no {op} step"]
        s, out = got[0], []
        for name, want, have in (("acquired", acquired, s.acquired),
                                 ("released", released, s.released),
                                 ("VmPin", vm_pin_kb, s.vm_pin_kb),
                                 ("VmLck", vm_lck_kb, s.vm_lck_kb)):
            if want is not None and have != want:
                out.append(f"{op}: {name} {have}, documented {want}")
        return out
    return check


# -- memory kinds (cow.c 3.2) ----------------------------------------------------------------


def make_base(p: Proc) -> tuple[Region, int]:
    return p.map("anon", PAGE_SIZE, fill=1), PAGE_SIZE


def make_thp(p: Proc) -> tuple[Region, int]:
    return p.map("thp", PMD_SIZE, fill=1), PMD_SIZE


def make_pte_mapped_thp(p: Proc) -> tuple[Region, int]:
    r = p.map("thp", PMD_SIZE, fill=1)
    p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=False)
    p.mprotect(r, PAGE_SIZE, PAGE_SIZE, writable=True)
    return r, PMD_SIZE


def make_single_pte_thp(p: Proc) -> tuple[Region, int]:
    r = p.map("thp", PMD_SIZE, fill=1)
    p.madvise(r, PAGE_SIZE, PMD_SIZE - PAGE_SIZE, MADV_DONTNEED)
    return r, PAGE_SIZE


def make_partially_shared_thp(p: Proc) -> tuple[Region, int]:
    r = p.map("thp", PMD_SIZE, fill=1)
    p.madvise(r, PAGE_SIZE, PMD_SIZE - PAGE_SIZE, MADV_DONTFORK)
    p.fork().exit()
    p.madvise(r, PAGE_SIZE, PMD_SIZE - PAGE_SIZE, MADV_DOFORK)
    return r, PMD_SIZE


def make_hugetlb(p: Proc) -> tuple[Region, int]:
    return p.map("hugetlb", PMD_SIZE, fill=1), PMD_SIZE


ANON_KINDS: dict[str, tuple[Callable[[Proc], tuple[Region, int]], tuple[str, ...]]] = {
    "base page": (make_base, ()),
    "THP": (make_thp, ("thp",)),
    "PTE-mapped THP": (make_pte_mapped_thp, ("thp",)),
    "single PTE of THP": (make_single_pte_thp, ("thp",)),
    "partially shared THP": (make_partially_shared_thp, ("thp",)),
    "hugetlb 2MiB": (make_hugetlb, ("hugetlb_2m",)),
}


def cow_basic(make, mprotect_first: bool) -> Callable[[System], None]:
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
    reads = steps_named(trace, "read")
    if len(reads) < 2:
        return ["missing reads"]
    return [] if reads[0].data == reads[1].data else ["the parent's write leaked into the child"]


def uring_ro_mapping(make) -> Callable[[System], None]:
    """cow.c: R/O-mapping a page registered as io_uring fixed buffer."""
    def run(sys: System) -> None:
        p = sys.spawn("app")
        r, n = make(p)
        p.uring_register([(r, 0, n)])
        p.mprotect(r, 0, n, writable=False)
        p.mprotect(r, 0, n, writable=True)
        p.write(r, 0, b"\xff" * n)
        p.uring_write_fixed(0, n)
        p.read(r, 0, n)
        p.uring_unregister()
    return run


def uring_fork(make) -> Callable[[System], None]:
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


def cow_cases() -> list[Case]:
    cases = []
    for kind, (make, needs) in ANON_KINDS.items():
        cases += [
            Case(f"cow: basic COW after fork, {kind}", cow_basic(make, False),
                 snapshot_kept, "selftests 3.2 Basic COW after fork()", needs=needs),
            Case(f"cow: COW after fork with mprotect(), {kind}", cow_basic(make, True),
                 snapshot_kept, "selftests 3.2 ... with mprotect() optimization", needs=needs),
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


# -- gup_longterm.c (3.1): long-term R/W pins on file-backed memory --------------------------


BACKINGS = {"anon": ("anon", PAGE_SIZE, ()), "memfd": ("memfd", PAGE_SIZE, ()),
            "tmpfs file": ("tmpfs", PAGE_SIZE, ()), "ext4 file": ("file", PAGE_SIZE, ()),
            "memfd hugetlb 2MiB": ("memfd-hugetlb", PMD_SIZE, ("hugetlb_2m",))}


def longterm(kind: str, size: int, shared: bool, via: str) -> Callable[[System], None]:
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


# -- O_DIRECT (hugetlb_dio.c and extras) -------------------------------------------------------


def dio(kind: str, size: int, write: bool, offset: int = 0, length: int | None = None,
        populate: bool = True) -> Callable[[System], None]:
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
    pg = PAGE_SIZE
    specs = [
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
        check: list = [pins_balance]
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
    parent = sys.spawn("parent")
    r = parent.map("anon", 4 * PAGE_SIZE, fill=3)
    child = parent.fork()
    parent.write(r, 0, b"\x05" * PAGE_SIZE)
    child.process_vm_readv(parent, r, 0, 4 * PAGE_SIZE)
    parent.process_vm_readv(child, r, 0, 4 * PAGE_SIZE)
    child.exit()


def remote_zero_page(sys: System) -> None:
    a = sys.spawn("target")
    r = a.map("anon", 4 * PAGE_SIZE, populate=False)
    b = sys.spawn("reader")
    b.process_vm_readv(a, r, 0, 4 * PAGE_SIZE)


def remote_cases() -> list[Case]:
    def first_remote_sees_parent(trace: Trace) -> list[str]:
        reads = steps_named(trace, "process_vm_readv")
        if len(reads) != 2:
            return ["expected two process_vm_readv steps"]
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
    p = sys.spawn("app")
    r = p.map("anon", MiB)
    p.uring_register([(r, 0, MiB)])
    p.uring_unregister()


def uring_half_thp(sys: System) -> None:
    p = sys.spawn("app")
    r = p.map("thp", PMD_SIZE)
    p.uring_register([(r, 0, MiB)])
    p.uring_unregister()


def uring_two_buffers_one_thp(sys: System) -> None:
    p = sys.spawn("app")
    r = p.map("thp", PMD_SIZE)
    p.uring_register([(r, 0, MiB), (r, MiB, MiB)])
    p.uring_unregister()


def xdp_anon(sys: System) -> None:
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


def catalogue() -> list[Case]:
    """Every case, in a stable order."""
    return cow_cases() + longterm_cases() + dio_cases() + remote_cases() + accounting_cases()
