"""Random sequences of mmap/munmap/fork/exit/read/write with pin/unpin/get/put on the model.

Every entry point is called with flag sets the spec allows and forbids. After every step:
the machine's invariants hold (debug mode), `nr_foll_pin_acquired - released` equals the
pins this test holds (zero page excluded), the sanitizer has nothing to report but leaks
at exits that really left pins behind, MMF_HAS_PINNED never clears, and a pinned private
anonymous page stays the page its process maps: a write by the process is what the
device reads (the coherence fork and COW must preserve, spec 6.1 and 6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from gup_helpers import COUNTED
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import gupsim
from gupsim import (
    EINVAL,
    FOLL_ANON,
    FOLL_FORCE,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_NOFAULT,
    FOLL_NOWAIT,
    FOLL_PCI_P2PDMA,
    FOLL_PIN,
    FOLL_SPLIT_PMD,
    FOLL_TOUCH,
    FOLL_WRITE,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    EntryPoint,
)
from gupsim.gup.flags import FAST_GUP_ALLOWED, INTERNAL_GUP_FLAGS
from gupsim.mm import MMF

RW = PROT_READ | PROT_WRITE
FLAG_BITS = [FOLL_WRITE, FOLL_LONGTERM, FOLL_FORCE, FOLL_NOWAIT, FOLL_NOFAULT, FOLL_ANON,
             FOLL_SPLIT_PMD, FOLL_PCI_P2PDMA]
# flags a caller must not pass to some or all entry points: drawn now and then
FORBIDDEN = [FOLL_GET, FOLL_PIN, FOLL_TOUCH]
flag_sets = st.tuples(st.sets(st.sampled_from(FLAG_BITS), max_size=3),
                      st.sampled_from([0] * 6 + FORBIDDEN)).map(lambda t: sum(t[0]) | t[1])
ENTRIES = [ep for ep in COUNTED if not ep.fast_only]   # all that may fault pages in
KINDS = ["anon", "thp", "shared-anon", "ext4-shared", "ext4-private"]


def expected_invalid(entry: EntryPoint, flags: int) -> int | None:
    """What the spec (1.4) says the entry point answers to invalid flags, or None if valid."""
    if flags & INTERNAL_GUP_FLAGS:
        return entry.invalid
    full = flags | entry.adds
    pin = bool(full & FOLL_PIN)
    if pin and full & FOLL_GET:
        return entry.invalid
    if full & FOLL_LONGTERM and not pin:
        return entry.invalid
    if full & FOLL_LONGTERM and full & FOLL_PCI_P2PDMA:
        return entry.invalid
    if entry.fast and full & ~FAST_GUP_ALLOWED:
        return -EINVAL
    return None


@dataclass
class Region:
    addr: int
    pages: int
    kind: str
    data: dict[int, int] = field(default_factory=dict)   # page -> byte at offset 0


@dataclass
class Proc:
    p: gupsim.Process
    regions: list[Region] = field(default_factory=list)
    had_pins: bool = False


@dataclass
class Held:
    """References one call took: release them with the matching call."""

    pages: list
    pin: bool
    proc: Proc
    region: Region | None      # for coherence: None once the mapping changed
    first: int                 # page index of pages[0] in the region
    inside: int = 0            # how many of the pages lie in the region (a call may run on)
    owner: Proc | None = None  # whose exit the sanitizer charges (see release): proc at first

    def __post_init__(self) -> None:
        if self.owner is None:
            self.owner = self.proc


class PinMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.k = gupsim.Kernel(memory="96MiB", movable="16MiB", swap="8MiB", debug=True)
        self.ext4 = self.k.fs("ext4")
        self.files = 0
        self.procs = [Proc(self.k.spawn("init"))]
        self.held: list[Held] = []
        self.leaks_expected = 0

    @initialize(pages=st.integers(1, 16), val=st.integers(1, 255))
    def anon_region(self, pages: int, val: int) -> None:
        """Start with written private anonymous memory: what pins and fork race over."""
        self.mmap(0, pages, "anon")
        reg = self.procs[0].regions[-1]
        for page in range(pages):
            self.write(0, 0, page, val)
        assert len(reg.data) == pages

    def _proc(self, i: int) -> Proc:
        return self.procs[i % len(self.procs)]

    def _counted(self, pages: list) -> int:
        """Entries a pin counted in vmstat: every page but the shared zero page."""
        zero = self.k.mem.zero_pfn
        return sum(1 for pg in pages if pg is not None and pg.folio.pfn != zero)

    # -- memory ------------------------------------------------------------------------

    @rule(i=st.integers(0, 7), pages=st.integers(1, 40), kind=st.sampled_from(KINDS))
    def mmap(self, i: int, pages: int, kind: str) -> None:
        pr = self._proc(i)
        size = pages * PAGE_SIZE
        if kind in ("anon", "thp"):
            a = pr.p.mmap(0, size, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            if kind == "thp":
                pr.p.madvise(a, size, MADV_HUGEPAGE)
        elif kind == "shared-anon":
            a = pr.p.mmap(0, size, RW, MAP_SHARED | MAP_ANONYMOUS)
        else:
            self.files += 1
            f = self.ext4.create(f"f{self.files}", size)
            a = pr.p.mmap(0, size, RW, MAP_SHARED if kind == "ext4-shared" else MAP_PRIVATE,
                          fd=f)
        pr.regions.append(Region(a, pages, kind))

    def _region(self, i: int, r: int) -> tuple[Proc, Region] | None:
        pr = self._proc(i)
        if not pr.regions:
            return None
        return pr, pr.regions[r % len(pr.regions)]

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), page=st.integers(0, 39),
          val=st.integers(1, 255))
    def write(self, i: int, r: int, page: int, val: int) -> None:
        found = self._region(i, r)
        if found is None:
            return
        pr, reg = found
        page %= reg.pages
        pr.p.write(reg.addr + page * PAGE_SIZE, bytes([val]))
        reg.data[page] = val

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), page=st.integers(0, 39))
    def read(self, i: int, r: int, page: int) -> None:
        found = self._region(i, r)
        if found is None:
            return
        pr, reg = found
        page %= reg.pages
        got = pr.p.read(reg.addr + page * PAGE_SIZE, 1)[0]
        if reg.kind in ("anon", "thp", "ext4-private"):   # shared ones change behind us
            assert got == reg.data.get(page, 0), f"read {got} from {reg} page {page}"

    def _forget(self, reg: Region) -> None:
        """The mapping changed under its pins: the device and the process part ways."""
        for h in self.held:
            if h.region is reg:
                h.region = None

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), dontneed=st.booleans())
    def unmap(self, i: int, r: int, dontneed: bool) -> None:
        found = self._region(i, r)
        if found is None:
            return
        pr, reg = found
        self._forget(reg)
        if dontneed:
            pr.p.madvise(reg.addr, reg.pages * PAGE_SIZE, MADV_DONTNEED)
            if reg.kind in ("anon", "thp"):
                reg.data.clear()
            else:
                reg.data = {}     # a file page is re-read from the page cache: unknown here
        else:
            pr.p.munmap(reg.addr, reg.pages * PAGE_SIZE)
            pr.regions.remove(reg)

    @precondition(lambda self: len(self.procs) < 5)
    @rule(i=st.integers(0, 7))
    def fork(self, i: int) -> None:
        pr = self._proc(i)
        child = pr.p.fork()
        self.procs.append(Proc(child, [Region(r.addr, r.pages, r.kind, dict(r.data))
                                       for r in pr.regions]))

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i: int) -> None:
        pr = self.procs.pop(i % len(self.procs))
        for reg in pr.regions:
            self._forget(reg)
        if any(h.pin and h.owner is pr and self._counted(h.pages) for h in self.held):
            self.leaks_expected += 1
        before = len(self.k.sanitizer.reports)
        pr.p.exit()
        new = self.k.sanitizer.reports[before:]
        assert all(r.kind == "leak" for r in new), new
        assert bool(new) == any(h.pin and h.owner is pr and self._counted(h.pages)
                                for h in self.held), (new, pr)

    # -- pinning -----------------------------------------------------------------------

    @precondition(lambda self: any(pr.regions for pr in self.procs))
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 39),
          n=st.integers(1, 40), entry=st.sampled_from(ENTRIES), flags=flag_sets)
    def gup(self, i: int, r: int, first: int, n: int, entry: EntryPoint, flags: int) -> None:
        found = self._region(i, r)
        if found is None:
            return
        pr, reg = found
        first %= reg.pages
        n = min(n, reg.pages - first + 2)        # sometimes run past the end of the region
        addr = reg.addr + first * PAGE_SIZE
        pages: list = []
        acq0 = self.k.vmstat["nr_foll_pin_acquired"] - self.k.vmstat["nr_foll_pin_released"]
        warned = sum(self.k.warnings.hits.values())
        ret = entry.invoke(pr.p, addr, n, flags, pages)
        net = self.k.vmstat["nr_foll_pin_acquired"] - self.k.vmstat["nr_foll_pin_released"]
        bad = expected_invalid(entry, flags)
        event(f"gup: {'invalid' if bad is not None else 'ok' if ret > 0 else 'error'}")
        if bad is not None:
            assert ret == bad, f"{entry.name}({flags:#x}) returned {ret}, spec says {bad}"
            assert net == acq0 and not pages
            assert sum(self.k.warnings.hits.values()) >= warned
            return
        assert ret != 0 or flags & FOLL_NOWAIT, f"{entry.name} returned 0 without FOLL_NOWAIT"
        if ret <= 0:
            assert net == acq0, "a failed call left pins behind"
            assert not [pg for pg in pages if pg is not None]
            return
        assert ret <= n
        assert len([pg for pg in pages[:ret] if pg is not None]) == ret
        pin = entry.pins
        assert net - acq0 == (self._counted(pages[:ret]) if pin else 0)
        if pin:
            pr.had_pins = True
            assert pr.p.mm.flags & MMF.HAS_PINNED
        coherent = pin and reg.kind in ("anon", "thp")
        self.held.append(Held(pages[:ret], pin, pr, reg if coherent else None, first,
                              min(ret, reg.pages - first)))

    @precondition(lambda self: bool(self.held))
    @rule(h=st.integers(0, 63), dirty=st.booleans())
    def release(self, h: int, dirty: bool) -> None:
        i = h % len(self.held)
        held = self.held.pop(i)
        if held.pin:
            # An unpin does not say whose pin it drops: the sanitizer retires the newest
            # record over exactly these pages, so an older call's record stays held and
            # the pin left (the newest's) is charged to the older call's process.
            key = self._pin_key(held.pages)
            newer = [x for x in self.held[i:] if x.pin and self._pin_key(x.pages) == key]
            if key and newer:
                newer[-1].owner = held.owner
            if dirty:
                self.k.unpin_user_pages_dirty_lock(held.pages, len(held.pages), True)
            else:
                self.k.unpin_user_pages(held.pages)
        else:
            for pg in held.pages:
                self.k.put_page(pg)

    def _pin_key(self, pages: list) -> tuple[int, ...]:
        """The PFNs the sanitizer records for a pin call (the zero page is not counted)."""
        zero = self.k.mem.zero_pfn
        return tuple(pg.pfn for pg in pages if pg.folio.pfn != zero)

    @precondition(lambda self: any(h.region is not None for h in self.held))
    @rule(val=st.integers(1, 255))
    def device_sees_process_writes(self, val: int) -> None:
        """Each process writes through its mapping into every page it holds pinned; the
        device, reading the frame it was given, must see the write."""
        event("coherence checked")
        zero = self.k.mem.zero_pfn
        for held in [x for x in self.held if x.region is not None]:
            reg = held.region
            for j, pg in enumerate(held.pages[:held.inside]):
                if pg.folio.pfn == zero:
                    continue     # a R/O pin of never-written memory holds the zero page
                held.proc.p.write(reg.addr + (held.first + j) * PAGE_SIZE, bytes([val]))
                reg.data[held.first + j] = val
                assert self.k.dma_read(pg, 0, 1) == bytes([val]), (
                    f"the pinned frame {pg.pfn:#x} no longer backs page {held.first + j} "
                    f"of {reg.kind} in pid {held.proc.p.pid}")

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        assert self.k.check() == []

    @invariant()
    def counters_match_outstanding_pins(self) -> None:
        outstanding = sum(self._counted(h.pages) for h in self.held if h.pin)
        vm = self.k.vmstat
        assert vm["nr_foll_pin_acquired"] - vm["nr_foll_pin_released"] == outstanding

    @invariant()
    def sanitizer_quiet(self) -> None:
        reports = self.k.sanitizer.reports
        assert all(r.kind == "leak" for r in reports), reports
        assert len(reports) >= self.leaks_expected

    @invariant()
    def has_pinned_is_sticky(self) -> None:
        for pr in self.procs:
            if pr.had_pins:
                assert pr.p.mm.flags & MMF.HAS_PINNED

    def teardown(self) -> None:
        for held in self.held:
            if held.pin:
                self.k.unpin_user_pages(held.pages)
            else:
                for pg in held.pages:
                    self.k.put_page(pg)
        for pr in self.procs:
            pr.p.exit()
        vm = self.k.vmstat
        assert vm["nr_foll_pin_acquired"] == vm["nr_foll_pin_released"]
        assert self.k.check() == []
        assert not self.k.sanitizer.outstanding()


PinMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                        deadline=None)
TestPins = PinMachine.TestCase
