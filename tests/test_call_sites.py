"""Call sites name the user's code wherever the user's files live, and cost little.

"Inside gupsim" is decided by the installed package's own directory, so a user whose
project (or checkout of gupsim itself) sits in a folder named `gupsim` still sees their own
file and line in warnings and sanitizer reports.
"""

from __future__ import annotations

import linecache
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gupsim
from gupsim.warn import PACKAGE_DIR, in_package, user_call_site

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = '''\
import gupsim
from gupsim import FOLL_PIN, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE

k = gupsim.Kernel(memory="64MiB")
p = k.spawn("app")
a = p.mmap(0, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
p.write(a, b"x")
pages = []
n = p.pin_user_pages_fast(a, 1, FOLL_WRITE, pages)   # line 9: the pin
rc = p.get_user_pages(a, 1, FOLL_PIN, [])            # line 10: warns (internal flag)
k.unpin_user_pages(pages)                            # line 11: the release
k.unpin_user_pages(pages)                            # line 12: double unpin
'''


def run_user_file(folder: Path) -> dict:
    """Write USER_CODE to folder/user_code.py and run it as a script."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "user_code.py"
    path.write_text(USER_CODE)
    return runpy.run_path(str(path))


@pytest.mark.parametrize("folder", ["gupsim", "src/gupsim/tests", "gupsim/gupsim"])
def test_a_user_file_in_a_folder_named_gupsim_is_the_call_site(tmp_path: Path,
                                                               folder: str) -> None:
    """The warning and both sites of the double-unpin report name user_code.py's lines."""
    ns = run_user_file(tmp_path / folder)
    k = ns["k"]
    path = str(tmp_path / folder / "user_code.py")
    assert ns["n"] == 1
    [warning] = [w for w in k.warnings if w.site == "is_valid_gup_args: internal FOLL flag"]
    assert warning.caller == f"{path}:10 in <module>"
    [report] = k.sanitizer.reports
    assert report.kind == "double_unpin"
    assert report.taken_at == f"{path}:9 in <module>"
    assert report.released_at == f"{path}:12 in <module>"
    assert f"{path}:11 in <module>" in report.message     # where the pin really went


def test_the_report_shows_source_lines_only_when_printed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording pins and releases reads no source file; explain() does."""
    reads: list[str] = []
    real = linecache.getline

    def counting(filename: str, lineno: int, module_globals: object = None) -> str:
        reads.append(filename)
        return real(filename, lineno)

    monkeypatch.setattr(linecache, "getline", counting)
    monkeypatch.setattr(linecache, "getlines", lambda *a, **k: pytest.fail("source read"))
    ns = run_user_file(tmp_path / "gupsim")
    assert reads == []
    monkeypatch.undo()
    text = ns["k"].sanitizer.reports[0].explain()
    assert "# line 9: the pin" in text and "# line 12: double unpin" in text


def test_the_package_is_found_by_its_directory_not_its_name(tmp_path: Path) -> None:
    """in_package() answers for the real package files only."""
    assert PACKAGE_DIR == os.path.join(os.path.dirname(os.path.realpath(gupsim.__file__)), "")
    assert in_package(gupsim.__file__)
    assert in_package(os.path.join(PACKAGE_DIR, "gup", "api.py"))
    assert not in_package(str(tmp_path / "gupsim" / "gup" / "api.py"))
    assert not in_package(__file__)
    assert not in_package("<string>")
    here = user_call_site()
    assert here.startswith(f"{__file__}:") and here.endswith(" in "
                                                            "test_the_package_is_found_by_its_"
                                                            "directory_not_its_name")


def test_a_checkout_named_gupsim_passes_the_sanitizer_tests(tmp_path: Path) -> None:
    """What `git clone` gives: the project in a folder named gupsim. Its own sanitizer and
    docs tests pass there, importing gupsim from that folder."""
    clone = tmp_path / "gupsim"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".hypothesis")
    for part in ("src", "tests", "examples", "docs"):
        if (ROOT / part).exists():
            shutil.copytree(ROOT / part, clone / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    env = dict(os.environ, PYTHONPATH=str(clone / "src"), PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import gupsim; print(gupsim.__file__)"],
                           env=env, cwd=clone, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(clone / "src" / "gupsim" / "__init__.py")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/gup/test_sanitizer.py", "tests/test_docs.py"],
                         env=env, cwd=clone, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " failed" not in out.stdout


def test_a_check_that_does_not_fire_computes_no_message() -> None:
    """warn_on_once() takes the message as a callable, called only when it records."""
    from gupsim.warn import WarnLog
    log = WarnLog()
    calls: list[int] = []

    def message() -> str:
        calls.append(1)
        return "expensive text"

    assert log.warn_on_once(False, "site: never", message) is False
    assert calls == [] and len(log) == 0
    assert log.warn_on_once(True, "site: once", message) is True
    assert log.warn_on_once(True, "site: once", message) is True     # counted, not recorded
    assert calls == [1] and log.hits["site: once"] == 2
    assert log[0].message == "expensive text" and log[0].caller.startswith(__file__)


def _express_sites(n: int, release: str) -> tuple[str, str, str, str]:
    """Pin `n` pages into a PageArray (the express paths: one page, a few small pages,
    THP leaves) and release them by `release`: (pin site, release site, and the lines
    they should name). The express paths start the walk beyond their fixed frames."""
    from gupsim import (
        FOLL_LONGTERM,
        FOLL_WRITE,
        MADV_HUGEPAGE,
        MADV_POPULATE_WRITE,
        MAP_ANONYMOUS,
        MAP_POPULATE,
        MAP_PRIVATE,
        PROT_READ,
        PROT_WRITE,
    )
    from gupsim.gup import api
    rw, anon = PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn("app")
    if n < 512:
        a = p.mmap(0, 1 << 16, rw, anon | MAP_POPULATE)
    else:
        a = p.mmap(0, 6 << 20, rw, anon)
        a = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
        p.madvise(a, 4 << 20, MADV_HUGEPAGE)
        p.madvise(a, 4 << 20, MADV_POPULATE_WRITE)
    vec = gupsim.PageArray(n)
    here = sys._getframe().f_code.co_name
    pin_line = sys._getframe().f_lineno + 1
    assert p.pin_user_pages_fast(a, n, FOLL_LONGTERM | FOLL_WRITE, vec) == n
    assert k.gup.calls[-1].express
    pin_site = k.sanitizer.outstanding()[-1].site
    unpin = {"kernel": k.unpin_user_pages, "module function": api.unpin_user_pages}[release]
    release_line = sys._getframe().f_lineno + 1
    unpin(vec)
    assert k.gup.express_unpins.get(n), "the release did not go the express way"
    release_site = k.sanitizer.release_sites()[-1]
    return (pin_site, release_site, f"{__file__}:{pin_line} in {here}",
            f"{__file__}:{release_line} in {here}")


@pytest.mark.parametrize("n", [1, 8, 1024])
@pytest.mark.parametrize("release", ["kernel", "module function"])
def test_the_express_paths_name_the_users_line(n: int, release: str) -> None:
    pin_site, release_site, pin_want, release_want = _express_sites(n, release)
    assert pin_site == pin_want
    assert release_site == release_want


def test_a_kept_site_reads_as_the_line_the_frame_was_on() -> None:
    """The sanitizer keeps (code, offset) and formats it when read: the text names the
    line the frame was on then, for each of several calls in one function, and reading
    it again gives the same text."""
    from gupsim.warn import site_text, user_call_frame

    def here() -> tuple[object, int]:
        frame = sys._getframe(1)
        return user_call_frame(inside=1), frame.f_lineno    # the frame that called here()

    first = here()
    second = here()
    for site, line in (first, second):
        want = f"{__file__}:{line} in test_a_kept_site_reads_as_the_line_the_frame_was_on"
        assert site_text(site) == want           # type: ignore[arg-type]
        assert site_text(site) == want           # type: ignore[arg-type]
    assert first[1] + 1 == second[1]
