"""The same user-space steps on the model and on the host kernel, compared.

Each test records what a process can observe (which frame it maps, whether that frame is
the zero page or anon-exclusive, what it reads, whether it gets a signal) on both sides
and asserts the two records are equal, and equal to what Linux documents.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal

import pytest

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE
from gupsim.live import HostMapping, host_capabilities, kpageflags, libc, pagemap

pytestmark = pytest.mark.host
RW = PROT_READ | PROT_WRITE


@pytest.fixture(scope="module", autouse=True)
def need_root_pagemap():
    caps = host_capabilities()
    if not caps["root"]:
        pytest.skip(f"host cannot show frame numbers: {caps['root'].reason}")


def model_entry(p, addr):
    vma = p.mm.find_vma(addr)
    return int(vma.pfn[vma.idx(addr)])


def test_first_read_maps_the_zero_page_on_both():
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    model = (p.read(a, 8), model_entry(p, a) == k.mem.zero_pfn, p.proc_status()["RssAnon"])
    with HostMapping(PAGE_SIZE, "anon", populate=False) as m:
        rss_before = int(open("/proc/self/statm").read().split()[1])
        data = m.read(0, 8)
        e = pagemap(m.addr)
        host = (data, e.present and "zero_page" in kpageflags(e.pfn),
                (int(open("/proc/self/statm").read().split()[1]) - rss_before) * 4 > 4)
    assert model[:2] == host[:2] == (bytes(8), True)
    assert model[2] == 0 and host[2] is False


def fork_cow_steps_model():
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"parent")
    pfn0 = model_entry(p, a)
    excl0 = k.page(pfn0).anon_exclusive
    child = p.fork()
    same = model_entry(child, a) == pfn0
    excl1 = k.page(pfn0).anon_exclusive
    child.write(a, b"child!")
    child_moved = model_entry(child, a) != pfn0
    reads = (p.read(a, 6), child.read(a, 6))
    child.exit()
    p.write(a, b"again!")
    reused = model_entry(p, a) == pfn0 and k.page(pfn0).anon_exclusive
    return excl0, same, excl1, child_moved, reads, reused


def fork_cow_steps_host():
    with HostMapping(PAGE_SIZE, "anon", populate=False) as m:
        m.write(0, b"parent")
        e0 = pagemap(m.addr)
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # the child
            try:
                os.close(r)
                os.close(go_w)
                e = pagemap(m.addr)
                os.write(w, f"{e.pfn} {int(e.exclusive)}\n".encode())
                os.read(go_r, 1)
                m.write(0, b"child!")
                e = pagemap(m.addr)
                os.write(w, f"{e.pfn} {m.read(0, 6).decode()}\n".encode())
            finally:
                os._exit(0)
        os.close(w)
        os.close(go_r)
        lines = os.fdopen(r)
        child_pfn, child_excl = map(int, lines.readline().split())
        excl_parent_after_fork = pagemap(m.addr).exclusive
        os.write(go_w, b"x")
        pfn2, child_read = lines.readline().split()
        os.waitpid(pid, 0)
        lines.close()
        os.close(go_w)
        reads = (m.read(0, 6), child_read.encode())
        m.write(0, b"again!")
        e3 = pagemap(m.addr)
        return (e0.exclusive, child_pfn == e0.pfn, bool(child_excl or excl_parent_after_fork),
                int(pfn2) != e0.pfn, reads, e3.pfn == e0.pfn and e3.exclusive)


def test_fork_and_copy_on_write_agree():
    model = fork_cow_steps_model()
    host = fork_cow_steps_host()
    assert model == host
    assert model == (True, True, False, True, (b"parent", b"child!"), True)


def test_map_shared_writes_are_seen_by_the_other_process():
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    child = p.fork()
    child.write(a, b"from child")
    model = p.read(a, 10)
    with HostMapping(PAGE_SIZE, "anon", shared=True, populate=False) as m:
        pid = os.fork()
        if pid == 0:
            m.write(0, b"from child")
            os._exit(0)
        os.waitpid(pid, 0)
        host = m.read(0, 10)
    assert model == host == b"from child"


def test_access_after_munmap_is_sigsegv_on_both():
    k = gupsim.Kernel(memory="64MiB")
    p = k.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"x")
    p.munmap(a, PAGE_SIZE)
    with pytest.raises(gupsim.SegmentationFault):
        p.read(a, 1)
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()
            addr = libc.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            ctypes.memmove(addr, b"x", 1)
            libc.munmap(addr, PAGE_SIZE)
            ctypes.string_at(addr, 1)                  # must die here with SIGSEGV
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
