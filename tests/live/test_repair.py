"""A gupsim run that dies without cleaning up (SIGKILL) or is interrupted mid-write
(SIGINT) leaves nothing changed for good: the next run's `repair_dead_runs()` puts the
settings back and removes the temporary folders, and says what it did."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gupsim.live import cleanup
from gupsim.live.repair import repair_dead_runs
from gupsim.live.settings import (
    SharedSetting,
    hugepages_path,
    journal_path,
    read_setting,
    thp_size_enabled,
)

Need = Callable[..., None]
STAT_INTERVAL = "/proc/sys/vm/stat_interval"
MTHP_64K = thp_size_enabled(64)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def journal(name: str) -> dict:
    try:
        with open(journal_path(name)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def mentions(pid: int) -> bool:
    """Does any settings journal still name `pid`?"""
    text = "".join(json.dumps(journal(n)) for n in ("settings", "hugepages", "saved"))
    return f"{pid}" in text


def other_knob_users() -> bool:
    return any(p != os.getpid() for p in SharedSetting._load().get(MTHP_64K, {}).get("users",
                                                                                    []))


class Child:
    """A Python child process that prints JSON lines; killed and reaped at the end."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)

    def line(self, timeout: float = 60.0) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            pytest.skip(f"the child did not get going within {timeout} s (host busy)")
        text = self.proc.stdout.readline()
        if not text:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            if "HostUnsupported" in err:
                pytest.skip(err.strip().splitlines()[-1])
            raise AssertionError(f"the child ended early:\n{err}")
        return json.loads(text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def child() -> Iterator[Callable[[str], Child]]:
    made: list[Child] = []

    def start(script: str) -> Child:
        made.append(Child(script))
        return made[-1]

    yield start
    for c in made:
        c.close()
    repair_dead_runs()            # whatever a failed test left


# -- temporary folders (no root needed) ------------------------------------------------------

def test_a_folder_named_with_a_dead_pid_is_removed_a_living_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"gupsim-host-{dead_pid()}-abcd1234"
    alive = tmp_path / f"gupsim-host-{os.getpid()}-abcd1234"
    other = tmp_path / "gupsim-notes"              # not a gupsim temp folder name
    for d in (dead, alive, other):
        d.mkdir()
    (dead / "backing").write_bytes(b"x")
    removed = cleanup.remove_dead_temp_dirs([str(tmp_path)])
    assert removed == [str(dead)]
    assert not dead.exists() and alive.exists() and other.exists()


def test_temp_dir_names_its_owner_and_is_removed_after_the_owner_dies(
        tmp_path: Path, child: Callable[[str], Child]) -> None:
    c = child(f"""
        import json, time
        from gupsim.live import cleanup
        print(json.dumps(cleanup.temp_dir("host", dir={str(tmp_path)!r})), flush=True)
        time.sleep(60)
    """)
    path = c.line()
    assert os.path.basename(path).startswith(f"gupsim-host-{c.proc.pid}-")
    assert cleanup.remove_dead_temp_dirs([str(tmp_path)]) == []      # its owner lives
    c.proc.kill()
    c.proc.wait()
    assert repair_dead_runs([str(tmp_path)]).folders == [path]
    assert not os.path.exists(path)


def test_old_style_folders_are_kept_while_used(tmp_path: Path) -> None:
    """Folders without a pid: a host folder while a HostSystem may live (the measuring
    lock is held), others while a process has a file in them open or while young."""
    lock = tmp_path / "counters.lock"
    base = tmp_path / "tmp"
    base.mkdir()
    host, used, young, stale = (base / n for n in ("gupsim-host-a1", "gupsim-live-b2",
                                                  "gupsim-dio-c3", "gupsim-live-d4"))
    for d in (host, used, young, stale):
        d.mkdir()
    old = time.time() - 2 * cleanup.LEGACY_MIN_AGE
    for d in (host, used, stale):
        os.utime(d, (old, old))
    fd = os.open(used / "backing", os.O_RDWR | os.O_CREAT, 0o600)
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        import fcntl
        fcntl.flock(holder, fcntl.LOCK_EX)
        removed = cleanup.remove_dead_temp_dirs([str(base)], measuring_lock=str(lock))
        assert removed == [str(stale)]
        os.close(holder)
        holder = -1
        removed = cleanup.remove_dead_temp_dirs([str(base)], measuring_lock=str(lock))
        assert removed == [str(host)]
        assert used.exists() and young.exists()
    finally:
        os.close(fd)
        if holder >= 0:
            os.close(holder)


def test_a_journal_copy_of_a_dead_run_is_removed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL between writing `gupsim-NAME.json.PID` and renaming it into place leaves the
    copy; the next repair removes it (a living writer's copy is kept) and says so."""
    from gupsim.live import settings
    monkeypatch.setattr(settings, "LOCK_DIR", str(tmp_path))
    dead, alive = dead_pid(), os.getpid()
    copies = {n: tmp_path / f"gupsim-{n}.json.{dead}" for n in ("settings", "hugepages",
                                                                 "saved", "swap")}
    for copy in copies.values():
        copy.write_text("{}")
    mine = tmp_path / f"gupsim-settings.json.{alive}"
    other = tmp_path / "gupsim-settings.json.bak"
    mine.write_text("{}")
    other.write_text("{}")
    lines = settings.repair_dead_settings()
    assert not any(c.exists() for c in copies.values())
    assert mine.exists() and other.exists()
    assert len(lines) == 4 and all("half-written journal" in ln for ln in lines)
    assert str(copies["swap"]) in "".join(lines)
    assert settings.repair_dead_settings() == []


# -- settings: SIGKILL -----------------------------------------------------------------------

@pytest.mark.host
def test_settings_raised_by_a_killed_process_are_put_back(need: Need,
                                                          child: Callable[[str], Child],
                                                          tmp_path: Path) -> None:
    """A process raises the 64 KiB mTHP knob, one huge page and vm.stat_interval, makes a
    temporary folder, and is SIGKILLed: repair puts all three back and removes the folder."""
    need("root", "mthp_64k", "hugetlb_2m")
    if other_knob_users():
        pytest.skip("another gupsim process holds hugepages-64kB/enabled right now")
    knob_before = read_setting(MTHP_64K)
    knob_want = "madvise" if knob_before != "madvise" else "always"
    interval_before = read_setting(STAT_INTERVAL)
    interval_want = "3" if interval_before != "3" else "4"
    pool = hugepages_path(2048)
    c = child(f"""
        import json, time
        from gupsim.live import cleanup
        from gupsim.live.settings import ExtraHugepages, Setting, SharedSetting
        d = cleanup.temp_dir("host", dir={str(tmp_path)!r})
        SharedSetting({MTHP_64K!r}, {knob_want!r}).__enter__()
        got = ExtraHugepages(2048).grow(1)
        Setting({STAT_INTERVAL!r}, {interval_want!r}).__enter__()
        print(json.dumps({{"dir": d, "got": got}}), flush=True)
        time.sleep(60)
    """)
    out = c.line()
    pool_raised = int(read_setting(pool))
    assert read_setting(MTHP_64K) == knob_want
    assert read_setting(STAT_INTERVAL) == interval_want
    assert mentions(c.proc.pid)
    c.proc.send_signal(signal.SIGKILL)
    assert c.proc.wait(10) == -signal.SIGKILL
    assert read_setting(MTHP_64K) == knob_want, "SIGKILL restores nothing by itself"

    repair = repair_dead_runs([str(tmp_path)])

    assert read_setting(MTHP_64K) == knob_before
    assert read_setting(STAT_INTERVAL) == interval_before
    assert not os.path.exists(out["dir"]) and repair.folders == [out["dir"]]
    assert not mentions(c.proc.pid)
    text = str(repair)
    assert MTHP_64K in text and STAT_INTERVAL in text
    if out["got"]:
        assert f"gave back {out['got']} huge page(s)" in text
        assert f"({pool_raised} -> {pool_raised - out['got']})" in text
    assert not repair_dead_runs([str(tmp_path)]), "a second repair finds nothing"


# -- settings: SIGINT in the middle of a write -----------------------------------------------

SLOW_WRITE = """
import json, os, sys, time
from gupsim.live import settings
real = settings.write_setting
def slow_write(path, value):        # the knob is written, then a SIGINT arrives
    real(path, value)
    if path == TARGET:
        print(json.dumps(["write", value]), flush=True)
    if path == TARGET and value == WANT:
        print(json.dumps("written"), flush=True)
        time.sleep(3)
settings.write_setting = slow_write
"""


@pytest.mark.host
@pytest.mark.parametrize("kind", ["shared", "setting", "hugepages"])
def test_a_sigint_during_a_write_leaves_the_setting_as_it_was(
        need: Need, child: Callable[[str], Child], kind: str) -> None:
    """Ctrl-C while the value is being written: the run stops with KeyboardInterrupt and
    the setting is back (the journal said what to undo, and the signal waited)."""
    need("root")
    if kind == "shared":
        need("mthp_64k")
        if other_knob_users():
            pytest.skip("another gupsim process holds hugepages-64kB/enabled right now")
        target = MTHP_64K
        before = read_setting(target)
        want = "madvise" if before != "madvise" else "always"
        use = "with settings.SharedSetting(TARGET, WANT):\n    print('inside', flush=True)"
    elif kind == "setting":
        target = STAT_INTERVAL
        before = read_setting(target)
        want = "3" if before != "3" else "4"
        use = "with settings.Setting(TARGET, WANT):\n    print('inside', flush=True)"
    else:
        need("hugetlb_2m")
        target = hugepages_path(2048)
        before = read_setting(target)
        want = str(int(before) + 1)
        use = ("with settings.ExtraHugepages(2048, grow_on_enter=1):\n"
               "    print('inside', flush=True)")
    script = (f"TARGET, WANT = {target!r}, {want!r}\n" + SLOW_WRITE + use
              + "\n    time.sleep(30)\n")
    c = child(script)
    assert c.line() == ["write", want]
    assert c.line() == "written"
    c.proc.send_signal(signal.SIGINT)
    assert c.proc.wait(20) != 0
    assert c.proc.stdout is not None and c.proc.stderr is not None
    out = [json.loads(line) for line in c.proc.stdout.read().splitlines()
           if not line.startswith(b"inside")]
    err = c.proc.stderr.read()
    assert b"KeyboardInterrupt" in err
    assert not mentions(c.proc.pid)
    if kind == "hugepages":        # given back by delta (others may move the pool meanwhile)
        assert len(out) == 1 and out[0][0] == "write", (out, err.decode())
    elif read_setting(target) != before:    # only if another gupsim run took it meanwhile
        assert others_hold(target), (read_setting(target), err.decode())
    else:
        assert out == [["write", before]]


def others_hold(path: str) -> bool:
    """Does a living gupsim process (another test run on this machine) hold `path` now?"""
    users = SharedSetting._load().get(path, {}).get("users", [])
    growers = [int(p) for p in journal("hugepages").get(path, {})]
    return any(os.path.exists(f"/proc/{p}") for p in users + growers)


# -- a whole host run, killed --------------------------------------------------------------

@pytest.mark.host
def test_a_killed_host_run_is_repaired(need: Need, child: Callable[[str], Child]) -> None:
    """A HostSystem maps hugetlb memory (raising the pool if needed) and is SIGKILLed: its
    temporary folders are removed and any huge pages it added given back."""
    need("root", "hugetlb_2m", "stat_refresh")
    c = child("""
        import json, time
        from gupsim.scenarios.host import HostSystem
        s = HostSystem()
        p = s.spawn("a")
        p.map("hugetlb", 2 << 20)
        print(json.dumps([s.disk_dir, s.shm_dir, s._huge.added if s._huge else 0]),
              flush=True)
        time.sleep(60)
    """)
    disk_dir, shm_dir, added = c.line(timeout=200)
    assert os.path.isdir(disk_dir)
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(10)
    repair = repair_dead_runs(lock_timeout=200)
    assert not os.path.exists(disk_dir) and disk_dir in repair.folders
    if shm_dir:
        assert not os.path.exists(shm_dir) and shm_dir in repair.folders
    assert not mentions(c.proc.pid)
    if added:
        assert f"gave back {added} huge page(s)" in str(repair)
