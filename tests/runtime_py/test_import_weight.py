"""What importing the runtime really loads (a fresh interpreter per check; import-linter sees only statements).

The integrator-facing modules must not drag in the exporters' or trainers' heavy libraries: each
backend imports its runtime when it is used, the model imports diffusers when one is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HEAVY = ("coremltools", "executorch", "onnxruntime", "torchao", "transformers", "accelerate", "peft",
         "matplotlib", "qai_hub")
TOOLKIT = ("export", "quantize", "training", "benchmarks")


def _loaded_after(statement: str) -> list[str]:
    """Top-level packages from HEAVY + TOOLKIT (+ diffusers) that ``statement`` leaves in sys.modules."""
    watched = (*HEAVY, *TOOLKIT, "diffusers")
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_modules_load_no_heavy_library() -> None:
    loaded = _loaded_after("import runtime_py.pipeline, runtime_py.manifest, runtime_py.backends, runtime_py.parity, "
                           "runtime_py.contract, runtime_py.samples, runtime_py.cli")
    assert not [m for m in loaded if m in HEAVY or m in TOOLKIT], loaded
    assert "diffusers" not in loaded  # the model definition is imported only to build a model


@pytest.mark.parametrize("module", ["runtime_py.model.config", "runtime_py.checkpoints", "runtime_py.components"])
def test_configuration_and_checkpoint_packages_are_light(module: str) -> None:
    assert _loaded_after(f"import {module}") == []


def test_building_the_torch_model_loads_no_exporter_or_trainer() -> None:
    loaded = _loaded_after("from runtime_py.model import build_model\nbuild_model('tiny')")
    assert "diffusers" in loaded  # the sanity check of this test: the model really was built
    assert not [m for m in loaded if m in TOOLKIT or m in ("coremltools", "executorch", "onnxruntime", "qai_hub",
                                                            "matplotlib")], loaded
