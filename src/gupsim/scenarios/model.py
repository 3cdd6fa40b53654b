"""The model back-end of the scenario protocol: the same steps, run on `gupsim.Kernel`.

Every pinning operation goes through the model's real code paths: io_uring buffer
registration pins with `pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)` and accounts
as io_uring does, O_DIRECT pins through `pin_user_pages_fast`, process_vm_readv through
`pin_user_pages_remote`, AF_XDP through `pin_user_pages` under mmap_lock (see
`gupsim.drivers`). Nothing here computes an expected number. The checks, the step
recording and the return values are the shared base's (`scenarios/base.py`); this
module holds only the primitives `do_<operation>`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from ..constants import (
    CAP_IPC_LOCK,
    CAP_SYS_RESOURCE,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
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
from ..memory.memmap import Kind as MemKind
from ..memory.units import thp_area
from ..mm.mm_struct import MmapLockBusy, racing
from ..mm.vma import PTE, VM
from .base import BaseProc, BaseSystem, Counted
from .holes import Holes, keeping_holes
from .identity import NONE, PageSeen, encode
from .ops import Op
from .race import Race, run_in_window
from .records import MTHP_KINDS, Outcome

SWAP_SIZE = 64 << 20    # the swap device of a case that needs swap (the host's file size)


def fallocate(f: Any, length: int) -> None:
    """fallocate(fd, 0, 0, length) as the host back-end does it: every page of the file
    in the page cache before it is mapped (the selftests do the same). A memfd_secret()
    file has no fallocate (its pages come at the first fault): nothing to do."""
    if f.is_secretmem:
        return
    step = 1 << f.folio_order
    for index in range(0, length // PAGE_SIZE, step):
        head = f.get_folio(index)
        if head < 0:
            raise OSError(-head, "fallocate failed on the model")


T = TypeVar("T")

# Where the fields of a 4-entry NO_MMAP ring lie in its rings page, as io_uring_setup
# reports them (sq_off, cq_off; the host's live/uring.py reads them from there)
SQ_HEAD, SQ_TAIL, CQ_HEAD, CQ_TAIL = 0, 4, 8, 12
SQ_MASK, CQ_MASK = 3, 7
CQES, SQ_ARRAY = 64, 192


def model_pages(k: Kernel, p: Process, addr: int, length: int) -> list[PageSeen]:
    """What each page-table entry of [addr, addr+length) shows, as pagemap and kpageflags
    would tell it: the frame, the zero page, a large folio, a hugetlb page, a swap entry;
    exclusive when the frame is mapped once (its own and its folio's entire mapcount)."""
    mem = k.mem
    out: list[PageSeen] = []
    for a in range(addr, addr + length, PAGE_SIZE):
        vma = p.mm.find_vma(a)
        if vma is None:
            out.append(NONE)
            continue
        i = vma.idx(a)
        bits = int(vma.pte[i])
        soft = bool(vma.flags & VM.SOFTDIRTY or bits & PTE.SOFT_DIRTY)
        if bits & PTE.SWAP:
            out.append(PageSeen("swapped", soft_dirty=soft))
            continue
        if not bits & PTE.PRESENT:
            out.append(PageSeen(soft_dirty=soft))
            continue
        pfn = int(vma.pfn[i])
        head = int(mem.head_of(pfn))
        kind = int(mem.kind[head])
        zero = kind in (MemKind.ZERO, MemKind.HUGE_ZERO)
        hugetlb = kind == MemKind.HUGETLBFS or vma.is_hugetlb
        large = int(mem.order[head]) > 0
        maps = int(mem.mapcount[pfn]) + (int(mem.entire_mapcount[head]) if large else 0)
        out.append(PageSeen("present", pfn, zero, large and not hugetlb and not zero,
                            hugetlb, maps == 1, soft))
    return out


class ModelProc(BaseProc):
    """A process of the model back-end: the primitives, run on a `gupsim.Kernel` process."""

    system: ModelSystem

    def __init__(self, system: ModelSystem, p: Process, pid: int, name: str) -> None:
        super().__init__(system, pid, name)
        self.p = p
        self.rings: dict[int, Any] = {}   # io_uring rings by protocol ring id
        # where this process reaches each NO_MMAP ring's memory: [SQE page, rings page]
        self.ring_memory: dict[int, list[int]] = {}
        self.ring_counts: dict[int, list[int]] = {}   # a NO_MMAP ring's indices (_submit)
        self.holes = Holes()          # what it unmapped, kept out of its later maps
        self.xdp: list[Any] = []      # AF_XDP sockets, as the host's server keeps them
        self.pipe: Any = None
        self.kvm: Any = None          # the VM (drivers/kvm.py), as the server keeps its guest

    def _perform(self, op: Op, args: dict[str, Any]) -> Outcome:
        try:
            return Outcome(0, getattr(self, "do_" + op.name)(**args))
        except MmapLockBusy:
            raise                   # a racing step that must wait (race.py)
        except OSError as e:
            return Outcome(e.errno or errno.EIO)

    def _status(self) -> dict[str, int]:
        st = self.p.proc_status()
        return {"VmPin": st["VmPin"], "VmLck": st["VmLck"]}

    def _identity(self, addr: int, length: int) -> str:
        return encode([model_pages(self.system.k, self.p, addr, length)])

    # -- memory ----------------------------------------------------------------------------
    @keeping_holes
    def do_map(self, kind: str, length: int, shared: bool, writable: bool,
               populate: bool | str, fill: int, new_rid: int) -> int:
        """mmap (a file made and fallocated first, for file kinds), then populate."""
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        share = MAP_SHARED if shared else MAP_PRIVATE
        system, p = self.system, self.p

        def aligned(align: int) -> int:
            span, _ = thp_area(0, length, align)        # the host's rule too
            raw = p.mmap(0, span, prot, MAP_PRIVATE | MAP_ANONYMOUS)
            _, start = thp_area(raw, length, align)
            if start > raw:
                p.munmap(raw, start - raw)
            if raw + span > start + length:
                p.munmap(start + length, raw + span - start - length)
            p.madvise(start, length, MADV_HUGEPAGE)
            return start

        if kind == "anon":
            addr = p.mmap(0, length, prot, share | MAP_ANONYMOUS)
        elif kind == "hugetlb":
            addr = p.mmap(0, length, prot, share | MAP_ANONYMOUS | MAP_HUGETLB)
        elif kind == "thp":
            addr = aligned(PMD_SIZE)
        elif kind in MTHP_KINDS:
            addr = aligned(MTHP_KINDS[kind])
        else:
            if kind == "secretmem":
                f = system.k.filesystems.memfd_secret()
            elif kind == "memfd":
                f = p.memfd_create("gupsim")
            elif kind == "memfd-hugetlb":
                f = p.memfd_create("gupsim-huge", MFD_HUGETLB)
            else:
                fs = system.k.fs("tmpfs" if kind == "tmpfs" else "ext4")
                f = fs.create(f"scenario-{new_rid}", 0)
            f.truncate(length)
            fallocate(f, length)
            system.files[new_rid] = f
            addr = p.mmap(0, length, prot, share, fd=f)
        if populate:        # as the host's server: write `fill` everywhere, or read
            with system.mthp_enabled(MTHP_KINDS.get(kind, 0)):
                self._populate(addr, length, writable and populate != "read", fill)
        return addr

    def _populate(self, addr: int, length: int, write: bool, fill: int) -> None:
        if write:
            self.p.write(addr, bytes([fill]) * length)
        else:
            for off in range(0, length, PAGE_SIZE):
                self.p.read(addr + off, 1)

    @keeping_holes
    def do_map_view(self, rid: int, addr: int, length: int, shared: bool, writable: bool,
                    new_rid: int) -> int:
        """mmap the file behind region `rid` again, and read-fault it."""
        f = self.system.files.get(rid)
        if f is None:
            raise OSError(errno.EBADF, f"region {rid} has no file behind it")
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        share = MAP_SHARED if shared else MAP_PRIVATE
        new = self.p.mmap(0, length, prot, share, fd=f)
        self.system.files[new_rid] = f
        self._populate(new, length, False, 0)
        return new

    @keeping_holes
    def do_mremap_move(self, rid: int, addr: int, length: int, new_rid: int) -> int:
        """mremap(MREMAP_MAYMOVE | MREMAP_FIXED) onto a fresh PROT_NONE reservation; the
        moved part maps the region's file (if any) as the region did."""
        if rid in self.system.files:
            self.system.files[new_rid] = self.system.files[rid]
        dst = self.p.mmap(0, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
        new = self.p.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
        for pages in self.ring_memory.values():   # the process reaches its ring there now
            pages[:] = [a - addr + new if addr <= a < addr + length else a for a in pages]
        self.holes.add(addr, length)
        return new

    def do_read(self, addr: int, n: int) -> bytes:
        """A CPU read through the model's page tables."""
        return self.p.read(addr, n)

    def do_write(self, addr: int, data: bytes) -> None:
        """A CPU write through the model's page tables."""
        self.p.write(addr, data)

    def do_mprotect(self, addr: int, length: int, writable: bool | None,
                    prot: int | None) -> None:
        """mprotect() to `prot`, or to PROT_READ [| PROT_WRITE] by `writable`."""
        if prot is None:
            prot = PROT_READ | (PROT_WRITE if writable else 0)
        self.p.mprotect(addr, length, prot)

    def do_madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise()."""
        self.p.madvise(addr, length, advice)

    def do_munmap(self, rid: int, addr: int, length: int) -> None:
        """munmap() of the whole region."""
        self.p.munmap(addr, length)
        self.holes.add(addr, length)

    def do_fork(self) -> ModelProc:
        """fork() of the model process; the child gets a protocol pid of its own."""
        child = self.system.adopt(self.p.fork(), f"{self.name}-child")
        child.holes = self.holes.copy()
        return child

    def _reserve_hole(self, addr: int, length: int) -> bool:
        """A PROT_NONE placeholder over a hole (holes.py); False if it is taken."""
        try:
            self.p.mmap(addr, length, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
        except OSError:
            return False
        return True

    def _release_hole(self, addr: int, length: int) -> None:
        self.p.munmap(addr, length)

    def _oom_kill(self) -> None:
        """Out of memory: the OOM killer's SIGKILL, then the exit path, as for exit()."""
        self.do_exit()

    def do_exit(self) -> None:
        """Drop the file table (ring, sockets, pipe) and exit."""
        self._release_files()
        self.p.exit()

    # -- pinning operations ------------------------------------------------------------------
    def _ring(self, ring: int) -> Any:
        """Ring `ring` of this process, set up at its first use."""
        from ..drivers.io_uring import IoRing
        if ring not in self.rings:
            self.rings[ring] = IoRing(self.system.k, self.p)
        return self.rings[ring]

    def do_uring_register(self, buffers: list[tuple[int, int]], ring: int) -> None:
        """IORING_REGISTER_BUFFERS through the model's io_uring driver."""
        self._ring(ring).register_buffers(buffers)

    def do_uring_unregister(self, ring: int) -> None:
        """IORING_UNREGISTER_BUFFERS."""
        self._ring(ring).unregister_buffers()

    def _submit(self, ring: int, request: Callable[[Any], T]) -> T:
        """One request on ring `ring`, as the host's user makes it (live/uring.py). A
        NO_MMAP ring lives in the process's memory: the user's stores (the SQE, put back
        as it was once submitted, its index in the SQ array, the SQ tail, the CQ head and
        tail) fault like any CPU store (unmapped, read-only), and if a page it reaches
        there now is not the frame the kernel pinned at setup (zapped by MADV_DONTNEED,
        replaced by munmap and mmap) the kernel never sees the SQE: io_uring_enter
        submits nothing, which the host reports as EIO. Else the kernel consumes it (SQ
        head), posts the CQE (user_data, res) and the CQ tail, and the user advances
        the CQ head: what a later read of the ring shows."""
        io = self._ring(ring)
        pages = self.ring_memory.get(ring)
        if pages is None:
            return request(io)
        p, k = self.p, self.system.k
        seen = True
        for addr, region in zip(pages, (io.regions[1], io.regions[0]), strict=True):
            p.write(addr, p.read(addr, 1))
            vma = p.mm.find_vma(addr)
            pfn = int(vma.pfn[vma.idx(addr)]) if vma is not None else -1
            seen = seen and region.pfns is not None and pfn == int(region.pfns[0])
        count = self.ring_counts.setdefault(ring, [0, 0, 0])   # user tail, CQ head, consumed
        tail, head, consumed = count
        rings = pages[1]

        def u32(value: int) -> bytes:
            return (value & 0xFFFFFFFF).to_bytes(4, "little")
        p.write(rings + SQ_ARRAY + (tail & SQ_MASK) * 4, u32(tail & SQ_MASK))
        p.write(rings + CQ_HEAD, u32(head) + u32(head))     # CQ head, and tail put back
        count[0] = tail = tail + 1
        p.write(rings + SQ_TAIL, u32(tail))
        if not seen:
            raise OSError(errno.EIO, "io_uring_enter submitted nothing: the ring the "
                          "kernel reads is not the memory this process wrote its SQE to")
        try:
            value: Any = request(io)
            res = len(value) if isinstance(value, bytes) else int(value)
        except OSError as exc:
            value, res = exc, -(exc.errno or errno.EIO)
        ring_page = k.page(int(io.regions[0].pfns[0]))
        count[2] = consumed + 1
        k.dma_write(ring_page, SQ_HEAD, u32(consumed + 1))
        cqe = (tail & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + (res & 0xFFFFFFFF).to_bytes(
            4, "little") + bytes(4)
        k.dma_write(ring_page, CQES + (head & CQ_MASK) * 16, cqe)
        k.dma_write(ring_page, CQ_TAIL, u32(head + 1))
        count[1] = head + 1
        p.write(rings + CQ_HEAD, u32(head + 1))
        if isinstance(value, OSError):
            raise value
        return cast(T, value)

    def do_uring_write_fixed(self, index: int, length: int, ring: int) -> bytes:
        """IORING_OP_WRITE_FIXED; the bytes written."""
        return self._submit(ring, lambda io: io.write_fixed(index, length))

    def do_uring_read_fixed(self, index: int, length: int, fill: int, ring: int) -> int:
        """IORING_OP_READ_FIXED of `length` bytes of `fill` into registered buffer `index`."""
        return self._submit(ring, lambda io: io.read_fixed(index, bytes([fill]) * length))

    def do_uring_setup_user(self, addr: int, ring: int) -> None:
        """io_uring_setup(IORING_SETUP_NO_MMAP): rings at addr, SQEs on the next page."""
        from ..drivers.io_uring import IoRing
        if ring in self.rings:
            raise OSError(errno.EBUSY, f"ring {ring} exists already: uring_close it first")
        self.rings[ring] = IoRing(self.system.k, self.p, user_memory=(addr + PAGE_SIZE, addr))
        self.ring_memory[ring] = [addr + PAGE_SIZE, addr]

    def do_uring_close(self, ring: int) -> None:
        """close() of the ring: everything it pinned is released."""
        if ring not in self.rings:
            raise OSError(errno.EBADF, f"this process has no ring {ring}")
        self.ring_memory.pop(ring, None)
        self.ring_counts.pop(ring, None)
        self.system.k.schedule_work(self.rings.pop(ring).close)   # io_ring_exit_work

    def do_uring_register_pbuf_ring(self, addr: int, entries: int, bgid: int,
                                    ring: int) -> None:
        """IORING_REGISTER_PBUF_RING in user memory, through the model's io_uring driver."""
        self._ring(ring).register_pbuf_ring(addr, entries, bgid)

    def do_uring_unregister_pbuf_ring(self, bgid: int, ring: int) -> None:
        """IORING_UNREGISTER_PBUF_RING."""
        self._ring(ring).unregister_pbuf_ring(bgid)

    def do_odirect_write(self, addr: int, length: int) -> int:
        """pwrite(O_DIRECT) to the ext4 scratch file, extent by extent."""
        from ..drivers.direct_io import dio_write
        system = self.system
        try:
            done = dio_write(system.k, self.p, system.scratch(), addr, length,
                             extent_ends=system.scratch_extent_ends(),
                             mapped=system.mapped_scratch)
        except OSError:
            system.wrote_scratch(system.dio_done)   # pieces written before it failed
            raise
        system.wrote_scratch(done)
        return done

    def do_odirect_read(self, addr: int, length: int, fill: int) -> int:
        """pread(O_DIRECT) from the scratch file filled with `fill` (its first `length`
        bytes written through, as the host does before the read)."""
        from ..drivers.direct_io import dio_read
        self.system.wrote_scratch(length)
        return dio_read(self.system.k, self.p, self.system.scratch(fill), addr, length)

    def do_process_vm_readv(self, target: ModelProc, addr: int, length: int) -> bytes:
        """process_vm_readv() of `target`'s memory."""
        from ..drivers.process_vm import process_vm_readv
        return process_vm_readv(self.system.k, self.p, target.p, addr, length)

    def do_process_vm_writev(self, target: ModelProc, addr: int, data: bytes) -> int:
        """process_vm_writev() into `target`'s memory; the bytes written."""
        from ..drivers.process_vm import process_vm_writev
        return process_vm_writev(self.system.k, self.p, target.p, addr, data)

    def do_proc_mem_read(self, target: ModelProc, addr: int, length: int) -> bytes:
        """pread() of /proc/PID/mem of `target` (access_remote_vm, no pins)."""
        from ..drivers.proc_mem import proc_mem_read
        return proc_mem_read(self.system.k, self.p, target.p, addr, length)

    def do_proc_mem_write(self, target: ModelProc, addr: int, data: bytes) -> int:
        """pwrite() of /proc/PID/mem of `target` (FOLL_FORCE|FOLL_WRITE, no pins)."""
        from ..drivers.proc_mem import proc_mem_write
        return proc_mem_write(self.system.k, self.p, target.p, addr, data)

    def do_uffd_continue(self, addr: int, length: int) -> int:
        """UFFDIO_CONTINUE through the model's mfill_continue(); the bytes mapped."""
        from ..mm.userfaultfd import mfill_continue
        ret = mfill_continue(self.system.k.env, self.p.mm, addr, length)
        if ret < 0:
            raise OSError(-ret, "UFFDIO_CONTINUE failed on the model")
        return ret

    def do_pages(self, addr: int, length: int, other: ModelProc | None,
                 soft_dirty: bool) -> str:
        """Page identity from the model's page tables and page arrays (identity.py)."""
        procs = [self] if other is None else [self, other]
        return encode([model_pages(self.system.k, proc.p, addr, length) for proc in procs],
                      soft_dirty)

    def do_clear_refs(self) -> None:
        """clear_refs "4" through the model (mm/soft_dirty.py)."""
        self.p.clear_refs(4)

    def do_ro_pin_then_write(self, addr: int, length: int, fill: int) -> bytes:
        """R/O pins of our own range, a write while they are held, a read through them."""
        from ..drivers.process_vm import read_pinned_while
        p = self.p
        return read_pinned_while(self.system.k, p, p, addr, length,
                                 lambda: p.write(addr, bytes([fill]) * length))

    def _pipe(self) -> Any:
        from ..drivers.pipe import Pipe
        if self.pipe is None:
            self.pipe = Pipe(self.system.k)
        return self.pipe

    def do_vmsplice(self, addr: int, length: int) -> int:
        """vmsplice() into this process's pipe."""
        return self._pipe().vmsplice(self.p, addr, length)

    def do_pipe_read(self, length: int) -> bytes:
        """read() from this process's pipe."""
        return self._pipe().read(length)

    def do_xdp_umem_reg(self, addr: int, length: int) -> None:
        """XDP_UMEM_REG on a new AF_XDP socket."""
        from ..drivers.xdp import XdpSocket
        sock = XdpSocket(self.system.k, self.p)
        sock.umem_reg(addr, length)
        self.xdp.append(sock)

    def do_xdp_close(self) -> None:
        """close() of the AF_XDP socket opened last."""
        if not self.xdp:
            raise OSError(errno.EBADF, "no AF_XDP socket is open")
        self.xdp.pop().close()

    def do_limit_memlock(self, limit: int, uid: int) -> None:
        """Set RLIMIT_MEMLOCK (soft and hard; raising the hard limit needs
        CAP_SYS_RESOURCE, which a scenario process never has here: EPERM, as do_prlimit),
        drop CAP_IPC_LOCK and CAP_SYS_RESOURCE, become `uid` (a user of our own)."""
        cred = self.p.cred
        if limit > cred.rlimit_memlock and not cred.capable(CAP_SYS_RESOURCE):
            raise OSError(errno.EPERM, f"raising RLIMIT_MEMLOCK from {cred.rlimit_memlock} "
                          f"to {limit} needs CAP_SYS_RESOURCE")
        self.p.cred.caps -= {CAP_IPC_LOCK, CAP_SYS_RESOURCE}
        self.p.cred.rlimit_memlock = limit
        self.p.cred.uid = uid

    # -- KVM ---------------------------------------------------------------------------------
    def do_kvm_create(self, addr: int, length: int) -> None:
        """KVM_CREATE_VM and slot 0 over the region, through the model's KVM driver."""
        from ..drivers.kvm import kvm_create_vm
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        vm = kvm_create_vm(self.system.k, self.p)
        ret = vm.set_user_memory_region(0, 0, length, addr)
        if ret:
            vm.close()
            raise OSError(-ret, "KVM_SET_USER_MEMORY_REGION failed on the model")
        self.kvm = vm

    def do_kvm_guest_read(self, offset: int, length: int) -> bytes:
        """The guest's loads through the model VM's secondary page table."""
        if self.kvm is None:
            raise OSError(errno.EBADF, "no VM: kvm_create first")
        return bytes(self.kvm.guest_read(offset, length))

    def do_map_fixed(self, addr: int, length: int, fill: int) -> None:
        """mmap(MAP_FIXED_NOREPLACE) of fresh anonymous memory, then write `fill`."""
        self.p.mmap(addr, length, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
        self.holes.filled(addr, length)
        self._populate(addr, length, True, fill)

    def _release_files(self) -> None:
        """What the kernel drops with the process's file table: ring, sockets, pipe, VM."""
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        for ring in sorted(self.rings):      # io_uring_release queues io_ring_exit_work
            self.system.k.schedule_work(self.rings.pop(ring).close)
        while self.xdp:
            self.xdp.pop().close()
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class ModelSystem(BaseSystem):
    """The model back-end: one simulated machine configured like this project's hosts."""

    name = "model"
    procs: list[ModelProc]  # type: ignore[assignment]

    def __init__(self, kernel: Kernel | None = None, needs: tuple[str, ...] = (),
                 version: str | None = None, observe_pages: bool = False) -> None:
        super().__init__()
        self.observe_pages = observe_pages
        # a case that needs swap gets a swap device, as the host gets a swap file
        swap = SWAP_SIZE if "swap" in needs else 0
        self.k = kernel or Kernel(memory="1GiB", nr_hugepages=8, swap=swap, version=version)
        self.trace.counted = self.k.era.has("nr-foll-pin-vmstat")
        self._scratch: Any = None
        self.scratch_written = 0     # bytes from 0 that are a written extent (wrote_scratch)
        self.scratch_splits: set[int] = set()    # unwritten extents' ends beyond it
        self.dio_done = 0            # bytes the current O_DIRECT write finished before a piece
        self.files: dict[int, Any] = {}      # region id -> the file behind it

    @contextmanager
    def _measure(self, settle: bool) -> Iterator[Counted]:
        """The model's counters are exact and nothing else pins: read them around. A step
        that settles runs the work it queued (as the host waits for the kernel's
        workers) after the call returned: those releases are `late`."""
        vm = self.k.vmstat
        a0, r0 = vm.count("nr_foll_pin_acquired"), vm.count("nr_foll_pin_released")
        counted = Counted()
        try:
            yield counted
        finally:
            returned = vm.count("nr_foll_pin_released")
            if settle or counted.settle:
                self.k.flush_scheduled_work()
            counted.acquired = vm.count("nr_foll_pin_acquired") - a0
            counted.released = vm.count("nr_foll_pin_released") - r0
            counted.late = vm.count("nr_foll_pin_released") - returned

    @contextmanager
    def _race_window(self, race: Race) -> Iterator[None]:
        """Hook the race point (k.gup.on_race) for the step: the first time the racing
        process's mm passes it, its steps run there, as another thread's (`racing()`:
        one that needs the mmap_lock the step holds for write waits, see race.py)."""
        gup = self.k.gup
        assert isinstance(race.proc, ModelProc)
        mm = race.proc.p.mm

        def hook(**context: Any) -> None:
            if context.get("mm", mm) is not mm:     # another process passed it: re-arm
                gup.on_race(race.point, hook)
                return
            with racing():
                run_in_window(self, race, MmapLockBusy)

        gup.on_race(race.point, hook)
        try:
            yield
        finally:
            hooks = gup.race_hooks.get(race.point, [])
            if hook in hooks:
                hooks.remove(hook)

    @contextmanager
    def mthp_enabled(self, size: int) -> Iterator[None]:
        """hugepages-<size>kB/enabled at "madvise" for a block (the host does the same);
        size 0: nothing to set."""
        if not size:
            yield
            return
        thp = self.k.thp
        order = (size // PAGE_SIZE).bit_length() - 1
        old = thp.per_order[order]
        thp.set("madvise", size >> 10)
        try:
            yield
        finally:
            thp.set(old, size >> 10)

    def adopt(self, p: Process, name: str) -> ModelProc:
        """Give a model process a protocol pid."""
        proc = ModelProc(self, p, len(self.procs), name)
        self.procs.append(proc)
        return proc

    # The host's scratch file is preallocated (unwritten extents). Every write starts at
    # offset 0, so what has been written is a prefix [0, scratch_written), one extent
    # (ext4 merges written neighbours); beyond it, each O_DIRECT piece ext4 mapped split
    # the unwritten extent at the piece's end (scratch_splits), even when iomap then
    # refused the piece. iomap walks a request extent by extent: these are its pieces.

    def scratch_extent_ends(self) -> list[int]:
        """File offsets where one extent of the scratch file ends and the next begins."""
        self.dio_done = 0
        return sorted({self.scratch_written} | self.scratch_splits)

    def mapped_scratch(self, pos: int, length: int) -> None:
        """ext4 mapped [pos, pos+length) for an O_DIRECT write: an unwritten extent is
        split at its block-rounded end; pieces before this one were written whole."""
        self.dio_done = pos
        if pos >= self.scratch_written:
            self.scratch_splits.add(-(-(pos + length) // PAGE_SIZE) * PAGE_SIZE)

    def wrote_scratch(self, length: int) -> None:
        """Bytes [0, length) of the scratch file were written: its written extent grows."""
        end = -(-max(length, 0) // PAGE_SIZE) * PAGE_SIZE
        self.scratch_written = max(self.scratch_written, end)
        self.scratch_splits = {e for e in self.scratch_splits if e > self.scratch_written}

    def scratch(self, fill: int = 0) -> Any:
        """The ext4 file O_DIRECT reads from and writes to (filled with `fill` bytes)."""
        if self._scratch is None:
            self._scratch = self.k.fs("ext4").create("scenario-scratch", 4 << 20)
        if fill:
            self._scratch.pwrite(0, bytes([fill]) * (4 << 20))
        return self._scratch

    def _spawn(self, name: str) -> ModelProc:
        return self.adopt(self.k.spawn(name), name)

    def _findings(self) -> None:
        """The sanitizer's reports and the warnings the scenario's steps caused."""
        self.trace.reports = [str(r) for r in self.k.sanitizer.reports]
        self.trace.warnings = [str(w) for w in self.k.warnings]

    def _close(self) -> None:
        for proc in self.procs:
            if proc.p.alive:
                proc._release_files()
                proc.p.exit()
        self.k.flush_scheduled_work()
