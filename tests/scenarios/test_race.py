"""Race points in scenario files (`with p.on_race(point): ...`, scenarios/race.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from gupsim.mm.vma import PTE
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.protocol import ProtocolError, System
from gupsim.scenarios.runner import Case, run_case
from gupsim.scenarios.userfile import load_scenario

PAGE = 4096
RACE = str(Path(__file__).resolve().parents[2] / "examples" / "eras" / "gup_fast_fork_race.py")


@pytest.mark.parametrize("version, how, seen", [("5.9", "raced", b"\x02"),
                                                ("5.11", "waited", b"\xaa")])
def test_fork_race_runs_the_block_inside_fork(version: str, how: str, seen: bytes) -> None:
    """Before 5.11 the racing pin lands in the window and the device's write is lost to
    the parent; from 5.11 it waits for fork's mmap_lock and the parent sees the write.
    The racing pin is counted on its own step, not on the fork's."""
    trace = run_case(load_scenario(RACE), with_host=False, version=version).model
    ops = [s.op for s in trace.steps]
    assert ops[1:4] == ["fork", "on_race fork:before_wrprotect", "uring_register"]
    fork, marker, pin = trace.steps[1:4]
    assert marker.outcome == how
    assert (fork.acquired, pin.acquired, pin.outcome) == (0, 1, "ok")
    assert trace.steps[-2].data == seen * 8
    assert trace.left_pins == 1 and trace.reports == []


def test_a_race_point_the_step_never_passes_is_missed() -> None:
    with ModelSystem() as s:
        p = s.spawn("app")
        buf = p.map("anon", PAGE, fill=1)
        with p.on_race("gup_fast:after_pte_read"):
            p.write(buf, 0, b"\x05")
        p.read(buf, 0, 1)                       # no GUP: the window never opens
        p.read(buf, 0, 1)
    assert [(st.op, st.outcome) for st in s.trace.steps[1:]] == [
        ("read", "ok"), ("on_race gup_fast:after_pte_read", "missed"), ("read", "ok")]
    assert s.trace.steps[-1].data == b"\x01"
    assert not s.k.gup.race_hooks.get("gup_fast:after_pte_read")


def test_another_process_passing_the_point_does_not_fire_it() -> None:
    with ModelSystem() as s:
        p, q = s.spawn("p"), s.spawn("q")
        p.map("anon", PAGE)
        buf = q.map("anon", PAGE)
        with p.on_race("fork:before_wrprotect"):
            q.write(buf, 0, b"\x07")
        q.fork()
    assert s.trace.steps[3].outcome == "missed"


def test_misuse_is_a_protocol_error() -> None:
    with ModelSystem() as s:
        p = s.spawn("app")
        buf = p.map("anon", PAGE)
        with pytest.raises(ProtocolError, match="no race point 'nowhere'"):
            with p.on_race("nowhere"):
                pass
        with pytest.raises(ProtocolError, match="called no step"):
            with p.on_race("fork:before_wrprotect"):
                pass
        with pytest.raises(ProtocolError, match="returns a region"):
            with p.on_race("fork:before_wrprotect"):
                p.map("anon", PAGE)
        with pytest.raises(ProtocolError, match="one race at a time"):
            with p.on_race("fork:before_wrprotect"):
                with p.on_race("fork:before_wrprotect"):
                    p.write(buf, 0, b"x")
        with pytest.raises(ProtocolError, match="outside the region"):
            with p.on_race("fork:before_wrprotect"):     # checked when called, not later
                p.write(buf, PAGE, b"x")
        assert s._race is None and s._capture is None
        assert len(s.trace.steps) == 1


@pytest.mark.host
def test_the_host_skips_a_race_with_the_reason() -> None:
    case = load_scenario(RACE)
    r = run_case(case)
    assert r.status == "skipped", r.host
    assert r.host is not None and "race window" in r.host.skipped


def test_a_case_object_with_a_race_is_model_only_elsewhere() -> None:
    """run_case without the host still runs it (the `gupsim eras` path)."""
    case = Case("race", load_scenario(RACE).run, lambda t: [], "test")
    assert run_case(case, with_host=False).status == "model-only"


# -- the operations the CVE-2022-2590 example needs ---------------------------------------------

def force_write(s: System) -> None:
    """FOLL_FORCE writes through /proc/PID/mem: a R/O private file mapping gets a COW
    copy (the file keeps its bytes); a R/O shared one cannot be written (EIO)."""
    target, writer = s.spawn("target"), s.spawn("writer")
    r = target.map("memfd", 2 * PAGE, writable=False, populate="read")
    writer.proc_mem_write(target, r, PAGE - 4, b"12345678")     # spans both pages
    target.read(r, PAGE - 4, 8)
    view = target.map_view(r, shared=True, writable=False)
    target.read(view, PAGE - 4, 8)
    shared = target.map("memfd", PAGE, shared=True, writable=False, populate="read")
    writer.proc_mem_write(target, shared, 0, b"x")


def test_proc_mem_write_on_the_model() -> None:
    case = Case("force write", force_write, lambda t: [], "issue 10")
    t = run_case(case, with_host=False).model
    assert [(st.op, st.outcome) for st in t.steps] == [
        ("map memfd 8KiB", "ok"), ("proc_mem_write", "ok"), ("read", "ok"),
        ("map_view memfd 8KiB shared", "ok"), ("read", "ok"),
        ("map memfd 4KiB shared", "ok"), ("proc_mem_write", "EIO")]
    assert t.steps[2].data == b"12345678" and t.steps[4].data == b"\0" * 8
    assert all(st.acquired == 0 for st in t.steps), "references, never pins"


@pytest.mark.host
def test_proc_mem_write_on_the_host() -> None:
    result = run_case(Case("force write", force_write, lambda t: [], "issue 10"))
    assert result.host is not None
    if result.host.skipped:
        pytest.skip(f"host cannot: {result.host.skipped}")
    assert result.status == "agree", result.differences


def test_uffd_continue_on_the_model() -> None:
    with ModelSystem() as s:
        p = s.spawn("app")
        r = p.map("memfd", 2 * PAGE, writable=False, populate=False)
        a = p.map("anon", PAGE)
        assert p.uffd_continue(r, 0, PAGE).ok           # maps the page cache page
        assert p.uffd_continue(r, 0, 2 * PAGE).errno == errno.EEXIST
        assert p.uffd_continue(r, PAGE, PAGE).ok
        assert p.uffd_continue(a, 0, PAGE).errno == errno.EINVAL    # not shmem
        with pytest.raises(ProtocolError, match="multiples of the page size"):
            p.uffd_continue(r, 1, PAGE)
        vma = s.procs[0].p.mm.find_vma(r.addr)
        assert vma is not None
        bits = int(vma.pte[0])
        assert bits & PTE.DIRTY and not bits & PTE.WRITE, "R/O but dirty, as in 5.19"
        assert s.k.page(int(vma.pfn[0])).folio.is_anon is False
    assert s.trace.steps[-1].outcome == "EINVAL"


@pytest.mark.parametrize("version", ["5.9", "5.11"])
def test_page_identity_goes_to_the_step_that_touched_the_range(version: str) -> None:
    """With `pages`, the racing uring_register records what it pinned, and the fork it
    interrupted (which names no range) records nothing."""
    trace = run_case(load_scenario(RACE), with_host=False, version=version,
                     pages=True).model
    fork, marker, pin = trace.steps[1:4]
    assert fork.pages is None and marker.pages is None
    assert pin.pages is not None and pin.pages != ""
