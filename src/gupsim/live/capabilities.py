"""What this host can do for live probes, each with the reason when it cannot.

Tests call `host_capabilities()` once and skip with `reason` where `ok` is False, so a
run on a laptop, a container or an unprivileged account stays meaningful.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from . import libc
from .errors import HostUnsupported


@dataclass(frozen=True)
class Capability:
    """Whether one feature works here; `reason` says why not (or what was found)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def _probe(fn: Callable[[], str]) -> Capability:
    try:
        return Capability(True, fn())
    except HostUnsupported as exc:
        return Capability(False, exc.reason)
    except OSError as exc:
        return Capability(False, f"{exc.strerror or exc} (errno {exc.errno})")


def _root() -> str:
    if os.geteuid() != 0:
        raise HostUnsupported("not root: exact vmstat, pagemap PFNs and sysctls need root")
    return "euid 0"


def _io_uring() -> str:
    from .uring import IoUring

    with IoUring(1):
        return "io_uring_setup works"


def _stat_refresh() -> str:
    from .vmstat import stat_refresh

    if not stat_refresh():
        raise HostUnsupported("cannot write /proc/sys/vm/stat_refresh: counters approximate")
    return "exact /proc/vmstat"


def _hugetlb_2m() -> str:
    from .settings import ExtraHugepages

    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        raise HostUnsupported("no 2 MiB hugetlb size on this kernel")
    with ExtraHugepages(2048) as extra:
        if extra.grow(1) < 1:
            raise HostUnsupported("could not add a 2 MiB huge page: memory too fragmented")
    return "nr_hugepages can be raised (restored after)"


def _thp() -> str:
    from .settings import THP_ENABLED, read_setting

    mode = read_setting(THP_ENABLED)
    if mode == "never":
        raise HostUnsupported("transparent_hugepage/enabled is 'never'")
    return f"THP '{mode}'"


def _mthp_64k() -> str:
    from .settings import read_setting, thp_size_enabled

    path = thp_size_enabled(64)
    if not os.path.exists(path):
        raise HostUnsupported("no 64 KiB mTHP size on this kernel (hugepages-64kB)")
    if not os.access(path, os.W_OK):
        raise HostUnsupported(f"{path} is not writable (need root)")
    return f"hugepages-64kB/enabled is {read_setting(path)!r} (set per case, restored)"


def _userfaultfd() -> str:
    from .uffd import open_userfaultfd

    os.close(open_userfaultfd())
    return "userfaultfd handles kernel faults"


def _af_xdp() -> str:
    from .xdp import open_xdp_socket

    open_xdp_socket().close()
    return "AF_XDP socket opens"


def _o_direct() -> str:
    from .hostmem import HostMapping
    from .odirect import DirectFile

    with DirectFile(4096) as f, HostMapping(4096) as m:
        if f.write_from(m.addr, 4096) != 4096:
            raise HostUnsupported("short O_DIRECT write")
        return f"O_DIRECT works on {f.fs} at {tempfile.gettempdir()}"


def _disk_fs() -> str:
    fs = libc.fs_type(tempfile.gettempdir())
    if fs in ("tmpfs", "hugetlbfs"):
        raise HostUnsupported(f"{tempfile.gettempdir()} is {fs}, not a disk file system")
    return fs


def _kvm() -> str:
    from .kvm import kvm_unusable

    reason = kvm_unusable()
    if reason:
        raise HostUnsupported(reason)
    return "/dev/kvm runs a real-mode guest (API 12)"


def _swap() -> str:
    from .swapfile import SWAP_DIR, active_swaps

    devices = active_swaps()
    if devices:
        return f"{len(devices)} swap device(s)"
    if os.geteuid() != 0:
        raise HostUnsupported("no swap device (/proc/swaps is empty) and not root to add a "
                              "swap file: MADV_PAGEOUT keeps anonymous pages")
    fs = libc.fs_type(SWAP_DIR)
    if fs in ("tmpfs", "ramfs", "overlay"):
        raise HostUnsupported(f"no swap device, and {SWAP_DIR} is {fs}, which cannot hold a "
                              "swap file (set GUPSIM_SWAP_DIR to a disk folder)")
    return f"no swap device: a case adds a temporary swap file in {SWAP_DIR} ({fs})"


def _soft_dirty() -> str:
    reason = soft_dirty_reason()
    if reason:
        raise HostUnsupported(reason)
    return "pagemap reports soft-dirty (VM_SOFTDIRTY shows as 'sd')"


def soft_dirty_reason() -> str:
    """Why pagemap cannot report soft-dirty here, or "": a kernel built without
    CONFIG_MEM_SOFT_DIRTY never sets bit 55, and shows no `sd` in the VmFlags of a
    mapping just made (every new VMA has VM_SOFTDIRTY where it is built in)."""
    size = libc.PAGE_SIZE
    addr = libc.mmap(0, size, libc.PROT_READ, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                if "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
                    inside = int(line.split("-", 1)[0], 16) == addr
                elif inside and line.startswith("VmFlags:"):
                    if "sd" in line.split()[1:]:
                        return ""
                    break
    finally:
        libc.munmap(addr, size)
    return ("this kernel was built without CONFIG_MEM_SOFT_DIRTY: pagemap never reports "
            "soft-dirty (bit 55), and clear_refs 4 neither clears nor write-protects")


def _arch() -> str:
    libc.check_arch()
    return "x86_64"


PROBES: dict[str, Callable[[], str]] = {
    "x86_64": _arch, "root": _root, "stat_refresh": _stat_refresh, "io_uring": _io_uring,
    "hugetlb_2m": _hugetlb_2m, "thp": _thp, "af_xdp": _af_xdp, "o_direct": _o_direct,
    "disk_fs": _disk_fs, "mthp_64k": _mthp_64k, "userfaultfd": _userfaultfd,
    "kvm": _kvm, "swap": _swap, "soft_dirty": _soft_dirty,
}


@functools.cache
def host_capabilities() -> dict[str, Capability]:
    """Probe every feature once per process (cheap; the hugetlb probe restores its sysctl)."""
    if platform.machine() != "x86_64":
        reason = _probe(_arch).reason
        return {name: Capability(False, reason) for name in PROBES}
    return {name: _probe(fn) for name, fn in PROBES.items()}
