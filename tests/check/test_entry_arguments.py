"""Every public entry point checks what it is given before it changes anything.

A parametrised test over every release call, device access, process call and driver
entry point, with each argument in turn replaced by a bad value (drawn by Hypothesis: a
str, a float, None, bytes, a huge negative count, a page or process of ANOTHER machine,
a list holding a non-page or a foreign page ...). Each call must raise TypeError or
ValueError (or, where the kernel itself answers the value, its errno), and the machine's
observable state must be identical before and after: vmstat, every refcount and
pincount, VmPin/VmLck, the user's locked_vm, the sanitizer's outstanding pins and reports,
and the warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gupsim
from gupsim import FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE
from gupsim.drivers.direct_io import dio_read, dio_write
from gupsim.drivers.gpu import GpuDevice, gpu_host_register
from gupsim.drivers.io_uring import IoRing
from gupsim.drivers.process_vm import process_vm_readv, process_vm_writev
from gupsim.drivers.rdma import IB_ACCESS_LOCAL_WRITE, IbDevice, ibv_open_device, ibv_reg_mr
from gupsim.drivers.vfio import VfioContainer
from gupsim.drivers.xdp import XdpSocket
from gupsim.memory import Page, PageArray

RW = gupsim.PROT_READ | gupsim.PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
NPIN = 4


@dataclass
class World:
    """Two machines, each with a process holding NPIN long-term pinned pages."""

    k: gupsim.Kernel
    p: Any
    addr: int
    pages: list[Page | None]
    other: gupsim.Kernel
    other_p: Any
    other_pages: list[Page | None]
    memfd: Any = None
    file: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _machine() -> tuple[gupsim.Kernel, Any, int, list[Page | None]]:
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, 16 * PAGE_SIZE, RW, ANON)
    p.write(a, b"x" * (16 * PAGE_SIZE))
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(a, NPIN, FOLL_WRITE | FOLL_LONGTERM, pages) == NPIN
    return k, p, a, pages


def make_world() -> World:
    """A fresh pair of machines; the first also has a memfd and an ext4 file."""
    k, p, a, pages = _machine()
    other, other_p, _, other_pages = _machine()
    w = World(k, p, a, pages, other, other_p, other_pages)
    w.memfd = p.memfd_create("buf")
    w.memfd.truncate(4 * PAGE_SIZE)
    w.file = k.fs("ext4").create("f", 4 * PAGE_SIZE)
    return w


def snapshot(w: World) -> dict[str, Any]:
    """What a user can observe of both machines."""
    out: dict[str, Any] = {}
    for tag, k, procs in (("k", w.k, [w.p]), ("other", w.other, [w.other_p])):
        out[tag] = {
            "vmstat": dict(k.vmstat),
            "refcount": k.mem.refcount.copy(),
            "pincount": k.mem.pincount.copy(),
            "outstanding": [repr(o)
                            for o in k.sanitizer.outstanding()],
            "reports": [str(r) for r in k.sanitizer.reports],
            "warnings": [str(x) for x in k.warnings],
            "status": [p.proc_status() for p in procs],
            "user_locked": k.user(0).locked_vm,
            "users": [(u.uid, u.locked_vm) for u in k.users.values()],
            "processes": len(k.processes), "mms": len(k.env.mms),
            "hugetlb": list(k.alloc.hugetlb_total),
            "vmas": [len(p.mm.vmas) for p in procs],
            "data": w.p.read(w.addr, 8) if tag == "k" else None,
        }
    return out


def assert_same(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    """Every observable is identical."""
    for tag in before:
        for key, value in before[tag].items():
            now = after[tag][key]
            same = np.array_equal(value, now) if isinstance(value, np.ndarray) else value == now
            assert same, f"{what}: {tag}.{key} changed"


# -- bad values, by the kind of argument ---------------------------------------------------

_junk = st.one_of(st.text(max_size=5), st.floats(allow_nan=True), st.none(),
                  st.binary(max_size=4), st.just(object()), st.just([1, 2]),
                  st.just({"a": 1}))
_huge_negative = st.integers(max_value=-4096)


def bad_values(kind: str, w: World) -> st.SearchStrategy[Any]:
    """Values that are wrong for an argument of this kind on machine `w.k`."""
    page, foreign = w.pages[0], w.other_pages[0]
    folio = page.folio if page is not None else None
    if kind == "page":
        return st.one_of(_junk, st.integers(), st.sampled_from(
            [foreign, folio, Page(w.k.mem, 10 ** 9), Page(w.k.mem, -1)]))
    if kind in ("pages", "anypages"):      # anypages: a call that takes any ONE machine
        alien = [[foreign], PageArray(np.array([foreign.pfn]), w.other.mem)] \
            if kind == "pages" and foreign is not None else []
        return st.one_of(st.text(min_size=1, max_size=5), st.floats(), st.integers(),
                         st.just(object()), st.sampled_from([
                             [page, "x"], [page, 3], [page, foreign], [foreign, page],
                             [page, folio], (page, 1.5), page, *alien]))
    if kind == "folio":
        return st.one_of(_junk, st.integers(), st.sampled_from(
            [page, foreign.folio if foreign is not None else None]))
    if kind == "folios":
        return st.one_of(st.text(min_size=1, max_size=5), st.floats(), st.integers(),
                         st.sampled_from([["x", folio], [page, folio], [1.5],
                                          [foreign.folio if foreign is not None else 0]]))
    if kind in ("count", "int"):
        return st.one_of(st.text(max_size=5), st.floats(), st.binary(max_size=3),
                         st.just(object()), st.just(True), st.just([1]),
                         _huge_negative if kind == "count" else st.nothing())
    if kind == "name":
        return st.one_of(st.integers(), st.floats(), st.binary(min_size=1, max_size=3),
                         st.just(["a"]))
    if kind == "caps":
        return st.one_of(st.text(min_size=1, max_size=3), st.integers(), st.floats(),
                         st.just({"CAP_IPC_LOCK"}), st.just([14]))
    if kind == "bytes":
        return st.one_of(st.text(min_size=1, max_size=5), st.integers(), st.floats(),
                         st.just([1, 2]), st.none())
    if kind == "flag":
        return st.one_of(st.text(max_size=5), st.floats(), st.just([True]), st.none())
    if kind == "proc":
        return st.one_of(st.text(max_size=5), st.integers(), st.none(),
                         st.just(w.other_p))
    if kind == "iovs":
        return st.one_of(st.text(max_size=5), st.integers(), st.sampled_from([
            [(w.addr, "4096")], [(w.addr, PAGE_SIZE), (w.addr, 1.5)], [w.addr],
            [(w.addr, PAGE_SIZE, 0)], [("x", PAGE_SIZE)]]))
    raise AssertionError(kind)


# -- the entry points: a call with good arguments, and the kind of each argument ------------

Call = Callable[[World, dict[str, Any]], Any]


@dataclass
class Entry:
    """One entry point: its good arguments (built from the world), how to call it, and
    what kind each argument is; `errno` names arguments whose values the kernel answers."""

    name: str
    good: Callable[[World], dict[str, Any]]
    call: Call
    kinds: dict[str, str]
    errno: tuple[str, ...] = ()


def _pinned(w: World) -> Page:
    page = w.pages[0]
    assert page is not None
    return page


ENTRIES = [
    Entry("unpin_user_page", lambda w: {"page": _pinned(w)},
          lambda w, a: w.k.unpin_user_page(a["page"]), {"page": "page"}),
    Entry("unpin_user_pages", lambda w: {"pages": w.pages, "npages": NPIN},
          lambda w, a: w.k.unpin_user_pages(a["pages"], a["npages"]),
          {"pages": "pages", "npages": "count"}),
    Entry("unpin_user_pages_dirty_lock",
          lambda w: {"pages": w.pages, "npages": NPIN, "make_dirty": True},
          lambda w, a: w.k.unpin_user_pages_dirty_lock(a["pages"], a["npages"],
                                                       a["make_dirty"]),
          {"pages": "pages", "npages": "count", "make_dirty": "flag"}),
    Entry("unpin_user_page_range_dirty_lock",
          lambda w: {"page": _pinned(w), "npages": 1, "make_dirty": True},
          lambda w, a: w.k.unpin_user_page_range_dirty_lock(a["page"], a["npages"],
                                                            a["make_dirty"]),
          {"page": "page", "npages": "count", "make_dirty": "flag"}),
    Entry("unpin_folio", lambda w: {"folio": _pinned(w).folio},
          lambda w, a: w.k.unpin_folio(a["folio"]), {"folio": "folio"}),
    Entry("unpin_folios", lambda w: {"folios": [_pinned(w).folio], "nfolios": 1},
          lambda w, a: w.k.unpin_folios(a["folios"], a["nfolios"]),
          {"folios": "folios", "nfolios": "count"}),
    Entry("unpin_user_folio", lambda w: {"folio": _pinned(w).folio, "npages": 1},
          lambda w, a: w.k.unpin_user_folio(a["folio"], a["npages"]),
          {"folio": "folio", "npages": "count"}),
    Entry("folio_add_pin", lambda w: {"folio": _pinned(w).folio},
          lambda w, a: w.k.folio_add_pin(a["folio"]), {"folio": "folio"}),
    Entry("folio_add_pins", lambda w: {"folio": _pinned(w).folio, "pins": 1},
          lambda w, a: w.k.folio_add_pins(a["folio"], a["pins"]),
          {"folio": "folio", "pins": "count"}),
    Entry("put_page", lambda w: {"page": _pinned(w)},
          lambda w, a: w.k.put_page(a["page"]), {"page": "page"}),
    Entry("get_page", lambda w: {"page": _pinned(w)},
          lambda w, a: w.k.get_page(a["page"]), {"page": "page"}),
    Entry("gupsim.unpin_user_pages", lambda w: {"pages": w.pages},
          lambda w, a: gupsim.unpin_user_pages(a["pages"]), {"pages": "anypages"}),
    Entry("memfd_pin_folios",
          lambda w: {"start": 0, "end": PAGE_SIZE - 1, "folios": [], "max": 1,
                     "offset": [0]},
          lambda w, a: w.k.memfd_pin_folios(w.memfd, a["start"], a["end"], a["folios"],
                                            a["max"], a["offset"]),
          {"start": "int", "end": "int", "max": "count"}),
    Entry("dma_write", lambda w: {"page": _pinned(w), "offset": 0, "data": b"DMA"},
          lambda w, a: w.k.dma_write(a["page"], a["offset"], a["data"]),
          {"page": "page", "offset": "int", "data": "bytes"}),
    Entry("dma_read", lambda w: {"page": _pinned(w), "offset": 0, "n": 3},
          lambda w, a: w.k.dma_read(a["page"], a["offset"], a["n"]),
          {"page": "page", "offset": "int", "n": "count"}),
    Entry("mmap", lambda w: {"addr": 0, "length": PAGE_SIZE, "prot": RW, "flags": ANON},
          lambda w, a: w.p.mmap(a["addr"], a["length"], a["prot"], a["flags"]),
          {"addr": "int", "length": "int", "prot": "int", "flags": "int"}),
    Entry("munmap", lambda w: {"addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: w.p.munmap(a["addr"], a["length"]),
          {"addr": "int", "length": "int"}),
    Entry("mprotect", lambda w: {"addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: w.p.mprotect(a["addr"], a["length"], gupsim.PROT_READ),
          {"addr": "int", "length": "int"}),
    Entry("madvise", lambda w: {"addr": w.addr, "length": PAGE_SIZE, "advice": 4},
          lambda w, a: w.p.madvise(a["addr"], a["length"], a["advice"]),
          {"addr": "int", "length": "int", "advice": "int"}),
    Entry("mremap", lambda w: {"old": w.addr, "size": PAGE_SIZE, "new": 2 * PAGE_SIZE},
          lambda w, a: w.p.mremap(a["old"], a["size"], a["new"], 1),
          {"old": "int", "size": "int", "new": "int"}),
    Entry("read", lambda w: {"addr": w.addr, "n": 3},
          lambda w, a: w.p.read(a["addr"], a["n"]), {"addr": "int", "n": "count"}),
    Entry("write", lambda w: {"addr": w.addr, "data": b"abc"},
          lambda w, a: w.p.write(a["addr"], a["data"]), {"addr": "int", "data": "bytes"}),
    Entry("set_nr_hugepages", lambda w: {"count": 1},
          lambda w, a: w.k.set_nr_hugepages(a["count"]), {"count": "count"}),
    Entry("spawn", lambda w: {"name": "b", "uid": 1000, "caps": None},
          lambda w, a: w.k.spawn(a["name"], a["uid"], a["caps"]),
          {"name": "name", "uid": "count", "caps": "caps"}),
    Entry("user", lambda w: {"uid": 1000}, lambda w, a: w.k.user(a["uid"]),
          {"uid": "count"}),
    Entry("page", lambda w: {"pfn": 1}, lambda w, a: w.k.page(a["pfn"]), {"pfn": "count"}),
    Entry("dump_page", lambda w: {"page": _pinned(w)},
          lambda w, a: w.k.dump_page(a["page"]), {"page": "page"}),
    Entry("fork", lambda w: {"name": "child"}, lambda w, a: w.p.fork(a["name"]),
          {"name": "name"}),
    Entry("account_locked_vm", lambda w: {"pages": 1, "inc": True},
          lambda w, a: w.p.account_locked_vm(a["pages"], a["inc"]),
          {"pages": "count", "inc": "flag"}),
    Entry("io_uring register_buffers", lambda w: {"proc": w.p, "iovs": [(w.addr, PAGE_SIZE)]},
          lambda w, a: IoRing(w.k, a["proc"]).register_buffers(a["iovs"]),
          {"proc": "proc", "iovs": "iovs"}),
    Entry("dio_write", lambda w: {"proc": w.p, "addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: dio_write(w.k, a["proc"], w.file, a["addr"], a["length"]),
          {"proc": "proc", "addr": "int", "length": "int"}),
    Entry("dio_read", lambda w: {"proc": w.p, "addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: dio_read(w.k, a["proc"], w.file, a["addr"], a["length"]),
          {"proc": "proc", "addr": "int", "length": "int"}),
    Entry("process_vm_readv", lambda w: {"target": w.p, "addr": w.addr, "length": 8},
          lambda w, a: process_vm_readv(w.k, w.p, a["target"], a["addr"], a["length"]),
          {"target": "proc", "addr": "int", "length": "count"}),
    Entry("process_vm_writev", lambda w: {"target": w.p, "addr": w.addr, "data": b"pv"},
          lambda w, a: process_vm_writev(w.k, w.p, a["target"], a["addr"], a["data"]),
          {"target": "proc", "addr": "int", "data": "bytes"}),
    Entry("xdp umem_reg", lambda w: {"proc": w.p, "addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: XdpSocket(w.k, a["proc"]).umem_reg(a["addr"], a["length"]),
          {"proc": "proc", "addr": "int", "length": "int"}),
    Entry("ibv_reg_mr", lambda w: {"proc": w.p, "addr": w.addr, "length": PAGE_SIZE},
          lambda w, a: ibv_reg_mr(ibv_open_device(IbDevice(w.k), a["proc"]), a["addr"],
                                  a["length"], IB_ACCESS_LOCAL_WRITE),
          {"proc": "proc", "addr": "int", "length": "int"}),
    Entry("vfio map_dma", lambda w: {"proc": w.p, "vaddr": w.addr, "size": PAGE_SIZE},
          lambda w, a: VfioContainer(w.k, a["proc"]).map_dma(a["vaddr"], 0, a["size"]),
          {"proc": "proc", "vaddr": "int", "size": "int"}),
    Entry("gpu_host_register", lambda w: {"proc": w.p, "addr": w.addr, "size": PAGE_SIZE},
          lambda w, a: gpu_host_register(GpuDevice(w.k), a["addr"], a["size"],
                                         current=a["proc"]),
          {"proc": "proc", "addr": "int", "size": "int"}),
]

CASES = [(e, arg) for e in ENTRIES for arg in e.kinds]


@pytest.mark.parametrize(("entry", "arg"), CASES,
                         ids=[f"{e.name}-{arg}" for e, arg in CASES])
def test_a_bad_argument_is_refused_before_anything_changes(entry: Entry, arg: str) -> None:
    w = make_world()
    before = snapshot(w)

    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(bad=bad_values(entry.kinds[arg], w))
    def one(bad: Any) -> None:
        args = entry.good(w)
        args[arg] = bad
        with pytest.raises((TypeError, ValueError)) as info:
            entry.call(w, args)
        assert "(): " in str(info.value), f"the message names no call: {info.value}"
        assert_same(before, snapshot(w), f"{entry.name}, bad {arg} of type {type(bad).__name__}")

    one()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_the_good_arguments_are_accepted(entry: Entry) -> None:
    """The table's good arguments really work (so a refusal above is about the bad one)."""
    w = make_world()
    entry.call(w, entry.good(w))


def test_a_list_mixing_two_machines_releases_nothing_on_either() -> None:
    """The module-level unpin accepts any one machine, never two in one array."""
    w = make_world()
    before = snapshot(w)
    with pytest.raises(ValueError, match="another machine"):
        gupsim.unpin_user_pages([*w.pages, *w.other_pages])
    assert_same(before, snapshot(w), "mixed unpin")


def test_a_bad_entry_late_in_the_array_releases_none_of_the_earlier_ones() -> None:
    """No half-done release: the check runs over the whole array first."""
    w = make_world()
    before = snapshot(w)
    with pytest.raises(TypeError, match=r"pages\[4\]"):
        w.k.unpin_user_pages([*w.pages, "not a page"])
    assert_same(before, snapshot(w), "late bad entry")
    w.k.unpin_user_pages(w.pages)
    assert w.k.sanitizer.reports == [] and not any(
        gupsim.page_maybe_dma_pinned(p) for p in w.pages if p is not None)


def test_an_errno_count_keeps_the_kernels_answer() -> None:
    """-EFAULT passed as a count is what the kernel warns about: a warning, no release."""
    w = make_world()
    w.k.unpin_user_pages(w.pages, -14)
    assert "unpin_user_pages: npages is an error value" in w.k.warnings.sites()
    assert all(gupsim.page_maybe_dma_pinned(p) for p in w.pages if p is not None)


def test_gup_entry_points_refuse_a_foreign_mm_argument_type() -> None:
    """The GUP rows check in one place too (gup/entry.py): a str for pages takes no pin."""
    w = make_world()
    before = snapshot(w)
    for ep in gupsim.gup.entry.ENTRY_POINTS:
        target = w.k if ep.takes_mm else w.p
        fn = getattr(target, ep.name)
        args: dict[str, Any] = {"mm": w.p.mm, "start": w.addr, "addr": w.addr,
                                "nr_pages": 1, "gup_flags": FOLL_WRITE, "pages": "xx",
                                "pagep": "xx", "locked": None}
        with pytest.raises(TypeError):
            fn(*[args[n] for n in ep.params])
    assert_same(before, snapshot(w), "GUP rows")


def test_a_remote_gup_on_another_machines_mm_is_refused() -> None:
    """k.pin_user_pages_remote(mm of another Kernel) would pin on that machine: refused."""
    w = make_world()
    before = snapshot(w)
    for ep in gupsim.gup.entry.ENTRY_POINTS:
        if not ep.takes_mm:
            continue
        args: dict[str, Any] = {"mm": w.other_p.mm, "start": w.addr, "nr_pages": 1,
                                "gup_flags": FOLL_WRITE, "pages": [], "locked": None}
        with pytest.raises(ValueError, match="another machine"):
            getattr(w.k, ep.name)(*[args[n] for n in ep.params])
    assert_same(before, snapshot(w), "remote GUP on a foreign mm")
