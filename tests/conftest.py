"""Shared pytest set-up: tests marked ``slow`` (full-scale checks) run only with ``--run-slow``;
``--fuzz-examples N`` (or ``MAGICBOKEH_FUZZ_EXAMPLES=N``) runs the loader fuzzers longer; session
fixtures too costly to build per file (the tiny ExecuTorch export, the tiny Core ML export)."""

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
    read-only for the tests that use it: the benchmark run reuses it as ``--reuse-artifacts ROOT``,
    the parity CLI reads ``ROOT/executorch-xnnpack-fp32``, and test_to_executorch_e2e.py checks
    per-component parity and a whole-image render on it. Tests that need a changed copy copy it.
    """
    pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed")
    from benchmarks.artifacts import export_for_benchmark

    root = tmp_path_factory.mktemp("tiny-executorch")
    export_for_benchmark(TINY_EXECUTORCH_TARGET, "tiny", str(root / TINY_EXECUTORCH_TARGET))
    return root


#: The export target of the shared Core ML fixture.
TINY_COREML_TARGET = "coreml-fp16"


@pytest.fixture(scope="session")
def tiny_coreml_export(tmp_path_factory: pytest.TempPathFactory):
    """The ``coreml-fp16`` export (encoder, denoiser, decoder) of the ``tiny`` built-in model, as
    ``export/to_coreml.py --config tiny --components encoder denoiser decoder`` makes it: the flow's
    verify step included (parity by executing the packages with the interpreter). Returns the
    flow's ``ExportResult`` (``.folder`` holds the packages).

    Exported once per session (converting and verifying the denoiser takes minutes on a loaded
    2-core machine) and read-only for the tests that use it: the op-coverage test of the Core ML
    interpreter reads its packages, the Core ML render test renders through them.
    """
    pytest.importorskip("coremltools", reason="coremltools is not installed")
    from export.flow import ExportSettings, export_target
    from export.targets import get_target
    from runtime_py.components import TILE_COMPONENTS
    from runtime_py.default_model import load_default_model

    model, label = load_default_model("tiny")
    target = get_target(TINY_COREML_TARGET)
    folder = tmp_path_factory.mktemp("tiny-coreml") / TINY_COREML_TARGET
    return export_target(target, model, folder, settings=ExportSettings(components=TILE_COMPONENTS, verify=target.verify),
                         model_label=label, log=lambda _m: None)
