"""Lower MagicBokeh components to ExecuTorch ``.pte`` programs: the ``executorch`` family's lowering.

Targets (``export/targets.py``) name the delegate and precision:

* ``executorch-xnnpack-fp32``: the XNNPACK CPU delegate, fp32. The parity baseline for phones.
* ``executorch-xnnpack-int8``: PT2E int8 (per-channel symmetric weights, int8 activations calibrated
  on real tiles by the flow's quantize step) then the XNNPACK delegate.
* ``executorch-coreml-fp16``: the Core ML delegate (ML program, fp16 compute, iOS 17). Lowering works
  on Linux; running needs an Apple OS (the Core ML runtime is not in Linux builds of ExecuTorch).
* ``executorch-qnn-fp16``: the Qualcomm QNN HTP delegate, fp16. Needs a QNN SDK (``QNN_SDK_ROOT``);
  without one lowering stops with :class:`QnnSdkMissingError` *before* ExecuTorch's own set-up,
  which would otherwise try to download an SDK.

``export.flow.export_target`` runs the steps around this module (staging folder, manifest, parity).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from export.prepare import ExportError, export_component, focus_implementation_for, prepare_component, rewrites_for
from runtime_py.backends.base import BackendUnavailableError
from runtime_py.components import Component
from runtime_py.manifest import ComponentEntry

QNN_DEFAULT_SOC = "SM8650"  # Snapdragon 8 Gen 3 (HTP v75)


class QnnSdkMissingError(BackendUnavailableError):
    """The QNN delegate needs a Qualcomm QNN SDK folder named by QNN_SDK_ROOT."""


@dataclass
class Options:
    """The ExecuTorch lowering's settings (defaults from the target's lowering recipe).

    ``focus`` None: the graph variant's focus-attention realisation; ``rewrites`` None: the graph
    variant's export-time rewrites, ``()``: none; ``soc``: the QNN delegate's Snapdragon.
    """

    focus: str | None = None
    rewrites: tuple[str, ...] | None = None
    soc: str = QNN_DEFAULT_SOC

    def validate(self) -> "Options":
        if self.focus is not None:
            focus_implementation_for("xnnpack", self.focus)  # raises on an unknown realisation
        if self.rewrites is not None:
            self.rewrites = tuple(self.rewrites)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _partitioners(delegate: str, options: Options) -> list[Any]:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16
        )
        return [CoreMLPartitioner(compile_specs=specs)]
    if delegate == "qnn":
        check_qnn_sdk()
        from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
        from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
        from executorch.backends.qualcomm.utils.utils import (
            generate_htp_compiler_spec,
            generate_qnn_executorch_compiler_spec,
        )

        specs = generate_qnn_executorch_compiler_spec(
            soc_model=getattr(QcomChipset, options.soc),
            backend_options=generate_htp_compiler_spec(use_fp16=True),
        )
        return [QnnPartitioner(specs)]
    raise ValueError(f"unknown delegate {delegate!r}")


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


def lower_program(program: torch.export.ExportedProgram, delegate: str, options: Options | None = None,
                  name: str = "component") -> tuple[bytes, dict[str, int]]:
    """Exported program -> ``.pte`` bytes through ``delegate``, plus a delegation summary."""
    from executorch.exir import to_edge_transform_and_lower

    partitioners = _partitioners(delegate, options or Options())  # QNN checks its SDK here, before any heavy work
    try:
        edge = to_edge_transform_and_lower(program, partitioner=partitioners)
        summary = delegation_summary(edge)
        buffer = edge.to_executorch().buffer
    except Exception as exc:
        raise ExportError(
            f"ExecuTorch lowering ({delegate}) failed for component {name!r}: {type(exc).__name__}: {_short(exc)}"
        ) from exc
    return bytes(buffer), summary


# -- one component --------------------------------------------------------------------------------


@dataclass
class LoweredComponent:
    name: str
    pte: bytes
    focus_implementation: str | None
    seconds: dict[str, float]
    delegation: dict[str, int] = field(default_factory=dict)
    calibration_batches: int = 0
    rewrites: tuple[str, ...] = ()
    mixed: dict[str, Any] | None = None  # a mixed recipe's per-group choice (kept fp32) and its sensitivity


def lower_component(
    component: Component,
    target: Any,
    *,
    calibration_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
    options: Options | None = None,
    log: Callable[[str], None] | None = None,
) -> LoweredComponent:
    """Export, (quantize,) and lower one component for ``target`` (an ``export.targets.Target``); times each stage."""
    options = (options or Options()).validate()
    lowering, quantization = target.recipe.lowering, target.recipe.quantization
    if lowering.delegate == "qnn":
        check_qnn_sdk()
    if quantization.quantized:
        if lowering.delegate != "xnnpack":
            raise ValueError(f"target {target.name}: int8 is implemented for XNNPACK only")
        if not calibration_inputs:
            raise ValueError(
                f"target {target.name}: component {component.name!r} needs calibration inputs (real tiles); got none"
            )
    prepare_component(component)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    program = export_component(component, target=lowering.graph, focus=options.focus, rewrites=options.rewrites)
    seconds["export"] = time.perf_counter() - start
    batches = 0
    mixed = None
    if quantization.quantized:
        from quantize.recipes import QuantizationError
        from quantize.xnnpack import quantize_program

        try:
            quantized = quantize_program(program, calibration_inputs, recipe=quantization, name=component.name,
                                         component=component, log=log)
        except QuantizationError as exc:
            raise ExportError(str(exc)) from exc
        program, batches = quantized.program, quantized.calibration_batches
        seconds["quantize"] = quantized.seconds
        mixed = quantized.mixed
    start = time.perf_counter()
    pte, delegation = lower_program(program, lowering.delegate, options, component.name)
    seconds["lower"] = time.perf_counter() - start
    impl = focus_implementation_for(lowering.graph, options.focus) if component.name == "denoiser" else None
    return LoweredComponent(component.name, pte, impl, seconds, delegation, batches,
                            rewrites_for(lowering.graph, options.rewrites), mixed)


def lower(job: Any) -> Any:
    """The flow's lower step for an ExecuTorch target: one ``<component>.pte`` per component."""
    from export.flow import LoweringOutput

    target = job.target
    if target.recipe.lowering.delegate == "qnn":
        check_qnn_sdk()
    entries: dict[str, ComponentEntry] = {}
    for name in job.names:
        t0 = time.perf_counter()
        batches = job.calibration.torch_inputs(name) if job.calibration is not None else None
        low = lower_component(job.components[name], target, calibration_inputs=batches, options=job.options,
                              log=job.log)
        file = f"{name}.pte"
        (job.folder / file).write_bytes(low.pte)
        entries[name] = ComponentEntry.from_component(
            job.components[name], file, target.precision,
            delegate=target.recipe.lowering.delegate,
            recipe=target.recipe.name,
            focus_implementation=low.focus_implementation,
            seconds={k: round(v, 3) for k, v in low.seconds.items()},
            delegation=low.delegation,
            calibration_batches=low.calibration_batches,
            rewrites=list(low.rewrites),
            **({"mixed_precision": low.mixed} if low.mixed else {}),
        )
        job.log(f"[lower] {name}: {len(low.pte) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s"
                + (f", {low.delegation.get('delegated_nodes')} delegated / {low.delegation.get('non_delegated_nodes')} "
                   "other nodes" if low.delegation else ""))
    return LoweringOutput(entries, {"rewrites": "per graph" if job.options.rewrites is None else list(job.options.rewrites)})


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
