"""Who holds pinned or locked memory: /proc/<pid>/status and io_uring fdinfo.

VmPin is mm->pinned_vm (pages charged by long-term pinners such as io_uring and RDMA),
VmLck is mm->locked_vm (mlock). Both are shown in kB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MEMORY_FIELDS = ("VmPin", "VmLck", "VmRSS", "VmSize", "RssAnon", "RssFile", "RssShmem")


def proc_status(pid: int | str = "self") -> dict[str, int | str]:
    """Parse /proc/<pid>/status: memory fields as int kB, "Name" and "Pid" too.

    VmPin, VmLck and VmRSS are always present (0 for a kernel thread).
    """
    out: dict[str, int | str] = {"VmPin": 0, "VmLck": 0, "VmRSS": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if key in MEMORY_FIELDS:
                out[key] = int(value.split()[0])
            elif key in ("Name", "State"):
                out[key] = value
            elif key in ("Pid", "PPid"):
                out[key] = int(value)
    return out


def vm_pin_kb(pid: int | str = "self") -> int:
    """VmPin of `pid`, in kB."""
    return int(proc_status(pid)["VmPin"])


@dataclass(frozen=True)
class UringBuffer:
    """One registered buffer as io_uring's fdinfo lists it."""

    index: int
    addr: int
    length: int


_BUF_LINE = re.compile(r"^\s*(\d+):\s*0x([0-9a-fA-F]+)/(\d+)\s*$")


def uring_fdinfo(pid: int | str = "self") -> dict[int, list[UringBuffer]]:
    """Registered buffers of every io_uring fd of `pid`, keyed by fd.

    Parses the "UserBufs:" section of /proc/<pid>/fdinfo/<fd> (one "index: 0xaddr/len"
    line per buffer in Linux 6.x). Rings without buffers map to an empty list.
    """
    result: dict[int, list[UringBuffer]] = {}
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{name}") != "anon_inode:[io_uring]":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                text = f.read()
        except OSError:
            continue  # closed meanwhile
        bufs: list[UringBuffer] = []
        in_bufs = False
        for line in text.splitlines():
            if line.startswith("UserBufs:"):
                in_bufs = True
                continue
            if in_bufs:
                m = _BUF_LINE.match(line)
                if not m:
                    break
                bufs.append(UringBuffer(int(m[1]), int(m[2], 16), int(m[3])))
        result[int(name)] = bufs
    return result


@dataclass(frozen=True)
class PinnedProcess:
    """A process holding pinned (VmPin) or locked (VmLck) memory."""

    pid: int
    name: str
    vm_pin_kb: int
    vm_lck_kb: int


def pinned_processes() -> list[PinnedProcess]:
    """Every process with VmPin or VmLck > 0, most pinned first."""
    found: list[PinnedProcess] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = proc_status(entry)
        except (OSError, ValueError):
            continue  # exited, or not ours to read
        pin, lck = int(st["VmPin"]), int(st["VmLck"])
        if pin or lck:
            found.append(PinnedProcess(int(entry), str(st.get("Name", "?")), pin, lck))
    return sorted(found, key=lambda p: (-p.vm_pin_kb, -p.vm_lck_kb, p.pid))
