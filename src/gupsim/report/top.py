"""The `gupsim top` table: who holds pinned memory, and whether the totals add up."""

from __future__ import annotations

from rich import box
from rich.table import Table


def _kib(n: int) -> str:
    return f"{n >> 10:,} KiB" if n < (64 << 20) else f"{n >> 20:,} MiB"


def top_table(snap: dict) -> Table:
    """One row per holder (full command line, wrapped), VmPin/VmLck in kB, io_uring buffers
    and AF_XDP umems; the caption compares the pins outstanding with what the rows
    account for and says what explains the difference. The io_uring column counts rings
    set up in the process's own memory (IORING_SETUP_NO_MMAP) too. Fits 80 columns."""
    approx = "" if snap["exact"] else " (approximate: not root)"
    acc = snap["accounted"]
    t = Table(box=box.SIMPLE_HEAD, expand=False,
              title=f"pins outstanding (acquired − released): {snap['outstanding']:,} "
                    f"pages{approx}",
              caption=f"io_uring {acc['uring_pages']:,} + AF_XDP {acc['xdp_umem_pages']:,} "
                      f"= {acc['total']:,} pages listed; {acc['explanation']}")
    t.add_column("pid", justify="right", no_wrap=True)
    t.add_column("command", ratio=1, overflow="fold")
    t.add_column("VmPin\nkB", justify="right", no_wrap=True)
    t.add_column("VmLck\nkB", justify="right", no_wrap=True)
    t.add_column("io_uring\nbuffers", no_wrap=True)
    t.add_column("AF_XDP\numems", no_wrap=True)
    for p in snap["processes"]:
        bufs = f"{p['uring_buffers']} ({_kib(p['uring_bytes'])})" if p["uring_buffers"] else ""
        if p.get("uring_user_rings"):       # IORING_SETUP_NO_MMAP: the ring is user memory
            rings = f"{p['uring_user_rings']} ring(s) ({p['uring_ring_pages']} pages)"
            bufs = f"{bufs}\n+ {rings}" if bufs else rings
        xdp = f"{p['xdp_umems']} ({_kib(p['xdp_umem_bytes'])})" if p["xdp_umems"] else ""
        if p.get("xdp_sockets_unsized"):
            xdp = f"{p['xdp_sockets_unsized']} socket(s)"
        t.add_row(str(p["pid"]), p["command"], f"{p['VmPin_kB']:,}", f"{p['VmLck_kB']:,}",
                  bufs, xdp)
    if not snap["processes"]:
        t.add_row("", "[dim]no process holds VmPin, VmLck, io_uring buffers or AF_XDP "
                  "umems[/]", "", "", "", "")
    return t
