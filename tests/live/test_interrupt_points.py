"""`gupsim run --host` interrupted at many points leaves nothing behind.

A scenario that takes every kind of host resource gupsim manages (a temporary swap file
where the host has none, io_uring pins in a parent and a forked child, raised huge pages,
the mTHP knob while an mTHP map faults, O_DIRECT and vmsplice pins) is run by the real
command line and interrupted after each of its steps in turn: Ctrl-C (SIGINT to the whole
process group, as a terminal sends it), SIGTERM (to gupsim alone, as `kill` or a CI
timeout sends it) or SIGKILL (nothing can run; the next host run repairs and says so).
The signal lands while gupsim is working on the next step. After each: the exit status
says how it ended, and no scenario process, pin, setting, journal entry, swap file or
temporary file of the run is left.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gupsim.live import cleanup, settings
from gupsim.live.settings import hugepages_path, journal_path, read_journal, read_setting
from gupsim.live.swapfile import SWAP_DIR, active_swaps
from gupsim.live.vmstat import counters_to_ourselves, pin_counters, wait_outstanding

pytestmark = pytest.mark.host

GUPSIM = Path(sys.executable).with_name("gupsim")
MiB = 1 << 20

SCENARIO = '''
import json, os

NAME = "interrupted at every step"
NEEDS = ("io_uring", "swap")
MARK = os.environ["GUPSIM_TEST_MARK"]


def mark(system, what):
    """On the host, after each step: the step and the scenario processes alive now."""
    if system.name == "host":
        with open(MARK, "a") as f:
            f.write(json.dumps([what, list(system.host_pids)]) + "\\n")


def scenario(system):
    mark(system, "start")
    p = system.spawn("app"); mark(system, "spawn")
    a = p.map("anon", 1 << 20, fill=1); mark(system, "map")
    p.uring_register([(a, 0, 1 << 20)]); mark(system, "uring_register")
    c = p.fork(); mark(system, "fork")
    c.uring_register([(a, 0, 1 << 20)]); mark(system, "child uring_register")
    p.map("hugetlb", 4 << 20, fill=2); mark(system, "hugetlb")
    p.map("mthp", 1 << 20, fill=3); mark(system, "mthp")
    p.odirect_write(a, 0, 1 << 20); mark(system, "odirect_write")
    p.vmsplice(a, 0, 1 << 16); mark(system, "vmsplice")
    c.exit(); mark(system, "child exit")
    p.uring_unregister(); mark(system, "uring_unregister")
'''
STEPS = ["start", "spawn", "map", "uring_register", "fork", "child uring_register",
         "hugetlb", "mthp", "odirect_write", "vmsplice", "child exit"]
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
#: Each step gets one signal, in turn, so each signal lands at about four points.
POINTS = [(i + 1, step, SIGNALS[i % 3]) for i, step in enumerate(STEPS)]

MTHP_KNOBS = sorted(glob.glob("/sys/kernel/mm/transparent_hugepage/hugepages-*kB/enabled"))
HUGE_POOL = hugepages_path(2048)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt")
    (folder / "scn.py").write_text(SCENARIO)
    (folder / "noop.py").write_text("def scenario(system):\n    system.spawn('a')\n")
    return folder


@pytest.fixture(autouse=True)
def _host_can(need: Callable[..., None]) -> None:
    need("root", "io_uring", "hugetlb_2m", "mthp_64k", "stat_refresh")


# -- what a run may leave, read so that other gupsim runs on the machine are no noise -----

def base_settings() -> dict[str, str]:
    """Each knob gupsim changes, as it is without the changes living gupsim runs journal:
    an mTHP knob's saved original while others hold it, the huge page pool less what
    living runs added. A run that leaves a change shows here; another's does not."""
    shared = read_journal("settings")
    out = {}
    for path in MTHP_KNOBS:
        entry = shared.get(path)
        living = entry and any(cleanup.pid_alive(int(p)) for p in entry.get("users", []))
        out[path] = entry["original"] if living else read_setting(path)
    with settings._locked("hugepages"):
        added = sum(int(mine.get("added", 0))
                    for pid, mine in read_journal("hugepages").get(HUGE_POOL, {}).items()
                    if cleanup.pid_alive(int(pid)))
        out[HUGE_POOL] = str(int(read_setting(HUGE_POOL)) - added)
    return out


def leftovers(pid: int) -> list[str]:
    """Everything on the machine that names gupsim process `pid`."""
    found = [d for base in cleanup.temp_bases()
             for d in glob.glob(os.path.join(base, f"gupsim-*-{pid}-*"))]
    found += glob.glob(os.path.join(settings.LOCK_DIR, f"gupsim-*.json.{pid}"))
    found += glob.glob(os.path.join(SWAP_DIR, f"gupsim-swap-{pid}-*"))
    found += [f"active swap {s}" for s in active_swaps() if f"gupsim-swap-{pid}-" in s]
    for name in ("settings", "hugepages", "saved", "swap"):
        if re.search(rf"\b{pid}\b", json.dumps(read_journal(name))):
            found.append(f"journal {journal_path(name)} names {pid}")
    return found


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still present (even as zombies) after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


class Run:
    """`gupsim run --host FILE` in its own session, the steps it marked on the host."""

    def __init__(self, scenario: Path, mark: Path) -> None:
        self.mark = mark
        env = dict(os.environ, GUPSIM_TEST_MARK=str(mark), NO_COLOR="1")
        self.proc = subprocess.Popen([str(GUPSIM), "run", "--host", str(scenario)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)

    def marks(self) -> list[list]:
        try:
            return [json.loads(line) for line in self.mark.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def wait_for_step(self, n: int, timeout: float = 300.0) -> list[list]:
        """Until the host has done `n` marks; fails if the run ended first."""
        deadline = time.monotonic() + timeout
        while len(marks := self.marks()) < n:
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before mark {n}:"
                            f" {self.proc.stderr.read() if self.proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.skip(f"the host run did not reach mark {n} in {timeout} s (busy)")
            time.sleep(0.002)
        return marks

    def end(self) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


@pytest.fixture
def run_in(files: Path) -> Iterator[list[Run]]:
    runs: list[Run] = []
    yield runs
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.communicate()


@pytest.mark.parametrize(("n", "step", "sig"), POINTS,
                         ids=[f"{sig.name}-after-{step.replace(' ', '-')}"
                              for _, step, sig in POINTS])
def test_an_interrupted_host_run_leaves_nothing(files: Path, run_in: list[Run], n: int,
                                                step: str, sig: signal.Signals) -> None:
    with counters_to_ourselves():
        pins_before = pin_counters().outstanding
        settings_before = base_settings()
    run = Run(files / "scn.py", files / f"mark-{n}-{sig.name}")
    run_in.append(run)
    marks = run.wait_for_step(n)
    held = marks[-1][1]
    if sig == signal.SIGINT:
        os.killpg(run.proc.pid, sig)     # Ctrl-C: the terminal signals the whole group
    else:
        run.proc.send_signal(sig)
    code, err = run.end()
    pid = run.proc.pid

    if sig == signal.SIGINT:
        assert code == 130, err
        assert "interrupted; everything taken on the host was released" in err, err
        assert "Traceback" not in err, err
    else:
        assert code == -sig, err         # SIGTERM: cleaned up, then ended by the signal
    if sig == signal.SIGKILL:           # the next host run repairs, with a line saying so
        left = leftovers(pid)
        repair = subprocess.run([str(GUPSIM), "run", "--host", str(files / "noop.py")],
                                capture_output=True, text=True, timeout=300)
        assert repair.returncode == 0, repair.stderr
        if left and "gupsim: repaired what a dead run left" not in repair.stderr:
            # only if another gupsim run on this machine repaired it first
            assert leftovers(pid) == [], (left, repair.stderr)
            assert "repaired what a dead run left" not in err
    assert wait_gone([p for p in held if p != pid]) == [], "scenario processes left"
    assert leftovers(pid) == []
    with counters_to_ourselves():
        assert base_settings() == settings_before
        pins = wait_outstanding(pins_before, timeout=10.0).outstanding
        assert pins == pins_before, f"outstanding pins {pins_before} -> {pins}"


def test_the_points_cover_every_step_and_signal(files: Path) -> None:
    """Every step of the scenario but the last is a point, and each signal lands at more
    than one; the scenario's marks are the steps listed (a renamed step fails here)."""
    marks = re.findall(r'mark\(system, "([^"]+)"\)', SCENARIO)
    assert marks[:-1] == STEPS and len(marks) == len(STEPS) + 1
    for sig in SIGNALS:
        assert sum(1 for _, _, s in POINTS if s == sig) >= 3
    assert textwrap.dedent(SCENARIO) == SCENARIO
