"""Kernel eras (`gupsim.eras`): the switch table, version parsing, and each wired switch
on both sides of the release that brought it."""

from __future__ import annotations

import json
import os
import platform
import re

import pytest
from click.testing import CliRunner

import gupsim
from gupsim import (
    EINVAL,
    FOLL_GET,
    GUP_PIN_COUNTING_BIAS,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Kernel,
    Page,
)
from gupsim import eras as eras_mod
from gupsim.cli import main
from gupsim.eras import KERNEL_VERSIONS, NEWEST, SWITCHES, WIRED, Era, behaves_as, profile
from gupsim.gup.entry import ENTRY_POINTS
from gupsim.gup.state import running_as

PINNING = [ep for ep in ENTRY_POINTS if ep.since == "foll-pin"]
SLOW_PINS = [ep for ep in PINNING if not ep.fast and ep.base is None]


def _anon(p: gupsim.Process, touch: bool) -> int:
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    if touch:
        p.write(a, b"x")
    return a


# -- the table and the profiles -------------------------------------------------------------


def test_kernel_versions_are_derived_from_the_switches_and_sorted() -> None:
    edges = {s.first_version for s in SWITCHES} | {s.removed_in for s in SWITCHES
                                                    if s.removed_in}
    assert set(KERNEL_VERSIONS) == edges
    keys = [tuple(int(x) for x in v.split(".")) for v in KERNEL_VERSIONS]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert NEWEST == KERNEL_VERSIONS[-1]
    assert gupsim.KERNEL_VERSIONS == KERNEL_VERSIONS


def test_switch_table_is_complete_and_named_once() -> None:
    names = [s.name for s in SWITCHES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)
    assert all(s.commit_title and s.behaviour for s in SWITCHES)
    assert WIRED <= set(names)
    doc = eras_mod.__doc__ or ""
    assert all(f"`{n}`" in doc for n in WIRED), "the module docstring lists the wired ones"
    for must in ("foll-pin", "pin-counting-bias", "nr-foll-pin-vmstat",
                 "fork-copies-pinned-anon", "fork-copies-pinned-hugetlb",
                 "gup-fast-write-protect-seq", "longterm-migrate-movable",
                 "longterm-migrate-cma", "anon-exclusive-unshare", "foll-force-no-foll-cow",
                 "reliable-ro-longterm", "is-valid-gup-args", "longterm-file-write-refused",
                 "zero-page-not-pin-counted", "memfd-pin-folios", "huge-zero-wp-thp"):
        assert must in names


def test_default_machine_is_the_newest_profile() -> None:
    k = Kernel(memory="16MiB")
    assert k.version == NEWEST and k.era == Era() and k.env.era is k.era
    assert all(k.era.has(s.name) for s in SWITCHES if s.removed_in is None)


def test_era_has_each_switch_from_its_first_version_on() -> None:
    for s in SWITCHES:
        for v in KERNEL_VERSIONS:
            on = Era(v).key >= Era(s.first_version).key and (
                s.removed_in is None or Era(v).key < Era(s.removed_in).key)
            assert Era(v).has(s.name) == on, (s.name, v)
    assert Era("5.8").has("gup-forced-cow-break") and not Era("5.9").has("gup-forced-cow-break")


@pytest.mark.parametrize("version, nearest", [("5.10", ["'5.9'", "'5.11'"]),
                                              ("4.19", ["'5.1'"]), ("7.3", [f"'{NEWEST}'"])])
def test_unmodelled_version_names_the_nearest_profiles(version: str, nearest: list[str]) -> None:
    with pytest.raises(ValueError, match="not a modelled profile") as e:
        Kernel(memory="16MiB", version=version)
    assert all(n in str(e.value) for n in nearest), str(e.value)


@pytest.mark.parametrize("bad", ["six", "6", "6.5.3", ""])
def test_malformed_version_says_the_form(bad: str) -> None:
    with pytest.raises(ValueError, match="major.minor"):
        Kernel(memory="16MiB", version=bad)


def test_version_spellings_and_types() -> None:
    assert Kernel(memory="16MiB", version="v6.5").version == "6.5"
    assert profile(None) == NEWEST
    with pytest.raises(TypeError, match="string"):
        Era(6.5)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no era switch"):
        Era().has("zero-page")
    assert behaves_as("6.8.0-51-generic") == "6.5" and behaves_as("5.10") == "5.9"
    with pytest.raises(ValueError, match="predates"):
        behaves_as("4.19")


# -- foll-pin (5.6): the pin_user_pages*() entry points -------------------------------------


@pytest.mark.parametrize("ep", PINNING, ids=lambda ep: ep.name)
def test_pin_entry_points_absent_before_5_6(ep: gupsim.gup.entry.EntryPoint) -> None:
    k = Kernel(memory="16MiB", version="5.1")
    p = k.spawn()
    owner = k if ep.takes_mm else p
    assert not hasattr(owner, ep.name)
    with pytest.raises(AttributeError, match=rf"{ep.name}\(\) appeared in v5\.6.*v5\.1"):
        getattr(owner, ep.name)
    assert hasattr(p, "get_user_pages_fast") and hasattr(k, "get_user_pages_remote")
    a = _anon(p, touch=True)
    with running_as(k.env, p.mm, p), pytest.raises(AttributeError, match="appeared in v5.6"):
        value = {"mm": p.mm, "start": a, "nr_pages": 1, "gup_flags": 0, "pages": [],
                 "locked": None}
        getattr(gupsim, ep.name)(*(value[name] for name in ep.params))


@pytest.mark.parametrize("ep", PINNING, ids=lambda ep: ep.name)
def test_pin_entry_points_present_from_5_6(ep: gupsim.gup.entry.EntryPoint) -> None:
    k = Kernel(memory="16MiB", version="5.6")
    p = k.spawn()
    a = _anon(p, touch=True)
    pages: list[Page | None] = []
    assert ep.invoke(p, a, 1, 0, pages) == 1
    k.unpin_user_pages(pages)


def test_get_user_pages_works_on_the_oldest_profile() -> None:
    k = Kernel(memory="16MiB", version=KERNEL_VERSIONS[0])
    p = k.spawn()
    a = _anon(p, touch=True)
    pages: list[Page | None] = []
    assert p.get_user_pages_fast(a, 1, 0, pages) == 1
    k.put_page(pages[0])
    assert k.check() == []


# -- nr-foll-pin-vmstat (5.7) ------------------------------------------------------------------


def test_vmstat_pin_counters_absent_before_5_7() -> None:
    k = Kernel(memory="16MiB", version="5.6")
    p = k.spawn()
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(_anon(p, touch=True), 1, 0, pages) == 1
    for name in ("nr_foll_pin_acquired", "nr_foll_pin_released"):
        assert name not in k.vmstat and k.vmstat.get(name) is None
        with pytest.raises(KeyError, match=rf"{name} appeared in v5\.7"):
            k.vmstat[name]
    k.unpin_user_pages(pages)
    assert "nr_foll_pin_released" not in k.vmstat
    assert k.vmstat["pgfree"] >= 0, "other counters still read 0 when never counted"
    assert k.check() == []


def test_vmstat_pin_counters_count_from_5_7() -> None:
    k = Kernel(memory="16MiB", version="5.7")
    p = k.spawn()
    pages: list[Page | None] = []
    assert k.vmstat["nr_foll_pin_acquired"] == 0
    assert p.pin_user_pages_fast(_anon(p, touch=True), 1, 0, pages) == 1
    assert k.vmstat["nr_foll_pin_acquired"] == 1
    k.unpin_user_pages(pages)
    assert k.vmstat["nr_foll_pin_released"] == 1


@pytest.mark.skipif(not os.path.exists("/proc/vmstat"), reason="no /proc/vmstat on this host")
def test_host_vmstat_has_the_pin_counters_its_profile_says() -> None:
    with open("/proc/vmstat") as f:
        host = {line.split()[0] for line in f}
    era = Era(behaves_as(platform.release()))
    assert era.has("nr-foll-pin-vmstat") == ("nr_foll_pin_acquired" in host)
    assert era.has("nr-foll-pin-vmstat") == ("nr_foll_pin_released" in host)


# -- is-valid-gup-args (6.3) -----------------------------------------------------------------


@pytest.mark.parametrize("ep", SLOW_PINS, ids=lambda ep: ep.name)
@pytest.mark.parametrize("version, expect", [("6.2", -EINVAL), ("6.3", 0)])
def test_slow_pin_answer_to_foll_get(ep: gupsim.gup.entry.EntryPoint, version: str,
                                     expect: int) -> None:
    k = Kernel(memory="16MiB", version=version)
    p = k.spawn()
    pages: list[Page | None] = []
    assert ep.invoke(p, _anon(p, touch=True), 1, FOLL_GET, pages) == expect
    assert pages == []
    assert k.warnings.sites() == ["is_valid_gup_args: FOLL_GET with FOLL_PIN"]


@pytest.mark.parametrize("version", ["6.2", "6.3"])
def test_pin_user_pages_fast_keeps_einval(version: str) -> None:
    k = Kernel(memory="16MiB", version=version)
    p = k.spawn()
    assert p.pin_user_pages_fast(_anon(p, touch=True), 1, FOLL_GET, []) == -EINVAL


# -- zero-page-not-pin-counted (6.5) -----------------------------------------------------------


def _pin_zero_page(version: str) -> tuple[Kernel, int, int, int]:
    """R/O pin of a never-written page (the zero page), then unpin; the zero page's
    refcount and the acquired counter before, while pinned, and after."""
    k = Kernel(memory="16MiB", version=version)
    p = k.spawn()
    zero = k.page(k.mem.zero_pfn)
    ref0, acq0 = zero.refcount, k.vmstat["nr_foll_pin_acquired"]
    pages: list[Page | None] = []
    assert p.pin_user_pages_fast(_anon(p, touch=False), 1, 0, pages) == 1
    assert pages[0] == zero
    held = zero.refcount - ref0
    acquired = k.vmstat["nr_foll_pin_acquired"] - acq0
    assert k.check() == []
    k.unpin_user_page(pages[0])
    assert zero.refcount == ref0
    assert k.vmstat["nr_foll_pin_released"] == k.vmstat["nr_foll_pin_acquired"]
    assert k.check() == [] and k.sanitizer.records == []
    return k, held, acquired, ref0


def test_zero_page_pin_counted_before_6_5() -> None:
    k, held, acquired, _ = _pin_zero_page("6.3")
    assert held == GUP_PIN_COUNTING_BIAS and acquired == 1


def test_zero_page_not_pin_counted_from_6_5() -> None:
    k, held, acquired, _ = _pin_zero_page("6.5")
    assert held == 0 and acquired == 0


# -- huge-zero-wp-thp (6.13) -----------------------------------------------------------------


@pytest.mark.parametrize("version, order", [("6.11", 0), ("6.13", 9)])
def test_a_write_to_the_huge_zero_page_maps_a_thp_from_6_13(version: str, order: int) -> None:
    k = Kernel(memory="64MiB", version=version)
    p = k.spawn()
    raw = p.mmap(0, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    a = (raw + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.madvise(a, 2 << 20, MADV_HUGEPAGE)
    assert p.read(a + PAGE_SIZE, 1) == b"\0"             # the huge zero page is mapped
    assert p.mm.find_vma(a).pfn[1] == k.mem.huge_zero_pfn + 1
    p.write(a + PAGE_SIZE, b"w")
    vma = p.mm.find_vma(a)
    folio = k.page(int(vma.pfn[1])).folio
    assert folio.order == order                        # a THP, or one copied small page
    assert p.read(a + PAGE_SIZE, 2) == b"w\0" and p.read(a, 1) == b"\0"
    assert k.check() == []


# -- memfd-pin-folios (6.11) -----------------------------------------------------------------


def test_memfd_pin_folios_absent_before_6_11() -> None:
    k = Kernel(memory="16MiB", version="6.5")
    p = k.spawn()
    for name in ("memfd_pin_folios", "unpin_folio", "unpin_folios"):
        assert not hasattr(k, name)
        with pytest.raises(AttributeError, match=rf"{name}\(\) appeared in v6\.11"):
            getattr(k, name)
    assert hasattr(k, "unpin_user_page")
    fd = p.memfd_create("buf")
    fd.truncate(PAGE_SIZE)
    with pytest.raises(AttributeError, match="appeared in v6.11"):
        gupsim.memfd_pin_folios(fd, 0, PAGE_SIZE - 1, [None], 1, [0])


def test_memfd_pin_folios_from_6_11() -> None:
    k = Kernel(memory="16MiB", version="6.11")
    p = k.spawn()
    fd = p.memfd_create("buf")
    fd.truncate(PAGE_SIZE)
    folios: list = [None]
    assert k.memfd_pin_folios(fd, 0, PAGE_SIZE - 1, folios, 1, [0]) == 1
    k.unpin_folio(folios[0])
    assert k.vmstat["nr_foll_pin_released"] == 1
    with pytest.raises(AttributeError, match="appeared in v6.11"):
        gupsim.unpin_folio(Kernel(memory="16MiB", version="6.5").page(0).folio)


# -- gupsim eras -------------------------------------------------------------------------------


def test_cli_eras_prints_the_table_in_80_columns() -> None:
    r = CliRunner().invoke(main, ["eras"])
    assert r.exit_code == 0, r.output
    assert all(len(line) <= 80 for line in r.output.splitlines())
    for s in SWITCHES:
        assert s.name in r.output and f"v{s.first_version}" in r.output
    marked = {ln.split()[-1] for ln in r.output.splitlines() if ln.startswith("* v")}
    assert marked == set(WIRED)


def test_cli_eras_json() -> None:
    r = CliRunner().invoke(main, ["eras", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kernel_versions"] == list(KERNEL_VERSIONS) and data["default"] == NEWEST
    assert [(s["name"], s["first_version"], s["commit_title"]) for s in data["switches"]] == \
        [(s.name, s.first_version, s.commit_title) for s in SWITCHES]
