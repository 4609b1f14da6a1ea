"""PT2E int8 quantization for XNNPACK: per-channel symmetric int8 weights, int8 activations.

The activation ranges come from calibration on real tiles (``quantize/calibration.py``): random
noise would set ranges that the encoder, denoiser and decoder never see in use, and the denoiser's
output is scaled by sqrt(1-a) / sqrt(a) in the DDPM step (~15x at SD2.1's t = 999), so its
ranges matter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from quantize.recipes import QuantizationError, QuantRecipe, get_recipe


@dataclass
class QuantizedProgram:
    """A quantized exported program plus what it took to make it."""

    program: torch.export.ExportedProgram
    calibration_batches: int
    seconds: float
    mixed: dict[str, Any] | None = None  # a mixed recipe's choice: groups kept fp32, their scores


def xnnpack_quantizer(recipe: QuantRecipe | None = None):
    """The XNNPACKQuantizer configured from a backend-neutral recipe (only w8a8 maps onto XNNPACK)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    recipe = recipe or get_recipe("w8a8")
    if recipe.weight_bits != 8 or recipe.activation_bits != 8:
        raise ValueError(
            f"XNNPACK int8 supports the w8a8 recipe only; {recipe.name!r} asks for "
            f"weights {recipe.weight_bits} bits, activations {recipe.activation_bits} bits"
        )
    if not recipe.symmetric:
        raise ValueError("XNNPACK's int8 weights are symmetric; the recipe asks for asymmetric weights")
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=recipe.per_channel))
    return quantizer


def quantize_program(
    program: torch.export.ExportedProgram,
    calibration_inputs: Sequence[tuple[torch.Tensor, ...]],
    *,
    recipe: QuantRecipe | None = None,
    name: str = "component",
    component: torch.nn.Module | None = None,
    sensitivity_batches: int = 1,
    log: Callable[[str], None] | None = None,
) -> QuantizedProgram:
    """prepare_pt2e -> run the calibration inputs -> convert_pt2e -> re-export.

    ``calibration_inputs`` are the component's inputs as the reference pipeline feeds them on
    real tiles; at least one batch is required (an uncalibrated observer has no range).
    A sensitivity-driven mixed recipe (``recipe.sensitivity_mixed``) first scores the layer
    groups of ``component`` (the module ``program`` was exported from) on the first
    ``sensitivity_batches`` batches (``quantize.sensitivity``), then leaves the chosen groups fp32.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration_inputs:
        raise ValueError(f"component {name!r}: int8 quantization needs calibration inputs (got none)")
    start = time.perf_counter()
    recipe = recipe or get_recipe("w8a8")
    quantizer = xnnpack_quantizer(recipe)
    mixed = None
    if recipe.sensitivity_mixed:
        if component is None:
            raise ValueError(f"component {name!r}: the mixed recipe {recipe.name!r} needs the torch module to score")
        quantizer, mixed = _mixed_quantizer(program, component, calibration_inputs, recipe, name,
                                            sensitivity_batches, log)
    try:
        prepared = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for inputs in calibration_inputs:
                prepared(*inputs)
        converted = convert_pt2e(prepared)
        example = tuple(calibration_inputs[0])
        quantized = torch.export.export(converted, example, strict=False)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ValueError) and "XNNPACK int8 supports" in str(exc):
            raise
        raise QuantizationError(f"int8 quantization failed for component {name!r}: {type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:
        raise QuantizationError(f"int8 quantization failed for component {name!r}: {type(exc).__name__}: {exc}") from exc
    return QuantizedProgram(quantized, len(calibration_inputs), time.perf_counter() - start, mixed)


def _mixed_quantizer(program: torch.export.ExportedProgram, component: torch.nn.Module,
                     calibration_inputs: Sequence[tuple[torch.Tensor, ...]], recipe: QuantRecipe, name: str,
                     sensitivity_batches: int, log: Callable[[str], None] | None) -> tuple[Any, dict[str, Any]]:
    """Score the groups, plan within the recipe's budget, and a quantizer that skips the kept groups."""
    from quantize.sensitivity import _group_quantizer, analyse, plan_mixed, xnnpack_int8_config

    batches = list(calibration_inputs)[: max(1, sensitivity_batches)]
    report, plan = analyse("xnnpack", component, batches, name=name, program=program)
    choice = plan_mixed(report, cheap_fraction=recipe.mixed_cheap_fraction, psnr_floor_db=recipe.mixed_psnr_floor_db)
    keep = plan.predicate(choice.kept)
    if log:
        log(f"[quantize] {name}: uniform int8 simulated {report.uniform_psnr_db:.2f} dB; kept fp32: "
            f"{choice.kept or 'none'} (predicted {choice.predicted_psnr_db:.2f} dB)")
    quantizer = _group_quantizer(xnnpack_int8_config(recipe.per_channel), lambda owner: not keep(owner))
    return quantizer, {"kept_fp32": choice.kept, "choice": choice.to_dict(), "sensitivity": report.to_dict(),
                       "special_groups": {g: ("fp32" if g in choice.kept else "int8")
                                          for g in ("component-root", "focus-attention-mask", "focus-lora")
                                          if any(s.name == g for s in report.groups)}}
