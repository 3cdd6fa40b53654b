"""Soft-dirty through the protocol on this kernel: `clear_refs` and `pages(soft_dirty=True)`
compared with the model where pagemap reports soft-dirty, skipped with the reason where
the kernel was built without CONFIG_MEM_SOFT_DIRTY."""

from __future__ import annotations

import pytest

from gupsim import PAGE_SIZE
from gupsim.live.capabilities import soft_dirty_reason
from gupsim.scenarios.protocol import System, Trace
from gupsim.scenarios.runner import Case, run_case


def _scenario(system: System) -> None:
    p = system.spawn("p")
    r = p.map("anon", 4 * PAGE_SIZE, populate=True, fill=1)
    fresh = p.map("anon", 2 * PAGE_SIZE, populate=False)
    p.pages(r, 0, 4 * PAGE_SIZE, soft_dirty=True)
    p.clear_refs()
    p.write(r, PAGE_SIZE, b"w")
    p.pages(r, 0, 4 * PAGE_SIZE, soft_dirty=True)
    p.pages(fresh, 0, 2 * PAGE_SIZE, soft_dirty=True)


def _expect(trace: Trace) -> list[str]:
    got = [s.pages for s in trace.steps if s.op == "pages"]
    want = ["1xd 2xd 3xd 4xd", "1x 2xd 3x 4x", "- -"]
    return [] if got == want else [f"soft-dirty tokens {got} != {want}"]


CASE = Case("soft-dirty: a new VMA, clear_refs, one write", _scenario, _expect,
            "Documentation/admin-guide/mm/soft-dirty.rst", needs=("soft_dirty",))


def test_the_model_gives_the_documented_soft_dirty_tokens() -> None:
    result = run_case(CASE, with_host=False)
    assert result.model_problems == [] and result.status == "model-only"


@pytest.mark.host
def test_soft_dirty_agrees_with_this_kernel_or_skips_with_the_reason() -> None:
    result = run_case(CASE)
    if result.status == "skipped":
        assert result.host is not None
        assert result.host.skipped == f"soft_dirty: {soft_dirty_reason()}"
        pytest.skip(result.host.skipped)
    assert result.status == "agree", result.differences + result.host_problems
