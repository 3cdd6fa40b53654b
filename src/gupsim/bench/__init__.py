"""`gupsim bench`: the model's speed against the host kernel's, side by side, one run.

`cases.py` declares what is measured and each goal, `model_side.py` and `host_side.py`
the two halves of every workload (the host half runs in a worker process, `worker.py`),
`runner.py` interleaves them and reduces the rounds to min, median and ratio.
"""

from __future__ import annotations

from .cases import Case, Goal, default_cases
from .runner import Row, host_skip_reason, measure, run

__all__ = ["Case", "Goal", "Row", "default_cases", "host_skip_reason", "measure", "run"]
