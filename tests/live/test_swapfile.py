"""The temporary swap file of a case that needs swap, on the host and in the model.

Host tests add a 16 MiB swap file (root only) and check /proc/swaps during and after,
including after the holder was killed with SIGKILL and `repair_dead_runs()` ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gupsim.constants import MADV_PAGEOUT, PAGE_SIZE
from gupsim.live.capabilities import host_capabilities
from gupsim.live.repair import repair_dead_runs
from gupsim.live.swapfile import SwapFile, active_swaps
from gupsim.mm.vma import PTE
from gupsim.scenarios.catalogue import kvm_cases
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.runner import run_case

SIZE = 16 << 20


def _swap_file_reason() -> str:
    if os.geteuid() != 0:
        return "not root: swapon(2) needs CAP_SYS_ADMIN"
    if active_swaps():
        return "the host already has swap: no temporary swap file is added"
    return ""


needs_swap_file = pytest.mark.skipif(bool(_swap_file_reason()), reason=_swap_file_reason())


@needs_swap_file
def test_the_swap_file_is_active_during_the_block_and_gone_after() -> None:
    with SwapFile(SIZE) as s:
        assert s.path in active_swaps()
        assert os.path.exists(s.path)
        assert os.stat(s.path).st_mode & 0o777 == 0o600
    assert s.path not in active_swaps()
    assert not os.path.exists(s.path)


def test_bad_sizes_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        SwapFile(SIZE + 1)


HOLDER = """
import sys, time
from gupsim.live.swapfile import SwapFile
s = SwapFile({size})
s.__enter__()
print(s.path, flush=True)
time.sleep(60)
"""


@needs_swap_file
def test_a_swap_file_left_by_a_killed_run_is_swapped_off_and_removed() -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(size=SIZE)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        assert path, "the holder did not add its swap file"
        assert path in active_swaps()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert path in active_swaps(), "SIGKILL runs no cleanup: the swap file must still be on"
    repair = repair_dead_runs()
    assert any(path in line and "swapoff" in line for line in repair.settings), repair.lines()
    assert path not in active_swaps()
    assert not os.path.exists(path)


def test_the_model_swaps_anonymous_pages_out_when_the_case_needs_swap() -> None:
    for needs, swapped in ((("swap",), True), ((), False)):
        system = ModelSystem(needs=needs)
        p = system.spawn("a")
        r = p.map("anon", 4 * PAGE_SIZE, fill=0x66)
        p.madvise(r, 0, 4 * PAGE_SIZE, MADV_PAGEOUT)
        mm = p.p.mm      # type: ignore[attr-defined]
        vma = mm.find_vma(r.addr)
        ptes = vma.pte[(r.addr - vma.start) // PAGE_SIZE:][:4]
        assert bool((ptes & PTE.SWAP).all()) is swapped, ptes
        assert p.read(r, 0, 4) == b"\x66" * 4
        system.close()


@pytest.mark.host
def test_the_pageout_case_agrees_on_the_host_with_a_temporary_swap_file() -> None:
    caps = host_capabilities()
    for need in ("kvm", "swap", "stat_refresh"):
        if not caps[need]:
            pytest.skip(f"{need}: {caps[need].reason}")
    before = active_swaps()
    case = next(c for c in kvm_cases() if "PAGEOUT" in c.name)
    result = run_case(case)
    if result.host is not None and result.host.skipped:
        pytest.skip(result.host.skipped)
    assert result.status == "agree", (result.differences, result.host_problems)
    deadline = time.monotonic() + 1
    while active_swaps() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active_swaps() == before


@pytest.mark.host
def test_the_host_swaps_anonymous_pages_out_with_the_temporary_swap_file() -> None:
    from gupsim.live.hostmem import pagemap
    from gupsim.scenarios.host import HostSystem, host_skip_reason

    reason = _swap_file_reason() or host_skip_reason(("swap",))
    if reason:
        pytest.skip(reason)
    with HostSystem(needs=("swap",)) as system:
        p = system.spawn("a")
        r = p.map("anon", 4 * PAGE_SIZE, fill=0x66)
        assert len(active_swaps()) == 1, "the case needs swap: a swap file is added"
        p.madvise(r, 0, 4 * PAGE_SIZE, MADV_PAGEOUT)
        host_pid = p.host_pid      # type: ignore[attr-defined]
        entries = [pagemap(r.addr + i * PAGE_SIZE, host_pid) for i in range(4)]
        assert all(e.swapped and not e.present for e in entries), entries
        assert p.read(r, 0, 4) == b"\x66" * 4
    assert active_swaps() == []


@pytest.mark.host
@needs_swap_file
def test_pageout_reaches_pages_faulted_on_another_cpu() -> None:
    """MADV_PAGEOUT drains only the calling CPU's batch of new folios, so pages faulted
    on one CPU and paged out from another can stay resident (CI saw it); the host
    back-end repeats the call on every CPU. (That a single call misses them is not
    asserted: another drain may happen to run first.)"""
    import ctypes
    import mmap

    from gupsim.live import libc
    from gupsim.live.hostmem import pagemap

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one to fault the pages on, one to page them out from")
    first, second = sorted(cpus)[:2]
    area = mmap.mmap(-1, 4 * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
    try:
        with SwapFile():
            os.sched_setaffinity(0, {first})
            for i in range(4):
                area[i * PAGE_SIZE] = 0x5A
            os.sched_setaffinity(0, {second})
            libc.madvise_on_every_cpu(addr, 4 * PAGE_SIZE, MADV_PAGEOUT)
            assert os.sched_getaffinity(0) == {second}, "its CPUs are restored"
            swapped = [pagemap(addr + i * PAGE_SIZE, os.getpid()).swapped for i in range(4)]
            assert swapped == [True] * 4
            assert area[0] == 0x5A
    finally:
        os.sched_setaffinity(0, cpus)


@needs_swap_file
def test_a_stray_swap_file_of_a_dead_run_without_a_journal_is_removed() -> None:
    from gupsim.live.swapfile import SWAP_DIR, repair_dead_swapfiles

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = os.path.join(SWAP_DIR, f"gupsim-swap-{dead.pid}-1")
    with open(path, "w"):
        pass
    lines = repair_dead_swapfiles()
    assert any(path in line for line in lines), lines
    assert not os.path.exists(path)
