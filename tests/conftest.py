"""Shared pytest set-up: tests marked ``slow`` (full-scale checks) run only with ``--run-slow``;
``--fuzz-examples N`` (or ``MAGICBOKEH_FUZZ_EXAMPLES=N``) runs the loader fuzzers longer; session
fixtures too costly to build per file (the tiny ExecuTorch export)."""

from __future__ import annotations

from pathlib import Path

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


#: The export target the shared ExecuTorch fixture writes (a folder of that name under its root).
TINY_EXECUTORCH_TARGET = "executorch-xnnpack-fp32"


@pytest.fixture(scope="session")
def tiny_executorch_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ExecuTorch XNNPACK fp32 artifacts (encoder, denoiser, decoder) of the ``tiny`` benchmark model.

    Exported once per session (the slowest shared set-up: minutes on a loaded 2-core machine) and
    read-only for the tests that use it: the benchmark run reuses it as ``--reuse-artifacts ROOT``
    and the parity CLI reads ``ROOT/executorch-xnnpack-fp32``. Tests that need a changed copy copy it.
    """
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed")
    from benchmarks.artifacts import export_for_benchmark

    root = tmp_path_factory.mktemp("tiny-executorch")
    export_for_benchmark(TINY_EXECUTORCH_TARGET, "tiny", str(root / TINY_EXECUTORCH_TARGET))
    return root
