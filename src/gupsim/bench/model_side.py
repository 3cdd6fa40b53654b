"""The model's half of each benchmark: one workload per kind of work, timed per phase.

A workload is a context manager that builds a model machine for the case and yields a
`round()` function; each call does one round's untimed set-up, times the phases the
case reports (`pin`, `unpin`, `fork`, ...), undoes everything and returns the seconds
of each phase. The host's half (`host_side.py`) has the same shape and the same names,
so the runner interleaves the two round by round.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import gupsim

from ..constants import (
    MADV_HUGEPAGE,
    MADV_POPULATE_WRITE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
)
from ..gup import FOLL_LONGTERM, FOLL_WRITE

FLAGS = FOLL_WRITE | FOLL_LONGTERM          # what io_uring buffer registration passes
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS

Round = Callable[[], dict[str, float]]
# the workloads are the model's users: the sanitizer names their lines as call sites
# (and its walk up the stack stops here, as it stops at a user's own code)
__gupsim_call_site__ = True


def _machine(pages: int, hugetlb: int = 0) -> tuple[gupsim.Kernel, gupsim.Process]:
    """A machine with room for two copies of the range (fork copies pinned pages)."""
    k = gupsim.Kernel(memory=max(4 * pages * PAGE_SIZE, 1 << 30), nr_hugepages=hugetlb)
    return k, k.spawn("bench")


def _map(p: gupsim.Process, size: int, backing: str) -> tuple[int, int, int]:
    """(mapping address, mapping length, address of the populated range) of `size` bytes
    backed by 4 KiB pages ("small"), 2 MiB THPs ("thp") or 2 MiB hugetlb pages."""
    if backing == "hugetlb":
        a = p.mmap(0, size, RW, ANON | MAP_HUGETLB | MAP_POPULATE)
        return a, size, a
    if backing == "thp":
        a = p.mmap(0, size + PMD_SIZE, RW, ANON)
        start = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        p.madvise(start, size, MADV_HUGEPAGE)
        p.madvise(start, size, MADV_POPULATE_WRITE)
        return a, size + PMD_SIZE, start
    a = p.mmap(0, size, RW, ANON | MAP_POPULATE)
    return a, size, a


def _pin(p: gupsim.Process, addr: int, pages: int) -> gupsim.PageArray:
    vec = gupsim.PageArray(pages)
    got = p.pin_user_pages_fast(addr, pages, FLAGS, vec)
    if got != pages:
        raise RuntimeError(f"the model pinned {got} of {pages} pages")
    return vec


@contextmanager
def bulk(pages: int, backing: str = "small") -> Iterator[Round]:
    """One call pins the whole prefaulted range; one unpin_user_pages() releases it."""
    k, p = _machine(pages, hugetlb=pages // 512 + 1 if backing == "hugetlb" else 0)
    size = pages * PAGE_SIZE

    def round_() -> dict[str, float]:
        a, length, start = _map(p, size, backing)
        try:
            t0 = time.perf_counter()
            vec = _pin(p, start, pages)
            t1 = time.perf_counter()
            k.unpin_user_pages(vec)
            t2 = time.perf_counter()
        finally:
            p.munmap(a, length)
        return {"pin": t1 - t0, "unpin": t2 - t1, "pin+unpin": t2 - t0}

    yield round_


@contextmanager
def per_call(pages: int, n: int) -> Iterator[Round]:
    """gup_test's -n: pin_user_pages_fast() of n pages at a time over the range, then one
    unpin_user_pages() per call's array."""
    k, p = _machine(pages)
    size = pages * PAGE_SIZE
    a = p.mmap(0, size, RW, ANON | MAP_POPULATE)
    starts = range(a, a + size, n * PAGE_SIZE)

    def round_() -> dict[str, float]:
        t0 = time.perf_counter()
        vecs = [_pin(p, s, n) for s in starts]
        t1 = time.perf_counter()
        for vec in vecs:
            k.unpin_user_pages(vec)
        t2 = time.perf_counter()
        return {"pin": t1 - t0, "unpin": t2 - t1, "pin+unpin": t2 - t0}

    try:
        yield round_
    finally:
        p.munmap(a, size)


@contextmanager
def lifecycle(pages: int, pinned: bool) -> Iterator[Round]:
    """fork() of a process holding the (pinned) range, exit() of that child, and munmap()
    of the range in the parent, each timed on its own."""
    k, p = _machine(pages)
    size = pages * PAGE_SIZE

    def round_() -> dict[str, float]:
        a = p.mmap(0, size, RW, ANON | MAP_POPULATE)
        vec = _pin(p, a, pages) if pinned else None
        try:
            t0 = time.perf_counter()
            child = p.fork()
            t1 = time.perf_counter()
            child.exit()
            t2 = time.perf_counter()
            p.munmap(a, size)
            t3 = time.perf_counter()
        finally:
            if vec is not None:
                k.unpin_user_pages(vec)
        return {"fork": t1 - t0, "exit": t2 - t1, "munmap": t3 - t2}

    yield round_


@contextmanager
def fuzz(steps: int, seed: int = 1) -> Iterator[Round]:
    """Random steps on one machine: map, pin n pages (fast or slow entry), unpin, write,
    fork, exit, munmap; returns the seconds `steps` steps took (as phase "steps")."""
    rng = random.Random(seed)

    def round_() -> dict[str, float]:
        k = gupsim.Kernel(memory=1 << 30)
        procs = [k.spawn("fuzz")]
        maps: list[tuple[gupsim.Process, int, int]] = []
        held: list[gupsim.PageArray] = []
        t0 = time.perf_counter()
        for _ in range(steps):
            _fuzz_step(k, rng, procs, maps, held)
        elapsed = time.perf_counter() - t0
        for vec in held:
            k.unpin_user_pages(vec)
        return {"steps": elapsed}

    yield round_


def _fuzz_step(k: gupsim.Kernel, rng: random.Random, procs: list[gupsim.Process],
               maps: list[tuple[gupsim.Process, int, int]], held: list[gupsim.PageArray]
               ) -> None:
    """One random operation; the model's own answer (a count, an errno) is accepted."""
    op = rng.random()
    p = rng.choice(procs)
    mine = [m for m in maps if m[0] is p]
    if op < 0.15 or not mine:
        pages = rng.choice((1, 4, 16, 64, 64, 512))
        extra = MADV_HUGEPAGE if pages == 512 else 0
        a = p.mmap(0, pages * PAGE_SIZE, RW, ANON | (MAP_POPULATE if rng.random() < .5 else 0))
        if extra:
            p.madvise(a, pages * PAGE_SIZE, extra)
        maps.append((p, a, pages))
        return
    _, a, pages = rng.choice(mine)
    i = rng.randrange(pages)
    n = rng.randint(1, pages - i)
    if op < 0.45:
        vec = gupsim.PageArray(n)
        if rng.random() < 0.7:
            got = p.pin_user_pages_fast(a + i * PAGE_SIZE, n, FLAGS, vec)
        else:
            got = p.pin_user_pages_unlocked(a + i * PAGE_SIZE, n, vec, FLAGS)
        if got > 0:
            held.append(vec if got == n else vec[:got])
    elif op < 0.70 and held:
        k.unpin_user_pages(held.pop(rng.randrange(len(held))))
    elif op < 0.85:
        p.write(a + i * PAGE_SIZE, b"x")
    elif op < 0.92 and len(procs) < 4:
        procs.append(p.fork())
        maps.extend((procs[-1], b, n) for q, b, n in list(maps) if q is p)
    elif op < 0.96 and len(procs) > 1 and p is not procs[0]:
        p.exit()
        procs.remove(p)
        maps[:] = [m for m in maps if m[0] is not p]
    else:
        p.munmap(a, pages * PAGE_SIZE)
        maps.remove((p, a, pages))


WORKLOADS: dict[str, Callable[..., AbstractContextManager[Round]]] = {
    "bulk": bulk, "per_call": per_call, "lifecycle": lifecycle, "fuzz": fuzz}


@contextmanager
def memory(pages: int) -> Iterator[Round]:
    """Resident bytes per further populated page, in a fresh process (see memory.py), with
    gupsim.heap's tuning ("resident") and with glibc's defaults ("glibc heap"); the
    values are bytes, not seconds."""
    from .memory import resident_per_page

    def round_() -> dict[str, float]:
        return {"resident": resident_per_page(pages)["resident"],
                "glibc heap": resident_per_page(pages, malloc_defaults=True)["resident"]}

    yield round_


WORKLOADS["memory"] = memory
