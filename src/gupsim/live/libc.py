"""ctypes access to the few libc entry points and constants the host probes need.

Pure Python on purpose: the live back-end must run wherever gupsim runs, without a
compiler. Every wrapper turns a failing call into `OSError(errno, message)` whose
message names the call and its arguments, so a failing probe says what it asked for.
Numbers are for x86-64 Linux; `check_arch()` refuses other machines early.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import resource

from ..constants import (  # noqa: F401 - the kernel's values, re-exported for the probes
    CAP_IPC_LOCK,
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGE_1GB,
    MAP_HUGE_2MB,
    MAP_HUGE_SHIFT,
    MAP_HUGETLB,
    MAP_LOCKED,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MFD_ALLOW_SEALING,
    MFD_CLOEXEC,
    MFD_HUGETLB,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PMD_SIZE,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)

# --- memory: the mapping/advice flags above are the kernel's, shared with the model ---
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")      # this host's page size
MFD_HUGE_2MB = MAP_HUGE_2MB

# --- process control and capabilities -------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_LOWER = 3
CAP_SYS_ADMIN = 21
CAP_SETUID = 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# --- system call numbers (x86-64) -----------------------------------------------------
SYS_capget = 125
SYS_capset = 126
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311
SYS_userfaultfd = 323
SYS_io_uring_setup = 425
SYS_io_uring_enter = 426
SYS_io_uring_register = 427

MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mprotect = _libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class iovec(ctypes.Structure):  # noqa: N801 - the kernel's name
    """struct iovec, for readv-style system calls."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def iovecs(ranges: list[tuple[int, int]]) -> ctypes.Array[iovec]:
    """Build a C array of iovec from (address, length) pairs."""
    arr = (iovec * max(1, len(ranges)))()
    for i, (addr, length) in enumerate(ranges):
        if addr < 0 or length < 0:
            raise ValueError(f"iovec {i}: address {addr:#x} and length {length} must be >= 0")
        arr[i].iov_base = addr
        arr[i].iov_len = length
    return arr


def check_arch() -> None:
    """Refuse to issue raw x86-64 system call numbers on another architecture."""
    from .errors import HostUnsupported

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise HostUnsupported(
            f"gupsim.live drives Linux x86-64 only; this is {platform.system()} "
            f"{platform.machine()}"
        )


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


SyscallArg = int | ctypes.Structure | ctypes.Array | ctypes.c_void_p | None


def _carg(a: SyscallArg) -> object:
    if a is None:
        return ctypes.c_void_p(0)
    if isinstance(a, int):
        return ctypes.c_long(a)
    if isinstance(a, ctypes.Structure | ctypes.Array):
        return ctypes.byref(a)
    return a


def syscall(number: int, *args: SyscallArg, name: str = "") -> int:
    """Issue a raw system call; return its non-negative result or raise OSError."""
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(number), *(_carg(a) for a in args))
    if ret == -1:
        shown = ", ".join(hex(a) if isinstance(a, int) else type(a).__name__ for a in args)
        raise _fail(f"{name or f'syscall {number}'}({shown})")
    return int(ret)


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2); return the address of the new mapping."""
    if length <= 0:
        raise ValueError(f"mmap length must be positive, got {length}")
    ctypes.set_errno(0)
    ret = _mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:
        raise _fail(f"mmap(addr={addr:#x}, length={length}, prot={prot:#x}, flags={flags:#x}, "
                    f"fd={fd}, offset={offset})")
    return int(ret)


def munmap(addr: int, length: int) -> None:
    """munmap(2)."""
    if _munmap(addr, length) != 0:
        raise _fail(f"munmap({addr:#x}, {length})")


SYS_mremap = 25
SYS_vmsplice = 278


def mremap(old_addr: int, old_size: int, new_size: int, flags: int = 0,
           new_addr: int = 0) -> int:
    """mremap(2); return the new address."""
    return syscall(SYS_mremap, old_addr, old_size, new_size, flags, new_addr, name="mremap")


def vmsplice(fd: int, ranges: list[tuple[int, int]], flags: int = 0) -> int:
    """vmsplice(2) of (address, length) ranges into pipe `fd`; bytes spliced."""
    return syscall(SYS_vmsplice, fd, iovecs(ranges), len(ranges), flags, name="vmsplice")


def mprotect(addr: int, length: int, prot: int) -> None:
    """mprotect(2)."""
    if _mprotect(addr, length, prot) != 0:
        raise _fail(f"mprotect({addr:#x}, {length}, {prot:#x})")


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2)."""
    if _madvise(addr, length, advice) != 0:
        raise _fail(f"madvise({addr:#x}, {length}, {advice})")


def madvise_on_every_cpu(addr: int, length: int, advice: int) -> None:
    """madvise(2) once on each CPU this process can be moved to, then its CPUs restored.

    For MADV_COLD and MADV_PAGEOUT: both skip folios not yet on an LRU list and drain
    only the calling CPU's batch of newly added folios, so a page faulted on another
    CPU is silently kept. One call per CPU drains every batch. A repeat is harmless: a
    folio already deactivated or swapped out is passed over.
    """
    cpus = os.sched_getaffinity(0)
    try:
        for cpu in range(os.cpu_count() or 1):   # not only today's CPUs: pages may be
            try:                                 # faulted on any the process ran on
                os.sched_setaffinity(0, {cpu})
            except OSError:                      # offline, or outside this cpuset
                continue
            madvise(addr, length, advice)
    finally:
        os.sched_setaffinity(0, cpus)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); return its result."""
    ctypes.set_errno(0)
    ret = _prctl(option, arg2, arg3, arg4, arg5)
    if ret == -1:
        raise _fail(f"prctl({option}, {arg2}, {arg3})")
    return int(ret)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return the (effective, permitted, inheritable) capability masks of `pid` (0: self)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    syscall(SYS_capget, hdr, data, name="capget")
    eff = data[0].effective | data[1].effective << 32
    perm = data[0].permitted | data[1].permitted << 32
    inh = data[0].inheritable | data[1].inheritable << 32
    return eff, perm, inh


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability masks (64-bit each)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    syscall(SYS_capset, hdr, data, name="capset")


def has_capability(cap: int) -> bool:
    """True if `cap` is in this thread's effective set."""
    return bool(capget()[0] >> cap & 1)


def drop_capability(cap: int) -> None:
    """Remove `cap` from the bounding, ambient, effective, permitted and inheritable sets.

    After this the process behaves, for `cap`, like an unprivileged one: the kernel's
    capable() checks fail and no exec can get it back.
    """
    if prctl(PR_CAPBSET_READ, cap):
        prctl(PR_CAPBSET_DROP, cap)  # needs CAP_SETPCAP, so before capset
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap)
    except OSError:
        pass  # no ambient support: nothing to lower
    eff, perm, inh = capget()
    mask = ~(1 << cap)
    capset(eff & mask, perm & mask, inh & mask)


def set_memlock_limit(soft: int, hard: int | None = None) -> None:
    """Set RLIMIT_MEMLOCK (bytes); lowering is always allowed, raising the hard limit
    needs CAP_SYS_RESOURCE: OSError(EPERM) without it (Python says ValueError). Limits
    are rlim_t, unsigned 64 bits (RLIM_INFINITY is 2**64 - 1); Python passes a C long
    long, so one from 2**63 up goes as its two's complement, the same bits."""
    def rlim(value: int) -> int:
        return value - (1 << 64) if value >= 1 << 63 else value

    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK,
                           (rlim(soft), rlim(soft if hard is None else hard)))
    except ValueError as exc:
        if "not allowed" not in str(exc):     # EINVAL: soft above hard, the caller's bug
            raise
        raise OSError(errno.EPERM, f"setrlimit(RLIMIT_MEMLOCK, {soft}): {exc} (raising "
                      "the hard limit needs CAP_SYS_RESOURCE)") from exc


def memlock_limit() -> tuple[int, int]:
    """Return the (soft, hard) RLIMIT_MEMLOCK in bytes."""
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


FS_MAGIC = {0xEF53: "ext4", 0x01021994: "tmpfs", 0x958458F6: "hugetlbfs",
            0x58465342: "xfs", 0x9123683E: "btrfs", 0x794C7630: "overlayfs",
            0x6969: "nfs", 0x65735546: "fuse", 0x01021997: "9p"}


def fs_type(path: str) -> str:
    """Name of the file system holding `path` (from statfs f_type), or its magic in hex."""
    buf = _Statfs()
    _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        raise _fail(f"statfs({path!r})")
    magic = buf.f_type & 0xFFFFFFFF
    return FS_MAGIC.get(magic, f"{magic:#x}")
