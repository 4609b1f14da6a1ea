"""The deployment targets: one frozen, versioned definition and ONE registry, ``TARGETS``.

A target is the unit every tool iterates: the exporters (``export/to_*.py`` through
``export.flow.export_target``), the main job (``export/run_all.py``), the benchmarks and parity.
It names

* the runtime backend that executes its artifacts (``runtime_py.backends``),
* its recipe: a quantization part (``quantize.recipes``, the one precision vocabulary) and a
  lowering part (which lowering family, which delegate, which graph variant, default settings),
* the steps it runs (``STEPS``: prepare -> quantize -> lower -> package -> verify),
* where its parity thresholds live (``export/numerics/<family>.json``, keyed by target name),
* its artifacts folder name and default components,
* how much the verify step (parity) measures by default, and how the main job runs it.

Adding a target is one entry in ``TARGETS`` (plus its lowering code when it needs a new family).
Everything here is plain data: importing this module loads no heavy library, so every CLI's
``--help`` is instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from quantize.recipes import QuantRecipe, Versioned, check_version, get_recipe, versioned_dict

#: The export flow's steps, in order (``export.flow``).
STEPS = ("prepare", "quantize", "lower", "package", "verify")

#: Lowering families: the module that lowers a family's targets (imported only when one runs), the
#: CLI the main job runs for it, and the manifest ``backend`` its artifacts folders carry.
FAMILIES: dict[str, dict[str, str]] = {
    "executorch": {"module": "export.executorch_lowering", "cli": "export/to_executorch.py", "manifest": "executorch"},
    "coreml": {"module": "export.coreml_lowering", "cli": "export/to_coreml.py", "manifest": "coreml"},
    "qnn": {"module": "export.qnn_lowering", "cli": "export/to_qnn.py", "manifest": "qnn"},
}

TILE = ("encoder", "denoiser", "decoder")
ALL_COMPONENTS = (*TILE, "depth")
NUMERICS_DIR = Path(__file__).resolve().parent / "numerics"


@dataclass(frozen=True)
class LoweringRecipe(Versioned):
    """The lowering part of a recipe: which family lowers it, with which delegate and graph.

    ``graph`` is the ``export/prepare.py`` variant (focus-attention realisation and rewrites);
    ``settings`` are the family's option defaults (``Options`` of its module), as sorted pairs so
    that the recipe stays frozen.
    """

    VERSION: ClassVar[int] = 1

    family: str
    delegate: str
    graph: str
    settings: tuple[tuple[str, Any], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown lowering family {self.family!r}; known: {sorted(FAMILIES)}")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        data = versioned_dict(self)
        data["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoweringRecipe":
        body = check_version(cls, data)
        body["settings"] = _pairs(body.get("settings", {}))
        return cls(**body)


@dataclass(frozen=True)
class ExportRecipe(Versioned):
    """A quantization part plus a lowering part (the shape of ExecuTorch's ``ExportRecipe``)."""

    VERSION: ClassVar[int] = 1

    name: str
    quantization: QuantRecipe
    lowering: LoweringRecipe

    @property
    def precision(self) -> str:
        return self.quantization.precision_label

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "version": self.VERSION, "name": self.name,
                "precision": self.precision, "quantization": self.quantization.to_dict(),
                "lowering": self.lowering.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExportRecipe":
        body = check_version(cls, {k: v for k, v in data.items() if k != "precision"})
        return cls(body["name"], QuantRecipe.from_dict(body["quantization"]), LoweringRecipe.from_dict(body["lowering"]))


@dataclass(frozen=True)
class VerifySpec(Versioned):
    """How much the verify step (parity against the fp32 torch reference) measures by default.

    ``scene_size`` None: 1.5 tiles square (4 overlapping tiles); ``"tile"``: one-tile scenes.
    """

    VERSION: ClassVar[int] = 1

    num_scenes: int = 1
    max_tiles_per_image: int | None = None
    scene_size: int | str | None = None
    seed: int = 1234
    images_dir: str | None = None


@dataclass(frozen=True)
class Target(Versioned):
    """One deployment target (see the module docstring)."""

    VERSION: ClassVar[int] = 1

    name: str
    backend: str
    recipe: ExportRecipe
    steps: tuple[str, ...] = STEPS
    components: tuple[str, ...] = TILE
    verify: VerifySpec = field(default_factory=VerifySpec)
    #: Flags the main job adds to this target's CLI; None: the main job does not build it.
    main_job: tuple[str, ...] | None = None
    #: The main job renders only the bottom-left ``(height, width)`` crop through it (None: all).
    render_crop: tuple[int, int] | None = None
    notes: str = ""

    @property
    def family(self) -> str:
        return self.recipe.lowering.family

    @property
    def precision(self) -> str:
        return self.recipe.precision

    @property
    def artifacts(self) -> str:
        """The artifacts folder's name (under ``artifacts/`` by default, ``outputs/main/`` in the main job)."""
        return self.name

    @property
    def numerics(self) -> Path:
        """The thresholds file of this target's family."""
        return NUMERICS_DIR / f"{self.family}.json"

    @property
    def split_parity(self) -> bool:
        """Whether parity separates quantization error from backend error (a CPU run of the same graph exists)."""
        return "quantization" in self.thresholds()

    def thresholds(self) -> dict[str, dict[str, float | None]]:
        """This target's parity bars: ``{"parity": {...}}`` or ``{"quantization": {...}, "backend": {...}}``."""
        return {k: v for k, v in numerics(self.family)[self.name].items() if k != "benchmark"}

    @property
    def tile_chain_bar(self) -> float | None:
        """The tile-chain PSNR (dB, against torch fp32) the benchmark's recommendation asks of it (None: none)."""
        return numerics(self.family)[self.name].get("benchmark", {}).get("min_psnr_tile_chain")

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "version": self.VERSION, "name": self.name, "backend": self.backend,
                "recipe": self.recipe.to_dict(), "steps": list(self.steps), "components": list(self.components),
                "verify": self.verify.to_dict(), "main_job": list(self.main_job) if self.main_job is not None else None,
                "render_crop": list(self.render_crop) if self.render_crop else None, "notes": self.notes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Target":
        body = check_version(cls, data)
        return cls(
            name=body["name"], backend=body["backend"], recipe=ExportRecipe.from_dict(body["recipe"]),
            steps=tuple(body["steps"]), components=tuple(body["components"]),
            verify=VerifySpec.from_dict(body["verify"]),
            main_job=tuple(body["main_job"]) if body.get("main_job") is not None else None,
            render_crop=tuple(body["render_crop"]) if body.get("render_crop") else None,  # type: ignore[arg-type]
            notes=body.get("notes", ""),
        )


def _pairs(settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


def _recipe(name: str, quantization: str, family: str, delegate: str, graph: str, description: str,
            **settings: Any) -> ExportRecipe:
    return ExportRecipe(name, get_recipe(quantization),
                        LoweringRecipe(family, delegate, graph, _pairs(settings), description))


_NO_QUANTIZE = ("prepare", "lower", "package", "verify")
_CALIBRATED = STEPS
_COREML_DEFAULTS = {"deployment_target": "iOS17", "compute_units": "all", "ane_layout": True}
_COREML_VERIFY = VerifySpec(num_scenes=1, max_tiles_per_image=2)
_ET_VERIFY = VerifySpec(num_scenes=2)
# The simulated HTP takes seconds (encoder, depth) to minutes (denoiser) per 512-px tile on x86:
# parity uses its own seed (not the calibration scenes) and few tiles.
_QNN_VERIFY = VerifySpec(num_scenes=1, max_tiles_per_image=4, seed=4321)
#: The largest context binary a part may have (MiB): ExecuTorch reports mmap failures above ~467 MB
#: on phones and Qualcomm AI Hub ships SD's UNet in parts, so a component estimated above this is
#: split (``export.qnn_lowering``); the small models never are.
QNN_MAX_PART_MB = 400.0
_QNN_MAIN_JOB = ("--calibration-scenes", "2", "--parity-scenes", "1", "--parity-tiles", "1",
                 "--parity-scene-size", "tile")


def _coreml(name: str, quantization: str, description: str, main_job: tuple[str, ...] | None = None) -> Target:
    steps = _CALIBRATED if get_recipe(quantization).needs_calibration else _NO_QUANTIZE
    return Target(f"coreml-{name}", "coreml",
                  _recipe(name, quantization, "coreml", "coreml", "coreml", description, **_COREML_DEFAULTS),
                  steps=steps, components=ALL_COMPONENTS, verify=_COREML_VERIFY, main_job=main_job)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("executorch-xnnpack-fp32", "executorch",
           _recipe("xnnpack-fp32", "fp32", "executorch", "xnnpack", "xnnpack", "XNNPACK CPU delegate, fp32"),
           steps=_NO_QUANTIZE, verify=_ET_VERIFY, main_job=("--parity-scenes", "1")),
    Target("executorch-xnnpack-int8", "executorch",
           _recipe("xnnpack-int8", "w8a8", "executorch", "xnnpack", "xnnpack-int8",
                   "PT2E int8 (XNNPACKQuantizer, per-channel symmetric weights, activations calibrated on real "
                   "tiles), XNNPACK delegate"),
           verify=_ET_VERIFY, main_job=("--calibration-scenes", "2", "--calibration-tiles", "4", "--parity-scenes", "1")),
    Target("executorch-xnnpack-int8-mixed", "executorch",
           _recipe("xnnpack-int8-mixed", "w8a8-mixed", "executorch", "xnnpack", "xnnpack-int8",
                   "PT2E int8 with the layer groups that measured sensitivity (quantize/sensitivity.py, XNNPACK "
                   "fake-quant on the calibration tiles) marks left fp32, XNNPACK delegate"),
           verify=_ET_VERIFY, main_job=("--calibration-scenes", "2", "--calibration-tiles", "4", "--parity-scenes", "1")),
    Target("executorch-coreml-fp16", "executorch",
           _recipe("coreml-fp16", "fp16", "executorch", "coreml", "coreml",
                   "Core ML delegate, ML program, fp16, iOS 17 (runs on Apple OSes only)"),
           steps=_NO_QUANTIZE, verify=_ET_VERIFY),
    Target("executorch-qnn-fp16", "executorch",
           _recipe("qnn-fp16", "fp16", "executorch", "qnn", "qnn", "QNN HTP delegate, fp16 (needs a QNN SDK)",
                   soc="SM8650"),
           steps=_NO_QUANTIZE, verify=_ET_VERIFY),
    _coreml("fp16", "fp16", "ML program, fp16 weights and compute", main_job=("--components", *TILE)),
    _coreml("fp32", "fp32", "ML program, fp32 (converter debugging only)"),
    _coreml("w8", "w8", "8-bit linear weights (per output channel), fp16 compute"),
    _coreml("w6", "w6-palettized", "6-bit k-means palettized weights, fp16 compute"),
    _coreml("w4", "w4-palettized", "4-bit k-means palettized weights, fp16 compute"),
    _coreml("mixed", "mixed-palettized",
            "per-layer 4/6/8-bit palettization chosen by sensitivity measured in torch on real tiles"),
    Target("qnn-w8a16", "qnn-htp",
           _recipe("w8a16", "w8a16", "qnn", "qnn-htp", "qnn",
                   "ONNX -> HTP rewrites -> QDQ W8A16 (streaming calibration) -> HTP context binaries (CPU "
                   "fallback disabled), split into parts of < 400 MB context each where larger",
                   contexts=True, calibration="streaming", max_part_mb=QNN_MAX_PART_MB),
           components=ALL_COMPONENTS, verify=_QNN_VERIFY, main_job=_QNN_MAIN_JOB, render_crop=(512, 512),
           notes="HTP simulated on x86: parity on one 1-tile scene (see parity.md), render of a one-tile "
                 "crop of the sample photo; its time says nothing about a phone"),
    Target("qnn-w8a8", "qnn-htp",
           _recipe("w8a8", "w8a8", "qnn", "qnn-htp", "qnn",
                   "ONNX -> HTP rewrites -> QDQ W8A8 (the denoiser's x0 step 16-bit) -> HTP context binaries, "
                   "split into parts of < 400 MB context each where larger",
                   contexts=True, calibration="streaming", max_part_mb=QNN_MAX_PART_MB),
           components=ALL_COMPONENTS, verify=_QNN_VERIFY),
    Target("qnn-w8a8-mixed", "qnn-htp",
           _recipe("w8a8-mixed", "w8a8-mixed", "qnn", "qnn-htp", "qnn",
                   "ONNX -> HTP rewrites -> QDQ W8A8 with 16-bit activations in the layer groups that measured "
                   "sensitivity (QDQ simulation on the calibration tiles) marks -> HTP context binaries",
                   contexts=True),
           components=ALL_COMPONENTS, verify=_QNN_VERIFY),
    Target("onnx-fp32", "onnxruntime-fp32",
           _recipe("fp32", "fp32", "qnn", "onnx", "qnn",
                   "ONNX fp32 after the HTP rewrites (the QNN route's float stage), run by ONNX Runtime's CPU EP",
                   contexts=False),
           steps=_NO_QUANTIZE, components=ALL_COMPONENTS, verify=VerifySpec(num_scenes=1, max_tiles_per_image=2)),
)}


class UnknownTargetError(ValueError):
    """A target or recipe name that the registry does not hold."""


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}") from None


def family_targets(family: str) -> dict[str, Target]:
    """A family's targets by recipe name (the ``--recipe`` vocabulary of its CLI)."""
    return {t.recipe.name: t for t in TARGETS.values() if t.family == family}


def target_for(family: str, recipe: str) -> Target:
    """The target a family's CLI builds for ``--recipe``."""
    found = family_targets(family).get(recipe)
    if found is None:
        raise UnknownTargetError(f"{family} has no recipe {recipe!r}; choose one of {sorted(family_targets(family))}")
    return found


def main_job_targets() -> list[Target]:
    return [t for t in TARGETS.values() if t.main_job is not None]


@lru_cache(maxsize=None)
def _numerics_file(family: str) -> dict[str, Any]:
    path = NUMERICS_DIR / f"{family}.json"
    data = json.loads(path.read_text())
    if data.get("schema") != "magicbokeh-numerics" or data.get("version") != 1:
        raise ValueError(f"{path}: not a magicbokeh-numerics version 1 file")
    return data["targets"]


def numerics(family: str) -> dict[str, Any]:
    """A family's thresholds file (``export/numerics/<family>.json``): target name -> parity bars."""
    return _numerics_file(family)


def check_registry() -> list[str]:
    """Every problem with the registry, as lines (empty when it is sound): what the tests assert."""
    problems = []
    for name, target in TARGETS.items():
        order = [s for s in STEPS if s in target.steps]
        if list(target.steps) != order or not set(target.steps) <= set(STEPS):
            problems.append(f"{name}: steps {target.steps} are not an ordered subset of {STEPS}")
        for required in ("prepare", "lower", "package"):
            if required not in target.steps:
                problems.append(f"{name}: a target always runs {required!r}")
        if target.recipe.quantization.needs_calibration and "quantize" not in target.steps:
            problems.append(f"{name}: recipe {target.recipe.quantization.name} needs calibration but has no quantize step")
        if not target.recipe.quantization.needs_calibration and "quantize" in target.steps:
            problems.append(f"{name}: a quantize step without anything to calibrate")
        unknown = set(target.components) - set(ALL_COMPONENTS)
        if unknown:
            problems.append(f"{name}: unknown components {sorted(unknown)}")
        try:
            bars = target.thresholds()
        except (KeyError, OSError, ValueError) as exc:
            problems.append(f"{name}: no thresholds in {target.numerics.name}: {exc}")
            continue
        if set(bars) not in ({"parity"}, {"quantization", "backend"}):
            problems.append(f"{name}: thresholds need 'parity', or 'quantization' and 'backend'; got {sorted(bars)}")
    recipes = [(t.family, t.recipe.name) for t in TARGETS.values()]
    if len(recipes) != len(set(recipes)):
        problems.append("two targets of one family share a recipe name")
    return problems
