"""The host kernel's half of each benchmark, run in a small worker process (worker.py).

Same workloads, names and phases as `model_side.py`. The kernel's pin is io_uring fixed
buffer registration (IORING_REGISTER_BUFFERS calls pin_user_pages_fast() with
FOLL_WRITE | FOLL_LONGTERM once per buffer) and the unpin is unregistration:

* bulk: one buffer covering the range (io_uring refuses buffers above 1 GiB);
* per_call (gup_test's -n): the range as many n-page buffers registered by ONE
  io_uring_register() call, so the kernel makes one pin_user_pages_fast() call of n pages
  per buffer without a system call in between, as gup_test's ioctl loops over
  pin_user_pages() in the kernel. O_DIRECT would pin n pages per read() but would add a
  system call, a bio and a block device's I/O to every call, which would hide the pin.
  io_uring's own work per buffer (allocating its bio_vec table, the pinned_vm charge) is
  included, so the host figure is an upper bound of the kernel's cost per call;
* lifecycle: fork() with the range mapped (and pinned), the child's exit (it exits when
  its pipe closes; the figure runs until waitpid() returns), and munmap(). The same
  fork and exit without the range (best of 3) are timed in the same round and
  subtracted, so the worker's own memory (Python, ~20 MiB) is not counted against the
  kernel; what is left can be near 0 for an exit, the noise of a wake-up being as large.

Settings a case needs are journaled and restored (live/settings.py): THP at "madvise" if
it is "never", and 2 MiB hugetlb pages added to the pool for the hugetlb case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from ..live import HostMapping, IoUring, LiveStack, libc, pin_counters
from ..live.errors import HostUnsupported
from ..live.settings import THP_ENABLED, ExtraHugepages, SharedSetting, read_setting

PAGE_SIZE = libc.PAGE_SIZE
MAX_URING_BUFFER = 1 << 30          # io_uring refuses a single buffer above 1 GiB
MAX_URING_BUFFERS = 1 << 14         # IORING_MAX_REG_BUFFERS

Round = Callable[[], dict[str, float]]


def _mapping(stack: LiveStack, size: int, backing: str) -> HostMapping:
    """A populated mapping of 4 KiB pages ("small", THP advised off), THPs or hugetlb."""
    kind = {"small": "anon", "thp": "thp", "hugetlb": "hugetlb"}[backing]
    m = stack.enter_context(HostMapping(size, kind, populate=False))  # type: ignore[arg-type]
    if backing == "small":
        m.madvise(libc.MADV_NOHUGEPAGE)
    m.populate(1)
    if backing == "thp":
        why = m.folio_problem(0, 2 << 20)
        if why:
            raise HostUnsupported(f"THP: {why}")
    return m


def _settings(stack: LiveStack, pages: int, backing: str) -> None:
    """What the backing needs from the host, changed for this case only."""
    if backing == "thp":
        try:
            mode = read_setting(THP_ENABLED)
        except FileNotFoundError:
            raise HostUnsupported("this kernel has no transparent huge pages") from None
        if mode == "never":
            stack.enter_context(SharedSetting(THP_ENABLED, "madvise"))
    elif backing == "hugetlb":
        need = -(-pages // 512)
        pool = stack.enter_context(ExtraHugepages())
        if pool.grow(need) < need:
            raise HostUnsupported(f"the kernel gave fewer than {need} more 2 MiB huge pages")


def _register(ring: IoUring, buffers: list[tuple[int, int]], pages: int) -> float:
    """Seconds to register `buffers`; refuses to time a registration that pinned less."""
    before = pin_counters(wait=False).acquired
    t0 = time.perf_counter()
    ring.register_buffers(buffers)
    elapsed = time.perf_counter() - t0
    got = pin_counters(wait=False).acquired - before
    if got < pages:
        ring.unregister_buffers()
        raise RuntimeError(f"the host pinned {got} of {pages} pages")
    return elapsed


def _unregister(ring: IoUring) -> float:
    t0 = time.perf_counter()
    ring.unregister_buffers()
    return time.perf_counter() - t0


@contextmanager
def bulk(pages: int, backing: str = "small") -> Iterator[Round]:
    """One buffer over the whole prefaulted range, then unregistration."""
    size = pages * PAGE_SIZE
    if size > MAX_URING_BUFFER:
        raise HostUnsupported("io_uring registers at most 1 GiB per buffer")
    with LiveStack() as stack:
        _settings(stack, pages, backing)
        ring = stack.enter_context(IoUring())

        def round_() -> dict[str, float]:
            with LiveStack() as each:
                m = _mapping(each, size, backing)
                t_pin = _register(ring, [(m.addr, size)], pages)
                t_unpin = _unregister(ring)
            return {"pin": t_pin, "unpin": t_unpin, "pin+unpin": t_pin + t_unpin}

        yield round_


@contextmanager
def per_call(pages: int, n: int) -> Iterator[Round]:
    """The range as n-page buffers, registered by one system call (see the docstring)."""
    if pages // n > MAX_URING_BUFFERS:
        raise HostUnsupported(f"io_uring registers at most {MAX_URING_BUFFERS} buffers")
    with LiveStack() as stack:
        m = _mapping(stack, pages * PAGE_SIZE, "small")
        ring = stack.enter_context(IoUring())
        bufs = [(m.addr + i * PAGE_SIZE, n * PAGE_SIZE) for i in range(0, pages, n)]

        def round_() -> dict[str, float]:
            t_pin = _register(ring, bufs, pages)
            t_unpin = _unregister(ring)
            return {"pin": t_pin, "unpin": t_unpin, "pin+unpin": t_pin + t_unpin}

        yield round_


def _fork_and_exit() -> tuple[float, float]:
    """(seconds in fork(), seconds from telling the child to exit until it is reaped)."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:                                    # the child: wait, then leave at once
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    t1 = time.perf_counter()
    os.close(r)
    t2 = time.perf_counter()
    os.close(w)
    os.waitpid(pid, 0)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2


@contextmanager
def lifecycle(pages: int, pinned: bool) -> Iterator[Round]:
    """fork, exit of the child, munmap; net of the same fork and exit without the range."""
    size = pages * PAGE_SIZE
    with LiveStack() as stack:
        ring = stack.enter_context(IoUring()) if pinned else None

        def round_() -> dict[str, float]:
            bare = [_fork_and_exit() for _ in range(3)]     # the best of 3: less noise
            bare_fork, bare_exit = min(f for f, _ in bare), min(e for _, e in bare)
            with LiveStack() as each:
                m = _mapping(each, size, "small")
                if ring is not None:
                    _register(ring, [(m.addr, size)], pages)
                try:
                    t_fork, t_exit = _fork_and_exit()
                    t0 = time.perf_counter()
                    m.munmap()
                    t_munmap = time.perf_counter() - t0
                finally:
                    if ring is not None:
                        ring.unregister_buffers()
            return {"fork": max(t_fork - bare_fork, 0.0), "exit": max(t_exit - bare_exit, 0.0),
                    "munmap": t_munmap}

        yield round_


WORKLOADS: dict[str, Callable[..., AbstractContextManager[Round]]] = {
    "bulk": bulk, "per_call": per_call, "lifecycle": lifecycle}
