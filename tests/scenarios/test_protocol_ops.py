"""The operations added for issue 11, run on the model and on this kernel and compared.

Each scenario is checked twice: on the model alone against what the kernel documents
(figures that could be wrong), and, marked `host`, on both back-ends step by step through
the runner (`run_case`), which must find them in agreement. A host that cannot run a case
skips it with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_protocol import misuse

from gupsim.constants import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.protocol import MAP_KINDS, System, Trace
from gupsim.scenarios.records import MTHP_KINDS
from gupsim.scenarios.runner import Case, describe, run_case, run_on

Scenario = Callable[[System], None]


def on_model(run: Scenario) -> Trace:
    """The model's trace of a scenario (a fault or refusal that ends it is recorded)."""
    return run_on(Case("model", run, lambda t: [], "issue 11"), ModelSystem)


def on_both(name: str, run: Scenario, needs: tuple[str, ...] = ()) -> None:
    """Run on the model and the host; the host must agree step by step."""
    result = run_case(Case(name, run, lambda t: [], "issue 11", needs=needs))
    assert result.host is not None
    if result.host.skipped:
        pytest.skip(f"host cannot: {result.host.skipped}")
    table = "\n".join(f"{m.op}: model {describe(m)} / host {describe(h)}"
                      for m, h in zip(result.model.steps, result.host.steps, strict=False))
    assert result.status == "agree", f"{result.differences}\n{table}"


def outcomes(trace: Trace) -> list[tuple[str, str]]:
    return [(s.op, s.outcome) for s in trace.steps]


# -- process_vm_writev: remote R/W short-term pins --------------------------------------------

def remote_write(s: System) -> None:
    a, b = s.spawn("target"), s.spawn("writer")
    r = a.map("anon", 4 * PAGE_SIZE, fill=5)
    b.process_vm_writev(a, r, PAGE_SIZE - 2, b"abcd")    # two pages: two pins
    a.read(r, PAGE_SIZE - 4, 8)
    a.mprotect(r, 0, PAGE_SIZE, writable=False)
    b.process_vm_writev(a, r, 0, b"z")                  # no FOLL_FORCE: EFAULT


def test_process_vm_writev_on_the_model() -> None:
    t = on_model(remote_write)
    w = t.steps[1]
    assert (w.op, w.outcome, w.acquired, w.released) == ("process_vm_writev", "ok", 2, 2)
    assert t.steps[2].data == b"\x05\x05abcd\x05\x05"
    assert t.steps[4].outcome == "EFAULT" and t.steps[4].acquired == 0


@pytest.mark.host
def test_process_vm_writev_on_the_host() -> None:
    on_both("process_vm_writev", remote_write)


# -- IORING_OP_READ_FIXED: the device writes into the pinned pages ---------------------------

def read_fixed_after_fork(s: System) -> None:
    p = s.spawn("app")
    r = p.map("anon", 4 * PAGE_SIZE, fill=1)
    p.uring_register([(r, PAGE_SIZE, 2 * PAGE_SIZE)])
    p.uring_read_fixed(0, 10, 7)
    p.read(r, PAGE_SIZE, 12)
    child = p.fork()                   # pinned pages are copied for the child at fork
    p.uring_read_fixed(0, 3, 9)
    p.read(r, PAGE_SIZE, 4)            # the parent still maps the pinned pages
    child.read(r, PAGE_SIZE, 4)        # the child has its copy
    p.uring_read_fixed(0, 3 * PAGE_SIZE, 9)   # longer than the buffer
    p.uring_read_fixed(4, 1, 9)               # no such buffer


def test_read_fixed_on_the_model() -> None:
    t = on_model(read_fixed_after_fork)
    assert t.steps[3].data == b"\x07" * 10 + b"\x01\x01"
    assert t.steps[6].data == b"\x09\x09\x09\x07"
    assert t.steps[7].data == b"\x07\x07\x07\x07"
    assert [s.outcome for s in t.steps[-2:]] == ["EFAULT", "EFAULT"]
    assert all(s.acquired == 0 for s in t.steps[2:])


@pytest.mark.host
def test_read_fixed_on_the_host() -> None:
    on_both("uring_read_fixed", read_fixed_after_fork)


# -- several io_uring rings in one process -----------------------------------------------------

def two_rings(s: System) -> None:
    p = s.spawn("app")
    r = p.map("anon", 4 * PAGE_SIZE, fill=2)
    p.uring_register([(r, 0, 2 * PAGE_SIZE)])
    p.uring_register([(r, 0, 2 * PAGE_SIZE)], ring=1)   # the same pages, pinned again
    p.uring_register([(r, 0, PAGE_SIZE)])                # ring 0 has buffers: EBUSY
    p.uring_write_fixed(0, 3, ring=1)
    p.uring_close(ring=1)
    p.uring_close(ring=1)                                # gone: EBADF
    p.uring_unregister()


def test_two_rings_on_the_model() -> None:
    t = on_model(two_rings)
    assert outcomes(t)[1:] == [
        ("uring_register", "ok"), ("uring_register ring1", "ok"),
        ("uring_register", "EBUSY"), ("uring_write_fixed ring1", "ok"),
        ("uring_close ring1", "ok"), ("uring_close ring1", "EBADF"),
        ("uring_unregister", "ok")]
    assert [s.vm_pin_kb for s in t.steps[1:3]] == [8, 16]    # each ring charges its own
    assert t.steps[4].data == b"\x02" * 3
    assert (t.steps[5].released, t.steps[5].vm_pin_kb) == (2, 8)


@pytest.mark.host
def test_two_rings_on_the_host() -> None:
    on_both("two rings", two_rings)


def test_a_ring_id_is_checked(system: System) -> None:
    p = system.spawn("a")
    assert "ring id 0..7, got 8" in misuse(system, lambda: p.uring_close(ring=8))
    assert "ring id 0..7, got -1" in misuse(system, lambda: p.uring_unregister(ring=-1))


# -- mprotect to any protection ----------------------------------------------------------------

def prot_none(s: System) -> None:
    a, b = s.spawn("a"), s.spawn("b")
    r = a.map("anon", 2 * PAGE_SIZE, fill=3)
    a.mprotect(r, 0, PAGE_SIZE, prot=PROT_NONE)
    b.process_vm_readv(a, r, 0, 4)             # GUP refuses a PROT_NONE VMA
    b.proc_mem_read(a, r, 0, 4)                # FOLL_FORCE reads it anyway
    a.mprotect(r, 0, PAGE_SIZE, prot=PROT_READ | PROT_WRITE)
    b.process_vm_readv(a, r, 0, 4)
    a.mprotect(r, 0, PAGE_SIZE, prot=PROT_NONE)
    a.read(r, 0, 1)                            # SIGSEGV ends the scenario


def test_prot_none_on_the_model() -> None:
    t = on_model(prot_none)
    assert outcomes(t)[1:7] == [
        ("mprotect PROT_NONE", "ok"), ("process_vm_readv", "EFAULT"),
        ("proc_mem_read", "ok"), ("mprotect PROT_READ|PROT_WRITE", "ok"),
        ("process_vm_readv", "ok"), ("mprotect PROT_NONE", "ok")]
    assert t.steps[3].data == b"\x03" * 4 and t.steps[3].acquired == 0
    assert t.steps[-1].outcome == "SIGSEGV" and t.ended.startswith("SegmentationFault")


@pytest.mark.host
def test_prot_none_on_the_host() -> None:
    on_both("mprotect PROT_NONE", prot_none)


def test_mprotect_takes_writable_or_prot(system: System) -> None:
    p = system.spawn("a")
    r = p.map("anon", PAGE_SIZE)
    assert "not both" in misuse(system, lambda: p.mprotect(r, 0, PAGE_SIZE))
    assert "not both" in misuse(system, lambda: p.mprotect(r, 0, PAGE_SIZE, True,
                                                           prot=PROT_READ))
    assert "(0..7), got 8" in misuse(system, lambda: p.mprotect(r, 0, PAGE_SIZE, prot=8))
    assert p.mprotect(r, 0, PAGE_SIZE, writable=False).ok     # old scenarios still run
    assert system.trace.steps[-1].op == "mprotect"


# -- memfd_secret and /proc/PID/mem ------------------------------------------------------------

def secret(s: System) -> None:
    a, b = s.spawn("owner"), s.spawn("reader")
    r = a.map("secretmem", 2 * PAGE_SIZE, shared=True, fill=3)    # VM_LOCKED: VmLck 8 kB
    a.read(r, 0, 2)
    b.proc_mem_read(a, r, 0, 16)        # GUP refuses secretmem: nothing read, EIO
    b.process_vm_readv(a, r, 0, 16)     # EFAULT
    a.uring_register([(r, 0, PAGE_SIZE)])   # no pin of secretmem either
    plain = a.map("anon", PAGE_SIZE, fill=4)
    b.proc_mem_read(a, plain, 0, 3)
    a.munmap(r)                          # VmLck back to 0
    a.map("secretmem", PAGE_SIZE, shared=False)   # EINVAL: shared only


def test_secretmem_on_the_model() -> None:
    t = on_model(secret)
    assert t.steps[0].vm_lck_kb == 8 and t.steps[1].data == b"\x03\x03"
    assert [s.outcome for s in t.steps[2:5]] == ["EIO", "EFAULT", "EFAULT"]
    assert t.steps[6].data == b"\x04" * 3 and t.steps[6].acquired == 0
    assert t.steps[7].vm_lck_kb == 0
    assert t.steps[8].outcome == "EINVAL" and t.ended == "OSError at step 9"


@pytest.mark.host
def test_secretmem_on_the_host() -> None:
    on_both("memfd_secret", secret)


# -- every mTHP size -------------------------------------------------------------------------

def test_every_mthp_size_is_a_kind() -> None:
    assert set(MTHP_KINDS) <= set(MAP_KINDS)
    assert sorted(MTHP_KINDS.values()) == [PAGE_SIZE << o for o in range(2, 9)]


def folios(kind: str) -> int:
    return 1 if MTHP_KINDS[kind] >= PMD_SIZE // 2 else 2


def mthp_pins(kind: str) -> Scenario:
    def run(s: System) -> None:
        p = s.spawn("app")
        n = folios(kind)    # 2 MiB could become one PMD THP: 1 MiB folios come one alone
        r = p.map(kind, n * MTHP_KINDS[kind], fill=1)
        p.uring_register([(r, 0, r.length)])     # all pinned, then one pin kept per folio
        p.uring_unregister()
    return run


@pytest.mark.parametrize("kind", ["mthp-16k", "mthp-1024k"])
def test_an_mthp_buffer_is_pinned_once_per_folio_on_the_model(kind: str) -> None:
    t = on_model(mthp_pins(kind))
    n = folios(kind)
    pages = n * MTHP_KINDS[kind] // PAGE_SIZE
    reg, unreg = t.steps[1], t.steps[2]
    assert (reg.acquired, reg.released, unreg.released) == (pages, pages - n, n)
    assert t.steps[1].vm_pin_kb == n * MTHP_KINDS[kind] >> 10


@pytest.mark.host
@pytest.mark.parametrize("kind", sorted(MTHP_KINDS, key=MTHP_KINDS.__getitem__))
def test_every_mthp_size_on_the_host(kind: str) -> None:
    on_both(kind, mthp_pins(kind))


@pytest.fixture(params=[pytest.param("model"), pytest.param("host", marks=pytest.mark.host)])
def system(request: pytest.FixtureRequest) -> System:
    from test_protocol import MAKERS
    s = MAKERS[request.param]()
    request.addfinalizer(s.close)
    return s


# -- page identity -------------------------------------------------------------------------------

def identity_over_fork(s: System) -> None:
    p = s.spawn("parent")
    a = p.map("anon", 4 * PAGE_SIZE, fill=5)
    p.pages(a, 0, a.length)                       # four frames, each mapped once
    z = p.map("anon", 2 * PAGE_SIZE, populate="read")
    p.pages(z, 0, z.length)                       # read faults map the zero page
    p.uring_register([(a, PAGE_SIZE, PAGE_SIZE)])     # page 1 pinned long-term
    c = p.fork()
    p.pages(a, 0, a.length, c)       # fork copies the pinned page, shares the rest
    c.write(a, 2 * PAGE_SIZE, b"x")
    p.pages(a, 0, a.length, c)       # the child's write gave it a copy of page 2
    t = p.map("thp", PMD_SIZE, fill=1)
    p.pages(t, 0, 2 * PAGE_SIZE)
    p.madvise(a, 0, PAGE_SIZE, MADV_DONTNEED)
    p.pages(a, 0, 2 * PAGE_SIZE)


def test_page_identity_on_the_model() -> None:
    t = on_model(identity_over_fork)
    seen = [s.pages for s in t.steps if s.op == "pages"]
    assert seen == ["1x 2x 3x 4x", "0 0", "1 2x 3 4 | 1 5x 3 4", "1 2x 3x 4 | 1 5x 6x 4",
                    "1tx 2tx", "- 1x"]
    assert all(s.pages is None for s in t.steps if s.op != "pages")


@pytest.mark.host
def test_page_identity_on_the_host() -> None:
    on_both("page identity", identity_over_fork)


def test_pages_checks_the_other_process(system: System) -> None:
    p = system.spawn("a")
    q = system.spawn("b")
    r = p.map("anon", PAGE_SIZE)
    assert "does not map region 1" in misuse(system, lambda: p.pages(r, 0, PAGE_SIZE, q))
    assert "multiples of the page size" in misuse(system, lambda: p.pages(r, 0, 10))


def test_every_step_records_what_it_touched_when_asked() -> None:
    s = ModelSystem(observe_pages=True)
    p = s.spawn("a")
    r = p.map("anon", 64 * PAGE_SIZE, fill=1)     # 64 pages: the first 16 are shown
    p.write(r, PAGE_SIZE + 10, b"xy")
    child = p.fork()
    child.process_vm_readv(p, r, 0, 2 * PAGE_SIZE)   # the target's pages are observed
    p.madvise(r, 0, PAGE_SIZE, MADV_DONTNEED)
    s.close()
    seen = [(st.op, st.pages) for st in s.trace.steps]
    assert seen[0] == ("map anon 256KiB writable", " ".join(f"{i}x" for i in range(1, 17)))
    assert seen[1] == ("write", "1x")
    assert seen[2] == ("fork", None)                     # no range: nothing observed
    # shared with the child since the fork, but a R/O FOLL_PIN unshares them: the target
    # gets copies of its own (mapped once again)
    assert seen[3] == ("process_vm_readv", "1x 2x")
    assert seen[4] == ("madvise 4", "-")
    assert ModelSystem().observe_pages is False          # off unless asked


@pytest.mark.host
def test_every_step_s_page_identity_agrees_with_the_host() -> None:
    result = run_case(Case("identity", identity_over_fork, lambda t: [], "issue 11"),
                      pages=True)
    assert result.host is not None
    if result.host.skipped:
        pytest.skip(result.host.skipped)
    assert result.status == "agree", result.differences
    assert sum(st.pages is not None for st in result.host.steps) >= 8


# -- releases the kernel defers to a worker ------------------------------------------------------

def deferred_releases(s: System) -> None:
    p = s.spawn("app")
    r = p.map("anon", 4 * PAGE_SIZE, fill=1)
    p.xdp_umem_reg(r)
    p.xdp_close()                        # xsk_destruct (after RCU) queues the umem release
    p.uring_register([(r, 0, PAGE_SIZE)])
    p.uring_unregister()                 # synchronous
    p.uring_register([(r, 0, PAGE_SIZE)])
    p.uring_close()                      # io_ring_exit_work
    p.xdp_umem_reg(r)
    p.uring_register([(r, 0, PAGE_SIZE)])
    child = p.fork()
    p.exit()                             # both, when the files are released
    child.odirect_write(r, 0, PAGE_SIZE)     # short-term: released before it returns


def test_deferred_releases_on_the_model() -> None:
    t = on_model(deferred_releases)
    seen = [(st.op, st.released, st.late) for st in t.steps if st.released]
    assert seen == [("xdp_close", 4, 4), ("uring_unregister", 1, 0), ("uring_close", 1, 1),
                    ("exit", 5, 5), ("odirect_write", 1, 0)]


def test_a_closed_socket_keeps_its_pins_until_the_work_runs() -> None:
    from gupsim import Kernel
    from gupsim.drivers.xdp import XdpSocket
    k = Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"\1" * 2 * PAGE_SIZE)
    sock = XdpSocket(k, p)
    sock.umem_reg(a, 2 * PAGE_SIZE)
    sock.close()
    assert k.vmstat["nr_foll_pin_released"] == 0 and len(k.work) == 1
    assert k.flush_scheduled_work() == 1
    assert k.vmstat["nr_foll_pin_released"] == 2 and k.check() == []


@pytest.mark.host
def test_deferred_releases_on_the_host() -> None:
    on_both("deferred releases", deferred_releases, needs=("af_xdp", "io_uring", "o_direct"))
