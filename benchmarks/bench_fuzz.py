"""Model-only steps per second on `gupsim fuzz` programs, with and without the
invariant checks the fuzzer runs after every step (issue 13 asks for >= 10,000).

Run: `.venv/bin/python benchmarks/bench_fuzz.py [PROGRAMS] [SEED]`. A step here is one
protocol call (a map populates every page of its region; a fork copies page tables), and
each program starts a fresh 1 GiB machine, whose set-up is counted too.
"""

from __future__ import annotations

import sys
import time

from gupsim.fuzz.campaign import CheckedModelSystem
from gupsim.fuzz.generate import Generator
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.runner import run_on


def rate(make: type[ModelSystem], programs: int, seed: int) -> tuple[int, float]:
    """(steps, seconds) of running the seed's programs on a fresh `make()` each."""
    gen = Generator(seed)
    cases = [gen.program(n, 15).case() for n in range(programs)]
    steps, start = 0, time.perf_counter()
    for case in cases:
        steps += len(run_on(case, make).steps)
    return steps, time.perf_counter() - start


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    for label, make in (("model", ModelSystem), ("model + invariants", CheckedModelSystem)):
        steps, secs = rate(make, n, seed)
        print(f"{label:20} {steps:6} steps in {secs:6.2f} s: {steps / secs:8.0f} steps/s")
