"""Shared pytest set-up: tests marked ``slow`` (full-scale checks) run only with ``--run-slow``;
``--fuzz-examples N`` (or ``MAGICBOKEH_FUZZ_EXAMPLES=N``) runs the loader fuzzers longer."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (full-scale checks; not run in CI)")
    parser.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                     help="examples per fuzz property (default: a brief run, or $MAGICBOKEH_FUZZ_EXAMPLES)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
