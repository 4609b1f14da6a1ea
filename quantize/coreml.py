"""Core ML weight-compression recipes (coremltools.optimize.coreml), applied to converted programs.

* ``w8``: 8-bit linear (symmetric, per output channel) weights -> ``constexpr_affine_dequantize``.
* ``w6`` / ``w4``: k-means palettization, one 64- or 16-entry look-up table per weight tensor
  -> ``constexpr_lut_to_dense`` (the iOS16 op, so iOS 16+/17 targets can load it).
* ``mixed``: per-layer palettization bits (4, 6 or 8) chosen by MEASURED sensitivity: each weight
  is palettized to 4 bits alone, the program is executed (numpy Core ML interpreter) on real
  inputs, and the PSNR of its output against the uncompressed program is that layer's score. The
  layers whose compression costs the most keep more bits, within an average-bits budget.

Weights with fewer than ``WEIGHT_THRESHOLD`` elements (biases, norms) stay fp16, as coremltools does
by default: they cost almost nothing and are the most fragile.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

WEIGHT_THRESHOLD = 2048
COMPRESSION_PRECISIONS = ("w8", "w6", "w4", "mixed")
MIXED_CHOICES = (4, 6, 8)


class CompressionError(ValueError):
    """A compression recipe cannot be applied (unknown recipe, bad budget, no inputs to measure)."""


def _opt():
    import coremltools.optimize.coreml as cto

    return cto


def linear_quantize_w8(mlmodel: Any, weight_threshold: int = WEIGHT_THRESHOLD) -> Any:
    """8-bit symmetric linear weights, one scale per output channel."""
    cto = _opt()
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=weight_threshold))
    return cto.linear_quantize_weights(mlmodel, config=config)


def palettize(mlmodel: Any, nbits: int, weight_threshold: int = WEIGHT_THRESHOLD,
              per_layer_bits: Mapping[str, int] | None = None) -> Any:
    """k-means palettization at ``nbits`` (or per const name, from ``per_layer_bits``)."""
    if nbits not in (1, 2, 3, 4, 6, 8):
        raise CompressionError(f"palettization supports 1, 2, 3, 4, 6 or 8 bits, got {nbits}")
    cto = _opt()
    global_config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=weight_threshold)
    name_configs = {
        name: cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=weight_threshold)
        for name, bits in (per_layer_bits or {}).items()
    }
    config = cto.OptimizationConfig(global_config=global_config, op_name_configs=name_configs or None)
    return cto.palettize_weights(mlmodel, config=config)


def kmeans_palettized(weight: np.ndarray, nbits: int) -> np.ndarray:
    """The dense weight that coremltools' k-means palettization would produce (its own k-means)."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    w = np.asarray(weight, dtype=np.float32)
    lut, indices = _get_kmeans_lookup_table_and_weight(nbits, w, force_kmeans1d=False)
    return np.asarray(lut)[np.asarray(indices).astype(np.int64)].reshape(w.shape).astype(weight.dtype)


@dataclass
class LayerSensitivity:
    name: str
    elements: int
    psnr_db: float  # output PSNR against the uncompressed program, this layer alone at low bits


def compressible_weights(program: Any, weight_threshold: int = WEIGHT_THRESHOLD) -> dict[str, int]:
    """Const float tensors that compression would touch: name -> element count."""
    used_as_weight: set[str] = set()
    for step in program.steps:
        for key in ("weight", "x", "y"):
            value = step.inputs.get(key)
            name = getattr(value, "name", None)
            if name is not None and name in program.constants:
                used_as_weight.add(name)
    out = {}
    for name in sorted(used_as_weight):
        value = program.constants[name]
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size > weight_threshold:
            out[name] = int(value.size)
    return out


def measure_sensitivity(
    mlmodel: Any,
    inputs: Sequence[Mapping[str, np.ndarray]],
    nbits: int = 4,
    weight_threshold: int = WEIGHT_THRESHOLD,
    log: Callable[[str], None] | None = None,
) -> list[LayerSensitivity]:
    """Per-layer cost of palettizing that layer alone, measured by executing the program.

    Runs the numpy Core ML interpreter on the program as converted (fp16) once for the baseline and
    once per weight with that weight replaced by its k-means palettized value.
    """
    from runtime_py.coreml_interpreter import load_mlpackage
    from runtime_py.parity import psnr

    if not inputs:
        raise CompressionError("mixed-bit selection needs at least one input sample to measure sensitivity")
    with tempfile.TemporaryDirectory(prefix="coreml_sens_") as tmp:
        path = Path(tmp) / "model.mlpackage"
        mlmodel.save(str(path))
        program = load_mlpackage(path)
    output = program.outputs[0].name
    baselines = [program.run(dict(sample))[output].astype(np.float32) for sample in inputs]
    weights = compressible_weights(program, weight_threshold)
    results = []
    started = time.perf_counter()
    for index, (name, elements) in enumerate(weights.items()):
        original = program.constants[name]
        program.constants[name] = kmeans_palettized(original, nbits)
        try:
            scores = [psnr(base, program.run(dict(sample))[output].astype(np.float32))
                      for base, sample in zip(baselines, inputs)]
        finally:
            program.constants[name] = original
        results.append(LayerSensitivity(name, elements, float(min(scores))))
        if log and (index + 1) % 25 == 0:
            log(f"    sensitivity {index + 1}/{len(weights)} ({time.perf_counter() - started:.0f} s)")
    return results


def choose_bits(
    sensitivities: Sequence[LayerSensitivity],
    average_bits: float = 5.0,
    choices: Sequence[int] = MIXED_CHOICES,
) -> dict[str, int]:
    """Bits per layer: most-sensitive layers (lowest PSNR alone at low bits) first get the most
    bits that keep the element-weighted average within ``average_bits``; the rest get the fewest.
    """
    choices = sorted(set(int(c) for c in choices))
    if not choices:
        raise CompressionError("no bit choices given")
    if not choices[0] <= average_bits <= choices[-1]:
        raise CompressionError(f"average bits {average_bits} must lie in [{choices[0]}, {choices[-1]}]")
    bits = {s.name: choices[0] for s in sensitivities}
    total = sum(s.elements for s in sensitivities)
    if total == 0:
        return bits
    budget = average_bits * total
    spent = choices[0] * total
    for s in sorted(sensitivities, key=lambda s: (s.psnr_db, s.name)):
        for candidate in reversed(choices[1:]):
            extra = (candidate - bits[s.name]) * s.elements
            if spent + extra <= budget + 1e-9:
                spent += extra
                bits[s.name] = candidate
                break
    return bits


def compress_mlmodel(
    mlmodel: Any,
    precision: str,
    *,
    sensitivity_inputs: Sequence[Mapping[str, np.ndarray]] = (),
    average_bits: float = 5.0,
    weight_threshold: int = WEIGHT_THRESHOLD,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Apply one recipe; returns the compressed model and a description for the manifest."""
    if precision == "w8":
        return linear_quantize_w8(mlmodel, weight_threshold), {
            "method": "linear_symmetric int8, per output channel", "weight_threshold": weight_threshold}
    if precision in ("w6", "w4"):
        nbits = int(precision[1:])
        return palettize(mlmodel, nbits, weight_threshold), {
            "method": f"k-means palettization, {nbits} bits, one LUT per tensor", "weight_threshold": weight_threshold}
    if precision == "mixed":
        sensitivities = measure_sensitivity(mlmodel, sensitivity_inputs, nbits=min(MIXED_CHOICES),
                                            weight_threshold=weight_threshold, log=log)
        bits = choose_bits(sensitivities, average_bits)
        compressed = palettize(mlmodel, min(MIXED_CHOICES), weight_threshold, per_layer_bits=bits)
        total = sum(s.elements for s in sensitivities) or 1
        achieved = sum(bits[s.name] * s.elements for s in sensitivities) / total
        return compressed, {
            "method": "k-means palettization, per-layer bits by measured sensitivity",
            "choices": list(MIXED_CHOICES),
            "average_bits_budget": average_bits,
            "average_bits": achieved,
            "weight_threshold": weight_threshold,
            "layers": {s.name: {"bits": bits[s.name], "elements": s.elements, "psnr_db_alone_at_4_bits": s.psnr_db}
                       for s in sensitivities},
        }
    raise CompressionError(f"unknown Core ML compression {precision!r}; choose one of {COMPRESSION_PRECISIONS}")
