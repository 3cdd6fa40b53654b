"""The `Kernel` facade: one simulated machine, and `Process`, the handle users hold.

A `Process` offers the system calls (`mmap`, `fork`, ...) that raise `OSError` like
Python's `os` module, CPU access (`read`/`write`) that raises `SegmentationFault` or
`BusError`, and, from the pinning layer, the kernel-internal GUP calls made with that
process as `current`.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from . import heap
from .check.args import check_bytes, check_count, check_int, check_ints, check_page, check_str
from .check.invariants import InvariantViolation, check_invariants
from .constants import CAP_IPC_LOCK, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER
from .eras import Era
from .fs import File, FileSystem, filesystems
from .gup.facade import KernelPinning, ProcessPinning
from .memory import Allocator, Kind, MemMap, Page
from .memory.memmap import VmStat
from .memory.units import parse_size
from .mm import (
    MM,
    Cred,
    MappableFile,
    MMEnv,
    MMRmap,
    SwapDevice,
    ThpSettings,
    access_read,
    access_write,
    dup_mm,
    exit_mmap,
)
from .mm import syscalls as sc
from .mm.mm_struct import RLIMIT_DEFAULT_MEMLOCK, UserStruct
from .mm.vma import MAX_PFNS
from .observe import kernel_built
from .warn import WarnLog

if TYPE_CHECKING:
    from .check.explain import Explanation, Unmovable

T = TypeVar("T")


class Kernel(KernelPinning):
    """One simulated machine: memory, file systems, processes, vmstat and warnings.

    `memory`, `movable` (ZONE_MOVABLE) and `cma` accept bytes or strings like "4GiB";
    `movable` and `cma` are carved out of `memory`. `nr_hugepages` fills the 2 MiB
    hugetlb pool at boot, `nr_hugepages_1g` the 1 GiB one; `swap` sizes a swap device
    (none by default, as on this project's hosts). `debug=True` checks the invariants
    after every system call and raises `InvariantViolation` at the first broken one.
    `version` picks the kernel release modelled (one of `gupsim.KERNEL_VERSIONS`, default
    the newest): entry points and vmstat counters it did not have are absent, and the
    switches of `gupsim.eras` that the model wires behave as then.
    """

    def __init__(self, memory: int | str = "4GiB", movable: int | str = 0, cma: int | str = 0,
                 nr_hugepages: int = 0, nr_hugepages_1g: int = 0, swap: int | str = 0,
                 thp: str = "madvise", debug: bool = False, version: str | None = None
                 ) -> None:
        heap.tune()                     # once per process: see heap.py
        era = Era(version)
        total = parse_size(memory, "memory") >> PAGE_SHIFT
        if total < 1024:
            raise ValueError(f"memory={memory!r} is too small: give the machine at least 4MiB")
        if total > MAX_PFNS:
            raise ValueError(f"memory={memory!r} is too large: the model numbers at most "
                             f"{MAX_PFNS >> (30 - PAGE_SHIFT) >> 10}TiB of frames")
        self.warnings = WarnLog()
        self.mem = MemMap(total, parse_size(movable, "movable") >> PAGE_SHIFT,
                          parse_size(cma, "cma") >> PAGE_SHIFT, self.warnings)
        self.mem.era = era
        self.alloc = Allocator(self.mem)
        self.debug = debug
        swap_pages = parse_size(swap, "swap") >> PAGE_SHIFT
        self.env = MMEnv(self.mem, self.alloc, ThpSettings(enabled="madvise"),
                         SwapDevice(swap_pages) if swap_pages else None)
        self.env.thp.set(thp)
        self.mem.rmap = MMRmap(self.env)
        self._init_pinning()            # gup/: registers the machine, creates k.sanitizer
        self._boot_zero_pages()
        if nr_hugepages:
            self.set_nr_hugepages(nr_hugepages, "2MiB")
        if nr_hugepages_1g:
            self.set_nr_hugepages(nr_hugepages_1g, "1GiB")
        self.filesystems = filesystems(self.mem, self.alloc)
        self.env.shmem_file = self.filesystems.shmem_zero_setup
        self.env.hugetlb_file = self._anon_hugetlb_file
        self.env.replace_cache = self.filesystems.migrate_folio   # any cached folio can move
        self.processes: dict[int, Process] = {}
        self.users: dict[int, UserStruct] = {}
        self._pids = itertools.count(1)
        self.work: list[Callable[[], object]] = []   # system_wq: schedule_work() items
        kernel_built(self)              # an observer drawing pictures (observe.py)

    # -- deferred work (kernel/workqueue.c, without concurrency) -------------------------

    def schedule_work(self, fn: Callable[[], object]) -> None:
        """Queue work for a kernel worker (as AF_XDP queues its umem release at close):
        it runs at `flush_scheduled_work()`, not now, so its effects are seen later."""
        self.work.append(fn)

    def flush_scheduled_work(self) -> int:
        """Run every queued work item (and what they queue), in order; how many ran."""
        ran = 0
        while self.work:
            self.work.pop(0)()
            ran += 1
        return ran

    def _boot_zero_pages(self) -> None:
        mem = self.mem
        mem.zero_pfn = self.alloc.alloc_folio(0, Kind.ZERO, movable=False)
        mem.huge_zero_pfn = self.alloc.alloc_folio(PMD_ORDER, Kind.HUGE_ZERO, movable=False)

    # -- knobs ---------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The kernel release this machine models ("6.13"; see `gupsim.KERNEL_VERSIONS`)."""
        return self.mem.era.version

    @property
    def era(self) -> Era:
        """The machine's era: `k.era.has("zero-page-not-pin-counted")`."""
        return self.mem.era

    @property
    def thp(self) -> ThpSettings:
        """/sys/kernel/mm/transparent_hugepage: `k.thp.set("always")`, per size too."""
        return self.env.thp

    @property
    def vmstat(self) -> VmStat:
        """/proc/vmstat counters (nr_foll_pin_acquired, nr_foll_pin_released, ...);
        `vmstat.count(name)` reads 0 for a counter this era does not have."""
        return self.mem.vmstat

    def set_nr_hugepages(self, count: int, size: str | int = "2MiB") -> int:
        """Grow the hugetlb pool of one size to `count` pages (like vm.nr_hugepages)."""
        check_count("set_nr_hugepages", "count", count)
        order = {PAGE_SIZE << PMD_ORDER: PMD_ORDER, PAGE_SIZE << PUD_ORDER: PUD_ORDER}.get(
            parse_size(size, "size"))
        if order is None:
            raise ValueError(f"no hugetlb page size {size!r}: use '2MiB' or '1GiB'")
        have = self.alloc.hugetlb_total[order]
        if count > have:
            self.alloc.reserve_hugetlb(order, count - have)
        return self.alloc.hugetlb_total[order]

    # -- file systems ----------------------------------------------------------------------

    def fs(self, name: str) -> FileSystem:
        """The machine's file system of that type: "ext4", "tmpfs", "hugetlbfs", "dax", ..."""
        try:
            return self.filesystems[name]
        except KeyError:
            raise ValueError(f"no file system {name!r}: choose one of "
                             f"{sorted(self.filesystems)}") from None

    def _anon_hugetlb_file(self, size: int, order: int) -> File:
        """The hidden hugetlbfs file behind a MAP_HUGETLB|MAP_ANONYMOUS mapping."""
        fs = self.filesystems.hugetlbfs_for(order)
        return fs.anon_file(f"anon_hugepage.{self.mem.new_mapping_id()}", size)

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str = "task", uid: int = 0, caps: set[int] | None = None,
              rlimit_memlock: int = RLIMIT_DEFAULT_MEMLOCK) -> Process:
        """A new process with an empty address space (root with CAP_IPC_LOCK by default)."""
        check_str("spawn", "name", name)
        check_count("spawn", "uid", uid, limit=(1 << 32) - 2)
        check_int("spawn", "rlimit_memlock", rlimit_memlock)
        if caps is not None and not (isinstance(caps, set | frozenset)
                                     and all(isinstance(c, int) for c in caps)):
            raise TypeError(f"spawn(): caps must be a set of capability numbers such as "
                            f"{{gupsim.CAP_IPC_LOCK}}, or None, not {caps!r}")
        cred = Cred(uid, {CAP_IPC_LOCK} if caps is None and uid == 0 else set(caps or ()),
                    rlimit_memlock)
        mm = MM(self.mem, self.alloc)
        self.env.mms.append(mm)
        return self._new_process(name, mm, cred)

    def _new_process(self, name: str, mm: MM, cred: Cred) -> Process:
        p = Process(self, next(self._pids), name, mm, cred)
        self.processes[p.pid] = p
        return p

    def user(self, uid: int) -> UserStruct:
        """The user_struct of `uid` (created on first use): io_uring and XDP charge it."""
        check_count("user", "uid", uid, limit=(1 << 32) - 2)
        return self.users.setdefault(uid, UserStruct(uid))

    # -- checking and inspection -----------------------------------------------------------

    def check(self) -> list[str]:
        """Every invariant violation right now (empty when the machine is consistent)."""
        return check_invariants(self)

    def after_step(self, what: str) -> None:
        """With `debug=True`, raise InvariantViolation if `what` left the machine inconsistent."""
        if self.debug:
            bad = self.check()
            if bad:
                raise InvariantViolation(f"after {what}: " + "; ".join(bad))

    def dump_page(self, page: Page, reason: str = "") -> str:
        """The kernel's dump_page() output for this page, as text."""
        check_page("dump_page", "page", page, self.mem)
        from .check.dump import dump_page
        return dump_page(self.mem, page.pfn, reason or None,
                         describe_mapping=self.filesystems.describe_mapping)

    def explain(self, page_or_pfn: Page | int) -> Explanation:
        """Everything that holds the frame and what it means for migration, CMA, fork..."""
        from .check.explain import explain
        return explain(self, page_or_pfn)

    def why_unmovable(self, start_pfn: int, end_pfn: int) -> dict[str, list[Unmovable]]:
        """Folios of [start_pfn, end_pfn) that cannot migrate, grouped by holder call site."""
        from .check.explain import why_unmovable
        return why_unmovable(self, start_pfn, end_pfn)

    def page(self, pfn: int) -> Page:
        """pfn_to_page(): a view of frame `pfn` (any frame, allocated or not)."""
        pfn = check_count("page", "pfn", pfn)
        if pfn >= self.mem.nr_pages:
            raise ValueError(f"page(): pfn {pfn:#x} is past the machine's "
                             f"{self.mem.nr_pages} page frames")
        return Page(self.mem, pfn)

    def meminfo(self) -> dict[str, int]:
        """A few /proc/meminfo lines, in kB."""
        a = self.alloc
        return {"MemTotal": self.mem.nr_pages * 4, "MemFree": a.nr_free_pages() * 4,
                "HugePages_Total": a.hugetlb_total[PMD_ORDER],
                "HugePages_Free": a.hugetlb_free_count(PMD_ORDER)}


class Process(ProcessPinning):
    """A task with an mm: the system calls, CPU access, and (with gup/) pinning calls."""

    def __init__(self, kernel: Kernel, pid: int, comm: str, mm: MM, cred: Cred) -> None:
        self.kernel = kernel
        self.pid = pid
        self.comm = comm
        self.mm = mm
        self.cred = cred
        self.alive = True

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.comm}{'' if self.alive else ' (exited)'}>"

    def _live(self) -> None:
        if not self.alive:
            raise ProcessLookupError(f"process {self.pid} ({self.comm}) has exited")

    def _step(self, what: str, fn: Callable[..., T], *args: object) -> T:
        self._live()
        result = fn(*args)
        self.kernel.after_step(what)
        return result

    @property
    def _env(self) -> MMEnv:
        return self.kernel.env

    # -- memory system calls ---------------------------------------------------------------

    def mmap(self, addr: int, length: int, prot: int, flags: int,
             fd: MappableFile | None = None, offset: int = 0) -> int:
        """mmap(2): returns the address, raises OSError(errno) as Linux would."""
        check_ints("mmap", addr=addr, length=length, prot=prot, flags=flags, offset=offset)
        if fd is not None and isinstance(fd, str | bytes | int | float):
            raise TypeError(f"mmap(): fd must be a file (p.memfd_create(), k.fs(...).open()) "
                            f"or None, not {type(fd).__name__}")
        return self._step("mmap", sc.do_mmap, self._env, self.mm, self.cred, addr, length,
                          prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2); pinned pages stay allocated until unpinned."""
        check_ints("munmap", addr=addr, length=length)
        self._step("munmap", sc.do_munmap, self._env, self.mm, addr, length)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """mprotect(2): ENOMEM for a hole, EACCES for PROT_WRITE on a read-only shared file."""
        check_ints("mprotect", addr=addr, length=length, prot=prot)
        self._step("mprotect", sc.do_mprotect, self._env, self.mm, addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(2): advises the mapped parts, then raises OSError(ENOMEM) if there was a hole."""
        check_ints("madvise", addr=addr, length=length, advice=advice)
        self._step("madvise", sc.do_madvise, self._env, self.mm, addr, length, advice)

    def clear_refs(self, value: int = 4) -> None:
        """write(/proc/PID/clear_refs, value): 4 resets soft-dirty tracking (mm/soft_dirty.py),
        the only value modelled (EINVAL for others)."""
        from .mm.soft_dirty import CLEAR_REFS_SOFT_DIRTY, clear_refs_soft_dirty
        if value != CLEAR_REFS_SOFT_DIRTY:
            raise OSError(errno.EINVAL, f"clear_refs: only {CLEAR_REFS_SOFT_DIRTY} "
                          f"(soft-dirty) is modelled, got {value!r}")
        self._step("clear_refs", clear_refs_soft_dirty, self._env, self.mm)

    def mremap(self, old_addr: int, old_size: int, new_size: int, flags: int = 0,
               new_addr: int = 0) -> int:
        """mremap(2): returns the (possibly new) address of the mapping."""
        check_ints("mremap", old_addr=old_addr, old_size=old_size, new_size=new_size,
                   flags=flags, new_addr=new_addr)
        return self._step("mremap", sc.do_mremap, self._env, self.mm, old_addr, old_size,
                          new_size, flags, new_addr)

    def mlock(self, addr: int, length: int, flags: int = 0) -> None:
        """mlock2(2): VmLck grows; raises EPERM/ENOMEM past RLIMIT_MEMLOCK without CAP_IPC_LOCK."""
        check_ints("mlock", addr=addr, length=length, flags=flags)
        self._step("mlock", sc.do_mlock, self._env, self.mm, self.cred, addr, length, flags)

    def munlock(self, addr: int, length: int) -> None:
        """munlock(2): VmLck shrinks; pins are not locks and stay."""
        check_ints("munlock", addr=addr, length=length)
        self._step("munlock", sc.do_munlock, self._env, self.mm, addr, length)

    def memfd_create(self, name: str, flags: int = 0) -> File:
        """memfd_create(2): an anonymous tmpfs (or, with MFD_HUGETLB, hugetlbfs) file."""
        self._live()
        return self.kernel.filesystems.memfd_create(name, flags)

    # -- CPU access ------------------------------------------------------------------------

    def read(self, addr: int, n: int) -> bytes:
        """Load `n` bytes at `addr` through the page tables, faulting as the CPU would."""
        check_int("read", "addr", addr)
        check_count("read", "n", n)
        return self._step("read", access_read, self._env, self.mm, addr, n)

    def write(self, addr: int, data: bytes) -> None:
        """Store `data` at `addr` through the page tables, faulting as the CPU would."""
        check_int("write", "addr", addr)
        self._step("write", access_write, self._env, self.mm, addr,
                   check_bytes("write", "data", data))

    # -- lifetime --------------------------------------------------------------------------

    def fork(self, name: str | None = None) -> Process:
        """fork(2): a child whose address space is a copy-on-write copy of this one."""
        if name is not None:
            check_str("fork", "name", name)
        self._live()
        child_mm = dup_mm(self._env, self.mm)
        child = self.kernel._new_process(name or self.comm, child_mm,
                                         Cred(self.cred.uid, set(self.cred.caps),
                                              self.cred.rlimit_memlock))
        self.kernel.after_step("fork")
        return child

    def exit(self) -> None:
        """exit(2): the address space is torn down; pinned pages stay until unpinned."""
        self._live()
        exit_mmap(self._env, self.mm)
        self.alive = False
        self.kernel.sanitizer.report_leaks(self.mm, f"exit of process {self.pid}")
        self.kernel.after_step("exit")

    # -- /proc -----------------------------------------------------------------------------

    def proc_status(self) -> dict[str, int]:
        """The memory lines of /proc/<pid>/status, in kB, as the kernel computes them."""
        mm = self.mm
        kb = PAGE_SIZE // 1024
        return {
            "VmSize": mm.total_vm() * kb,
            "VmLck": mm.locked_vm * kb,
            "VmPin": mm.pinned_vm * kb,
            "VmRSS": mm.rss.total() * kb,
            "RssAnon": mm.rss.anon * kb,
            "RssFile": mm.rss.file * kb,
            "RssShmem": mm.rss.shmem * kb,
        }
