"""The cases of pin_user_pages.rst as data: each right driver beside its wrong-flag twin.

One function per case builds fresh machines, runs the correct driver and the wrong
counterpart through the same steps, and returns a `CaseRun`: step records, each with a
title, what happens and why (`story`), the figures to look at (`facts`) and a
self-check (`ok`: the model showed what the kernel documents, for the wrong twin
that it failed the way it should). A command such as `gupsim cases` narrates them;
nothing here prints. Steps have the same shape as the tour's (`as_dict()`).

Cases: 1 (Direct IO, short-term FOLL_PIN vs the pre-5.x FOLL_GET), 2 (RDMA,
FOLL_PIN | FOLL_LONGTERM vs plain FOLL_GET), 4 (struct page only,
FOLL_GET vs a needless FOLL_PIN), 5 (pin and write, the documented correct and
INCORRECT patterns, on a file and on anonymous memory), VFIO type1 with and without
FOLL_LONGTERM, and the GPU host-registration fallback misuse. To add one: write a
function returning a CaseRun and list it in CASES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..constants import (
    EFAULT,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from ..fs import File
from ..gup import FOLL_WRITE
from ..kernel import Kernel, Process
from ..memory import PageArray, page_maybe_dma_pinned
from ..mm import MMF
from ..mm.reclaim import compact_range
from .case3 import case3, case3_userptr
from .direct_io import dio_read
from .gpu import (
    GpuDevice,
    gpu_host_register,
    gpu_host_register_with_fallback,
    gpu_host_unregister_all_unpin,
)
from .kernel_write import get_and_write_incorrect, pin_and_write, set_page_dirty_lock
from .pinned_frames import PinnedFrameWatch
from .rdma import (
    IB_ACCESS_LOCAL_WRITE,
    IB_ACCESS_REMOTE_WRITE,
    IbDevice,
    ibv_dereg_mr,
    ibv_open_device,
    ibv_reg_mr,
)
from .struct_page_query import page_status_query, page_status_query_pinned
from .vfio import VfioContainer

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


@dataclass
class CaseStep:
    """One step: what to notice, the figures, and whether the model showed it."""

    title: str
    story: str
    facts: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    dump: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The step as plain data in the tour's step shape, for JSON output."""
        return {"title": self.title, "story": self.story, "facts": self.facts,
                "dump": self.dump, "ok": self.ok}


@dataclass
class CaseRun:
    """A case of pin_user_pages.rst: the right driver's steps and the wrong twin's."""

    name: str
    right_flags: str
    wrong_flags: str
    summary: str
    right: list[CaseStep]
    wrong: list[CaseStep]

    @property
    def ok(self) -> bool:
        """Every step of both drivers showed what the documentation says."""
        return all(s.ok for s in self.right + self.wrong)

    def as_dict(self) -> dict[str, Any]:
        """The case and both drivers' steps as JSON-ready data."""
        return {"name": self.name, "right_flags": self.right_flags,
                "wrong_flags": self.wrong_flags, "summary": self.summary, "ok": self.ok,
                "right": [s.as_dict() for s in self.right],
                "wrong": [s.as_dict() for s in self.wrong]}


def _pfn(p: Process, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    assert vma is not None, f"{addr:#x} is not mapped in {p}: the case set it up wrong"
    return int(vma.pfn[vma.idx(addr)])


def _acq(k: Kernel) -> int:
    return k.vmstat.count("nr_foll_pin_acquired")


def _held(k: Kernel) -> int:
    """Pins outstanding: nr_foll_pin_acquired - nr_foll_pin_released."""
    return k.vmstat.count("nr_foll_pin_acquired") - k.vmstat.count("nr_foll_pin_released")


# -- case 1: Direct IO --------------------------------------------------------------------


DIO_LEN = 512            # one logical block, read into the start of a one-page buffer
STATUS_OFF = 2048        # where the parent writes a status word while the read is in flight


def _dio_read_foll_get(k: Kernel, p: Process, f: File, addr: int, length: int,
                       while_held: Callable[[], object]) -> int:
    """The pre-FOLL_PIN block layer: get_user_pages_fast() references, the transfer,
    then set_page_dirty_lock() and put_page() (bio_check_pages_dirty): bytes read."""
    nr = (addr + length - 1) // PAGE_SIZE - addr // PAGE_SIZE + 1
    pages = PageArray(nr)
    got = p.get_user_pages_fast(addr - addr % PAGE_SIZE, nr, FOLL_WRITE, pages)
    if got != nr:
        for pg in pages[:max(got, 0)]:
            assert pg is not None
            k.put_page(pg)
        return got if got < 0 else -EFAULT
    while_held()
    page = pages[0]
    assert page is not None
    k.dma_write(page, addr % PAGE_SIZE, f.pread(0, length))
    for pg in pages:
        assert pg is not None
        set_page_dirty_lock(pg)
        k.put_page(pg)
    return length


def _case1(right: bool) -> list[CaseStep]:
    k = Kernel(memory="64MiB")
    p = k.spawn("db")
    f = k.fs("ext4").create("table", PAGE_SIZE)
    f.pwrite(0, b"D" * PAGE_SIZE)
    buf = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(buf, b"u" * PAGE_SIZE)
    children: list[Process] = []
    seen: dict[str, Any] = {}

    def fork_and_write_status() -> None:
        seen["page_maybe_dma_pinned during the I/O"] = page_maybe_dma_pinned(
            k.page(_pfn(p, buf)))
        children.append(p.fork("child"))       # another thread runs system()
        p.write(buf + STATUS_OFF, b"S")        # the parent updates a status word

    if right:
        n = dio_read(k, p, f, buf, DIO_LEN, while_held=fork_and_write_status)
    else:
        n = _dio_read_foll_get(k, p, f, buf, DIO_LEN, fork_and_write_status)
    child = children[0]
    facts: dict[str, Any] = {
        "bytes read": n, **seen, "parent reads": p.read(buf, 4),
        "child reads": child.read(buf, 4),
        "parent's status word": p.read(buf + STATUS_OFF, 1),
        "fork_copy_pinned": k.vmstat["fork_copy_pinned"],
        "nr_foll_pin_acquired": _acq(k), "pins held after": _held(k),
        "sanitizer reports": [str(r) for r in k.sanitizer.reports]}
    if right:
        return [CaseStep(
            "pread(O_DIRECT): pin_user_pages_fast(FOLL_WRITE), fork() while in flight",
            "The block layer pins the buffer short-term (iov_iter_extract_pages, FOLL_PIN); "
            "a fork() during the I/O sees folio_maybe_dma_pinned() and gives the child a "
            "copy, so the parent keeps the frame the device writes: the read lands in the "
            "parent, and completion dirties and unpins the page (bio_release_pages).",
            facts, ok=n == DIO_LEN and facts["page_maybe_dma_pinned during the I/O"]
            and facts["parent reads"] == b"DDDD" and facts["child reads"] == b"uuuu"
            and facts["parent's status word"] == b"S" and facts["fork_copy_pinned"] == 1
            and facts["nr_foll_pin_acquired"] == 1 and facts["pins held after"] == 0
            and not facts["sanitizer reports"])]
    return [CaseStep(
        "The same read with FOLL_GET: fork() shares the page, the read lands in the child",
        "With plain references page_maybe_dma_pinned() is false, so fork() shares the page "
        "copy-on-write; the parent's status write then copies its page away, and the "
        "device writes into the old frame, which only the child maps: the parent never "
        "sees the data it read (writeback would not tell either: it does not consult "
        "folio_maybe_dma_pinned(), in the model as in mainline).",
        facts, ok=n == DIO_LEN and not facts["page_maybe_dma_pinned during the I/O"]
        and facts["parent reads"] == b"uuuu" and facts["child reads"] == b"DDDD"
        and facts["parent's status word"] == b"S" and facts["fork_copy_pinned"] == 0
        and facts["nr_foll_pin_acquired"] == 0 and not facts["sanitizer reports"])]


def case1() -> CaseRun:
    """Case 1, Direct IO: short-term FOLL_PIN versus the FOLL_GET references it replaced."""
    return CaseRun("case 1: Direct IO (O_DIRECT)", "FOLL_PIN (| FOLL_WRITE for a read)",
                   "FOLL_GET (| FOLL_WRITE)",
                   "The pages are held only while the I/O runs, but the data must reach "
                   "the process that asked: pin them, so the rest of mm knows.",
                   _case1(True), _case1(False))


# -- case 2: RDMA -----------------------------------------------------------------------


NPAGES2 = 16


def _rdma_machine() -> tuple[Kernel, Process, int, tuple[int, int]]:
    k = Kernel(memory="256MiB", movable="64MiB")
    p = k.spawn("rdma-app", uid=1000, caps=set(), rlimit_memlock=64 << 20)
    buf = p.mmap(0, NPAGES2 * PAGE_SIZE, RW, ANON)
    p.write(buf, b"r" * NPAGES2 * PAGE_SIZE)
    frames = [_pfn(p, buf + i * PAGE_SIZE) for i in range(NPAGES2)]
    return k, p, buf, (min(frames), max(frames) + 1)


def _case2_right() -> list[CaseStep]:
    k, p, buf, block = _rdma_machine()
    dev = IbDevice(k)
    ctx = ibv_open_device(dev, p)
    mr = ibv_reg_mr(ctx, buf, NPAGES2 * PAGE_SIZE, IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE)
    watch = PinnedFrameWatch(k)
    watch.watch(mr.umem, "ib_umem")
    page = k.page(int(mr.umem.pfns[0]))
    facts: dict[str, Any] = {
        "pages were in": "MOVABLE", "pinned pages now in": page.folio.zone.name,
        "pgmigrate_success": k.vmstat["pgmigrate_success"], "pins held": _held(k),
        "nr_foll_pin_acquired": _acq(k),
        "VmPin kB": p.proc_status()["VmPin"], "page_maybe_dma_pinned": page_maybe_dma_pinned(page)}
    steps = [CaseStep(
        "ibv_reg_mr(): ib_umem_get() pins long-term and charges VmPin",
        "FOLL_LONGTERM makes GUP move the pages out of ZONE_MOVABLE before pinning, since the "
        "pin may last forever; FOLL_PIN (pin_user_pages_fast) marks them maybe-DMA-pinned; "
        "the driver charges the pages to pinned_vm under RLIMIT_MEMLOCK. GUP counted each "
        "page twice in nr_foll_pin_acquired: pinned, found movable, unpinned, migrated, "
        "pinned again.",
        facts, ok=facts["pinned pages now in"] == "NORMAL" and
        facts["pgmigrate_success"] == NPAGES2 and facts["pins held"] == NPAGES2
        and facts["nr_foll_pin_acquired"] == 2 * NPAGES2
        and facts["VmPin kB"] == NPAGES2 * 4 and facts["page_maybe_dma_pinned"])]
    res = compact_range(k.env, *block)
    steps.append(CaseStep(
        "Offlining the memory block the buffer was in succeeds",
        "The frames the buffer started in are free (the pin moved the data), so compaction "
        "or memory hot-unplug of that block is not blocked by the memory region.",
        {"compaction rc": res.rc, "invariant violations": watch.violations()},
        ok=res.rc == 0 and not watch.violations()))
    child = p.fork("child")
    p.write(buf, b"parent")
    rc = dev.dma_write(mr.rkey, buf, b"RDMA-WRITE")
    facts = {"device status": rc, "parent reads": p.read(buf, 10),
             "child reads": child.read(buf, 10),
             "fork_copy_pinned": k.vmstat["fork_copy_pinned"],
             "invariant violations": watch.violations()}
    steps.append(CaseStep(
        "fork(), the parent writes, then the device writes: the parent sees the data",
        "fork() copied the pinned pages for the child (folio_maybe_dma_pinned), so the "
        "parent keeps the frames the device holds and its own write reuses them.",
        facts, ok=facts["parent reads"] == b"RDMA-WRITE" and facts["child reads"] == b"r" * 10
        and facts["fork_copy_pinned"] == NPAGES2 and not facts["invariant violations"]))
    ibv_dereg_mr(mr)
    facts = {"VmPin kB": p.proc_status()["VmPin"], "pins held": _held(k),
             "sanitizer reports": [str(r) for r in k.sanitizer.reports]}
    steps.append(CaseStep(
        "ibv_dereg_mr(): unpinned range by range, dirtied, VmPin back to 0",
        "ib_umem_release() calls unpin_user_page_range_dirty_lock() per scatterlist segment.",
        facts, ok=facts["VmPin kB"] == 0 and facts["pins held"] == 0
        and not facts["sanitizer reports"]))
    return steps


def _case2_wrong() -> list[CaseStep]:
    k, p, buf, block = _rdma_machine()
    pages = PageArray(NPAGES2)
    got = p.get_user_pages_fast(buf, NPAGES2, FOLL_WRITE, pages)   # the wrong flags
    page = pages[0]
    assert page is not None
    facts: dict[str, Any] = {"pages got": got, "pages stay in": page.folio.zone.name,
                             "nr_foll_pin_acquired": _acq(k),
                             "page_maybe_dma_pinned": page_maybe_dma_pinned(page)}
    steps = [CaseStep(
        "get_user_pages_fast(FOLL_WRITE): references, no pin, no long-term migration",
        "Without FOLL_LONGTERM the pages stay in ZONE_MOVABLE; without FOLL_PIN nothing "
        "tells the rest of mm that a device holds them.",
        facts, ok=got == NPAGES2 and facts["pages stay in"] == "MOVABLE"
        and facts["nr_foll_pin_acquired"] == 0 and not facts["page_maybe_dma_pinned"])]
    res = compact_range(k.env, *block)
    facts = {"compaction rc": res.rc, "folios left in place": len(res.skipped),
             "why": next(iter(res.skipped.values()), "")}
    steps.append(CaseStep(
        "Offlining the block the buffer is in fails for as long as the MR lives",
        "Migration cannot move a folio with references beyond its mappings (the model, like "
        "the kernel's refcount freeze, does not move it under the device): the movable "
        "block stays busy, so hot-unplug or a CMA allocation there fails (-EBUSY).",
        facts, ok=res.rc < 0 and len(res.skipped) == NPAGES2))
    child = p.fork("child")
    p.write(buf, b"parent")
    k.dma_write(page, 0, b"RDMA-WRITE")
    facts = {"parent reads": p.read(buf, 10), "child reads": child.read(buf, 10),
             "parent still maps the device's frame": _pfn(p, buf) == page.pfn,
             "fork_copy_pinned": k.vmstat["fork_copy_pinned"]}
    steps.append(CaseStep(
        "fork(), the parent writes, then the device writes: the write is lost to the process",
        "fork() shared the pages copy-on-write (not maybe-pinned), the parent's write copied "
        "its page away, and the device writes into the old frame, which only the child maps.",
        facts, ok=facts["parent reads"] == b"parent" + b"r" * 4
        and facts["child reads"] == b"RDMA-WRITE"
        and not facts["parent still maps the device's frame"]))
    for pg in pages.filled():
        k.put_page(pg)
    return steps


def case2() -> CaseRun:
    """Case 2, RDMA memory registration: FOLL_PIN | FOLL_LONGTERM versus plain FOLL_GET."""
    return CaseRun("case 2: RDMA (ib_umem_get)", "FOLL_PIN | FOLL_LONGTERM (| FOLL_WRITE)",
                   "FOLL_GET (| FOLL_WRITE)",
                   "A device holds the buffer indefinitely: pin it long-term, so it is moved "
                   "out of movable memory first and fork/COW keep it with the process.",
                   _case2_right(), _case2_wrong())


# -- case 4: struct page only -----------------------------------------------------------


NPAGES4 = 4


def _case4(pinned: bool) -> list[CaseStep]:
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    buf = p.mmap(0, NPAGES4 * PAGE_SIZE, RW, ANON)
    p.write(buf, b"s" * NPAGES4 * PAGE_SIZE)
    children: list[Process] = []
    query = page_status_query_pinned if pinned else page_status_query
    out = query(k, buf, NPAGES4, current=p, while_held=lambda: children.append(p.fork()))
    assert not isinstance(out, int)
    child = children[0]
    shared = sum(_pfn(p, buf + i * PAGE_SIZE) == _pfn(child, buf + i * PAGE_SIZE)
                 for i in range(NPAGES4))
    facts: dict[str, Any] = {"pages reported": len(out), "mapcount reported": out[0].mapcount,
                             "pages fork shared with the child": shared,
                             "fork_copy_pinned": k.vmstat["fork_copy_pinned"],
                             "nr_foll_pin_acquired": _acq(k),
                             "MMF_HAS_PINNED": bool(p.mm.flags & MMF.HAS_PINNED),
                             "sanitizer reports": [str(r) for r in k.sanitizer.reports]}
    if not pinned:
        return [CaseStep(
            "get_user_pages_fast() + put_page(): the status query with plain references",
            "Only struct page is read, so ordinary references are enough; a fork() meanwhile "
            "shares the pages as usual and the query sees them mapped twice.",
            facts, ok=shared == NPAGES4 and facts["mapcount reported"] == 2
            and facts["fork_copy_pinned"] == 0 and not facts["MMF_HAS_PINNED"]
            and facts["nr_foll_pin_acquired"] == 0)]
    return [CaseStep(
        "pin_user_pages_fast() + unpin_user_pages() for the same query: a false 'maybe pinned'",
        "While held the pages look DMA-pinned, so a fork() in that window copies every one "
        "for the child (memory and time spent for nothing), the query reads a mapcount the "
        "pin itself changed, and the mm stays MMF_HAS_PINNED for life.",
        facts, ok=shared == 0 and facts["fork_copy_pinned"] == NPAGES4
        and facts["mapcount reported"] == 1 and facts["MMF_HAS_PINNED"]
        and facts["nr_foll_pin_acquired"] == NPAGES4)]


def case4() -> CaseRun:
    """Case 4, struct page manipulation only: FOLL_GET is right, FOLL_PIN is misleading."""
    return CaseRun("case 4: struct page only", "FOLL_GET (neither flag)", "FOLL_PIN",
                   "Only struct page is touched: plain references; a pin would make the "
                   "rest of mm believe a device is writing the memory.",
                   _case4(False), _case4(True))


# -- case 5: pin, write, unpin ----------------------------------------------------------


def _case5_file(right: bool) -> CaseStep:
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    f = k.fs("ext4").create("data", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    p.write(a, b"user")
    seen: dict[str, Any] = {}

    def writeback() -> None:
        head = k.page(_pfn(p, a))
        seen["maybe pinned during the window"] = page_maybe_dma_pinned(head)
        seen["writeback in the window wrote"] = f.writeback()

    fn = pin_and_write if right else get_and_write_incorrect
    n = fn(k, a, b"KERN", current=p, while_held=writeback)
    seen["folio dirty after release"] = k.page(_pfn(p, a)).folio.dirty
    seen["next writeback wrote"] = f.writeback()
    p.munmap(a, PAGE_SIZE)
    f.drop_caches()
    seen["file reads after the cache is dropped"] = f.pread(0, 4)
    seen["written"] = n
    if right:
        return CaseStep(
            "File page: pin_user_pages(), writeback runs, write, unpin_user_pages_dirty_lock()",
            "Writeback cleaned the pinned folio (it does not consult folio_maybe_dma_pinned() "
            "in the model, nor in mainline) but the release redirtied it, so the next "
            "writeback carries the kernel's write to the file.",
            seen, ok=seen["file reads after the cache is dropped"] == b"KERN"
            and seen["folio dirty after release"] and seen["maybe pinned during the window"])
    return CaseStep(
        "File page: get_user_pages(), writeback runs, write, put_page(): the write is lost",
        "Writeback cleaned the folio in the window; put_page() does not redirty it and "
        "nothing told the file system the page changed, so the next writeback skips it and "
        "the data is gone when the clean page cache is dropped. (folio_maybe_dma_pinned() was "
        "false, but the model's writeback ignores it either way: what differs is the "
        "redirtying release.)",
        seen, ok=seen["file reads after the cache is dropped"] == b"user"
        and not seen["folio dirty after release"] and seen["next writeback wrote"] == 0)


def _case5_anon(right: bool) -> CaseStep:
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, PAGE_SIZE, RW, ANON)
    p.write(a, b"user")
    children: list[Process] = []

    def fork_and_write() -> None:
        children.append(p.fork())
        p.write(a + 100, b"!")           # the parent touches the page after the fork

    fn = pin_and_write if right else get_and_write_incorrect
    fn(k, a, b"KERN", current=p, while_held=fork_and_write)
    facts = {"parent reads": p.read(a, 4), "child reads": children[0].read(a, 4),
             "fork_copy_pinned": k.vmstat["fork_copy_pinned"]}
    if right:
        return CaseStep(
            "Anonymous page: fork() in the window copies the pinned page for the child",
            "folio_maybe_dma_pinned() decides fork's copy: the parent keeps the pinned page "
            "and the kernel's write reaches the parent.",
            facts, ok=facts["parent reads"] == b"KERN" and facts["child reads"] == b"user"
            and facts["fork_copy_pinned"] == 1)
    return CaseStep(
        "Anonymous page: fork() in the window shares it; the write lands in the child's page",
        "Not maybe-pinned, so fork() shared the page copy-on-write; the parent's write copied "
        "its page away and the kernel wrote into the frame only the child maps.",
        facts, ok=facts["parent reads"] == b"user" and facts["child reads"] == b"KERN"
        and facts["fork_copy_pinned"] == 0)


def case5() -> CaseRun:
    """Case 5, pinning to write to the data: the documented correct and INCORRECT patterns."""
    return CaseRun("case 5: pin, write, unpin", "FOLL_PIN, unpin_user_pages_dirty_lock(true)",
                   "FOLL_GET, put_page()",
                   "Kernel code writing user pages through a kernel mapping must pin them and "
                   "release them dirtied.",
                   [_case5_file(True), _case5_anon(True)],
                   [_case5_file(False), _case5_anon(False)])


# -- GPU host registration with a get_user_pages() fallback -------------------------------


def _gpu_machine() -> tuple[Kernel, Process, int]:
    k = Kernel(memory="64MiB")
    p = k.spawn("gpu-app")
    a = p.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    f = k.fs("ext4").create("weights", 4 * PAGE_SIZE)
    p.mmap(a + 8 * PAGE_SIZE, 4 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED, fd=f)
    p.write(a, b"g" * 12 * PAGE_SIZE)
    return k, p, a


def gpu_fallback() -> CaseRun:
    """GPU host registration over anon + ext4 shared memory: fail cleanly, or fall back."""
    k, p, a = _gpu_machine()
    dev = GpuDevice(k)
    rc = gpu_host_register(dev, a, 12 * PAGE_SIZE, current=p)
    facts: dict[str, Any] = {"register returns": rc, "pins held": _held(k),
                             "sanitizer reports": len(k.sanitizer.reports)}
    right = [CaseStep(
        "pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) stops at the ext4 shared mapping: -EFAULT",
        "Writable long-term pins of dirty-tracked file mappings are refused (6.5); the driver "
        "releases the 8 pins it got and fails the registration.",
        facts, ok=rc == -EFAULT and facts["pins held"] == 0 and not facts["sanitizer reports"])]
    k, p, a = _gpu_machine()
    dev = GpuDevice(k)
    region = gpu_host_register_with_fallback(dev, a, 12 * PAGE_SIZE, current=p)
    assert not isinstance(region, int)
    gpu_host_unregister_all_unpin(region)
    reports = [r for r in k.sanitizer.reports if r.kind == "unpin_of_get"]
    facts = {"pinned": region.npinned, "taken with get_user_pages()": region.nget,
             "unpin_of_get reports": len(reports),
             "first report": str(reports[0]) if reports else "",
             "warnings": k.warnings.sites(), "invariants": k.check()[:2]}
    wrong = [CaseStep(
        "Fallback to get_user_pages(), then unpin_user_page() on everything",
        "The sanitizer names the driver line that took each reference and the line that "
        "released it; the release then takes 1024 off a refcount of 3: it underflows and "
        "the still-mapped file page is freed.",
        facts, ok=region.npinned == 8 and region.nget == 4 and len(reports) == 4
        and "gup_put_folio: refcount underflow" in facts["warnings"]
        and any("mapped but not allocated" in v for v in facts["invariants"]))]
    return CaseRun("GPU host memory registration", "pin_user_pages(FOLL_LONGTERM), all or "
                   "nothing", "pin, fall back to get_user_pages(), unpin_user_page() all",
                   "A registration that cannot pin every page must fail, not mix pins and "
                   "references in one list.", right, wrong)


# -- VFIO type1: FOLL_LONGTERM on pin_user_pages_remote() ----------------------------------


def vfio_longterm() -> CaseRun:
    """VFIO's pins with and without FOLL_LONGTERM (VFIO only set it from a 2020 fix on)."""
    k, p, buf, block = _rdma_machine()
    c = VfioContainer(k, p)
    c.map_dma(buf, 0x100000, NPAGES2 * PAGE_SIZE)
    zones = {k.page(int(f)).folio.zone.name for f in c.pinned_pfns()}
    res = compact_range(k.env, *block)
    facts: dict[str, Any] = {"pinned pages in": sorted(zones), "VmLck kB": p.proc_status()["VmLck"],
                             "VmPin kB": p.proc_status()["VmPin"], "compaction rc": res.rc}
    right = [CaseStep(
        "VFIO_IOMMU_MAP_DMA: pin_user_pages_remote(FOLL_LONGTERM | FOLL_WRITE), VmLck",
        "The guest memory is moved out of ZONE_MOVABLE before it is pinned, so the block it "
        "was in can still be offlined; the pages are charged to locked_vm (VmLck), not VmPin.",
        facts, ok=zones == {"NORMAL"} and facts["VmLck kB"] == NPAGES2 * 4
        and facts["VmPin kB"] == 0 and res.rc == 0)]
    c.close()
    k, p, buf, block = _rdma_machine()
    pages = PageArray(NPAGES2)
    got = k.pin_user_pages_remote(p.mm, buf, NPAGES2, FOLL_WRITE, pages, None)  # no LONGTERM
    zones = {k.page(int(f)).folio.zone.name for f in pages.pfns[:max(got, 0)]}
    res = compact_range(k.env, *block)
    facts = {"pinned pages in": sorted(zones), "compaction rc": res.rc,
             "folios left in place": len(res.skipped)}
    wrong = [CaseStep(
        "The same pins without FOLL_LONGTERM: the guest's memory pins ZONE_MOVABLE",
        "The pages stay where they were; for as long as the guest runs, compaction, memory "
        "hot-unplug and CMA allocations over that block fail (-EBUSY).",
        facts, ok=got == NPAGES2 and zones == {"MOVABLE"} and res.rc < 0
        and len(res.skipped) == NPAGES2)]
    k.unpin_user_pages(pages, got)
    return CaseRun("VFIO type1 DMA mapping", "FOLL_PIN | FOLL_LONGTERM (| FOLL_WRITE)",
                   "FOLL_PIN without FOLL_LONGTERM",
                   "A VM's memory is pinned for the VM's lifetime: long-term, so it leaves "
                   "movable memory first.", right, wrong)


CASES: dict[str, Callable[[], CaseRun]] = {"1": case1, "2": case2, "3": case3,
                                           "3-userptr": case3_userptr, "4": case4, "5": case5,
                                           "vfio": vfio_longterm, "gpu": gpu_fallback}


def run_cases(names: list[str] | None = None) -> list[CaseRun]:
    """Run the named cases (all by default), in order."""
    unknown = [n for n in names or [] if n not in CASES]
    if unknown:
        raise ValueError(f"no case {unknown[0]!r}: choose from {sorted(CASES)}")
    return [CASES[n]() for n in (names or list(CASES))]


__all__ = ["CASES", "CaseRun", "CaseStep", "case1", "case2", "case4", "case5",
           "gpu_fallback", "run_cases", "vfio_longterm"]
