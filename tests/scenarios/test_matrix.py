"""The selftest matrix beyond the default catalogue (`scenarios/matrix.py`).

On the model every matrix case must meet its documented outcome (cheap: all of them). On
the host a short slice runs in the suite (one row per new kind family); the whole matrix
is `gupsim live --full-matrix` / `make matrix`, too long for every test run.
"""

from __future__ import annotations

import functools

import pytest

from gupsim.scenarios.catalogue import catalogue, pins_balance
from gupsim.scenarios.matrix import full_matrix, matrix_cases
from gupsim.scenarios.model import ModelSystem
from gupsim.scenarios.records import MTHP_KINDS
from gupsim.scenarios.runner import Case, run_case, run_on

MATRIX = matrix_cases()
SLICE = ["cow: basic COW after fork, mTHP 16KiB",
         "cow: fork() with an io_uring fixed buffer, partially shared mTHP 1024KiB",
         "cow: short-term R/O pin (process_vm_readv) of a shared page, single PTE of mTHP "
         "256KiB",
         "cow: basic COW after fork, base page, swapped",
         "cow: R/O-mapping an io_uring fixed buffer, THP, swapped"]


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_model_meets_the_documented_outcome(case: Case) -> None:
    trace = run_on(case, functools.partial(ModelSystem, needs=case.needs))
    assert not trace.skipped and not trace.ended, (trace.skipped, trace.ended)
    assert case.expect(trace) == []
    assert pins_balance(trace) == []


def test_the_matrix_covers_every_mthp_size_and_the_swapped_kinds() -> None:
    names = [c.name for c in full_matrix()]
    assert len(names) == len(set(names)) == len(catalogue()) + len(MATRIX)
    for size in MTHP_KINDS.values():
        assert any(n.endswith(f"mTHP {size >> 10}KiB") for n in names), size
    for kind in ("base page, swapped", "THP, swapped", "PTE-mapped THP, swapped",
                 "single PTE of swapped THP", "mTHP 64KiB, swapped"):
        # every cow.c row the protocol can ask (the GUP-fast twins need the gup_test module)
        assert sum(n.endswith(", " + kind) for n in names) == 11, kind
    assert set(SLICE) <= set(names)


@pytest.mark.host
@pytest.mark.parametrize("name", SLICE)
def test_a_slice_of_the_matrix_agrees_with_the_host(name: str) -> None:
    (case,) = [c for c in MATRIX if c.name == name]
    result = run_case(case)
    assert result.host is not None
    if result.host.skipped:
        pytest.skip(f"host: {result.host.skipped}")
    assert result.status == "agree", (result.differences, result.host_problems)
