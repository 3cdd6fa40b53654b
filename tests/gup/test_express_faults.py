"""The express path's faults (gup/express.py `_fault_in`): a write pin of a few pages that
are not mapped yet, or mapped read-only (a fork's shared pages, what clear_refs
write-protected), faults them in as the slow path does and takes them as GUP-fast does.

A random program of such calls (both GUP-fast and *_unlocked entries, pins and
references, long-term or not, on a machine with ZONE_MOVABLE and CMA and with little
memory left) runs with the shortcuts (`gupsim.lean`) and without: every result, what the
processes read, the page state, /proc/vmstat, the warnings, the sanitizer's reports and
each call's record (path, pages taken by each part, migration rounds) must be the same.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from gup_helpers import recorded

import gupsim
from gupsim import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    PageArray,
    lean,
)
from gupsim.gup.state import PATH_FALLBACK, PATH_SLOW, GupCall
from gupsim.memory import Kind, OutOfMemory

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def _program(seed: int, steps: int = 300) -> tuple[list[Any], list[GupCall]]:
    rng = random.Random(seed)
    k = Kernel(memory="64MiB", movable="16MiB", cma="8MiB")
    hog: list[int] = []
    procs = [k.spawn("express")]
    maps: list[tuple[gupsim.Process, int, int]] = []
    held: list[tuple[bool, PageArray]] = []
    trace: list[Any] = []
    with recorded() as (calls, _):
        for _ in range(steps):
            p = rng.choice(procs)
            mine = [m for m in maps if m[0] is p]
            op = rng.random()
            if op < 0.12 or not mine:
                n = rng.choice((1, 2, 5, 16, 64, 65))
                how = ANON | (MAP_POPULATE if rng.random() < .4 else 0)
                a = _attempt(lambda p=p, n=n, how=how: p.mmap(0, n * PAGE_SIZE, RW, how))
                if isinstance(a, int):
                    maps.append((p, a, n))
                continue
            _, a, pages = rng.choice(mine)
            i = rng.randrange(pages)
            n = max(1, min(rng.choice((1, 2, 3, 8, 64, pages)), pages - i))
            addr = a + i * PAGE_SIZE
            if op < 0.50:
                entry = rng.choice(("pin_user_pages_fast", "pin_user_pages_unlocked",
                                    "get_user_pages_fast", "get_user_pages_unlocked"))
                flags = rng.choice((FOLL_WRITE | FOLL_LONGTERM, FOLL_WRITE, FOLL_WRITE, 0))
                if entry.startswith("get"):
                    flags &= ~FOLL_LONGTERM
                vec = PageArray(n)
                if entry.endswith("unlocked"):
                    got = getattr(p, entry)(addr, n, vec, flags)
                else:
                    got = getattr(p, entry)(addr, n, flags, vec)
                trace.append((entry, n, flags, got))
                if got > 0:
                    held.append((entry.startswith("pin"), vec[:got]))
            elif op < 0.65 and held:
                pinned, vec = held.pop(rng.randrange(len(held)))
                if pinned:
                    k.unpin_user_pages(vec)
                else:
                    for page in vec.filled():
                        k.put_page(page)
            elif op < 0.72:
                data = bytes([rng.randrange(256)]) * 3
                trace.append(_attempt(lambda p=p, addr=addr, data=data: p.write(addr, data)))
            elif op < 0.78 and len(procs) < 4:
                child = _attempt(p.fork)
                if isinstance(child, gupsim.Process):
                    procs.append(child)
                    maps.extend((child, b, m) for q, b, m in list(maps) if q is p)
            elif op < 0.82 and p is not procs[0]:
                p.exit()
                procs.remove(p)
                maps[:] = [m for m in maps if m[0] is not p]
            elif op < 0.86:
                p.clear_refs()                    # every entry write-protected again
            elif op < 0.89:
                p.madvise(addr, n * PAGE_SIZE, MADV_DONTNEED)
            elif op < 0.93:                      # memory runs short, then comes back
                if hog and rng.random() < 0.5:
                    for pfn in hog:
                        k.alloc.free_folio(pfn)
                    hog.clear()
                else:
                    try:
                        while k.alloc.nr_free_pages() > rng.choice((0, 3, 40)):
                            hog.append(k.alloc.alloc_folio(0, Kind.ANON))
                    except OutOfMemory:
                        pass
            else:
                p.munmap(a, pages * PAGE_SIZE)
                maps.remove((p, a, pages))
            for q in [q for q in procs if not q.alive]:      # the OOM killer took it
                procs.remove(q)
                maps[:] = [m for m in maps if m[0] is not q]
            if not procs:
                break
        for pfn in hog:
            k.alloc.free_folio(pfn)
        reads = [q.read(b, m * PAGE_SIZE) for q, b, m in maps]
    mem = k.mem
    state = [getattr(mem, name).copy() for name in
             ("refcount", "pincount", "mapcount", "flags", "kind", "order", "index")]
    return [trace, reads, state, dict(k.vmstat), [str(w) for w in k.warnings],
            [str(r) for r in k.sanitizer.reports]], calls


def _attempt(fn: Any) -> Any:
    """fn()'s result, or the name of what it raised (out of memory, mostly)."""
    try:
        return fn()
    except Exception as e:          # noqa: BLE001 - the same exception both ways is the point
        return type(e).__name__


def _record(call: GupCall) -> tuple[object, ...]:
    """A call's record without the express/leaves marks, which only the shortcuts set."""
    return (call.entry, call.start, call.nr_pages, call.flags, call.path, call.fast,
            call.slow, call.migrate_rounds, call.ret)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_faulting_express_calls_leave_what_the_slow_path_leaves(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_calls = _program(seed)
    monkeypatch.setattr(lean, "ENABLED", False)
    general, general_calls = _program(seed)
    assert fast[0] == general[0]                  # every result
    assert fast[1] == general[1]                  # what the processes read
    for a, b in zip(fast[2], general[2], strict=True):
        assert np.array_equal(a, b)
    assert fast[3:] == general[3:]
    assert [_record(c) for c in fast_calls] == [_record(c) for c in general_calls]
    faulted = [c for c in fast_calls if c.express and c.path in (PATH_FALLBACK, PATH_SLOW)]
    assert {c.path for c in faulted} == {PATH_FALLBACK, PATH_SLOW}, \
        "the express faults were not taken by both kinds of entry: the test compares little"
    assert len(faulted) >= 10
