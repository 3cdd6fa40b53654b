"""Who holds pinned or locked memory: /proc/<pid>/status and io_uring fdinfo.

VmPin is mm->pinned_vm (pages charged by long-term pinners such as io_uring and RDMA),
VmLck is mm->locked_vm (mlock). Both are shown in kB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, TypedDict

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


_RING_HEADER = 64          # bytes of struct io_rings before its CQEs (6.x)
_CQE, _SQE, _SQ_INDEX, _CACHE_LINE = 16, 64, 4, 64


@dataclass(frozen=True)
class UringRing:
    """One io_uring instance of a process, as its fdinfo (inode, SqMask, CqMask) and the
    process's maps show it. A ring none of whose memory the process maps was set up with
    IORING_SETUP_NO_MMAP: its SQ/CQ rings and SQEs are the process's own pages, pinned
    (FOLL_PIN | FOLL_LONGTERM) at setup, and listed nowhere else."""

    fd: int
    ino: int
    sq_entries: int
    cq_entries: int
    mapped: bool

    @property
    def user_pages(self) -> int:
        """Pages the ring pins when the memory is the process's (0 for a mapped ring):
        the rings (header, CQEs, then the SQ index array after a cache-line boundary) and
        the SQEs, each from a page boundary. Approximate: fdinfo does not say whether the
        ring has 32-byte CQEs, 128-byte SQEs or no SQ array; this assumes the defaults."""
        if self.mapped:
            return 0
        rings = _RING_HEADER + self.cq_entries * _CQE
        rings = -(-rings // _CACHE_LINE) * _CACHE_LINE + self.sq_entries * _SQ_INDEX
        return -(-rings // PAGE_SIZE) + -(-(self.sq_entries * _SQE) // PAGE_SIZE)


def _fdinfo_field(text: str, name: str) -> int:
    m = re.search(rf"^{name}:\s*(\S+)", text, re.M)
    return int(m[1], 0) if m else 0


def uring_rings(pid: int | str, ring_fds: list[int]) -> list[UringRing]:
    """The io_uring instances behind `ring_fds` of `pid`, each with whether the process
    maps it (the inode of the ring appears in /proc/<pid>/maps)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            mapped = {int(line.split()[4]) for line in f if "anon_inode:[io_uring]" in line}
    except OSError:
        return []
    rings = []
    for fd in ring_fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue                    # closed meanwhile
        ino = _fdinfo_field(text, "ino")
        rings.append(UringRing(fd, ino, _fdinfo_field(text, "SqMask") + 1,
                               _fdinfo_field(text, "CqMask") + 1, ino in mapped))
    return rings


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


# -- everything that holds pins, per process (for `gupsim top`) -------------------------------

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_AF_XDP = 44
_XDP_SHOW_UMEM = 1 << 2
_XDP_DIAG_UMEM = 5


@dataclass(frozen=True)
class XdpUmemInfo:
    """An AF_XDP umem as sock_diag reports it: pinned pages charged to the *user*
    (user->locked_vm), so they appear in no process's VmPin or VmLck."""

    id: int
    size: int
    num_pages: int
    sockets: tuple[int, ...]        # inodes of the sockets that share it


def xdp_umems() -> list[XdpUmemInfo] | None:
    """Every AF_XDP umem on the host (netlink sock_diag); None where the kernel has no
    AF_XDP sock_diag (CONFIG_XDP_SOCKETS_DIAG), so sizes cannot be known."""
    import socket
    import struct
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except OSError:
        return None
    umems: dict[int, tuple[int, int, list[int]]] = {}
    with nl:
        req = struct.pack("=BBHII8x", _AF_XDP, 0, 0, 0, _XDP_SHOW_UMEM)
        nl.sendto(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY,
                              _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + req, (0, 0))
        nl.settimeout(2.0)
        done = False
        while not done:
            try:
                data = nl.recv(1 << 16)
            except OSError:
                break
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if length < 16:
                    done = True
                    break
                if kind == _NLMSG_ERROR and struct.unpack_from("=i", data, off + 16)[0]:
                    return None             # no AF_XDP sock_diag handler in this kernel
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    done = True
                    break
                ino = struct.unpack_from("=I", data, off + 16 + 4)[0]
                a = off + 16 + 16
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == _XDP_DIAG_UMEM and alen >= 4 + 16:
                        size, uid, pages = struct.unpack_from("=QII", data, a + 4)
                        umems.setdefault(uid, (size, pages, []))[2].append(ino)
                    a += (alen + 3) & ~3
                off += (length + 3) & ~3
    return [XdpUmemInfo(uid, size, pages, tuple(socks))
            for uid, (size, pages, socks) in sorted(umems.items())]


def command_line(pid: int | str) -> str:
    """The full command line of `pid` (its name in brackets for a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""
    if raw:
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    try:
        return f"[{proc_status(pid).get('Name', '?')}]"
    except OSError:
        return "?"


def _fds(pid: str) -> dict[int, str]:
    fd_dir = f"/proc/{pid}/fd"
    out: dict[int, str] = {}
    for name in os.listdir(fd_dir):
        try:
            out[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
    return out


_SYS_PIDFD_GETFD = 438


def xdp_socket_count(pid: int | str, sockets: list[int]) -> int:
    """How many of `pid`'s socket fds are AF_XDP (borrowed with pidfd_getfd(), which needs
    ptrace rights over `pid`; 0 where that is refused)."""
    import socket

    from . import libc
    if not sockets:
        return 0
    try:
        pidfd = os.pidfd_open(int(pid))
    except OSError:
        return 0
    n = 0
    try:
        for fd in sockets:
            try:
                mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0, name="pidfd_getfd")
            except OSError:
                continue
            try:                        # SO_DOMAIN: socket(fileno=) cannot probe AF_XDP
                with socket.socket(socket.AF_UNIX, socket.SOCK_RAW, fileno=mine) as sock:
                    n += sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == _AF_XDP
            except OSError:
                continue
    finally:
        os.close(pidfd)
    return n


class PinHolderRow(TypedDict):
    """One process of `pin_snapshot()`: what it holds pinned or locked (sizes in kB,
    bytes or pages as the key says)."""

    pid: int
    name: str
    command: str
    VmPin_kB: int
    VmLck_kB: int
    uring_buffers: int
    uring_bytes: int
    uring_user_rings: int
    uring_ring_pages: int
    xdp_umems: int
    xdp_umem_bytes: int
    xdp_sockets_unsized: int
    xdp_umem_pages: int


def pin_snapshot() -> dict[str, Any]:
    """Who holds pinned memory now, and whether that adds up.

    Per process: VmPin and VmLck (kB), io_uring registered buffers and AF_XDP umems
    (which are charged to the user, not the process), with the full command line. Totals:
    the machine-wide pins outstanding (acquired - released, in pages) beside the pages the
    listed holders account for, and what explains a difference.
    """
    from .vmstat import pin_counters
    counters = pin_counters()
    diag = xdp_umems()
    umems = diag or []
    procs: list[PinHolderRow] = []
    seen_umems: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = proc_status(entry)
            fds = _fds(entry)
        except (OSError, ValueError):
            continue
        rings = [fd for fd, link in fds.items() if link == "anon_inode:[io_uring]"]
        socks = {int(link[8:-1]) for link in fds.values() if link.startswith("socket:[")}
        mine = [u for u in umems if socks.intersection(u.sockets)]
        xsks = 0
        if diag is None:            # no sizes from the kernel: at least count the sockets
            xsks = xdp_socket_count(entry, [fd for fd, link in fds.items()
                                            if link.startswith("socket:[")])
        bufs: dict[int, list[UringBuffer]] = {}
        user_rings: list[UringRing] = []
        if rings:
            try:
                bufs = uring_fdinfo(entry)
            except OSError:
                bufs = {}
            user_rings = [r for r in uring_rings(entry, rings) if not r.mapped]
        nbufs = sum(len(b) for b in bufs.values())
        pin, lck = int(st["VmPin"]), int(st["VmLck"])
        if not (pin or lck or nbufs or mine or xsks or user_rings):
            continue
        new_umems = [u for u in mine if u.id not in seen_umems]
        seen_umems.update(u.id for u in mine)
        procs.append({
            "pid": int(entry), "name": str(st.get("Name", "?")),
            "command": command_line(entry), "VmPin_kB": pin, "VmLck_kB": lck,
            "uring_buffers": nbufs,
            "uring_bytes": sum(x.length for b in bufs.values() for x in b),
            "uring_user_rings": len(user_rings),
            "uring_ring_pages": sum(r.user_pages for r in user_rings),
            "xdp_umems": len(mine), "xdp_umem_bytes": sum(u.size for u in mine),
            "xdp_sockets_unsized": xsks,
            "xdp_umem_pages": sum(u.num_pages for u in new_umems)})
    procs.sort(key=lambda p: (-(p["VmPin_kB"] + p["uring_bytes"] // 1024
                                + p["xdp_umem_bytes"] // 1024), -p["VmLck_kB"], p["pid"]))
    uring_pages = sum(-(-p["uring_bytes"] // PAGE_SIZE) + p["uring_ring_pages"]
                      for p in procs)
    xdp_pages = sum(p["xdp_umem_pages"] for p in procs)
    orphan = [u for u in umems if u.id not in seen_umems]   # sockets we could not see
    xdp_pages += sum(u.num_pages for u in orphan)
    listed = uring_pages + xdp_pages
    gap = counters.outstanding - listed
    unsized = sum(p["xdp_sockets_unsized"] for p in procs)
    if gap > 0 and unsized:
        why = (f"{gap} pinned page(s) are not in the listed io_uring buffers: the "
               f"{unsized} AF_XDP socket(s) listed hold umems whose size this kernel does "
               "not report (no CONFIG_XDP_SOCKETS_DIAG), and O_DIRECT in flight, RDMA or "
               "VFIO (VmPin only), io_uring buffer rings in user memory and kernel "
               "users are not listed")
    elif gap > 0:
        why = (f"{gap} pinned page(s) are held by something not listed: O_DIRECT and other "
               "short-term I/O in flight, RDMA or VFIO (in VmPin only), io_uring "
               "provided-buffer rings in user memory (fdinfo does not list them), or "
               "kernel users")
    elif gap < 0:
        why = (f"the listed holders cover {-gap} page(s) more than are pinned: io_uring pins "
               "a huge folio once for the whole buffer (folio coalescing), and a page "
               "registered twice is pinned per registration")
    else:
        why = ("the listed io_uring buffers and rings and AF_XDP umems account for "
               "every pin")
    return {"nr_foll_pin_acquired": counters.acquired,
            "nr_foll_pin_released": counters.released,
            "outstanding": counters.outstanding, "exact": counters.exact,
            "xdp_diag": diag is not None,
            "accounted": {"uring_pages": uring_pages, "xdp_umem_pages": xdp_pages,
                          "xdp_sockets_unsized": unsized,
                          "total": listed, "difference": gap, "explanation": why},
            "processes": procs}
