"""Settings restore, exact vmstat reading, and /proc views."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from gupsim.live import (
    HostUnsupported,
    LiveStack,
    Setting,
    measure,
    measure_repeat,
    pin_counters,
    proc_status,
    read_setting,
)
from gupsim.live.settings import THP_ENABLED

pytestmark = pytest.mark.host
Need = Callable[..., None]
STAT_INTERVAL = "/proc/sys/vm/stat_interval"


@pytest.fixture
def root(need: Need) -> None:
    need("root")


def test_setting_is_restored_on_exit_and_on_exception(root: None) -> None:
    original = read_setting(STAT_INTERVAL)
    new = "2" if original != "2" else "3"
    with Setting(STAT_INTERVAL, new) as s:
        assert read_setting(STAT_INTERVAL) == new == s.actual
    assert read_setting(STAT_INTERVAL) == original
    with pytest.raises(KeyboardInterrupt), LiveStack() as stack:
        stack.enter_context(Setting(STAT_INTERVAL, new))
        raise KeyboardInterrupt
    assert read_setting(STAT_INTERVAL) == original


def test_choice_file_reads_the_selected_word(root: None, need: Need) -> None:
    need("thp")
    original = read_setting(THP_ENABLED)
    assert original in ("always", "madvise", "never")
    other = "never" if original != "never" else "madvise"
    with Setting(THP_ENABLED, other) as s:
        assert s.actual == other
    assert read_setting(THP_ENABLED) == original


def test_setting_restored_when_killed_by_sigterm(root: None) -> None:
    original = read_setting(STAT_INTERVAL)
    new = "2" if original != "2" else "3"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from gupsim.live import Setting
        s = Setting({STAT_INTERVAL!r}, {new!r}).__enter__()
        print("set", flush=True)
        time.sleep(30)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"set\n"
        assert read_setting(STAT_INTERVAL) == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert read_setting(STAT_INTERVAL) == original


def test_unwritable_setting_is_host_unsupported(root: None) -> None:
    with pytest.raises(HostUnsupported, match="does not exist"):
        Setting("/proc/sys/vm/no_such_knob", "1").__enter__()
    with pytest.raises(HostUnsupported, match="not writable"):
        Setting("/proc/sys/kernel/osrelease", "x").__enter__()


def test_counters_are_exact_and_still_when_nothing_pins(need: Need) -> None:
    need("stat_refresh")
    c = pin_counters()
    assert c.exact and c.acquired >= c.released >= 0
    measured = measure_repeat(lambda: 42)
    assert measured.value == 42 and measured.delta.as_tuple() == (0, 0)
    with measure() as m:
        with pytest.raises(ValueError, match="after"):
            _ = m.delta
    assert m.delta.exact
    with pytest.raises(RuntimeError), measure() as failed:
        raise RuntimeError("the block failed")
    assert failed.delta.as_tuple() == (0, 0)  # measured anyway


def test_proc_status_fields() -> None:
    st = proc_status()
    assert st["Pid"] == os.getpid()
    assert st["VmPin"] == 0 and int(st["VmRSS"]) > 0
