"""Both back-ends answer misuse of the scenario protocol identically, before anything runs.

Each test runs on the model and on the host (the host side skips with the reason where
this machine cannot run scenarios). A misuse (a region of another process, use after
exit, a range outside its region, an unaligned length, an unknown kind or advice) must
raise `ProtocolError` with the very same message on both, and record no step; a CPU
access that the kernel answers with a signal is a step on both. The last tests check
that the operation table and the two back-ends' primitives agree.
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Callable, Iterator

import pytest

from gupsim import Kernel, OOMKilled, SegmentationFault
from gupsim.constants import MADV_DONTNEED, MADV_HWPOISON, PAGE_SIZE
from gupsim.scenarios.base import BaseProc
from gupsim.scenarios.host import HostSystem, host_skip_reason
from gupsim.scenarios.model import ModelProc, ModelSystem
from gupsim.scenarios.ops import OPS
from gupsim.scenarios.protocol import Proc, ProtocolError, Region, System
from gupsim.scenarios.server import CommandServer

MiB = 1 << 20
INSIDE = ": pass an offset and a length that stay inside it"


def _host() -> System:
    reason = host_skip_reason(())
    if reason:
        pytest.skip(f"host cannot: {reason}")
    return HostSystem()


MAKERS: dict[str, Callable[[], System]] = {"model": ModelSystem, "host": _host}


@pytest.fixture(params=[pytest.param("model"), pytest.param("host", marks=pytest.mark.host)])
def system(request: pytest.FixtureRequest) -> Iterator[System]:
    s = MAKERS[request.param]()
    try:
        yield s
    finally:
        s.close()


def misuse(s: System, call: Callable[[], object]) -> str:
    """Run a misuse: it must raise ProtocolError and leave the trace as it was."""
    before = list(s.trace.steps)
    with pytest.raises(ProtocolError) as info:
        call()
    assert s.trace.steps == before, "a misuse recorded a step"
    assert isinstance(info.value, ValueError)       # what callers caught before
    return str(info.value)


def two(s: System) -> tuple[Proc, Proc, Region]:
    a, b = s.spawn("a"), s.spawn("b")
    return a, b, a.map("anon", 4 * PAGE_SIZE, fill=1)


# -- a region of another process --------------------------------------------------------------

@pytest.mark.parametrize("call", ["read", "write", "mprotect", "madvise", "munmap",
                                  "uring_register", "odirect_write", "ro_pin_then_write",
                                  "vmsplice", "xdp_umem_reg", "mremap_move"])
def test_a_region_of_another_process(system: System, call: str) -> None:
    a, b, r = two(system)
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: b.read(r, 0, 1),
        "write": lambda: b.write(r, 0, b"x"),
        "mprotect": lambda: b.mprotect(r, 0, PAGE_SIZE, writable=False),
        "madvise": lambda: b.madvise(r, 0, PAGE_SIZE, MADV_DONTNEED),
        "munmap": lambda: b.munmap(r),
        "uring_register": lambda: b.uring_register([(r, 0, PAGE_SIZE)]),
        "odirect_write": lambda: b.odirect_write(r, 0, PAGE_SIZE),
        "ro_pin_then_write": lambda: b.ro_pin_then_write(r, 0, PAGE_SIZE, 2),
        "vmsplice": lambda: b.vmsplice(r, 0, PAGE_SIZE),
        "xdp_umem_reg": lambda: b.xdp_umem_reg(r),
        "mremap_move": lambda: b.mremap_move(r, 0, PAGE_SIZE),
    }
    assert misuse(system, calls[call]) == (
        f"{call}: region 1 is not mapped in process 1: pass a region this process mapped "
        "or inherited at fork")


def test_a_remote_read_checks_the_target_s_regions(system: System) -> None:
    a, b, r = two(system)
    mine = b.map("anon", PAGE_SIZE)
    assert misuse(system, lambda: a.process_vm_readv(b, r, 0, PAGE_SIZE)) == (
        "process_vm_readv: region 1 is not mapped in process 1: pass a region this process "
        "mapped or inherited at fork")
    assert a.process_vm_readv(b, mine, 0, PAGE_SIZE).ok      # the right owner is fine


def test_a_forked_child_may_use_its_parent_s_regions(system: System) -> None:
    a, _, r = two(system)
    child = a.fork()
    assert child.read(r, 0, 2) == b"\x01\x01"
    late = a.map("anon", PAGE_SIZE)                # mapped after the fork: not the child's
    assert misuse(system, lambda: child.read(late, 0, 1)).startswith(
        "read: region 2 is not mapped in process 2")


def test_a_region_that_does_not_match_the_one_mapped(system: System) -> None:
    a, _, r = two(system)
    forged = Region(r.proc, r.rid, r.kind, r.length * 2, r.shared)
    assert misuse(system, lambda: a.read(forged, 0, 1)).startswith(
        "read: region 1 is not mapped in process 0")
    assert misuse(system, lambda: a.read("r", 0, 1)) == (      # type: ignore[arg-type]
        "read: expected a Region from map(), got 'r'")


# -- use after exit -----------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["read", "write", "uring_register", "uring_unregister",
                                  "odirect_read", "xdp_close", "fork", "exit", "map",
                                  "limit_memlock"])
def test_use_after_exit(system: System, call: str) -> None:
    a, _, r = two(system)
    child = a.fork()
    child.exit()
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: child.read(r, 0, 1),
        "write": lambda: child.write(r, 0, b"x"),
        "uring_register": lambda: child.uring_register([(r, 0, PAGE_SIZE)]),
        "uring_unregister": child.uring_unregister,
        "odirect_read": lambda: child.odirect_read(r, 0, PAGE_SIZE, 9),
        "xdp_close": child.xdp_close,
        "fork": child.fork,
        "exit": child.exit,
        "map": lambda: child.map("anon", PAGE_SIZE),
        "limit_memlock": lambda: child.limit_memlock(0),
    }
    assert misuse(system, calls[call]) == (
        f"{call}: process 2 (a-child) has exited; spawn or fork a new one")
    assert child.status() == {"VmPin": 0, "VmLck": 0}


def test_a_remote_read_of_an_exited_process(system: System) -> None:
    a, b, r = two(system)
    a.exit()
    assert misuse(system, lambda: b.process_vm_readv(a, r, 0, PAGE_SIZE)) == (
        "process_vm_readv of process 0: process 0 (a) has exited; spawn or fork a new one")


def test_use_after_close(system: System) -> None:
    a, _, r = two(system)
    system.close()
    name = system.name
    assert misuse(system, lambda: a.read(r, 0, 1)) == (
        f"read: the {name} system is closed; make a new one")
    assert misuse(system, lambda: system.spawn("late")) == (
        f"spawn: the {name} system is closed; make a new one")


# -- ranges, lengths, alignment -------------------------------------------------------------------

@pytest.mark.parametrize("offset,n", [(4 * PAGE_SIZE, 1), (-1, 1), (0, 4 * PAGE_SIZE + 1),
                                      (0, -1)])
def test_a_range_outside_the_region(system: System, offset: int, n: int) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.read(r, offset, n)) == (
        f"read: range [{offset}, {offset} + {n}) lies outside the region of 16384 bytes" + INSIDE)


def test_a_write_past_the_end(system: System) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.write(r, 4 * PAGE_SIZE - 1, b"ab")) == (
        "write: range [16383, 16383 + 2) lies outside the region of 16384 bytes" + INSIDE)


def test_a_buffer_outside_its_region(system: System) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.uring_register([(r, 0, PAGE_SIZE),
                                                    (r, PAGE_SIZE, 4 * PAGE_SIZE)])) == (
        "uring_register: range [4096, 4096 + 16384) lies outside the region of 16384 "
        "bytes" + INSIDE)
    assert misuse(system, lambda: a.uring_register([r])) == (   # type: ignore[list-item]
        "buffers must be a list of (region, offset, length) tuples")


@pytest.mark.parametrize("offset,length", [(100, PAGE_SIZE), (0, 100)])
def test_an_unaligned_mremap(system: System, offset: int, length: int) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.mremap_move(r, offset, length)) == (
        f"mremap_move: offset {offset} and length {length} must be multiples of the page "
        "size (4096)")


@pytest.mark.parametrize("kind,length,granule", [
    ("anon", 5000, PAGE_SIZE), ("anon", 0, PAGE_SIZE), ("memfd", -PAGE_SIZE, PAGE_SIZE),
    ("thp", MiB, 2 * MiB), ("hugetlb", PAGE_SIZE, 2 * MiB), ("mthp", PAGE_SIZE, 64 << 10),
])
def test_an_unaligned_map_length(system: System, kind: str, length: int, granule: int) -> None:
    a = system.spawn("a")
    assert misuse(system, lambda: a.map(kind, length)) == (  # type: ignore[arg-type]
        f"a {kind} map needs a length that is a positive multiple of {granule} bytes, "
        f"got {length}")


# -- unknown kinds, advice and values ----------------------------------------------------------

def test_an_unknown_kind(system: System) -> None:
    a = system.spawn("a")
    assert misuse(system, lambda: a.map("dax", PAGE_SIZE)) == (  # type: ignore[arg-type]
        "unknown mapping kind 'dax': use one of ('anon', 'memfd', 'tmpfs', 'file', "
        "'hugetlb', 'memfd-hugetlb', 'thp', 'mthp-16k', 'mthp-32k', 'mthp', 'mthp-128k', "
        "'mthp-256k', 'mthp-512k', 'mthp-1024k', 'secretmem')")


def test_a_second_view_needs_a_file(system: System) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.map_view(r, shared=True, writable=False)) == (
        "map_view needs a file-backed region (('memfd', 'tmpfs', 'file', 'memfd-hugetlb', "
        "'secretmem')), not 'anon'")


@pytest.mark.parametrize("advice", [99, MADV_HWPOISON, -1])
def test_an_unknown_advice(system: System, advice: int) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.madvise(r, 0, PAGE_SIZE, advice)).startswith(
        f"unknown madvise advice {advice}: use one of the MADV_* values in gupsim.constants")


def test_values_out_of_range(system: System) -> None:
    a, _, r = two(system)
    assert misuse(system, lambda: a.map("anon", PAGE_SIZE, fill=256)) == (
        "fill must be a byte value 0..255, got 256")
    assert misuse(system, lambda: a.map("thp", 2 * MiB, shared=True)) == (
        "kind 'thp' is anonymous private memory: use shared=False")
    assert misuse(system, lambda: a.map("anon", PAGE_SIZE, populate="yes")) == (  # type: ignore[arg-type]
        "populate must be True, False or 'read', got 'yes'")
    assert misuse(system, lambda: a.odirect_read(r, 0, PAGE_SIZE, fill=300)) == (
        "fill must be a byte value 0..255, got 300")
    assert misuse(system, lambda: a.limit_memlock(-1)) == (
        "limit must be an integer >= 0, got -1")
    assert misuse(system, lambda: a.pipe_read(-1)) == "length must be an integer >= 0, got -1"


WRONG_TYPES: dict[str, tuple[Callable[[Proc, Region], object], str]] = {
    # a truthy string was taken for True on both back-ends (shared="yes" even made a
    # Region whose `shared` was "yes")
    "writable": (lambda a, r: a.map("anon", PAGE_SIZE, writable="no"),
                 "map: writable must be True or False, got 'no'"),
    "shared": (lambda a, r: a.map("memfd", PAGE_SIZE, shared=1),
               "map: shared must be True or False, got 1"),
    "mprotect": (lambda a, r: a.mprotect(r, 0, PAGE_SIZE, writable="no"),
                 "writable must be True, False or None, got 'no'"),
    # the model refused (TypeError), the host took the bool as MADV_RANDOM
    "advice": (lambda a, r: a.madvise(r, 0, PAGE_SIZE, True),
               "madvise: advice must be an int, got True"),
    # the model said ok, the host skipped the step (no CONFIG_MEM_SOFT_DIRTY here)
    "soft_dirty": (lambda a, r: a.pages(r, 0, PAGE_SIZE, soft_dirty="y"),
                   "pages: soft_dirty must be True or False, got 'y'"),
    # TypeErrors with different messages, the host's from inside its server
    "index": (lambda a, r: a.uring_write_fixed("0", PAGE_SIZE),
              "uring_write_fixed: index must be an int, got '0'"),
    "data": (lambda a, r: a.proc_mem_write(a, r, 0, 5),
             "proc_mem_write: data must be bytes, got 5"),
    "offset": (lambda a, r: a.read(r, True, 1), "read: offset must be an int, got True"),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_arguments_of_the_wrong_type(system: System, case: str) -> None:
    """An argument declared int, bool or bytes must be one, on every operation."""
    a, _, r = two(system)
    call, message = WRONG_TYPES[case]
    assert misuse(system, lambda: call(a, r)) == message


def test_a_map_view_and_a_name_of_the_wrong_type(system: System) -> None:
    """A name that is not a str was a TypeError on the model and accepted on the host."""
    a, _, _ = two(system)
    f = a.map("memfd", PAGE_SIZE)
    assert misuse(system, lambda: a.map_view(f, shared="yes", writable=False)) == (  # type: ignore[arg-type]
        "map_view: shared must be True or False, got 'yes'")
    assert misuse(system, lambda: system.spawn(3)) == (  # type: ignore[arg-type]
        "spawn: name must be a str, got 3")


def test_an_empty_buffer_list_is_the_kernel_s_einval(system: System) -> None:
    """io_uring_register(IORING_REGISTER_BUFFERS) of no buffers: EINVAL from the kernel
    on both back-ends (the host's helper raised ValueError before asking it)."""
    a, _, _ = two(system)
    out = a.uring_register([])
    assert (out.ok, out.errno) == (False, errno.EINVAL)
    last = system.trace.steps[-1]
    assert (last.op, last.outcome, last.acquired) == ("uring_register", "EINVAL", 0)


def test_a_memlock_limit_from_2_63_up_is_asked_of_the_kernel(system: System) -> None:
    """rlim_t is unsigned 64 bits: from 2**63 up the host's helper overflowed Python's C
    long (OverflowError) where the model answered EPERM (raising the hard limit needs
    CAP_SYS_RESOURCE, which neither has); now the kernel answers. Past RLIM_INFINITY the
    value is no rlim_t: misuse on both."""
    a = system.spawn("a")
    assert misuse(system, lambda: a.limit_memlock(1 << 64)) == (
        "limit must be at most RLIM_INFINITY (2**64 - 1), got 18446744073709551616")
    for limit in (1 << 63, (1 << 64) - 1):
        with pytest.raises(OSError) as info:
            system.spawn("b").limit_memlock(limit)
        assert info.value.errno == errno.EPERM


def test_a_process_of_another_system(system: System) -> None:
    a, _, r = two(system)
    with ModelSystem() as other:
        stranger = other.spawn("stranger")
        assert misuse(system, lambda: a.process_vm_readv(stranger, r, 0, 1)).startswith(
            f"process_vm_readv: target must be a process of the same {system.name} system")


def test_the_other_process_of_pages_is_checked(system: System) -> None:
    """pages(..., other): a live process of this system that maps the region. A process
    of another system was accepted: the model observed that machine's process (ok), the
    host looked up a pid it did not own (ENOENT)."""
    a, b, r = two(system)
    assert misuse(system, lambda: a.pages(r, 0, PAGE_SIZE, b)) == (
        "other (process 1) does not map region 1: pass a process that mapped or inherited it")
    assert misuse(system, lambda: a.pages(r, 0, PAGE_SIZE, "b")) == (  # type: ignore[arg-type]
        "other must be a process (a Proc) or None, got 'b'")
    child = a.fork()
    child.exit()
    assert misuse(system, lambda: a.pages(r, 0, PAGE_SIZE, child)) == (
        "other (process 2) has exited: observe a live process")
    with ModelSystem() as other:
        stranger = other.spawn("stranger")
        stranger.map("anon", 4 * PAGE_SIZE)             # its region 1 is another machine's
        assert misuse(system, lambda: a.pages(r, 0, PAGE_SIZE, stranger)) == (
            f"pages: other must be a process of the same {system.name} system, got "
            "<ModelProc 0 'stranger' alive>")


# -- what is not misuse: a signal is a step on both back-ends ----------------------------------

def test_a_write_to_a_read_only_mapping_is_a_recorded_sigsegv(system: System) -> None:
    a = system.spawn("a")
    r = a.map("anon", PAGE_SIZE, writable=False)
    with pytest.raises(SegmentationFault):
        a.write(r, 0, b"x")
    last = system.trace.steps[-1]
    assert (last.op, last.outcome, last.data) == ("write", "SIGSEGV", None)
    assert a.read(r, 0, 1) == b"\x00"          # the process lives on


def test_a_read_after_munmap_is_a_recorded_sigsegv(system: System) -> None:
    a, _, r = two(system)
    assert a.munmap(r).ok
    with pytest.raises(SegmentationFault):
        a.read(r, 0, 1)
    assert system.trace.steps[-1].outcome == "SIGSEGV"


def test_running_out_of_memory_is_the_oom_killers_sigkill_and_frees_the_process() -> None:
    """The model's machine is finite: a fault it cannot serve kills the process (as the
    OOM killer does), recorded as the step's SIGKILL, its memory and pins released."""
    k = Kernel(memory="64MiB", nr_hugepages=0)
    system = ModelSystem(k)
    keeper = system.spawn("keeper")
    small = keeper.map("anon", 4 * PAGE_SIZE, fill=1)
    assert keeper.uring_register([(small, 0, PAGE_SIZE)]).ok
    hog = system.spawn("hog")
    r = hog.map("anon", 64 * MiB, populate=False)
    assert hog.uring_register([(r, 0, PAGE_SIZE)]).ok        # one page pinned by its ring
    with pytest.raises(OOMKilled):
        hog.write(r, 0, b"\1" * (64 * MiB))
    last = system.trace.steps[-1]
    assert (last.op, last.outcome, last.released) == ("write", "SIGKILL", 1)
    with pytest.raises(ProtocolError, match="has exited"):
        hog.read(r, 0, 1)
    free_after = k.alloc.nr_free_pages()
    assert free_after > (64 * MiB // PAGE_SIZE) // 2, "the victim's memory came back"
    assert keeper.read(small, 0, 1) == b"\1"          # the other process lives on
    assert keeper.status()["VmPin"] == 4
    system.close()


# -- the table and the back-ends agree ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPS))
def test_every_operation_has_both_primitives(name: str) -> None:
    op = OPS[name]
    assert getattr(BaseProc, name).op is op, "the public method is the declared one"
    for backend in (ModelProc, CommandServer):
        do = getattr(backend, f"do_{name}", None)
        assert do is not None, f"{backend.__name__} has no do_{name}"
        params = tuple(inspect.signature(do).parameters)[1:]
        assert params == op.primitive_params(), f"{backend.__name__}.do_{name}{params}"
        assert do.__doc__, f"{backend.__name__}.do_{name} needs a docstring"


def test_the_public_methods_keep_their_signatures() -> None:
    sig = inspect.signature(Proc.map)
    assert list(sig.parameters) == ["self", "kind", "length", "shared", "writable",
                                    "populate", "fill"]
    assert sig.parameters["shared"].kind is inspect.Parameter.KEYWORD_ONLY
    assert Proc.read.__doc__ and "CPU read" in Proc.read.__doc__


def test_a_step_name_comes_from_the_declaration() -> None:
    assert OPS["map"].step_name({"kind": "anon", "length": 2 * MiB, "shared": True,
                                 "writable": False}) == "map anon 2MiB shared"
    assert OPS["madvise"].step_name({"advice": MADV_DONTNEED}) == "madvise 4"
    assert OPS["read"].step_name({}) == "read"


# -- disagreements the shared base found, fixed --------------------------------------------------

def _needs(system: System, *caps: str) -> None:
    if isinstance(system, HostSystem) and (reason := host_skip_reason(caps)):
        pytest.skip(f"host cannot: {reason}")


def test_two_af_xdp_sockets_are_both_released(system: System) -> None:
    """The model kept one AF_XDP socket per process (a second replaced the first, whose
    pins then leaked); the host keeps them all. Now both: close pops the last, exit
    releases the rest."""
    _needs(system, "af_xdp")
    a = system.spawn("a")
    r1, r2 = a.map("anon", 16 * PAGE_SIZE), a.map("anon", 16 * PAGE_SIZE)
    assert a.xdp_umem_reg(r1).ok and a.xdp_umem_reg(r2).ok
    assert a.xdp_close().ok
    a.exit()
    steps = system.trace.steps
    assert [s.acquired for s in steps[2:]] == [16, 16, 0, 0]
    assert sum(s.released for s in steps) == 32
    assert steps[-2].released == 16 and steps[-1].released == 16


def test_the_server_runs_declared_operations_only() -> None:
    """A request for anything but a declared operation is refused, not looked up."""
    import socket

    ours, theirs = socket.socketpair()
    try:
        server = CommandServer(theirs, "/tmp", None, spawned=False)
        kind, exc, _ = server._dispatch("_copy_in", {"addr": 0, "data": b"x"})
        assert kind == "exc" and isinstance(exc, ProtocolError)
        assert str(exc).startswith("'_copy_in' is not a declared scenario operation")
        assert server._dispatch("pipe_read", {"length": 0}) == ("ok", b"")
    finally:
        for fd in (*server.pipe, *(server.splice or ())):
            os.close(fd)
        ours.close()
        theirs.close()
