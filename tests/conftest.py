"""Shared fixtures: a small machine in debug mode, so every step checks the invariants."""

from __future__ import annotations

import pytest

import gupsim


@pytest.fixture
def k() -> gupsim.Kernel:
    return gupsim.Kernel(memory="256MiB", nr_hugepages=4, swap="64MiB", debug=True)


@pytest.fixture
def p(k: gupsim.Kernel) -> gupsim.Process:
    return k.spawn("app")
