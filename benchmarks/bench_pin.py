"""Bulk pin and unpin: the model's cost per page against the host kernel's, in one run.

Same as `gupsim bench`; see gupsim/bench/ for what is measured on each side.
Run: `.venv/bin/python benchmarks/bench_pin.py [--max-pages N] [-n N] [-k TEXT] [--json]`.
"""

from __future__ import annotations

from gupsim.cli import bench

if __name__ == "__main__":
    bench()
