"""What a populated page costs the model: time and host memory per 4 KiB page.

Maps 1 GiB with MAP_POPULATE (never written, so no bytes are stored), then writes one
byte to each page (so every page stores its 4 KiB), and reports the host memory the
Python process grew by at each stage. Run: `.venv/bin/python benchmarks/bench_memory.py`.
"""

from __future__ import annotations

import time

import gupsim
from gupsim import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def main(size: int = 1 << 30) -> None:
    pages = size // PAGE_SIZE
    t = time.perf_counter()
    k = gupsim.Kernel(memory="1TiB")
    boot = time.perf_counter() - t
    base = rss_bytes()
    p = k.spawn("bench")
    t = time.perf_counter()
    a = p.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    populate = time.perf_counter() - t
    populated = rss_bytes() - base
    print(f"Kernel(memory='1TiB') boot: {boot * 1e3:.1f} ms")
    print(f"mmap 1 GiB MAP_POPULATE: {populate * 1e3:.0f} ms, "
          f"{populate / pages * 1e9:.0f} ns/page")
    print(f"host memory for {pages} populated, never-written pages: {populated >> 20} MiB "
          f"= {populated / pages:.1f} bytes/page; stored page bytes: {k.mem.stored_bytes()}")
    n = 16384
    t = time.perf_counter()
    for i in range(n):
        p.write(a + i * PAGE_SIZE, b"x")
    wr = time.perf_counter() - t
    print(f"first write to {n} pages: {wr / n * 1e6:.1f} us/page, stored bytes now "
          f"{k.mem.stored_bytes() >> 20} MiB")


if __name__ == "__main__":
    main()
