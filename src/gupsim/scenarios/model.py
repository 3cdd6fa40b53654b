"""The model back-end of the scenario protocol: the same steps, run on `gupsim.Kernel`.

Every pinning operation goes through the model's real code paths: io_uring buffer
registration pins with `pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)` and accounts
as io_uring does, O_DIRECT pins through `pin_user_pages_fast`, process_vm_readv through
`pin_user_pages_remote`, AF_XDP through `pin_user_pages` under mmap_lock (see
`gupsim.drivers`). Nothing here computes an expected number.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..constants import (
    CAP_IPC_LOCK,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    MFD_HUGETLB,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PAGE_SIZE,
    PMD_SIZE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from ..kernel import Kernel, Process
from .protocol import FILE_KINDS, MAP_KINDS, MTHP_SIZE, Outcome, Region, Step, Trace
from .steps import op_name


def _outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(0, fn())
    except OSError as e:
        return Outcome(e.errno or errno.EIO)


def fallocate(f: Any, length: int) -> None:
    """fallocate(fd, 0, 0, length) as the host back-end does it: every page of the file
    in the page cache before it is mapped (the selftests do the same)."""
    step = 1 << f.folio_order
    for index in range(0, length // PAGE_SIZE, step):
        head = f.get_folio(index)
        if head < 0:
            raise OSError(-head, "fallocate failed on the model")


class ModelProc:
    """A process of the model back-end."""

    def __init__(self, system: ModelSystem, p: Process, pid: int) -> None:
        self.system = system
        self.p = p
        self.pid = pid
        self.ring = None
        self.xdp = None
        self.pipe = None

    # -- recording -------------------------------------------------------------------------

    def _record(self, op: str, fn: Callable[[], Any], data_of=None) -> Outcome:
        k = self.system.k
        a0, r0 = k.vmstat["nr_foll_pin_acquired"], k.vmstat["nr_foll_pin_released"]
        out = _outcome(fn)
        st = self.p.proc_status() if self.p.alive else {"VmPin": 0, "VmLck": 0}
        data = data_of(out) if data_of and out.ok else None
        self.system.trace.steps.append(Step(
            op, str(out), k.vmstat["nr_foll_pin_acquired"] - a0,
            k.vmstat["nr_foll_pin_released"] - r0, st["VmPin"], st["VmLck"], data))
        return out

    def _addr(self, region: Region, offset: int, n: int) -> int:
        if (self.pid, region.rid) not in self.system.addrs:
            raise ValueError(f"region {region.rid} is not mapped in process {self.pid}: pass "
                             "a region this process mapped or inherited at fork")
        if offset < 0 or n < 0 or offset + n > region.length:
            raise ValueError(f"range [{offset}, {offset + n}) lies outside the region of "
                             f"{region.length} bytes")
        return self.system.addrs[(self.pid, region.rid)] + offset

    # -- memory ----------------------------------------------------------------------------

    def map(self, kind: str, length: int, *, shared: bool = False, writable: bool = True,
            populate: bool | str = True, fill: int = 0) -> Region:
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown mapping kind {kind!r}: use one of {MAP_KINDS}")
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        share = MAP_SHARED if shared else MAP_PRIVATE
        system = self.system
        rid = system.next_rid()
        k, p = system.k, self.p

        def aligned(align: int) -> int:
            raw = p.mmap(0, length + align, prot, MAP_PRIVATE | MAP_ANONYMOUS)
            start = (raw + align - 1) & ~(align - 1)
            if start > raw:
                p.munmap(raw, start - raw)
            if raw + length + align > start + length:
                p.munmap(start + length, raw + length + align - start - length)
            p.madvise(start, length, MADV_HUGEPAGE)
            return start

        def do() -> int:
            if kind == "anon":
                return p.mmap(0, length, prot, share | MAP_ANONYMOUS)
            if kind == "hugetlb":
                return p.mmap(0, length, prot, share | MAP_ANONYMOUS | MAP_HUGETLB)
            if kind == "thp":
                return aligned(PMD_SIZE)
            if kind == "mthp":
                return aligned(MTHP_SIZE)
            if kind == "memfd":
                f = p.memfd_create("gupsim")
            elif kind == "memfd-hugetlb":
                f = p.memfd_create("gupsim-huge", MFD_HUGETLB)
            else:
                fs = k.fs("tmpfs" if kind == "tmpfs" else "ext4")
                f = fs.create(f"scenario-{rid}", 0)
            f.truncate(length)
            fallocate(f, length)
            system.files[rid] = f
            return p.mmap(0, length, prot, share, fd=f)

        out = self._record(op_name("map", kind=kind, length=length, shared=shared,
                                   writable=writable), do)
        if not out.ok:
            raise OSError(out.errno, f"map {kind} of {length} bytes failed on the model")
        addr = out.value
        system.addrs[(self.pid, rid)] = addr
        region = Region(self.pid, rid, kind, length, shared, addr)
        if populate:        # as the host's server: write `fill` everywhere, or read
            with system.mthp_enabled(kind == "mthp"):
                self._populate(addr, length, writable and populate != "read", fill)
        return region

    def _populate(self, addr: int, length: int, write: bool, fill: int) -> None:
        if write:
            self.p.write(addr, bytes([fill]) * length)
        else:
            for off in range(0, length, PAGE_SIZE):
                self.p.read(addr + off, 1)

    def map_view(self, region: Region, *, shared: bool, writable: bool) -> Region:
        if region.kind not in FILE_KINDS:
            raise ValueError(f"map_view needs a file-backed region ({FILE_KINDS}), "
                             f"not {region.kind!r}")
        self._addr(region, 0, 0)
        system = self.system
        f = system.files[region.rid]
        rid = system.next_rid()
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        share = MAP_SHARED if shared else MAP_PRIVATE
        out = self._record(op_name("map_view", kind=region.kind, length=region.length,
                                   shared=shared, writable=writable),
                           lambda: self.p.mmap(0, region.length, prot, share, fd=f))
        if not out.ok:
            raise OSError(out.errno, f"map_view of a {region.kind} region failed on the model")
        system.addrs[(self.pid, rid)] = out.value
        system.files[rid] = f
        self._populate(out.value, region.length, False, 0)
        return Region(self.pid, rid, region.kind, region.length, shared, out.value)

    def mremap_move(self, region: Region, offset: int, length: int) -> Region:
        addr = self._addr(region, offset, length)
        p, system = self.p, self.system

        def do() -> int:
            dst = p.mmap(0, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
            return p.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, dst)

        out = self._record(op_name("mremap_move", size=length), do)
        if not out.ok:
            raise OSError(out.errno, "mremap_move failed on the model")
        rid = system.next_rid()
        system.addrs[(self.pid, rid)] = out.value
        return Region(self.pid, rid, region.kind, length, region.shared, out.value)

    def read(self, region: Region, offset: int, n: int) -> bytes:
        addr = self._addr(region, offset, n)
        out = self._record("read", lambda: self.p.read(addr, n), lambda o: o.value)
        return out.value if out.ok else b""

    def write(self, region: Region, offset: int, data: bytes) -> None:
        addr = self._addr(region, offset, len(data))
        self._record("write", lambda: self.p.write(addr, data))

    def mprotect(self, region: Region, offset: int, length: int, writable: bool) -> Outcome:
        addr = self._addr(region, offset, length)
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        return self._record(op_name("mprotect", writable=writable),
                            lambda: self.p.mprotect(addr, length, prot))

    def madvise(self, region: Region, offset: int, length: int, advice: int) -> Outcome:
        addr = self._addr(region, offset, length)
        return self._record(op_name("madvise", advice=advice),
                            lambda: self.p.madvise(addr, length, advice))

    def munmap(self, region: Region) -> Outcome:
        addr = self._addr(region, 0, region.length)
        return self._record("munmap", lambda: self.p.munmap(addr, region.length))

    def fork(self) -> ModelProc:
        holder: list[ModelProc] = []

        def do() -> None:
            child = self.system.adopt(self.p.fork())
            self.system.inherit(self.pid, child.pid)
            holder.append(child)

        self._record("fork", do)
        return holder[0]

    def exit(self) -> None:
        def do() -> None:
            self._release_files()
            self.p.exit()
        self._record("exit", do)

    def status(self) -> dict[str, int]:
        st = self.p.proc_status()
        return {"VmPin": st["VmPin"], "VmLck": st["VmLck"]}

    # -- pinning operations ------------------------------------------------------------------

    def _ring(self):
        from ..drivers.io_uring import IoRing
        if self.ring is None:
            self.ring = IoRing(self.system.k, self.p)
        return self.ring

    def uring_register(self, buffers: list[tuple[Region, int, int]]) -> Outcome:
        iovs = [(self._addr(r, off, n), n) for r, off, n in buffers]
        ring = self._ring()
        return self._record("uring_register", lambda: ring.register_buffers(iovs))

    def uring_unregister(self) -> Outcome:
        ring = self._ring()
        return self._record("uring_unregister", ring.unregister_buffers)

    def uring_write_fixed(self, index: int, length: int) -> Outcome:
        ring = self._ring()
        return self._record("uring_write_fixed", lambda: ring.write_fixed(index, length),
                            lambda o: o.value)

    def odirect_write(self, region: Region, offset: int, length: int) -> Outcome:
        from ..drivers.direct_io import dio_write
        addr = self._addr(region, offset, length)
        return self._record("odirect_write",
                            lambda: dio_write(self.system.k, self.p, self.system.scratch(),
                                              addr, length))

    def odirect_read(self, region: Region, offset: int, length: int, fill: int) -> Outcome:
        from ..drivers.direct_io import dio_read
        addr = self._addr(region, offset, length)
        return self._record("odirect_read",
                            lambda: dio_read(self.system.k, self.p,
                                             self.system.scratch(fill), addr, length))

    def process_vm_readv(self, target: ModelProc, region: Region, offset: int,
                         length: int) -> Outcome:
        from ..drivers.process_vm import process_vm_readv
        addr = target._addr(region, offset, length)
        return self._record("process_vm_readv",
                            lambda: process_vm_readv(self.system.k, self.p, target.p, addr,
                                                     length), lambda o: o.value)

    def ro_pin_then_write(self, region: Region, offset: int, length: int,
                          fill: int) -> Outcome:
        from ..drivers.process_vm import read_pinned_while
        addr = self._addr(region, offset, length)
        p = self.p
        return self._record("ro_pin_then_write",
                            lambda: read_pinned_while(self.system.k, p, p, addr, length,
                                                      lambda: p.write(addr, bytes([fill])
                                                                      * length)),
                            lambda o: o.value)

    def vmsplice(self, region: Region, offset: int, length: int) -> Outcome:
        from ..drivers.pipe import Pipe
        addr = self._addr(region, offset, length)
        if self.pipe is None:
            self.pipe = Pipe(self.system.k)
        pipe = self.pipe
        return self._record("vmsplice", lambda: pipe.vmsplice(self.p, addr, length))

    def pipe_read(self, length: int) -> Outcome:
        from ..drivers.pipe import Pipe
        if self.pipe is None:
            self.pipe = Pipe(self.system.k)
        pipe = self.pipe
        return self._record("pipe_read", lambda: pipe.read(length), lambda o: o.value)

    def _release_files(self) -> None:
        """What the kernel drops with the process's file table: ring, sockets, pipe."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.xdp is not None:
            self.xdp.close()
            self.xdp = None
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def xdp_umem_reg(self, region: Region) -> Outcome:
        from ..drivers.xdp import XdpSocket
        addr = self._addr(region, 0, region.length)

        def do() -> None:
            sock = XdpSocket(self.system.k, self.p)
            sock.umem_reg(addr, region.length)
            self.xdp = sock
        return self._record("xdp_umem_reg", do)

    def xdp_close(self) -> Outcome:
        def do() -> None:
            if self.xdp is None:
                raise OSError(errno.EBADF, "no AF_XDP socket is open")
            self.xdp.close()
            self.xdp = None
        return self._record("xdp_close", do)

    def limit_memlock(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 bytes, got {limit}")

        def do() -> None:
            self.p.cred.caps.discard(CAP_IPC_LOCK)
            self.p.cred.rlimit_memlock = limit
            self.p.cred.uid = 60000 + self.pid      # a user of its own, as the host does

        self._record(op_name("limit_memlock", size=limit), do)


class ModelSystem:
    """The model back-end: one simulated machine configured like this project's hosts."""

    name = "model"

    def __init__(self, kernel: Kernel | None = None) -> None:
        self.k = kernel or Kernel(memory="1GiB", nr_hugepages=8)
        self.trace = Trace("model")
        self.procs: list[ModelProc] = []
        self.addrs: dict[tuple[int, int], int] = {}
        self._rid = 0
        self._parents: dict[int, int] = {}
        self._scratch = None
        self.files: dict[int, Any] = {}      # region id -> the file behind it

    @contextmanager
    def mthp_enabled(self, on: bool) -> Iterator[None]:
        """hugepages-64kB/enabled at "madvise" for a block (the host does the same)."""
        if not on:
            yield
            return
        thp = self.k.thp
        order = (MTHP_SIZE // PAGE_SIZE).bit_length() - 1
        old = thp.per_order[order]
        thp.set("madvise", MTHP_SIZE >> 10)
        try:
            yield
        finally:
            thp.set(old, MTHP_SIZE >> 10)

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def adopt(self, p: Process) -> ModelProc:
        proc = ModelProc(self, p, len(self.procs))
        self.procs.append(proc)
        return proc

    def inherit(self, parent: int, child: int) -> None:
        """A forked child sees its parent's regions at the same addresses."""
        self._parents[child] = parent
        for (pid, rid), addr in list(self.addrs.items()):
            if pid == parent:
                self.addrs[(child, rid)] = addr

    def scratch(self, fill: int = 0):
        """The ext4 file O_DIRECT reads from and writes to (filled with `fill` bytes)."""
        if self._scratch is None:
            self._scratch = self.k.fs("ext4").create("scenario-scratch", 4 << 20)
        if fill:
            self._scratch.pwrite(0, bytes([fill]) * (4 << 20))
        return self._scratch

    def spawn(self, name: str = "task") -> ModelProc:
        proc = self.adopt(self.k.spawn(name))
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.p.alive:
                proc._release_files()
                proc.p.exit()
