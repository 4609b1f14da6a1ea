"""Core ML weight-compression recipes (coremltools.optimize.coreml), applied to converted programs.

* ``w8``: 8-bit linear (symmetric, per output channel) weights -> ``constexpr_affine_dequantize``.
* ``w6`` / ``w4``: k-means palettization, one 64- or 16-entry look-up table per weight tensor
  -> ``constexpr_lut_to_dense`` (the iOS16 op, so iOS 16+/17 targets can load it).
* ``mixed``: per-layer palettization bits (4, 6 or 8 by default) chosen from MEASURED sensitivity.
  Scoring runs in torch, because executing the Core ML program once per layer through the numpy
  interpreter is far too slow at the default scale: each weight alone is replaced by exactly the
  values coremltools' k-means would give it (the same routine, on the same fp16 weight), the
  component runs on real calibration tiles, and the PSNR of its output against the fp32
  reference is that layer's score. How the error shrinks with more bits is measured in weight
  space (k-means MSE at every choice). Bits then go, within an element-weighted average-bits
  budget, to the upgrades that remove the most predicted output noise per added bit. The
  package is compressed with per-constant configs and its parity is measured by executing it.

Weights with fewer than ``WEIGHT_THRESHOLD`` elements (biases, norms) stay fp16, as coremltools does
by default: they cost almost nothing and are the most fragile.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

WEIGHT_THRESHOLD = 2048
COMPRESSION_PRECISIONS = ("w8", "w6", "w4", "mixed")
MIXED_CHOICES = (4, 6, 8)
#: Bits the iOS16/17 ``constexpr_lut_to_dense`` op can hold (LUT sizes 2, 4, 16, 64, 256; 3 bits needs iOS18).
PALETTE_BITS = (1, 2, 4, 6, 8)


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
              per_layer_bits: Mapping[str, int | None] | None = None) -> Any:
    """k-means palettization at ``nbits``, or per const name from ``per_layer_bits`` (None: keep fp16)."""
    for bits in [nbits, *[b for b in (per_layer_bits or {}).values() if b is not None]]:
        if bits not in PALETTE_BITS:
            raise CompressionError(f"palettization supports {PALETTE_BITS} bits, got {bits}")
    cto = _opt()

    def config(bits: int) -> Any:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=weight_threshold)

    name_configs = {name: (None if bits is None else config(bits)) for name, bits in (per_layer_bits or {}).items()}
    return cto.palettize_weights(mlmodel, config=cto.OptimizationConfig(
        global_config=config(nbits), op_name_configs=name_configs or None))


def kmeans_palettized(weight: np.ndarray, nbits: int) -> np.ndarray:
    """The dense fp16 weight coremltools' k-means palettization produces for this weight.

    The weight is cast to fp16 first, as it is in the converted program: coremltools' routine picks
    its clustering method from the dtype, so palettizing fp32 values would not reproduce it.
    """
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    w = np.asarray(weight).astype(np.float16)
    lut, indices = _get_kmeans_lookup_table_and_weight(nbits, w, force_kmeans1d=False)
    return np.asarray(lut)[np.asarray(indices).astype(np.int64)].reshape(w.shape).astype(np.float16)


# -- mixed bits: measured sensitivity, budgeted choice ---------------------------------------------

@dataclass
class LayerSensitivity:
    """One weight's measured cost of compression.

    ``psnr_db``: component output PSNR against the fp32 reference with this weight alone palettized
    at ``measured_bits`` (inf when that is lossless). ``weight_mse``: MSE of the palettized weight at
    each bit choice, which scales the measured output noise to the other choices.
    """

    name: str
    elements: int
    psnr_db: float
    weight_mse: dict[int, float] = field(default_factory=dict)
    measured_bits: int = 4

    def noise(self, bits: int) -> float:
        """Predicted output noise power (relative to the output's peak squared) at ``bits``."""
        if math.isinf(self.psnr_db) and self.psnr_db > 0:
            return 0.0
        measured = 10.0 ** (-self.psnr_db / 10.0)
        if bits == self.measured_bits or not self.weight_mse:
            return measured
        base = self.weight_mse.get(self.measured_bits, 0.0)
        return 0.0 if base <= 0.0 else measured * self.weight_mse[bits] / base


def choose_bits(
    sensitivities: Sequence[LayerSensitivity],
    average_bits: float = 5.0,
    choices: Sequence[int] = MIXED_CHOICES,
) -> dict[str, int]:
    """Bits per layer within an element-weighted ``average_bits`` budget.

    Every layer starts at the fewest bits; then, repeatedly, the one-step upgrade (to the next
    choice) that removes the most predicted output noise per added bit is taken if it fits the
    budget. Noise from different layers is treated as additive, so the most sensitive layers
    (and the cheapest to protect) keep the most bits, and lossless layers are never upgraded.
    """
    choices = sorted(set(int(c) for c in choices))
    if not choices:
        raise CompressionError("no bit choices given")
    if not choices[0] <= average_bits <= choices[-1]:
        raise CompressionError(f"average bits {average_bits} must lie in [{choices[0]}, {choices[-1]}]")
    step = {c: n for c, n in zip(choices, choices[1:])}
    bits = {s.name: choices[0] for s in sensitivities}
    total = sum(s.elements for s in sensitivities)
    budget = average_bits * total + 1e-9
    spent = choices[0] * total
    while True:
        best: tuple[float, str] | None = None
        for s in sensitivities:
            current = bits[s.name]
            if current not in step:
                continue
            extra = (step[current] - current) * s.elements
            if spent + extra > budget:
                continue
            gain = (s.noise(current) - s.noise(step[current])) / max(extra, 1)
            if gain > 0 and (best is None or (gain, s.name) > best):
                best = (gain, s.name)
        if best is None:
            return bits
        name = best[1]
        layer = next(s for s in sensitivities if s.name == name)
        spent += (step[bits[name]] - bits[name]) * layer.elements
        bits[name] = step[bits[name]]


def predicted_psnr_db(sensitivities: Sequence[LayerSensitivity], bits: Mapping[str, int]) -> float:
    """Output PSNR the additive-noise model predicts for a bit assignment (a planning figure only)."""
    noise = sum(s.noise(bits[s.name]) for s in sensitivities)
    return math.inf if noise <= 0 else -10.0 * math.log10(noise)


def torch_layer_sensitivity(
    module: Any,
    inputs: Sequence[Sequence[Any]],
    parameter_names: Sequence[str],
    *,
    choices: Sequence[int] = MIXED_CHOICES,
    measured_bits: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[LayerSensitivity]:
    """Score each named parameter by running ``module`` (torch, fp32) with it alone palettized.

    The per-parameter form of ``quantize.sensitivity``'s Core ML backend (same weight replacement,
    same output PSNR); the mixed-bit planner needs each weight's k-means MSE at every bit choice too.

    ``inputs``: real samples (tuples of arrays in the module's argument order). The output PSNR is
    the lowest over samples. ``measured_bits`` defaults to the fewest bits in ``choices``.
    """
    from .sensitivity import _torch_samples, output_psnr, replaced_weights, run_torch

    if not inputs:
        raise CompressionError("mixed-bit selection needs at least one input sample to measure sensitivity")
    measured_bits = min(choices) if measured_bits is None else measured_bits
    samples = _torch_samples(inputs)
    baselines = run_torch(module, samples)
    results = []
    started = time.perf_counter()
    for index, name in enumerate(parameter_names):
        w16 = module.get_parameter(name).detach().numpy().astype(np.float16)
        dense = {bits: kmeans_palettized(w16, bits) for bits in sorted(set(choices) | {measured_bits})}
        mse = {b: float(np.mean((d.astype(np.float32) - w16.astype(np.float32)) ** 2)) for b, d in dense.items()}
        with replaced_weights(module, {name: dense[measured_bits]}):
            score = output_psnr(baselines, run_torch(module, samples))
        results.append(LayerSensitivity(name, int(w16.size), score, mse, measured_bits))
        if log and ((index + 1) % 25 == 0 or index + 1 == len(parameter_names)):
            log(f"    sensitivity {index + 1}/{len(parameter_names)} ({time.perf_counter() - started:.0f} s)")
    return results


@dataclass
class MixedPlan:
    """Bits per torch parameter for one component, and the measurements they came from."""

    bits: dict[str, int]
    sensitivities: list[LayerSensitivity]
    average_bits_budget: float
    choices: tuple[int, ...]
    seconds: float = 0.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # fp16 weights, for matching consts
    aliases: dict[str, str] = field(default_factory=dict)  # other names of the same parameters (e.g. at export)

    @property
    def average_bits(self) -> float:
        total = sum(s.elements for s in self.sensitivities) or 1
        return sum(self.bits[s.name] * s.elements for s in self.sensitivities) / total


def plan_mixed_bits(
    module: Any,
    inputs: Sequence[Sequence[Any]],
    parameter_names: Sequence[str],
    average_bits: float = 5.0,
    choices: Sequence[int] = MIXED_CHOICES,
    weight_threshold: int = WEIGHT_THRESHOLD,
    log: Callable[[str], None] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> MixedPlan:
    """Measure the sensitivity of the module's compressible weights and choose their bits.

    ``aliases``: other name -> parameter name, for parameters the converted program names differently.
    """
    choices = tuple(sorted(set(int(c) for c in choices)))
    bad = [c for c in choices if c not in PALETTE_BITS]
    if bad or not choices:
        raise CompressionError(f"mixed bit choices must come from {PALETTE_BITS}, got {list(choices)}")
    if not choices[0] <= average_bits <= choices[-1]:
        raise CompressionError(f"average bits {average_bits} must lie in [{choices[0]}, {choices[-1]}]")
    names = [n for n in parameter_names if module.get_parameter(n).numel() > weight_threshold]
    started = time.perf_counter()
    sensitivities = torch_layer_sensitivity(module, inputs, names, choices=choices, log=log)
    bits = choose_bits(sensitivities, average_bits, choices)
    arrays = {n: module.get_parameter(n).detach().numpy().astype(np.float16) for n in names}
    return MixedPlan(bits, sensitivities, average_bits, choices, time.perf_counter() - started, arrays,
                     {a: n for a, n in (aliases or {}).items() if n in arrays})


def program_weight_consts(mlmodel: Any, weight_threshold: int = WEIGHT_THRESHOLD) -> dict[str, np.ndarray]:
    """Float consts of a converted program that palettization would touch: name -> value."""
    out = {}
    for function in mlmodel._mil_program.functions.values():
        for op in function.find_ops(op_type="const"):
            value = getattr(op.outputs[0], "val", None)
            consumers = [c for o in op.outputs for c in o.child_ops]
            if (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size > weight_threshold
                    and consumers):
                out[op.name] = value
    return out


def match_consts(consts: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray],
                 aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Const name -> torch parameter name.

    By name first (the torch.export frontend names a parameter's const ``p_<dotted name with _>``,
    plus ``_to_fp16``), then by value: the same elements, possibly times one scale that a
    converter pass folded in (e.g. attention's 1/sqrt(d) into the query projection).
    """
    by_key = {"p_" + n.replace(".", "_"): n for n in arrays}
    by_key.update({"p_" + a.replace(".", "_"): n for a, n in (aliases or {}).items()})
    out: dict[str, str] = {}
    for cname, value in consts.items():
        key = cname[: -len("_to_fp16")] if cname.endswith("_to_fp16") else cname
        name = by_key.get(key)
        if name is not None and arrays[name].size == value.size:
            out[cname] = name
            continue
        c = value.astype(np.float32).ravel()
        for pname, array in arrays.items():
            if array.size != c.size:
                continue
            p = array.astype(np.float32).ravel()
            denom = float(p @ p)
            if denom == 0.0:
                continue
            scale = float(c @ p) / denom
            if scale != 0.0 and float(np.max(np.abs(c - scale * p))) <= 2e-3 * float(np.max(np.abs(c))):
                out[cname] = pname
                break
    return out


def compress_mixed(mlmodel: Any, plan: MixedPlan, weight_threshold: int = WEIGHT_THRESHOLD) -> tuple[Any, dict[str, Any]]:
    """Palettize each const at its parameter's planned bits; consts no scored parameter explains stay fp16."""
    consts = program_weight_consts(mlmodel, weight_threshold)
    matched = match_consts(consts, plan.arrays, plan.aliases)
    per_const: dict[str, int | None] = {c: plan.bits[p] for c, p in matched.items()}
    unmatched = sorted(set(consts) - set(matched))
    per_const.update({c: None for c in unmatched})
    compressed = palettize(mlmodel, max(plan.choices), weight_threshold, per_layer_bits=per_const)
    scores = {s.name: s for s in plan.sensitivities}
    total = sum(consts[c].size for c in matched) or 1
    achieved = sum(plan.bits[p] * consts[c].size for c, p in matched.items()) / total
    return compressed, {
        "method": "k-means palettization, per-layer bits by measured sensitivity (torch, real tiles)",
        "choices": list(plan.choices),
        "average_bits_budget": plan.average_bits_budget,
        "average_bits": achieved,
        "predicted_psnr_db": predicted_psnr_db(plan.sensitivities, plan.bits),
        "sensitivity_seconds": plan.seconds,
        "weight_threshold": weight_threshold,
        "kept_fp16": {c: int(consts[c].size) for c in unmatched},
        "layers": {c: {"parameter": p, "bits": plan.bits[p], "elements": int(consts[c].size),
                       f"psnr_db_alone_at_{scores[p].measured_bits}_bits": scores[p].psnr_db}
                   for c, p in sorted(matched.items())},
    }


def compress_mlmodel(
    mlmodel: Any,
    precision: str,
    *,
    mixed_plan: MixedPlan | None = None,
    weight_threshold: int = WEIGHT_THRESHOLD,
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
        if mixed_plan is None:
            raise CompressionError("mixed compression needs a plan from plan_mixed_bits (measured sensitivity)")
        return compress_mixed(mlmodel, mixed_plan, weight_threshold)
    raise CompressionError(f"unknown Core ML compression {precision!r}; choose one of {COMPRESSION_PRECISIONS}")
