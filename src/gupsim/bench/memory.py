"""Resident host memory per touched page of the model, measured in a fresh process.

A fresh interpreter boots `Kernel(memory="1TiB")` (per-page arrays sized for 2^28 frames,
which stay virtual until touched), maps `pages` pages with MAP_POPULATE and reports how
much its resident set grew, per page. A fresh process, because in the benchmark's own
process freed memory of earlier cases would be reused and hide the growth.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(pages: int) -> dict[str, float]:
    """In this process: (resident bytes per populated page, seconds to populate)."""
    import time

    import gupsim
    from gupsim.constants import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE
    k = gupsim.Kernel(memory="1TiB")
    p = k.spawn("bench")
    base = _rss()
    t0 = time.perf_counter()
    p.mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)
    elapsed = time.perf_counter() - t0
    return {"resident": (_rss() - base) / pages, "populate": elapsed}


def resident_per_page(pages: int) -> dict[str, float]:
    """`measure(pages)` in a fresh interpreter."""
    code = ("import json; from gupsim.bench.memory import measure; "
            f"print(json.dumps(measure({pages})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    result: dict[str, float] = json.loads(out.stdout)
    return result
