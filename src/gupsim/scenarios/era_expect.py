"""The catalogue's documented expectations on older kernels: from which release each holds.

A catalogue case documents what today's kernel does. Where a case's outcome changed in
a modelled release (`gupsim.eras`), a rule here says what the older kernels did and
from which version the case's own expectation holds: `expectation_on(case, version)`
is the one to check a trace of that era against. Rules name the case families by a
pattern on their names and the versions by the era switch that changed them, so each
boundary is one of `KERNEL_VERSIONS`. The first rule that matches a case and covers the
version wins. Counters are the one generic rule: before 5.7 (`nr-foll-pin-vmstat`)
there are none, and the catalogue's counter checks skip a trace that says so
(`Trace.counted`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..eras import Era, switch
from .catalogue import (
    Check,
    all_of,
    expect,
    pins_balance,
    pins_miss_the_write,
    pins_see_the_write,
    pipe_yields,
    step_pins,
    steps_named,
)
from .protocol import Trace
from .runner import Case


@dataclass(frozen=True)
class EraRule:
    """On eras in [since, until) of `switch`'s history, cases named like `cases`
    expect `expect` instead of their own (`why` says what the kernel did then)."""

    cases: str                 # re.search pattern over the case name
    until: str                 # the first version where this rule no longer applies
    expect: Check
    why: str
    since: str | None = None   # None: every older profile


def _switch_version(name: str) -> str:
    return switch(name).first_version


def pins_lose_the_dma(trace: Trace) -> list[str]:
    """The fixed buffer's pinned page and the parent's memory differ after fork."""
    fixed, reads = steps_named(trace, "uring_write_fixed"), steps_named(trace, "read")
    if not fixed or not reads:
        return ["missing uring_write_fixed or read step"]
    if fixed[0].data == reads[-1].data:
        return ["the pin still sees the parent's memory: fork copied the pinned page"]
    return []


ANON_KINDS = r", (base page|THP|PTE-mapped THP|mTHP 64KiB|single PTE of .*|partially .*)$"

FORCED_COW = _switch_version("gup-forced-cow-break")      # 5.8
COW_PAGE_COUNT = _switch_version("cow-reuse-page-count")  # 5.9
UNSHARE = _switch_version("anon-exclusive-unshare")       # 5.19

RULES: tuple[EraRule, ...] = (
    EraRule(r"^cow: vmsplice\(\) \+ unmap in .*" + ANON_KINDS, FORCED_COW,
            all_of(pipe_yields(0xff), pins_balance),
            "before 5.8 the write fault reused a page mapped once whatever its refcount "
            "(reuse_swap_page), so the vmspliced reference saw the write (CVE-2020-29374)"),
    EraRule(r"^cow: vmsplice\(\) before fork\(\).*" + ANON_KINDS, COW_PAGE_COUNT,
            all_of(pipe_yields(0xff), pins_balance),
            "before 5.9 the page mapped once again is reused; 5.8's COW break in GUP does "
            "not help, the reference was taken before fork"),
    EraRule(r"^cow: vmsplice\(\) \+ unmap in .*hugetlb", COW_PAGE_COUNT,
            all_of(pipe_yields(1), pins_balance),
            "5.8 broke COW inside GUP, hugetlb included: the pipe holds a copy of its own",
            since=FORCED_COW),
    EraRule(r"^cow: short-term R/O pin .* of a shared page", FORCED_COW,
            all_of(pins_miss_the_write, pins_balance),
            "before 5.8 a R/O pin takes the shared page as is; the write copies it away"),
    EraRule(r"^cow: short-term R/O pin .* of a (shared page|previously shared page, "
            r"(?!hugetlb))", UNSHARE,
            all_of(pins_miss_the_write, pins_balance),
            "5.9 - 5.18: no unshare before a R/O pin, and a write copies any page with "
            "an extra reference (page_count() reuse): the pin loses sync (hugetlb reuses "
            "a page mapped once, so a previously shared one keeps it)",
            since=COW_PAGE_COUNT),
    EraRule(r"^non-anon: short-term R/O pin", COW_PAGE_COUNT,
            all_of(pins_see_the_write, pins_balance),
            "5.8 GUP broke COW of any page in a COW mapping before taking it, so the pin "
            "holds the process's own copy and sees its write", since=FORCED_COW),
    EraRule(r"^cow: fork\(\) with an io_uring fixed buffer, hugetlb",
            _switch_version("fork-copies-pinned-hugetlb"),
            all_of(expect(uring_register="ok"), pins_lose_the_dma),
            "before 5.12 fork shared pinned hugetlb pages COW: the DMA write is lost"),
    EraRule(r"^cow: fork\(\) with an io_uring fixed buffer", COW_PAGE_COUNT,
            all_of(expect(uring_register="ok"), pins_lose_the_dma),
            "before 5.9 fork shared pinned anon pages COW: the DMA write is lost"),
    EraRule(r"^longterm: R/W io_uring pin of ext4 file, MAP_SHARED$",
            _switch_version("longterm-file-write-refused"),
            all_of(expect(uring_register="ok"), pins_balance),
            "before 6.5 writable long-term pins of dirty-tracked file mappings were accepted"),
    EraRule(r"^longterm: R/W AF_XDP pin of ext4 file, MAP_SHARED$",
            _switch_version("longterm-file-write-refused"),
            all_of(expect(xdp_umem_reg="ok"), pins_balance),
            "before 6.5 writable long-term pins of dirty-tracked file mappings were accepted"),
    EraRule(r"^uring-user: NO_MMAP ring in a MAP_SHARED ext4 file$",
            _switch_version("longterm-file-write-refused"),
            all_of(expect(uring_setup_user="ok"), step_pins("uring_setup_user", acquired=2)),
            "before 6.5 writable long-term pins of dirty-tracked file mappings were accepted "
            "(the case does not close the ring: its two pins stay)"),
    EraRule(r"^dio: O_DIRECT write from untouched anon \(zero page\)$",
            _switch_version("zero-page-not-pin-counted"),
            all_of(step_pins("odirect_write", acquired=4), pins_balance),
            "before 6.5 the zero page was pin-counted like any page"),
    EraRule(r"^remote: process_vm_readv of untouched memory$",
            _switch_version("zero-page-not-pin-counted"),
            all_of(step_pins("process_vm_readv", acquired=4), pins_balance),
            "before 6.5 the zero page was pin-counted like any page"),
)
"""Every case whose documented outcome changed in a modelled release, oldest rule first
within a family (first match wins)."""


def rule_for(case: Case, version: str) -> EraRule | None:
    """The rule that replaces `case`'s expectation on `version`, if any."""
    key = Era(version).key
    for rule in RULES:
        if not re.search(rule.cases, case.name):
            continue
        if key < Era(rule.until).key and (rule.since is None or key >= Era(rule.since).key):
            return rule
    return None


def expectation_on(case: Case, version: str | None) -> Check:
    """The expectation a trace of `version` (None: the newest) is checked against."""
    if version is None:
        return case.expect
    rule = rule_for(case, version)
    return case.expect if rule is None else rule.expect


__all__ = ["EraRule", "RULES", "expectation_on", "rule_for"]
