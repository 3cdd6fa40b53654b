"""Resident host memory per touched page of the model, measured in a fresh process.

A fresh interpreter boots `Kernel(memory="1TiB")` (per-page arrays sized for 2^28 frames,
which stay virtual until touched), maps `pages` pages with MAP_POPULATE, then `pages`
more, and reports how much the second map grew its resident set, per page: the cost of
each further touched page, without the fixed costs the first map pays once (the heap
that gupsim.heap keeps for temporaries, up to ~128 MiB). A fresh process, because in the
benchmark's own process freed memory of earlier cases would be reused and hide growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(pages: int) -> dict[str, float]:
    """In this process: resident bytes per page of the second map ("resident") and of
    the first ("first"), seconds to populate the second."""
    import time

    import gupsim
    from gupsim.constants import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE
    k = gupsim.Kernel(memory="1TiB")
    p = k.spawn("bench")
    flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE
    base = _rss()
    p.mmap(0, pages * 4096, PROT_READ | PROT_WRITE, flags)
    first = _rss()
    t0 = time.perf_counter()
    p.mmap(0, pages * 4096, PROT_READ | PROT_WRITE, flags)
    elapsed = time.perf_counter() - t0
    return {"resident": (_rss() - first) / pages, "first": (first - base) / pages,
            "populate": elapsed}


def resident_per_page(pages: int, malloc_defaults: bool = False) -> dict[str, float]:
    """`measure(pages)` in a fresh interpreter; `malloc_defaults`: without gupsim.heap's
    tuning (its retained heap grows with the temporaries of the map being measured)."""
    code = ("import json; from gupsim.bench.memory import measure; "
            f"print(json.dumps(measure({pages})))")
    env = dict(os.environ, GUPSIM_MALLOC_DEFAULTS="1" if malloc_defaults else "0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600, env=env)
    result: dict[str, float] = json.loads(out.stdout)
    return result
