"""The narrated tour behind `gupsim demo`: short scenarios on the model, with what to notice.

Each step runs on a fresh `Kernel`, records the figures a newcomer should look at, and
checks them against what the kernel documents, so the tour can never silently drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import (
    EFAULT,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from .gup import FOLL_LONGTERM, FOLL_WRITE
from .kernel import Kernel, Process
from .memory import page_maybe_dma_pinned
from .mm import PTE, VMA

RW = PROT_READ | PROT_WRITE


@dataclass
class Step:
    """One step of the tour: what it shows, the figures to look at, and whether they held."""

    title: str
    story: str
    facts: dict[str, Any] = field(default_factory=dict)
    dump: str = ""
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The step for JSON: data the tour read (bytes) as text, escapes for the rest."""
        facts = {k: v.decode("ascii", "backslashreplace") if isinstance(v, bytes) else v
                 for k, v in self.facts.items()}
        return {"title": self.title, "story": self.story, "facts": facts,
                "dump": self.dump, "ok": self.ok}


def _vma(p: Process, addr: int) -> VMA:
    vma = p.mm.find_vma(addr)
    if vma is None:
        raise RuntimeError(f"tour: {addr:#x} is not mapped in {p!r}, the step is wrong")
    return vma


def _pfn(p: Process, addr: int) -> int:
    vma = _vma(p, addr)
    return int(vma.pfn[vma.idx(addr)])


def step_zero_page() -> Step:
    """A first read maps the shared zero page; the first write gets an exclusive page."""
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.read(a, 1)
    zero = _pfn(p, a) == k.mem.zero_pfn
    p.write(a, b"hello")
    page = k.page(_pfn(p, a))
    return Step(
        "Reading untouched memory maps the shared zero page",
        "A private anonymous mapping starts empty. The first read maps the one shared zero "
        "page read-only; the first write allocates a page of its own, marked anon-exclusive.",
        {"first read mapped the zero page": zero, "after the write: refcount": page.refcount,
         "mapcount": page.mapcount, "anon-exclusive": page.anon_exclusive},
        k.dump_page(page), ok=zero and page.refcount == 1 and page.anon_exclusive)


def step_fork_cow() -> Step:
    """fork() shares a private page write-protected; the first write copies it."""
    k = Kernel(memory="64MiB")
    p = k.spawn("parent")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"parent data")
    child = p.fork("child")
    shared = _pfn(p, a) == _pfn(child, a)
    page = k.page(_pfn(p, a))
    facts: dict[str, Any] = {"after fork: same frame": shared, "refcount": page.refcount,
                             "mapcount": page.mapcount, "anon-exclusive": page.anon_exclusive}
    dump = k.dump_page(page)
    child.write(a, b"child data!")
    facts["after the child writes: parent reads"] = p.read(a, 11)
    facts["child reads"] = child.read(a, 11)
    ok = (shared and facts["mapcount"] == 2 and not facts["anon-exclusive"]
          and facts["after the child writes: parent reads"] == b"parent data")
    return Step(
        "fork() shares private pages copy-on-write",
        "After fork both processes map the same frame, write-protected, and the page is no "
        "longer anon-exclusive. The first write by either side copies it (COW).",
        facts, dump, ok)


def step_shared_file() -> Step:
    """A shared ext4 mapping: dirty, written back, write-protected, re-dirtied on write."""
    k = Kernel(memory="64MiB")
    f = k.fs("ext4").create("log", PAGE_SIZE)
    p, q = k.spawn("writer"), k.spawn("reader")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    b = q.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    p.write(a, b"shared!")
    folio = k.page(_pfn(p, a)).folio
    facts: dict[str, Any] = {"reader sees": q.read(b, 7), "page-cache folio dirty": folio.dirty}
    f.fsync()
    vma = _vma(p, a)
    facts["after writeback: dirty"] = folio.dirty
    facts["writer's PTE writable"] = bool(vma.pte[0] & PTE.WRITE)
    p.write(a, b"again")
    facts["next write re-dirties"] = folio.dirty
    return Step(
        "A shared ext4 mapping: write-notify, dirty pages and writeback",
        "Both processes map the file's page-cache page. Writeback cleans it with "
        "page_mkclean(), which write-protects the PTEs, so the next write faults and the file "
        "system hears about it again. This is why a long-term writable pin of such a page "
        "is refused: the file system must see every write.",
        facts, k.dump_page(k.page(_pfn(p, a))),
        ok=facts["reader sees"] == b"shared!" and not facts["after writeback: dirty"]
        and facts["next write re-dirties"])


def _pins(k: Kernel) -> tuple[int, int]:
    return k.vmstat.count("nr_foll_pin_acquired"), k.vmstat.count("nr_foll_pin_released")


def step_pin() -> Step:
    """A pin adds GUP_PIN_COUNTING_BIAS to a small page, 1 to a large folio's pincount."""
    k = Kernel(memory="64MiB", nr_hugepages=1)
    p = k.spawn("driver")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"data")
    pages: list = []
    n = p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages)
    page = pages[0]
    facts: dict[str, Any] = {
        "pin_user_pages_fast(a, 1, FOLL_WRITE, pages)": n,
        "refcount (1 mapping + GUP_PIN_COUNTING_BIAS)": page.refcount,
        "page_maybe_dma_pinned": page_maybe_dma_pinned(page),
        "nr_foll_pin_acquired": _pins(k)[0]}
    dump = k.dump_page(page)
    k.unpin_user_pages(pages)
    facts["after unpin_user_pages: refcount"] = page.refcount
    facts["nr_foll_pin_released"] = _pins(k)[1]
    h = p.mmap(0, 2 << 20, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
    p.write(h, b"huge")
    big: list = []
    p.pin_user_pages_fast(h, 3, FOLL_WRITE, big)
    folio = big[0].folio
    facts["3 pins of a 2 MiB hugetlb folio: pincount"] = folio.pincount
    facts["its refcount (1 mapping + 3)"] = folio.refcount
    k.unpin_user_pages(big)
    ok = (n == 1 and facts["refcount (1 mapping + GUP_PIN_COUNTING_BIAS)"] == 1 + 1024
          and facts["after unpin_user_pages: refcount"] == 1 and folio.refcount == 1
          and facts["3 pins of a 2 MiB hugetlb folio: pincount"] == 3)
    return Step(
        "A pin: FOLL_PIN adds 1024 to a small page's refcount",
        "A driver about to DMA into user memory pins it with pin_user_pages*(). The kernel "
        "has no room in a small page for a pin count, so a pin adds GUP_PIN_COUNTING_BIAS "
        "(1024) to the refcount; a large folio keeps an exact pincount instead. "
        "page_maybe_dma_pinned() is how the rest of mm asks \"might a device be using "
        "this?\"; unpin_user_pages() gives the pin back.", facts, dump, ok)


def step_false_positive() -> Step:
    """1024 ordinary references make page_maybe_dma_pinned() say yes: "maybe" means maybe."""
    k = Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"x")
    page = k.page(_pfn(p, a))
    for _ in range(1024):
        k.get_page(page)          # ordinary references, e.g. 1024 in-flight splices
    facts: dict[str, Any] = {"pins taken": 0, "refcount": page.refcount,
                             "page_maybe_dma_pinned": page_maybe_dma_pinned(page)}
    for _ in range(1024):
        k.put_page(page)
    facts["after dropping them"] = page_maybe_dma_pinned(page)
    return Step(
        "\"maybe\": 1024 ordinary references look like a pin",
        "The bias makes the answer cheap but only probable: a small page with 1024 ordinary "
        "references is reported as maybe pinned. Callers treat a false positive as "
        "\"be careful\" (copy at fork, skip in reclaim), never as proof.",
        facts, ok=facts["page_maybe_dma_pinned"] and not facts["after dropping them"])


def step_longterm_file() -> Step:
    """FOLL_LONGTERM|FOLL_WRITE on shared ext4 is refused (-EFAULT), on tmpfs allowed."""
    k = Kernel(memory="64MiB")
    p = k.spawn("rdma")
    ext4 = k.fs("ext4").create("data", PAGE_SIZE)
    shm = k.fs("tmpfs").create("buf", PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=ext4)
    b = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=shm)
    p.write(a, b"e")
    p.write(b, b"t")
    before = _pins(k)
    pages: list = []
    rc = p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages)
    after = _pins(k)
    rc_shm = p.pin_user_pages_fast(b, 1, FOLL_WRITE | FOLL_LONGTERM, pages)
    facts = {"ext4 MAP_SHARED, FOLL_WRITE|FOLL_LONGTERM": _errname(rc),
             "pins acquired / released on the way": f"+{after[0] - before[0]} / "
                                                     f"+{after[1] - before[1]}",
             "tmpfs MAP_SHARED, same flags": rc_shm}
    k.unpin_user_pages(pages)
    return Step(
        "A long-term writable pin of a shared ext4 page is refused",
        "FOLL_LONGTERM says the device may hold the page indefinitely (RDMA, io_uring fixed "
        "buffers, VFIO). ext4 must see every write to a shared page (step 3), so "
        "the pin fails with -EFAULT; tmpfs has no such need. GUP-fast grabs the page before "
        "it looks at the folio, so the refusal shows as one pin taken and dropped again, "
        "exactly as /proc/vmstat shows on a real kernel.",
        facts, ok=rc == -EFAULT and rc_shm == 1 and after[0] - before[0] == 1
        and after[1] - before[1] == 1)


def step_fork_pinned() -> Step:
    """fork() copies a pinned page for the child, so parent and device stay in step."""
    k = Kernel(memory="64MiB")
    p = k.spawn("parent")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"before")
    pages: list = []
    p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages)
    child = p.fork("child")
    facts: dict[str, Any] = {"parent and child share the frame": _pfn(p, a) == _pfn(child, a),
                             "child got a copy reading": child.read(a, 6)}
    p.write(a, b"parent")
    child.write(a, b"child!")
    facts["the device reads (dma_read)"] = k.dma_read(pages[0], 0, 6)
    k.dma_write(pages[0], 0, b"device")
    facts["after dma_write the parent reads"] = p.read(a, 6)
    facts["and the child reads"] = child.read(a, 6)
    k.unpin_user_pages(pages)
    return Step(
        "fork() with a pinned page copies it for the child",
        "Sharing a pinned page copy-on-write would let the next write by the parent land in "
        "a fresh copy the device never sees (the CVE-2020-29374 family). So fork() copies "
        "maybe-pinned anonymous pages for the child at once and the parent keeps the "
        "pinned frame: device and parent stay in step, the child is on its own.",
        facts, ok=not facts["parent and child share the frame"]
        and facts["the device reads (dma_read)"] == b"parent"
        and facts["after dma_write the parent reads"] == b"device"
        and facts["and the child reads"] == b"child!")


def _errname(rc: int) -> str:
    import errno
    return f"-{errno.errorcode.get(-rc, rc)}" if rc < 0 else str(rc)


def run_tour() -> list[Step]:
    """Every step of the tour, in order (each on its own machine)."""
    return [step_zero_page(), step_fork_cow(), step_shared_file(), step_pin(),
            step_false_positive(), step_longterm_file(), step_fork_pinned()]
