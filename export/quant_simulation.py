"""Simulated W8A8 per tile component: how far the int8 XNNPACK recipe moves each component's output.

Each tile component is exported exactly as the ``xnnpack-int8`` target exports it
(:func:`export.prepare.export_component`) and quantized by the recipe's own quantizer
(:func:`quantize.xnnpack.quantize_program`: PT2E ``prepare`` with the XNNPACKQuantizer, 8-bit
per-channel symmetric weights, 8-bit per-tensor affine activations, ranges observed on the
calibration tiles, then ``convert``). The converted graph is run here in PyTorch: its quantize /
dequantize pairs round every weight and activation to the 8-bit grid the delegate would use, so
its output differs from fp32 by the quantization alone (the "simulated" W8A8; no device and no
ExecuTorch runtime needed).

Per component the figure is the PSNR of its output against its fp32 output on evaluation tiles
that were not used for calibration, each component fed the fp32 reference's inputs (so a
component's figure is its own error, not its predecessors'), with the parity convention
``peak = max|fp32 output|`` (:func:`runtime_py.parity.psnr`). ``chain`` runs the three quantized
components one after the other on the tile, as a phone would, against the fp32 chain.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from runtime_py.components import TILE_COMPONENTS, tile_components
from runtime_py.model import MagicBokeh
from runtime_py.parity import psnr

from .prepare import export_component

SIMULATED_TARGET = "xnnpack-int8"
"""The export graph whose quantized form is simulated (its focus attention and rewrites)."""

Tile = Mapping[str, torch.Tensor]  # "x" (1, 3, T, T) in [-1, 1], "defocus" and "in_focus" (1, 1, T, T)


def _reference_inputs(components: Mapping[str, torch.nn.Module], tiles: Sequence[Tile]) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """Per component, the inputs the fp32 chain gives it on each tile (encoder -> denoiser -> decoder)."""
    inputs: dict[str, list[tuple[torch.Tensor, ...]]] = {name: [] for name in TILE_COMPONENTS}
    with torch.no_grad():
        for tile in tiles:
            latent = components["encoder"](tile["x"])
            x0 = components["denoiser"](latent, tile["defocus"], tile["in_focus"])
            inputs["encoder"].append((tile["x"],))
            inputs["denoiser"].append((latent, tile["defocus"], tile["in_focus"]))
            inputs["decoder"].append((x0,))
    return inputs


def _psnr_over(references: list[torch.Tensor], tests: list[torch.Tensor]) -> float:
    ref = np.concatenate([r.detach().numpy().ravel() for r in references])
    test = np.concatenate([t.detach().numpy().ravel() for t in tests])
    return psnr(ref, test)


def simulate_w8a8(model: MagicBokeh, calibration_tiles: Sequence[Tile], evaluation_tiles: Sequence[Tile]) -> dict[str, Any]:
    """PSNR (dB) of each tile component's simulated W8A8 output against fp32, and of the chain.

    Returns ``{"components": {name: {"psnr_db", "max_abs", "quantize_seconds"}}, "chain": {...},
    "calibration_tiles", "evaluation_tiles", "target", "recipe"}``.
    """
    from quantize.recipes import get_recipe
    from quantize.xnnpack import quantize_program

    if not calibration_tiles or not evaluation_tiles:
        raise ValueError("simulated W8A8 needs at least one calibration tile and one evaluation tile")
    model = model.eval()
    components = tile_components(model)
    recipe = get_recipe("w8a8")
    calibration = _reference_inputs(components, calibration_tiles)
    evaluation = _reference_inputs(components, evaluation_tiles)
    quantized: dict[str, torch.nn.Module] = {}
    figures: dict[str, dict[str, float]] = {}
    for name in TILE_COMPONENTS:
        component = components[name]
        start = time.perf_counter()
        program = export_component(component, calibration[name][0], target=SIMULATED_TARGET)
        result = quantize_program(program, calibration[name], recipe=recipe, name=name)
        quantized[name] = result.program.module()
        seconds = time.perf_counter() - start
        refs, tests = [], []
        with torch.no_grad():
            for inputs in evaluation[name]:
                refs.append(component(*inputs))
                tests.append(quantized[name](*inputs))
        figures[name] = {"psnr_db": _psnr_over(refs, tests),
                         "max_abs": float(max((r - t).abs().max() for r, t in zip(refs, tests))),
                         "quantize_seconds": seconds}
    refs, tests = [], []
    with torch.no_grad():
        for tile in evaluation_tiles:
            refs.append(components["decoder"](components["denoiser"](components["encoder"](tile["x"]), tile["defocus"], tile["in_focus"])))
            latent = quantized["encoder"](tile["x"])
            tests.append(quantized["decoder"](quantized["denoiser"](latent, tile["defocus"], tile["in_focus"])))
    chain = {"psnr_db": _psnr_over(refs, tests), "max_abs": float(max((r - t).abs().max() for r, t in zip(refs, tests)))}
    for values in list(figures.values()) + [chain]:
        for key, value in values.items():
            if not math.isfinite(value) and key != "psnr_db":
                raise ValueError(f"simulated W8A8 produced a non-finite {key}")
    return {
        "components": figures,
        "chain": chain,
        "calibration_tiles": len(calibration_tiles),
        "evaluation_tiles": len(evaluation_tiles),
        "tile": int(model.config.tile),
        "target": SIMULATED_TARGET,
        "recipe": recipe.to_dict(),
    }
