"""The `--html` pages in a real browser: Debian's headless Chromium driven by Playwright.

Loads a fork/COW scenario's page and the RDMA case's page, checks that no console error
or script error occurs, that every step's panel is there, that the buttons, the arrow
keys, the list of steps and a `#step-N` address move between steps, that hovering a
frame lights the page-table rows that map it, and that a screenshot is a picture (many
colours), not a blank page. Skips with the reason where /usr/bin/chromium is absent
(`make test` installs it as root with apt-get; see the README).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gupsim.drivers.cases import CASES
from gupsim.report.picture_html import write_html
from gupsim.report.picture_runs import Pictures, case_pictures, scenario_pictures
from gupsim.scenarios.userfile import load_scenario

CHROMIUM = "/usr/bin/chromium"
EXAMPLE = str(Path(__file__).parent.parent / "examples" / "fork_with_pinned_buffer.py")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"{CHROMIUM} is absent: apt-get install chromium "
                                       "(make test does it as root)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install -e .[test]")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(browser: Any, pics: Pictures, tmp_path: Path, anchor: str = "") -> tuple[Any, list]:
    path = tmp_path / "pictures.html"
    write_html(pics, str(path))
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network: {r.url}")
            if not r.url.startswith("file:") else None)
    page.goto(path.as_uri() + anchor)
    return page, errors


def _current(page: Any) -> int:
    return int(page.locator("section.panel.cur").get_attribute("data-step"))


def _colours(png: bytes) -> int:
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 20) or [])


def test_the_fork_pages_steps_all_exist_and_move_both_ways(browser: Any,
                                                            tmp_path: Path) -> None:
    pics = scenario_pictures(load_scenario(EXAMPLE))
    page, errors = _open(browser, pics, tmp_path)
    n = len(pics.panels)
    assert page.locator("section.panel").count() == n
    for i in range(1, n + 1):
        assert page.locator(f'section.panel[data-step="{i}"] h2').count() == 1
    assert page.locator("section.panel.cur").count() == 1 and _current(page) == 1
    page.keyboard.press("ArrowRight")
    page.click("#next")
    assert _current(page) == 3 and page.locator("#pos").inner_text() == f"3 / {n}"
    assert "fork" in page.locator("section.panel.cur h2").inner_text()
    page.keyboard.press("ArrowLeft")
    assert _current(page) == 2
    page.click("#prev")
    page.click("#prev")                    # already at the first step: stays there
    assert _current(page) == 1
    page.click(f"nav a >> nth={n - 1}")
    assert _current(page) == n and page.url.endswith(f"#step-{n}")
    assert page.locator("section.panel:not(.cur)").first.is_hidden()
    assert errors == []


def test_an_address_opens_its_step_and_hover_shows_who_maps_a_frame(browser: Any,
                                                                   tmp_path: Path) -> None:
    pics = scenario_pictures(load_scenario(EXAMPLE))
    page, errors = _open(browser, pics, tmp_path, "#step-3")
    assert _current(page) == 3
    panel = page.locator("section.panel.cur")
    assert panel.locator("tr.hl").count() == 0
    panel.locator(".frame").first.hover()
    assert panel.locator("tr.hl").count() >= 1       # the parent's PTE of the pinned frame
    assert panel.locator("tr.chg").count() >= 1      # the child's new PTE, highlighted
    assert errors == []


def test_the_rdma_case_page_is_a_picture_not_a_blank(browser: Any, tmp_path: Path) -> None:
    pics, _ = case_pictures(lambda: [CASES["2"]()])
    page, errors = _open(browser, pics, tmp_path)
    assert page.locator("section.panel").count() == len(pics.panels)
    page.click("#next")
    panel = page.locator("section.panel.cur")
    assert "maybe DMA-pinned" in panel.inner_text()
    assert _colours(page.screenshot(full_page=True)) > 200
    blank = browser.new_page()
    blank.set_content("<html><body></body></html>")
    assert _colours(blank.screenshot()) < 5      # the measure can fail
    blank.close()
    assert errors == []
