"""The live helpers behind the newer catalogue rows: a R/O pin held open across a write
(process_vm_readv parked on a userfaultfd page), and host settings shared safely by
several gupsim processes (huge page pool by delta, THP knobs by last-user-restores)."""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Callable

import pytest

from gupsim.live import HostMapping, libc
from gupsim.live.settings import (
    ExtraHugepages,
    SharedSetting,
    hugepages_path,
    read_setting,
    thp_size_enabled,
)
from gupsim.live.uffd import PVM_MAX_PAGES_PER_LOOP, read_pinned_while
from gupsim.live.vmstat import measure

pytestmark = pytest.mark.host
Need = Callable[..., None]
PAGE = libc.PAGE_SIZE


def test_a_pin_on_an_exclusive_page_sees_the_write(need: Need, quiet) -> None:
    need("userfaultfd", "root")
    with HostMapping(4 * PAGE, "anon", fill=1) as m:
        def run():
            m.memset(1)
            with measure() as d:
                data = read_pinned_while(m.addr, 4 * PAGE, lambda: m.memset(0xFF))
            return data, d.delta
        data, delta = quiet(run)
    assert data == b"\xff" * 4 * PAGE
    assert delta.as_tuple() == (4, 4)


def test_a_short_term_pin_of_a_page_cache_page_misses_a_private_write(need: Need) -> None:
    need("userfaultfd")
    fd = os.memfd_create("gupsim-test")
    try:
        os.ftruncate(fd, PAGE)
        os.pwrite(fd, b"\x07" * PAGE, 0)
        addr = libc.mmap(0, PAGE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE, fd, 0)
        try:
            ctypes.string_at(addr, 1)           # map the page cache page, read-only
            data = read_pinned_while(addr, PAGE, lambda: ctypes.memset(addr, 0xFF, PAGE))
            assert data == b"\x07" * PAGE       # the pin kept the page cache page
            assert ctypes.string_at(addr, 4) == b"\xff" * 4   # the write got a copy
        finally:
            libc.munmap(addr, PAGE)
    finally:
        os.close(fd)


def test_the_write_really_happens_while_pinned(need: Need) -> None:
    """`during` runs after the pins are taken and before the copy: both orders matter."""
    need("userfaultfd")
    order: list[str] = []
    with HostMapping(PAGE, "anon", fill=3) as m:
        data = read_pinned_while(m.addr, PAGE, lambda: order.append("during"))
        order.append("returned")
    assert order == ["during", "returned"] and data == b"\x03" * PAGE


def test_read_pinned_while_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="at most"):
        read_pinned_while(0x10000, (PVM_MAX_PAGES_PER_LOOP + 1) * PAGE, lambda: None)
    with pytest.raises(ValueError, match="> 0"):
        read_pinned_while(0x10000, 0, lambda: None)


def test_errors_in_the_copy_reach_the_caller(need: Need) -> None:
    need("userfaultfd")
    with pytest.raises(OSError):       # nothing mapped at 4 KiB: EFAULT, no stall
        read_pinned_while(PAGE, PAGE, lambda: None)


# -- settings shared between gupsim processes ------------------------------------------------

def _nr(path: str) -> int:
    return int(read_setting(path))


def test_overlapping_huge_page_users_restore_the_pool(need: Need) -> None:
    """A raises, B raises, A leaves, B leaves: the pool is as before (absolute save and
    restore would leave B's "original", A's raised value, behind)."""
    need("hugetlb_2m")
    path = hugepages_path(2048)
    before = _nr(path)
    a, b = ExtraHugepages(), ExtraHugepages()
    try:
        assert a.grow(1) == 1
        assert b.grow(1) == 1
        assert _nr(path) == before + 2
        a.restore()
        assert _nr(path) == before + 1
    finally:
        a.restore()
        b.restore()
    assert _nr(path) == before and a.added == b.added == 0


def test_hugepages_context_grows_and_gives_back(need: Need) -> None:
    need("hugetlb_2m")
    from gupsim.live import hugepages
    path = hugepages_path(2048)
    before = _nr(path)
    with hugepages(2) as hp:
        assert int(hp.actual or 0) == before + 2 == _nr(path)
    assert _nr(path) == before


def _state() -> dict:
    try:
        with open(SharedSetting._state_file()) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def _others_hold(path: str) -> bool:
    return any(p != os.getpid() for p in SharedSetting._load().get(path, {}).get("users", []))


def test_a_shared_knob_is_restored_by_its_last_user(need: Need) -> None:
    need("mthp_64k")
    path = thp_size_enabled(64)
    if _others_hold(path):
        pytest.skip("another gupsim process holds hugepages-64kB/enabled right now")
    before = read_setting(path)
    want = "madvise" if before != "madvise" else "always"
    first, second = SharedSetting(path, want), SharedSetting(path, want)
    with first:
        with second:
            assert read_setting(path) == want
        assert read_setting(path) == want       # the first user is still there
    assert read_setting(path) == before
    assert path not in _state()


def test_a_shared_knob_left_by_a_dead_user_is_put_back(need: Need) -> None:
    need("mthp_64k")
    path = thp_size_enabled(64)
    if _others_hold(path):
        pytest.skip("another gupsim process holds hugepages-64kB/enabled right now")
    before = read_setting(path)
    want = "madvise" if before != "madvise" else "always"
    pid = os.fork()
    if pid == 0:                                # enters, then dies without restoring
        try:
            SharedSetting(path, want).__enter__()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert read_setting(path) == want and _state()[path]["users"] == [pid]
    with SharedSetting(path, want):             # finds no live user: restarts cleanly
        assert SharedSetting._load()[path]["original"] == before
    assert read_setting(path) == before


def test_a_shared_knob_held_at_another_value_is_refused(need: Need) -> None:
    need("mthp_64k")
    from gupsim.live import HostUnsupported
    path = thp_size_enabled(64)
    if _others_hold(path):
        pytest.skip("another gupsim process holds hugepages-64kB/enabled right now")
    before = read_setting(path)
    with SharedSetting(path, "madvise"):
        with pytest.raises(HostUnsupported, match="held at 'madvise'"):
            SharedSetting(path, "always").__enter__()
    assert read_setting(path) == before
