"""The narrated tour behind `gupsim demo`: short scenarios on the model, with what to notice.

Each step runs on a fresh `Kernel`, records the figures a newcomer should look at, and
checks them against what the kernel documents, so the tour can never silently drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .constants import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE
from .kernel import Kernel
from .mm import PTE

RW = PROT_READ | PROT_WRITE


@dataclass
class Step:
    title: str
    story: str
    facts: dict[str, Any] = field(default_factory=dict)
    dump: str = ""
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "story": self.story, "facts": self.facts,
                "dump": self.dump, "ok": self.ok}


def _pfn(p, addr: int) -> int:
    vma = p.mm.find_vma(addr)
    return int(vma.pfn[vma.idx(addr)])


def step_zero_page() -> Step:
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
    k = Kernel(memory="64MiB")
    p = k.spawn("parent")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"parent data")
    child = p.fork("child")
    shared = _pfn(p, a) == _pfn(child, a)
    page = k.page(_pfn(p, a))
    facts = {"after fork: same frame": shared, "refcount": page.refcount,
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
    k = Kernel(memory="64MiB")
    f = k.fs("ext4").create("log", PAGE_SIZE)
    p, q = k.spawn("writer"), k.spawn("reader")
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, fd=f)
    b = q.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED, fd=f)
    p.write(a, b"shared!")
    folio = k.page(_pfn(p, a)).folio
    facts = {"reader sees": q.read(b, 7), "page-cache folio dirty": folio.dirty}
    f.fsync()
    vma = p.mm.find_vma(a)
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


def run_tour() -> list[Step]:
    """Every step of the tour, in order (each on its own machine)."""
    return [step_zero_page(), step_fork_cow(), step_shared_file()]
