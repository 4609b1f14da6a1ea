"""Lower MagicBokeh components to ExecuTorch ``.pte`` programs, one recipe at a time.

Recipes (delegate + precision):

* ``xnnpack-fp32``: the XNNPACK CPU delegate, fp32. The parity baseline for phones.
* ``xnnpack-int8``: PT2E int8 (per-channel symmetric weights, int8 activations calibrated on real
  tiles) then the XNNPACK delegate.
* ``coreml-fp16``: the Core ML delegate (ML program, fp16 compute, iOS 17). Lowering works on
  Linux; running needs an Apple OS (the Core ML runtime is not in Linux builds of ExecuTorch).
* ``qnn-fp16``: the Qualcomm QNN HTP delegate, fp16. Needs a QNN SDK (``QNN_SDK_ROOT``); without
  one lowering stops with :class:`QnnSdkMissingError` *before* ExecuTorch's own set-up, which
  would otherwise try to download an SDK.

An export writes every ``.pte`` into a temporary folder, writes ``manifest.json`` last, and
renames the folder into place, so an interrupted export never leaves a folder that looks valid.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from export.prepare import (
    ExportError,
    PreparedComponent,
    export_component,
    focus_implementation_for,
    prepare_component,
    rewrites_for,
)
from runtime_py.atomic import atomic_path
from runtime_py.backends.base import BackendUnavailableError
from runtime_py.components import Component
from runtime_py.manifest import ComponentEntry, Manifest, write_manifest
from runtime_py.memory import peak_rss_mib
from runtime_py.model import MagicBokehConfig

BACKEND_NAME = "executorch"
QNN_DEFAULT_SOC = "SM8650"  # Snapdragon 8 Gen 3 (HTP v75)


class QnnSdkMissingError(BackendUnavailableError):
    """The QNN delegate needs a Qualcomm QNN SDK folder named by QNN_SDK_ROOT."""


@dataclass(frozen=True)
class LoweringRecipe:
    """How one ExecuTorch artifact is made: which delegate, which precision."""

    name: str
    delegate: str  # "xnnpack" | "coreml" | "qnn"
    precision: str  # manifest precision label: "fp32" | "w8a8" | "fp16"
    target: str  # export/prepare.py target (chooses the focus-attention realisation)
    description: str = ""

    @property
    def quantized(self) -> bool:
        return self.precision.startswith("w")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "delegate": self.delegate, "precision": self.precision,
                "target": self.target, "description": self.description}


LOWERING_RECIPES: dict[str, LoweringRecipe] = {
    "xnnpack-fp32": LoweringRecipe("xnnpack-fp32", "xnnpack", "fp32", "xnnpack", "XNNPACK CPU delegate, fp32"),
    "xnnpack-int8": LoweringRecipe(
        "xnnpack-int8", "xnnpack", "w8a8", "xnnpack-int8",
        "PT2E int8 (XNNPACKQuantizer, per-channel symmetric weights, activations calibrated on real tiles)",
    ),
    "coreml-fp16": LoweringRecipe("coreml-fp16", "coreml", "fp16", "coreml", "Core ML delegate, ML program, fp16, iOS 17"),
    "qnn-fp16": LoweringRecipe("qnn-fp16", "qnn", "fp16", "qnn", f"QNN HTP delegate, fp16, SoC {QNN_DEFAULT_SOC}"),
}


def get_lowering_recipe(name: str) -> LoweringRecipe:
    try:
        return LOWERING_RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown ExecuTorch recipe {name!r}; choose one of {sorted(LOWERING_RECIPES)}") from None


# -- partitioners ---------------------------------------------------------------------------------


def check_qnn_sdk() -> Path:
    """The QNN SDK root, or a clear error saying what is missing."""
    root = os.environ.get("QNN_SDK_ROOT", "").strip()
    if not root:
        raise QnnSdkMissingError(
            "the QNN delegate needs the Qualcomm AI Engine Direct (QNN) SDK: set QNN_SDK_ROOT to the SDK folder "
            "(ExecuTorch 1.5.1 expects QNN 2.37, with lib/x86_64-linux-clang/ inside). No SDK is configured on this "
            "machine; use the xnnpack recipes, or the ONNX Runtime QNN path (export/to_qnn)."
        )
    path = Path(root)
    libs = path / "lib" / "x86_64-linux-clang"
    if not libs.is_dir():
        raise QnnSdkMissingError(f"QNN_SDK_ROOT={root} has no lib/x86_64-linux-clang/ folder: not a QNN SDK")
    return path


def _partitioners(recipe: LoweringRecipe) -> list[Any]:
    if recipe.delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if recipe.delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16
        )
        return [CoreMLPartitioner(compile_specs=specs)]
    if recipe.delegate == "qnn":
        check_qnn_sdk()
        from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
        from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
        from executorch.backends.qualcomm.utils.utils import (
            generate_htp_compiler_spec,
            generate_qnn_executorch_compiler_spec,
        )

        specs = generate_qnn_executorch_compiler_spec(
            soc_model=getattr(QcomChipset, QNN_DEFAULT_SOC),
            backend_options=generate_htp_compiler_spec(use_fp16=True),
        )
        return [QnnPartitioner(specs)]
    raise ValueError(f"unknown delegate {recipe.delegate!r}")


def delegation_summary(edge_program: Any) -> dict[str, int]:
    """How many graph nodes the delegate took (non-delegated nodes run in ExecuTorch's portable ops)."""
    try:
        from executorch.devtools.backend_debug import get_delegation_info

        info = get_delegation_info(edge_program.exported_program().graph_module)
        return {
            "delegated_subgraphs": int(info.num_delegated_subgraphs),
            "delegated_nodes": int(info.num_delegated_nodes),
            "non_delegated_nodes": int(info.num_non_delegated_nodes),
        }
    except Exception:  # a summary is a nicety; never fail an export over it
        return {}


def lower_program(program: torch.export.ExportedProgram, recipe: LoweringRecipe, name: str = "component") -> tuple[bytes, dict[str, int]]:
    """Exported program -> ``.pte`` bytes through the recipe's delegate, plus a delegation summary."""
    from executorch.exir import to_edge_transform_and_lower

    partitioners = _partitioners(recipe)  # QNN checks its SDK here, before any heavy work
    try:
        edge = to_edge_transform_and_lower(program, partitioner=partitioners)
        summary = delegation_summary(edge)
        buffer = edge.to_executorch().buffer
    except Exception as exc:
        raise ExportError(
            f"ExecuTorch lowering ({recipe.name}) failed for component {name!r}: {type(exc).__name__}: {_short(exc)}"
        ) from exc
    return bytes(buffer), summary


# -- one component --------------------------------------------------------------------------------


@dataclass
class LoweredComponent:
    name: str
    pte: bytes
    recipe: LoweringRecipe
    focus_implementation: str | None
    seconds: dict[str, float]
    delegation: dict[str, int] = field(default_factory=dict)
    calibration_batches: int = 0
    rewrites: tuple[str, ...] = ()


def lower_component(
    component: Component,
    recipe: LoweringRecipe | str,
    *,
    calibration_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
    focus: str | None = None,
    rewrites: Sequence[str] | None = None,
) -> LoweredComponent:
    """Export, (quantize,) and lower one component; times each stage."""
    recipe = get_lowering_recipe(recipe) if isinstance(recipe, str) else recipe
    if recipe.delegate == "qnn":
        check_qnn_sdk()
    if recipe.quantized:
        if recipe.delegate != "xnnpack":
            raise ValueError(f"recipe {recipe.name}: int8 is implemented for XNNPACK only")
        if not calibration_inputs:
            raise ValueError(
                f"recipe {recipe.name}: component {component.name!r} needs calibration inputs (real tiles); got none"
            )
    prepare_component(component)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    program = export_component(component, target=recipe.target, focus=focus, rewrites=rewrites)
    seconds["export"] = time.perf_counter() - start
    batches = 0
    if recipe.quantized:
        from quantize.xnnpack import quantize_program

        quantized = quantize_program(program, calibration_inputs, name=component.name)
        program, batches = quantized.program, quantized.calibration_batches
        seconds["quantize"] = quantized.seconds
    start = time.perf_counter()
    pte, delegation = lower_program(program, recipe, component.name)
    seconds["lower"] = time.perf_counter() - start
    impl = focus_implementation_for(recipe.target, focus) if component.name == "denoiser" else None
    return LoweredComponent(component.name, pte, recipe, impl, seconds, delegation, batches,
                            rewrites_for(recipe.target, rewrites))


# -- a whole export -------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export produced, for the CLI summary and the caller's checks."""

    folder: Path
    recipe: LoweringRecipe
    components: dict[str, LoweredComponent]
    manifest: Manifest
    seconds: float
    peak_rss_mb: float

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "component": name,
                "recipe": self.recipe.name,
                "precision": self.recipe.precision,
                "bytes": len(low.pte),
                "seconds": round(sum(low.seconds.values()), 2),
                "delegated_nodes": low.delegation.get("delegated_nodes"),
                "non_delegated_nodes": low.delegation.get("non_delegated_nodes"),
            }
            for name, low in self.components.items()
        ]


def export_executorch(
    components: Mapping[str, Component],
    out_dir: Path | str,
    *,
    recipe: LoweringRecipe | str,
    config: MagicBokehConfig,
    weights_sha256: str,
    model_label: str = "",
    calibration: Mapping[str, Sequence[tuple[torch.Tensor, ...]]] | None = None,
    names: Sequence[str] | None = None,
    focus: str | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = False,
    rewrites: Sequence[str] | None = None,
) -> ExportReport:
    """Lower the named components into ``out_dir`` (replaced atomically) with a manifest.

    ``calibration`` maps component name to its calibration input batches (needed by int8 recipes).
    """
    recipe = get_lowering_recipe(recipe) if isinstance(recipe, str) else recipe
    names = list(components) if names is None else list(names)
    unknown = [n for n in names if n not in components]
    if unknown:
        raise ValueError(f"unknown components {unknown}; this model has {sorted(components)}")
    if not names:
        raise ValueError("nothing to export: no components named")
    if recipe.delegate == "qnn":
        check_qnn_sdk()
    start = time.perf_counter()
    lowered: dict[str, LoweredComponent] = {}
    entries: dict[str, ComponentEntry] = {}
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in names:
            t0 = time.perf_counter()
            low = lower_component(
                components[name], recipe,
                calibration_inputs=(calibration or {}).get(name), focus=focus, rewrites=rewrites,
            )
            file = f"{name}.pte"
            (tmp / file).write_bytes(low.pte)
            lowered[name] = low
            entries[name] = ComponentEntry.from_component(
                components[name], file, recipe.precision,
                delegate=recipe.delegate,
                recipe=recipe.name,
                focus_implementation=low.focus_implementation,
                seconds={k: round(v, 3) for k, v in low.seconds.items()},
                delegation=low.delegation,
                calibration_batches=low.calibration_batches,
                rewrites=list(low.rewrites),
            )
            if progress:
                print(f"  {name}: {len(low.pte) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s", flush=True)
        manifest = Manifest(
            backend=BACKEND_NAME,
            config=config.to_dict(),
            weights_sha256=weights_sha256,
            components=entries,
            precision=recipe.precision,
            recipe=recipe.to_dict(),
            model_label=model_label,
            extra=dict(extra or {}),
        )
        write_manifest(tmp, manifest)  # last: a folder without it is not an artifacts folder
    return ExportReport(out_dir, recipe, lowered, manifest, time.perf_counter() - start, peak_rss_mib())


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "BACKEND_NAME",
    "ExportReport",
    "LOWERING_RECIPES",
    "LoweredComponent",
    "LoweringRecipe",
    "PreparedComponent",
    "QnnSdkMissingError",
    "check_qnn_sdk",
    "export_executorch",
    "get_lowering_recipe",
    "lower_component",
    "lower_program",
]
