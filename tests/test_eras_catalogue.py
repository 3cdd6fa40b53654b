"""The catalogue on every era (model only) against that era's documented expectations
(`scenarios/era_expect.py`), and `gupsim live` choosing the host's profile."""

from __future__ import annotations

import re

import pytest

from gupsim.eras import KERNEL_VERSIONS, NEWEST, SWITCHES, Era, host_profile
from gupsim.scenarios.catalogue import catalogue
from gupsim.scenarios.era_expect import RULES, expectation_on, rule_for
from gupsim.scenarios.runner import run_case
from gupsim.scenarios.userfile import ScenarioError

CASES = catalogue()
KIND_SUFFIX = re.compile(r", [^,]+$")


def _sample() -> list:
    """Every case a rule touches, one memory kind per family (base page, hugetlb, or a
    case without kinds), plus counter cases for the eras without counters: the full
    catalogue on 15 eras takes about 90 s, this about a tenth of it."""
    keep: dict[str, object] = {}
    for rule in RULES:
        ruled = [c for c in CASES if re.search(rule.cases, c.name)]
        some = [c for c in ruled if not KIND_SUFFIX.search(c.name)
                or c.name.endswith((", base page", ", hugetlb 2MiB"))] or ruled[:1]
        keep.update((c.name, c) for c in some)
    keep.update((c.name, c) for c in CASES
                if c.name.startswith(("account: io_uring 1MiB", "uring-user: NO_MMAP ring pins")))
    return list(keep.values())


SAMPLE = _sample()


@pytest.mark.parametrize("version", KERNEL_VERSIONS)
def test_catalogue_sample_meets_each_eras_expectations(version: str) -> None:
    for case in SAMPLE:
        try:
            result = run_case(case, with_host=False, version=version)
        except ScenarioError as e:
            # only a kernel without pin_user_pages*() may refuse a pinning scenario
            assert not Era(version).has("foll-pin") and "appeared in v5.6" in str(e.exc), \
                (case.name, version, e.exc)
            continue
        assert result.model_problems == [], (case.name, version, result.model_problems)


def test_the_sample_covers_every_rule_on_both_sides() -> None:
    for rule in RULES:
        assert any(re.search(rule.cases, c.name) for c in SAMPLE), rule.cases


def test_rules_change_at_switch_versions_and_never_on_the_newest_era() -> None:
    edges = {s.first_version for s in SWITCHES} | {s.removed_in for s in SWITCHES
                                                    if s.removed_in}
    for rule in RULES:
        assert rule.until in edges and (rule.since is None or rule.since in edges)
        assert rule.why
    assert all(rule_for(c, NEWEST) is None for c in CASES)
    assert all(expectation_on(c, None) is c.expect for c in CASES)


def test_an_older_era_expects_what_that_kernel_did() -> None:
    """A rule's expectation is really different: the newest trace fails it."""
    case = next(c for c in CASES
                if c.name == "cow: fork() with an io_uring fixed buffer, base page")
    assert rule_for(case, "5.8") is not None and rule_for(case, "5.9") is None
    new = run_case(case, with_host=False)
    assert expectation_on(case, "5.8")(new.model) != []
    old = run_case(case, with_host=False, version="5.8")
    assert case.expect(old.model) != [] and old.model_problems == []


def test_host_profile_is_the_newest_not_after_the_release() -> None:
    assert host_profile("5.15.0-91-generic")[0] == "5.13"
    assert host_profile("6.18.1")[0] == NEWEST
    version, why = host_profile("4.19.0")
    assert version == KERNEL_VERSIONS[0] and "predates" in why
    version, why = host_profile()
    assert version in KERNEL_VERSIONS and why.startswith("host kernel ")


def test_live_says_which_profile_it_models() -> None:
    from click.testing import CliRunner

    from gupsim.cli import main
    r = CliRunner().invoke(main, ["live", "--model-only", "-k", "account: io_uring 1MiB"])
    assert r.exit_code == 0, r.output
    assert f"model profile v{host_profile()[0]}: host kernel " in r.output
