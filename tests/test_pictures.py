"""Pictures of pages and pins: the snapshot data, the diff, the HTML page and the terminal
view, and the `--html` / `--show` options (model only; the browser test is in
test_pictures_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import gupsim
from gupsim import FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from gupsim.cli import main
from gupsim.constants import MADV_PAGEOUT
from gupsim.drivers.cases import CASES
from gupsim.report.picture import MAX_FRAME_ROWS, diff, snapshot
from gupsim.report.picture_html import render_html
from gupsim.report.picture_runs import case_pictures, scenario_pictures
from gupsim.report.picture_term import show
from gupsim.scenarios.records import Step, Trace
from gupsim.scenarios.userfile import load_scenario

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "fork_with_pinned_buffer.py")
RW = PROT_READ | PROT_WRITE


def test_a_pinned_small_page_shows_the_bias_and_its_holders() -> None:
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn("app")
    a = p.mmap(0, 1 << 20, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"x")
    before = diff(None, snapshot(k))
    pages: list = []
    assert p.pin_user_pages_fast(a, 1, FOLL_WRITE | FOLL_LONGTERM, pages) == 1
    after = diff(before, snapshot(k))
    [frame] = after.frames
    assert (frame.refcount, frame.plain_refs, frame.bias_refs, frame.pincount) == \
        (1025, 1, 1024, 1)
    assert frame.changed and frame.maybe_dma_pinned and not frame.movable
    assert any(h.startswith("FOLL_PIN | FOLL_LONGTERM x1 by pin_user_pages_fast()")
               and "test_pictures.py" in h for h in frame.holders)
    assert "nr_foll_pin_acquired 0 -> 1 (+1)" in after.changes
    [proc] = after.procs
    assert proc.vm_pin_kb == 0 and not proc.changed   # GUP itself charges no pinned_vm
    present, untouched = proc.vmas[0].runs
    assert (present.state, present.pages, present.writable, present.anon_exclusive) == \
        ("present", 1, True, True)
    assert (untouched.state, untouched.pages) == ("none", 255)
    assert not present.changed          # the pin does not touch the page table
    k.unpin_user_pages(pages)
    released = diff(after, snapshot(k))
    assert released.frames[0].refcount == 1 and released.frames[0].changed


def test_a_1gib_pinned_mapping_is_one_row_not_262144() -> None:
    k = gupsim.Kernel(memory="2GiB")
    p = k.spawn("app")
    n = 1 << 18
    big = p.mmap(0, 1 << 30, RW, MAP_PRIVATE | MAP_ANONYMOUS | gupsim.MAP_POPULATE)
    vec = gupsim.PageArray(n)
    assert p.pin_user_pages_fast(big, n, FOLL_WRITE | FOLL_LONGTERM, vec) == n
    snap = snapshot(k)
    runs = snap.procs[0].vmas[0].runs
    assert sum(r.pages for r in runs) == n and len(runs) <= 4
    assert sum(f.folios for f in snap.frames) == n and len(snap.frames) <= MAX_FRAME_ROWS
    assert all(f.refcount == 1 + 1024 for f in snap.frames)
    k.unpin_user_pages(vec)


def test_swapped_pages_and_a_pmd_mapped_thp_are_drawn_as_the_kernel_holds_them() -> None:
    k = gupsim.Kernel(memory="64MiB", swap="16MiB", thp="always")
    p = k.spawn("app")
    a = p.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"x" * 4 * 4096)
    p.madvise(a + 4096, 2 * 4096, MADV_PAGEOUT)
    raw = p.mmap(0, 4 << 20, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    thp = (raw + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.write(thp, b"y" * (2 << 20))
    snap = snapshot(k)
    small = next(v for v in snap.procs[0].vmas if v.start <= a < v.end).runs
    assert [(r.state, r.pages) for r in small] == [("present", 1), ("swapped", 2),
                                                    ("present", 1)]
    assert small[1].anon_exclusive         # the swap entry keeps the exclusive marker
    huge = [r for v in snap.procs[0].vmas for r in v.runs if r.huge == "PMD"]
    assert [(r.pages, r.anon_exclusive) for r in huge] == [(512, True)]
    [folio] = [f for f in snap.frames if f.order == 9]
    assert folio.holders == [f"PTE pid {p.pid} (app) {thp:#x}..{thp + (511 << 12):#x} "
                             "(512 pages) rw anon-exclusive"]


def test_a_scenario_gets_a_panel_per_step_with_its_line_and_its_gup_call() -> None:
    pics = scenario_pictures(load_scenario(EXAMPLE))
    assert [p.title for p in pics.panels][:3] == ["map anon 4KiB writable", "uring_register",
                                                  "fork"]
    assert len(pics.panels) == 8
    register, fork = pics.panels[1], pics.panels[2]
    assert "parent.uring_register(" in register.source
    assert [c.split("(")[0] for c in register.calls] == ["pin_user_pages_fast"]
    assert "fork_copy_pinned 0 -> 1 (+1)" in fork.model.changes   # type: ignore[union-attr]
    assert len(fork.model.procs) == 2 and fork.model.procs[1].changed  # type: ignore[union-attr]
    assert fork.observed is not None and fork.observed["VmPin"] == "4 kB"


def test_the_hosts_step_stands_beside_the_models_and_a_difference_is_marked() -> None:
    case = load_scenario(EXAMPLE)
    model = scenario_pictures(case).panels
    steps = [Step(p.title, p.outcome, 0, 0, 4, 0) for p in model]
    steps[1].acquired = 2                      # a host that pinned twice
    pics = scenario_pictures(case, Trace("host", steps))
    assert pics.panels[1].host is not None and pics.panels[1].host["nr_foll_pin_acquired"] == "+2"
    page = render_html(pics)
    assert page.count('class="differ"') >= 1
    skipped = scenario_pictures(case, Trace("host", skipped="no io_uring here"))
    assert skipped.note == "host skipped: no io_uring here" and skipped.panels[0].host is None


def test_a_notifier_drivers_device_entries_are_holders() -> None:
    pics, runs = case_pictures(lambda: [CASES["3"]()])
    assert len(pics.panels) == len(runs[0].right) + len(runs[0].wrong)
    holders = [h for p in pics.panels for f in p.model.frames    # type: ignore[union-attr]
               for h in f.holders]
    assert any(h.startswith("device entry of Dmirror") and "(not a pin)" in h
               for h in holders)
    assert pics.panels[0].group.startswith("case 3") and "right driver" in pics.panels[0].group


def test_the_html_page_is_self_contained_and_escapes_text(tmp_path: Path) -> None:
    src = tmp_path / "evil.py"
    src.write_text('NAME = "<script>alert(1)</script>"\n'
                   'def scenario(system):\n'
                   '    p = system.spawn("<b>app")\n'
                   '    p.map("anon", 4096)\n')
    pics = scenario_pictures(load_scenario(str(src)))
    page = render_html(pics)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<b>app" not in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)   # nothing fetched
    assert page.count('<section class="panel"') == len(pics.panels) == 1


def test_the_terminal_view_fits_100_columns() -> None:
    console = Console(width=100, record=True, color_system=None)
    show(console, scenario_pictures(load_scenario(EXAMPLE)))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "1025 = 1 + 1024x1" in text and "step 8: uring_unregister" in text
    assert re.search(r"\*\s+0x2\s", text)      # the child's new frame, marked changed
    narrated = Console(width=100, record=True, color_system=None)
    show(narrated, case_pictures(lambda: [CASES["2"]()])[0])
    text = narrated.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "gupsim/drivers/rdma.py" in text and "cannot migrate" in text


@pytest.mark.parametrize("args", [["run", EXAMPLE], ["cases", "-k", "1"],
                                  ["demo", "--tour-only"], ["eras"]])
def test_html_option_writes_one_page(args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "p.html"
    res = CliRunner().invoke(main, [*args, "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<section class=\"panel\"" in page


def test_show_with_json_is_a_usage_error_and_show_draws() -> None:
    res = CliRunner().invoke(main, ["run", EXAMPLE, "--json", "--show"])
    assert res.exit_code == 2 and "--show" in res.output
    res = CliRunner().invoke(main, ["run", EXAMPLE, "--show"])
    assert res.exit_code == 0 and "who holds them" in res.output


def test_an_unwritable_html_path_says_what_to_do(tmp_path: Path) -> None:
    """A usage error (exit 2) found before anything runs, naming the option."""
    res = CliRunner().invoke(main, ["eras", "--html", str(tmp_path / "no" / "p.html")])
    assert res.exit_code == 2 and "choose another path" in res.output
    assert "'--html'" in res.output and f"{tmp_path / 'no'} does not exist" in res.output


def test_the_release_call_is_named_in_the_step_that_made_it() -> None:
    pics = scenario_pictures(load_scenario(EXAMPLE))
    unregister = pics.panels[-1]
    assert unregister.title == "uring_unregister"
    [release] = [c for c in unregister.calls if c.startswith("release")]
    assert release.startswith("release (unpin_*/put_page) x1 called from ")
    assert release.endswith("fork_with_pinned_buffer.py:26 in scenario")
    assert not any(c.startswith("release") for p in pics.panels[:-1] for c in p.calls)


def test_a_step_that_faults_ends_the_pictures_there_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "fault.py"
    src.write_text("def scenario(system):\n"
                   "    p = system.spawn('app')\n"
                   "    r = p.map('anon', 4096, writable=False, populate=False)\n"
                   "    p.write(r, 0, b'x')\n"
                   "    p.read(r, 0, 1)\n")
    pics = scenario_pictures(load_scenario(str(src)))
    assert [p.outcome for p in pics.panels] == ["ok", "SIGSEGV"]
    assert pics.note == "the scenario ended at step 2: SegmentationFault"


def test_a_step_that_unpins_before_it_ends_also_shows_its_fullest_moment() -> None:
    from gupsim.report.picture_runs import tour_pictures
    pics, steps = tour_pictures()
    assert len(pics.panels) == len(steps)
    pin = next(p for p in pics.panels if p.title.startswith("A pin:"))
    assert pin.model is not None and pin.model.pins_held == 0
    assert pin.while_held is not None and pin.while_held.pins_held == 3
    [huge] = [f for f in pin.while_held.frames if f.order == 9]
    assert (huge.pincount, huge.refcount, huge.maybe_dma_pinned) == (3, 4, True)
    assert any(h.startswith("FOLL_PIN x3 by pin_user_pages_fast() at ") and "tour.py" in h
               for h in huge.holders)
    rdma, _ = case_pictures(lambda: [CASES["2"]()])
    assert rdma.panels[0].while_held is None       # ibv_reg_mr keeps its pins: one picture
    assert "while the step held the most pins (it released them" in render_html(pics)


def test_a_kvm_guests_secondary_entries_are_holders_and_a_56_machine_draws() -> None:
    """KVM registers a classic notifier (not an interval one): the frames its guest
    reaches are still drawn as device entries; and an era without the pin counters
    draws too (0 pins held)."""
    from gupsim.drivers.kvm import kvm_create_vm
    for version in ("5.6", None):
        k = gupsim.Kernel(memory="64MiB", version=version)
        p = k.spawn("vmm")
        a = p.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        vm = kvm_create_vm(k, p)
        assert vm.set_user_memory_region(0, 0, 2 * 4096, a) == 0
        vm.guest_write(4096, b"guest")
        snap = snapshot(k)
        holders = [h for f in snap.frames for h in f.holders]
        kvm = [h for h in holders if h.startswith("device entry of KvmMmuNotifierOps")]
        assert len(kvm) == 1 and "(not a pin)" in kvm[0], holders
        pfn = vm.spte(4096)
        assert pfn is not None and [f.head for f in snap.frames
                                    if any("Kvm" in h for h in f.holders)] == [pfn[0]]
        vm.close()
        assert not [h for f in snapshot(k).frames for h in f.holders if "Kvm" in h]
