"""Cost per page of a bulk pin: the model against the host kernel, side by side, one run.

Model: `pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)` of N pages into a `PageArray`,
then `unpin_user_pages()`. Host: the same N pages pinned by the kernel through io_uring
buffer registration (which calls `pin_user_pages_fast` with the same flags) and
released by unregistering. Two workloads: prefaulted memory (MAP_POPULATE / written
before) and untouched memory (GUP faults every page in before pinning it). Each figure
is the best of `repeat` runs, in nanoseconds per 4 KiB page.

The host figure includes io_uring's own work per page (the bio_vec table, the
pinned_vm charge), so it is an upper bound of the kernel's pinning cost; the host is
skipped, with the reason, where it cannot register buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import gupsim

from .constants import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from .gup import FOLL_LONGTERM, FOLL_WRITE
from .live.errors import HostUnsupported

FLAGS = FOLL_WRITE | FOLL_LONGTERM
MAX_URING_BUFFER = 1 << 30          # io_uring refuses a single buffer above 1 GiB

S = TypeVar("S")                    # what a benchmark's set-up hands to pin/unpin/cleanup


@dataclass
class Row:
    """One size and workload: ns per page on each side (None where not measured)."""

    workload: str           # "prefaulted" or "untouched"
    pages: int
    model_pin: float
    model_unpin: float
    host_pin: float | None = None
    host_unpin: float | None = None
    host_skipped: str = ""

    @property
    def ratio(self) -> float | None:
        """Model cost over host cost for the pin (below 1: the model is faster)."""
        return None if not self.host_pin else self.model_pin / self.host_pin

    def as_dict(self) -> dict[str, object]:
        """The row as plain data, ratio included, for `gupsim bench --json`."""
        return asdict(self) | {"ratio": self.ratio}


def _best(repeat: int, setup: Callable[[], S], pin: Callable[[S], None],
          unpin: Callable[[S], None], cleanup: Callable[[S], None]) -> tuple[float, float]:
    """(best pin seconds, best unpin seconds) over `repeat` fresh set-ups."""
    best_pin, best_unpin = float("inf"), float("inf")
    for _ in range(repeat):
        state = setup()
        try:
            t0 = time.perf_counter()
            pin(state)
            t1 = time.perf_counter()
            unpin(state)
            t2 = time.perf_counter()
        finally:
            cleanup(state)
        best_pin, best_unpin = min(best_pin, t1 - t0), min(best_unpin, t2 - t1)
    return best_pin, best_unpin


def model_cost(pages: int, prefault: bool, repeat: int) -> tuple[float, float]:
    """(pin, unpin) ns per page on a model machine sized for the run."""
    k = gupsim.Kernel(memory=max(4 * pages * PAGE_SIZE, 1 << 30))
    p = k.spawn("bench")
    size = pages * PAGE_SIZE
    populate = MAP_POPULATE if prefault else 0

    def setup() -> tuple[int, gupsim.PageArray]:
        a = p.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | populate)
        return a, gupsim.PageArray(pages)

    def pin(state: tuple[int, gupsim.PageArray]) -> None:
        a, vec = state
        n = p.pin_user_pages_fast(a, pages, FLAGS, vec)
        if n != pages:
            raise RuntimeError(f"model pinned {n} of {pages} pages")

    def unpin(state: tuple[int, gupsim.PageArray]) -> None:
        k.unpin_user_pages(state[1])

    def cleanup(state: tuple[int, gupsim.PageArray]) -> None:
        if k.vmstat.count("nr_foll_pin_acquired") != k.vmstat.count("nr_foll_pin_released"):
            k.unpin_user_pages(state[1])    # the pin succeeded but the unpin never ran
        p.munmap(state[0], size)

    t_pin, t_unpin = _best(repeat, setup, pin, unpin, cleanup)
    return t_pin / pages * 1e9, t_unpin / pages * 1e9


def host_cost(pages: int, prefault: bool, repeat: int) -> tuple[float, float]:
    """(pin, unpin) ns per page on this kernel, through io_uring buffer registration."""
    from .live import HostMapping, IoUring, pin_counters

    size = pages * PAGE_SIZE
    if size > MAX_URING_BUFFER:
        raise HostUnsupported("io_uring registers at most 1 GiB per buffer")
    ring = IoUring()
    ring.open()
    try:
        def setup() -> HostMapping:
            m = HostMapping(size, "anon", populate=prefault)
            return m.__enter__()

        def pin(m: HostMapping) -> None:
            before = pin_counters().acquired
            ring.register_buffers([(m.addr, size)])
            got = pin_counters().acquired - before
            if got < pages:
                raise RuntimeError(f"the host pinned {got} of {pages} pages")

        def unpin(m: HostMapping) -> None:
            ring.unregister_buffers()

        def cleanup(m: HostMapping) -> None:
            if ring.buffers:
                ring.unregister_buffers()
            m.close()

        t_pin, t_unpin = _best(repeat, setup, pin, unpin, cleanup)
    finally:
        ring.close()
    return t_pin / pages * 1e9, t_unpin / pages * 1e9


def host_skip_reason() -> str:
    """Why the host side cannot run here ("" if it can): io_uring must be usable."""
    from .live import host_capabilities
    cap = host_capabilities()["io_uring"]
    return "" if cap else f"io_uring: {cap.reason}"


def run(sizes: list[int], repeat: int = 3, with_host: bool = True) -> list[Row]:
    """Measure every size (in pages) for both workloads."""
    skip = host_skip_reason() if with_host else "not asked for (--model-only)"
    rows = []
    for workload, prefault in (("prefaulted", True), ("untouched", False)):
        for pages in sizes:
            row = Row(workload, pages, *model_cost(pages, prefault, repeat))
            if skip:
                row.host_skipped = skip
            else:
                try:
                    row.host_pin, row.host_unpin = host_cost(pages, prefault, repeat)
                except (OSError, HostUnsupported) as e:
                    row.host_skipped = str(e)
            rows.append(row)
    return rows
