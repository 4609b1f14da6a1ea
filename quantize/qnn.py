"""QDQ quantization for Qualcomm's HTP with ONNX Runtime's QNN configuration.

The recipe (``quantize.recipes``: ``w8a16`` by default, ``w8a8``) says what; this module says how:
``onnxruntime.quantization.execution_providers.qnn.get_qnn_qdq_config`` (which knows which
operator/type combinations the HTP accepts and inserts the type conversions that mixed precision
needs) plus ``onnxruntime.quantization.quantize`` writing a QDQ ONNX model. Weights are 8-bit,
per output channel, unsigned and asymmetric (int8 symmetric weights made the HTP reject
LayerNorm); activations are
unsigned 8 or 16 bit, asymmetric, calibrated with min/max over real tiles.

Per-tensor overrides keep sensitive tensors at higher precision. The built-in one: the denoiser's
last step ``x0 = (z - sqrt(1-a) eps) / sqrt(a)`` multiplies eps errors by sqrt(1-a) / sqrt(a)
(~15 at SD2.1's t = 999, where a = 0.0047), so ``eps`` and everything after it stay 16-bit even
in a W8A8 graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from .recipes import QuantizationError, QuantRecipe, get_recipe

#: How activation ranges are calibrated (see quantize_qdq).
CALIBRATIONS = ("onnxruntime", "streaming")
#: Operators the backwards walk from the denoiser's output passes through to reach ``eps``.
_X0_STEP_OPS = frozenset({"Sub", "Div", "Mul", "Add"})


@dataclass
class QnnQuantResult:
    """One quantized component and how it was made."""

    component: str
    path: Path
    recipe: str
    activation_type: str
    weight_type: str
    per_channel: bool
    calibration_samples: int
    overrides: dict[str, list[dict[str, Any]]]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["path"] = str(self.path)
        return data


def quant_types(recipe: QuantRecipe):
    """(activation QuantType, weight QuantType) for a recipe; only what the HTP runs is accepted."""
    from onnxruntime.quantization import QuantType

    if recipe.weight_bits != 8:
        raise QuantizationError(f"recipe {recipe.name!r}: the QNN path quantizes weights to 8 bits, not {recipe.weight_bits}")
    activations = {8: QuantType.QUInt8, 16: QuantType.QUInt16}
    if recipe.activation_bits not in activations:
        raise QuantizationError(
            f"recipe {recipe.name!r}: the HTP takes 8- or 16-bit activations, not {recipe.activation_bits}"
        )
    # uint8 weights, per output channel, asymmetric: with int8 symmetric weights the HTP rejected
    # LayerNorm's quantized scale (backendValidateOpConfig error 3110) while uint8 ran everywhere.
    return activations[recipe.activation_bits], QuantType.QUInt8


class SampleReader:
    """``CalibrationDataReader`` over a list of input tuples (component input order)."""

    def __init__(self, input_names: Sequence[str], samples: Iterable[Sequence[np.ndarray]]):
        self.input_names = list(input_names)
        self.samples = [tuple(np.ascontiguousarray(a, dtype=np.float32) for a in s) for s in samples]
        for i, sample in enumerate(self.samples):
            if len(sample) != len(self.input_names):
                raise QuantizationError(
                    f"calibration sample {i} has {len(sample)} arrays; the model takes {self.input_names}"
                )
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self.samples):
            return None
        sample = self.samples[self._index]
        self._index += 1
        return dict(zip(self.input_names, sample))

    def rewind(self) -> None:
        self._index = 0

    def __len__(self) -> int:
        return len(self.samples)


def x0_step_tensors(model: onnx.ModelProto) -> list[str]:
    """The denoiser's output and the tensors of the ``x0`` step back to ``eps`` (the UNet's last conv).

    Walks back from the graph output through the elementwise ops of the DDPM step; every tensor on
    the way is returned (``eps`` last). Empty when the graph does not end that way.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    found: list[str] = []
    frontier = [o.name for o in model.graph.output]
    while frontier:
        name = frontier.pop()
        if name in found or name in initializers:
            continue
        node = producers.get(name)
        if node is None:
            continue
        found.append(name)
        if node.op_type in _X0_STEP_OPS:
            frontier.extend(i for i in node.input if i in producers)
    return found


def sensitive_overrides(model: onnx.ModelProto, component: str, recipe: QuantRecipe) -> dict[str, list[dict[str, Any]]]:
    """Built-in per-tensor overrides: the denoiser's x0 step in 16 bits when activations are 8-bit."""
    from onnxruntime.quantization import QuantType

    if component != "denoiser" or recipe.activation_bits == 16:
        return {}
    return {name: [{"quant_type": QuantType.QUInt16}] for name in x0_step_tensors(model)}


def parse_overrides(spec: Mapping[str, str | Mapping[str, Any]] | None) -> dict[str, list[dict[str, Any]]]:
    """User overrides ``{tensor: "16" | "8" | {..get_qnn_qdq_config keys..}}`` -> the quantizer's form."""
    from onnxruntime.quantization import QuantType

    out: dict[str, list[dict[str, Any]]] = {}
    for tensor, value in (spec or {}).items():
        if isinstance(value, Mapping):
            entry = dict(value)
            if isinstance(entry.get("quant_type"), str):
                entry["quant_type"] = _quant_type_named(entry["quant_type"])
        elif str(value) in ("16", "8"):
            entry = {"quant_type": QuantType.QUInt16 if str(value) == "16" else QuantType.QUInt8}
        else:
            raise QuantizationError(f"override for tensor {tensor!r} must be '8', '16' or a dict, got {value!r}")
        out[tensor] = [entry]
    return out


def _quant_type_named(name: str):
    from onnxruntime.quantization import QuantType

    try:
        return QuantType[name]
    except KeyError:
        raise QuantizationError(f"unknown quantization type {name!r}; use one of {[t.name for t in QuantType]}") from None


def _inputs_and_overrides(model_path: Path | str, component: str, recipe: QuantRecipe,
                          overrides: Mapping[str, list[dict[str, Any]]] | None,
                          sensitive: bool) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """The graph's input names and its per-tensor overrides: the built-in sensitive ones (when
    ``sensitive``), then the user's, each of which must name a tensor of the graph."""
    model = onnx.load(str(model_path), load_external_data=False)
    graph_tensors = {v for n in model.graph.node for v in list(n.input) + list(n.output)}
    merged = sensitive_overrides(model, component, recipe) if sensitive else {}
    for tensor, entry in (overrides or {}).items():
        if tensor not in graph_tensors:
            raise QuantizationError(f"component {component!r}: override names tensor {tensor!r}, which is not in the graph")
        merged[tensor] = [dict(e) for e in entry]
    return [i.name for i in model.graph.input], merged


def quantize_qdq(
    model_path: Path | str,
    out_path: Path | str,
    samples: Sequence[Sequence[np.ndarray]],
    *,
    component: str,
    recipe: QuantRecipe | str = "w8a16",
    overrides: Mapping[str, list[dict[str, Any]]] | None = None,
    external_data: bool = False,
    calibration: str = "onnxruntime",
    ranges: Any = None,
    sensitive: bool = True,
) -> QnnQuantResult:
    """Quantize an fp32 ONNX model (already rewritten for the HTP) into a QDQ model.

    ``samples`` are input tuples in the component's input order, from real tiles; at least one is
    required (min/max over random tensors gave 16.6 dB on a UNet, so the caller should pass many).
    ``calibration``: ``"onnxruntime"`` (its own MinMax calibrator) or ``"streaming"``
    (:mod:`quantize.streaming_calibration`: the same ranges, calibrated in its own phase with one
    session and running min/max, so that full-size models fit in memory). ``ranges``: a
    ``StreamingRanges`` computed earlier (e.g. on the whole graph, to quantize one part of a split
    graph); needs ``calibration="streaming"`` and replaces ``samples``.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    if calibration not in CALIBRATIONS:
        raise QuantizationError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if recipe.activation_bits is None:
        raise QuantizationError(f"recipe {recipe.name!r} has float activations; the HTP path needs a W8A8 or W8A16 recipe")
    if ranges is not None and calibration != "streaming":
        raise QuantizationError("precomputed ranges need calibration='streaming'")
    if len(samples) == 0 and ranges is None:
        raise QuantizationError(f"component {component!r}: no calibration samples given")
    activation_type, weight_type = quant_types(recipe)
    input_names, merged = _inputs_and_overrides(model_path, component, recipe, overrides, sensitive)
    reader = SampleReader(input_names, samples)
    start = time.perf_counter()
    try:
        config = get_qnn_qdq_config(
            str(model_path),
            reader,
            calibrate_method=CalibrationMethod.MinMax,
            activation_type=activation_type,
            weight_type=weight_type,
            per_channel=recipe.per_channel,
            init_overrides={k: [dict(e) for e in v] for k, v in merged.items()} or None,
        )
        config.use_external_data_format = external_data
        if calibration == "streaming":
            from .streaming_calibration import quantize_static_streaming

            used = quantize_static_streaming(model_path, out_path, config, reader, ranges)
            extra = {"calibration": calibration, "calibrated_tensors": len(used.ranges),
                     "calibration_seconds": 0.0 if ranges is not None else used.seconds}
        else:
            quantize(str(model_path), str(out_path), config)
            extra = {"calibration": calibration}
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"quantizing component {component!r} with recipe {recipe.name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return QnnQuantResult(
        component=component,
        path=Path(out_path),
        recipe=recipe.name,
        activation_type=activation_type.name,
        weight_type=weight_type.name,
        per_channel=recipe.per_channel,
        calibration_samples=ranges.samples if ranges is not None else len(reader),
        overrides={k: [{kk: (vv.name if hasattr(vv, "name") else vv) for kk, vv in e.items()} for e in v] for k, v in merged.items()},
        seconds=time.perf_counter() - start,
        extra=extra,
    )


@dataclass
class WholeGraphCalibration:
    """What quantizing the parts of a split graph needs from the whole graph: its activation
    ranges (streamed) and its per-tensor overrides (built-in and the user's)."""

    ranges: Any  # quantize.streaming_calibration.StreamingRanges
    overrides: dict[str, list[dict[str, Any]]]

    def overrides_for(self, model_path: Path | str) -> dict[str, list[dict[str, Any]]]:
        """The overrides naming tensors of one part (quantize_qdq refuses names not in its graph)."""
        model = onnx.load(str(model_path), load_external_data=False)
        tensors = {v for n in model.graph.node for v in list(n.input) + list(n.output)}
        return {t: e for t, e in self.overrides.items() if t in tensors}


def calibrate_whole_graph(
    model_path: Path | str,
    samples: Sequence[Sequence[np.ndarray]],
    *,
    component: str,
    recipe: QuantRecipe | str = "w8a16",
    overrides: Mapping[str, list[dict[str, Any]]] | None = None,
) -> WholeGraphCalibration:
    """Stream the whole fp32 graph's min/max ranges over ``samples`` (one session, running min/max)
    for the op types the QNN configuration quantizes, and merge its overrides; the parts of its
    split are then quantized with ``quantize_qdq(part, ..., calibration="streaming", ranges=...,
    sensitive=False, overrides=result.overrides_for(part))``, exactly as the whole would be."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from .streaming_calibration import stream_minmax_ranges

    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if len(samples) == 0:
        raise QuantizationError(f"component {component!r}: no calibration samples given")
    activation_type, weight_type = quant_types(recipe)
    input_names, merged = _inputs_and_overrides(model_path, component, recipe, overrides, sensitive=True)
    reader = SampleReader(input_names, samples)
    try:
        config = get_qnn_qdq_config(str(model_path), reader, calibrate_method=CalibrationMethod.MinMax,
                                    activation_type=activation_type, weight_type=weight_type,
                                    per_channel=recipe.per_channel,
                                    init_overrides={k: [dict(e) for e in v] for k, v in merged.items()} or None)
        reader.rewind()
        ranges = stream_minmax_ranges(model_path, reader, op_types=config.op_types_to_quantize or None,
                                      providers=config.calibration_providers)
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(f"calibrating component {component!r} with recipe {recipe.name!r} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
    return WholeGraphCalibration(ranges, merged)


def mixed_overrides(model_path: Path | str, component: Any, samples: Sequence[Sequence[np.ndarray]], recipe: QuantRecipe,
                    name: str, sensitivity_samples: int = 1, log: Any = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """A sensitivity-driven mixed W8A8 recipe's 16-bit overrides for ``model_path`` (fp32 ONNX of ``component``).

    Each layer group is scored with the QDQ simulation at the recipe's activation bits on the first
    ``sensitivity_samples`` calibration samples (``quantize.sensitivity``); the groups
    :func:`~quantize.sensitivity.plan_mixed` keeps get 16-bit activations on every output of their nodes.
    """
    from onnxruntime.quantization import QuantType

    from .sensitivity import analyse, onnx_owner, plan_mixed

    batches = list(samples)[: max(1, sensitivity_samples)]
    report, plan = analyse("qnn", component, batches, name=name, onnx_path=Path(model_path),
                           settings={"activation_bits": recipe.activation_bits})
    choice = plan_mixed(report, cheap_fraction=recipe.mixed_cheap_fraction, psnr_floor_db=recipe.mixed_psnr_floor_db)
    keep = plan.predicate(choice.kept)
    model = onnx.load(str(model_path), load_external_data=False)
    overrides = {out: [{"quant_type": QuantType.QUInt16}] for node in model.graph.node
                 if keep(onnx_owner(node.name)) for out in node.output if out}
    if log:
        log(f"[lower] {name}: uniform W8A{recipe.activation_bits} simulated {report.uniform_psnr_db:.2f} dB; 16-bit "
            f"activations in {choice.kept or 'no group'} ({len(overrides)} tensors, predicted {choice.predicted_psnr_db:.2f} dB)")
    return overrides, {"kept_16bit_activations": choice.kept, "choice": choice.to_dict(), "sensitivity": report.to_dict(),
                       "overridden_tensors": len(overrides)}
