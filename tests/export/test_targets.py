"""The target registry: sound entries, versioned recipes, one entry per new target, one CLI dialect."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from export import targets as registry
from export.flow import resolve_steps
from export.targets import (STEPS, TARGETS, ExportRecipe, LoweringRecipe, Target, VerifySpec, check_registry,
                            family_targets, get_target, target_for)
from quantize.recipes import RECIPES, CalibrationSpec, QuantRecipe, RecipeVersionError

REPO = Path(__file__).resolve().parents[2]


def test_registry_is_sound() -> None:
    assert check_registry() == []
    for target in TARGETS.values():
        assert target.steps == tuple(s for s in STEPS if s in target.steps)  # an ordered subset of the steps
        assert resolve_steps(target) == list(target.steps)
        assert target.thresholds()  # every target has bars (possibly "reported only") in its family's file
        assert target_for(target.family, target.recipe.name) is target
    from export.prepare import focus_implementation_for

    for target in TARGETS.values():  # every lowering recipe names a graph variant export/prepare.py knows
        assert focus_implementation_for(target.recipe.lowering.graph) in ("bias", "split")


def test_the_six_old_lists_are_one_registry() -> None:
    # What used to be RECIPES/LOWERING_RECIPES/PRECISIONS/QNN_RECIPES/EXPORT_TARGETS/default_targets:
    assert set(family_targets("executorch")) == {"xnnpack-fp32", "xnnpack-int8", "xnnpack-int8-mixed", "coreml-fp16",
                                                 "qnn-fp16"}
    assert set(family_targets("coreml")) == {"fp16", "fp32", "w8", "w6", "w4", "mixed"}
    assert {"w8a16", "w8a8"} <= set(family_targets("qnn"))
    assert {t.recipe.quantization.name for t in TARGETS.values()} <= set(RECIPES)
    assert [t.name for t in TARGETS.values() if t.main_job is not None] == [
        "executorch-xnnpack-fp32", "executorch-xnnpack-int8", "executorch-xnnpack-int8-mixed", "coreml-fp16",
        "qnn-w8a16"]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_round_trips_through_its_dictionary(name: str) -> None:
    target = TARGETS[name]
    data = json.loads(json.dumps(target.to_dict()))  # what a manifest or a report stores
    assert Target.from_dict(data) == target


def test_a_version_mismatch_is_refused() -> None:
    target = get_target("qnn-w8a16")
    cases = [
        (Target, target.to_dict()),
        (ExportRecipe, target.recipe.to_dict()),
        (LoweringRecipe, target.recipe.lowering.to_dict()),
        (QuantRecipe, target.recipe.quantization.to_dict()),
        (CalibrationSpec, CalibrationSpec().to_dict()),
        (VerifySpec, target.verify.to_dict()),
    ]
    for cls, data in cases:
        assert data["version"] == cls.VERSION
        with pytest.raises(RecipeVersionError, match=f"{cls.__name__} version 99 is not"):
            cls.from_dict(data | {"version": 99})
    nested = target.to_dict()
    nested["recipe"]["quantization"]["calibration"]["version"] = 0  # deep inside: still refused
    with pytest.raises(RecipeVersionError, match="CalibrationSpec version 0"):
        Target.from_dict(nested)
    with pytest.raises(RecipeVersionError, match="unknown fields"):
        CalibrationSpec.from_dict(CalibrationSpec().to_dict() | {"bits": 3})
    with pytest.raises(RecipeVersionError, match="expected a QuantRecipe"):
        QuantRecipe.from_dict(CalibrationSpec().to_dict())


def test_steps_are_checked() -> None:
    fp32, int8 = get_target("executorch-xnnpack-fp32"), get_target("executorch-xnnpack-int8")
    assert resolve_steps(fp32, skip=["verify"]) == ["prepare", "lower", "package"]
    assert resolve_steps(fp32, skip=["lower", "package"]) == ["prepare", "verify"]  # verify an existing folder
    with pytest.raises(ValueError, match="run or are skipped together"):
        resolve_steps(fp32, skip=["package"])
    with pytest.raises(ValueError, match="has no step 'quantize'"):
        resolve_steps(fp32, steps=["prepare", "quantize"])
    with pytest.raises(ValueError, match="unknown steps"):
        resolve_steps(fp32, skip=["deploy"])
    with pytest.raises(ValueError, match="'lower' needs 'quantize'"):
        resolve_steps(int8, skip=["quantize"])


def test_a_new_target_is_one_entry(monkeypatch, tmp_path) -> None:
    """One registry entry (plus its thresholds, which are data) reaches every CLI, run_all and the benchmarks."""
    base = get_target("executorch-xnnpack-fp32")
    new = replace(base, name="executorch-xnnpack-fp32-split",
                  recipe=replace(base.recipe, name="xnnpack-fp32-split",
                                 lowering=replace(base.recipe.lowering, settings=(("focus", "split"),))),
                  main_job=("--parity-scenes", "1"))
    monkeypatch.setitem(TARGETS, new.name, new)
    original = registry.numerics
    bars = {**original("executorch"), new.name: {"parity": {"min_psnr_component": 60.0}}}
    monkeypatch.setattr(registry, "numerics", lambda family: bars if family == "executorch" else original(family))
    assert check_registry() == []

    from export.run_all import planned_exports
    from export.to_executorch import build_parser

    assert build_parser().parse_args(["--recipe", "xnnpack-fp32-split"]).recipe == "xnnpack-fp32-split"
    planned = {p.name: p for p in planned_exports(tmp_path, None)}
    assert planned[new.name].args[:4] == ["--recipe", "xnnpack-fp32-split", "--out", str(tmp_path / new.name)]
    assert get_target(new.name).recipe.lowering.options == {"focus": "split"}
    assert new.thresholds() == {"parity": {"min_psnr_component": 60.0}}


def test_one_cli_dialect() -> None:
    """--out, --recipe, --components (space separated), --skip, calibration, parity and weight flags everywhere."""
    from export import to_coreml, to_executorch, to_qnn

    shared = {"--out", "--recipe", "--components", "--skip", "--calibration-scenes", "--calibration-tiles",
              "--parity-scenes", "--parity-tiles", "--parity-scene-size", "--sd21", "--lora", "--checkpoint",
              "--config", "--depth-checkpoint"}
    for module in (to_executorch, to_coreml, to_qnn):
        parser = module.build_parser()
        flags = {o for action in parser._actions for o in action.option_strings}
        assert shared <= flags, (module.__name__, shared - flags)
        args = parser.parse_args(["--components", "encoder", "decoder"])
        assert args.components == ["encoder", "decoder"] and args.out is None
        assert args.recipe in family_targets(module.FAMILY)
        assert "--precision" not in flags  # one vocabulary: --recipe


def test_export_help_loads_no_heavy_library() -> None:
    """Every exporter's --help: nothing on stderr from the exporters, no backend library beyond what the
    shared weight flags (runtime_py) load on their own (measured here as the baseline)."""
    heavy = ("torch", "coremltools", "executorch", "onnxruntime", "onnx", "torchao", "transformers", "diffusers",
             "accelerate", "peft", "matplotlib", "qai_hub")
    script = f"""
import contextlib, io, json, runpy, sys
heavy = {heavy!r}
loaded = lambda: sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy))
import runtime_py.checkpoints.weight_args
base = loaded()
print("--- exporters from here ---", file=sys.stderr, flush=True)
out = {{}}
for path in ("export/to_executorch.py", "export/to_coreml.py", "export/to_qnn.py", "export/run_all.py"):
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        runpy.run_path(path, run_name="__main__")
    out[path] = sorted(set(loaded()) - set(base))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    extra = json.loads(proc.stdout.strip().splitlines()[-1])
    assert extra == {path: [] for path in extra}, extra
    assert proc.stderr.split("--- exporters from here ---")[1].strip() == ""
