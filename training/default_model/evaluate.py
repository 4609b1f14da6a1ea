"""Quality of a bokeh model on held-out generated scenes, against the physically based teacher.

For every scene three candidates are compared with the teacher (the renderer applied to the
*clean* scene): the model's output on the degraded input, the degraded input unchanged, and the
naive baseline (a Gaussian blur of the degraded input pasted behind its in-focus region). Figures:
PSNR and SSIM on the whole tile, PSNR on the in-focus region (``D <= 0.1``) and on the rest, and
the in-focus sharpness ratio ``gradient energy(candidate) / gradient energy(teacher)`` over the
in-focus region (1 = as sharp as the teacher; a blurred subject falls well below 1).

The model runs on whole tiles (scene size = the model's tile), exactly the tile inputs the
pipeline builds, without the pipeline's colour fix, so the figures measure the network itself.

In focus the model should hand the input back, so every candidate is also compared with the
*input* there (:func:`in_focus_fidelity`): PSNR against the input, PSNR against the input
low-passed at the latent grid (what a VAE that can only carry what its latent grid resolves would
return at best), the sharpness ratio against the input and a moire indicator. The
``fine_texture`` family (2-4 px textures on a large in-focus subject) is where these matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from runtime_py.bokeh_renderer import gaussian_background_blur
from runtime_py.model import MagicBokeh
from runtime_py.parity import psnr
from runtime_py.scenes import Scene, generate_scene

from .data import tile_inputs
from .losses import gradient_energy, ssim_np

HELD_OUT_FIRST_SEED = 1_000_000
"""Training uses seeds below 1 600 (see export.train_default); held-out scenes start here."""

CANDIDATES = ("model", "input", "gaussian_blur")


@dataclass
class SceneResult:
    scene: Scene
    output: np.ndarray
    gaussian: np.ndarray
    in_focus: np.ndarray
    metrics: dict[str, dict[str, float]]


def run_model_on_scene(model: MagicBokeh, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The model's output (H, W, 3) in [0, 1] for a scene, and the in-focus mask it was given."""
    inputs = tile_inputs(scene.degraded, scene.depth, scene.focus, scene.aperture_k,
                         model.config.defocus_in_focus_threshold)
    with torch.no_grad():
        out = model(inputs["x"], inputs["defocus"], inputs["in_focus"])
    image = ((out[0].permute(1, 2, 0).numpy() + 1.0) * 0.5).clip(0.0, 1.0).astype(np.float32)
    return image, inputs["in_focus"][0, 0].numpy() > 0.5


def latent_lowpass(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (H, W, C) low-passed at a grid ``factor`` times coarser: Pillow's Lanczos downscale
    by ``factor`` and Lanczos upscale back to (H, W), per channel in float32 (no 8-bit rounding).

    This is what survives a round trip through a latent grid with a good anti-aliasing filter: the
    best a VAE whose latents cannot carry texture above their own Nyquist frequency can return.
    """
    image = np.asarray(image, np.float32)
    if factor < 1 or image.ndim != 3:
        raise ValueError(f"latent low-pass needs an (H, W, C) image and a factor >= 1, got {image.shape} and {factor}")
    if factor == 1:
        return image.copy()
    h, w = image.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    channels = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c]))
        channels.append(np.asarray(plane.resize(small, Image.Resampling.LANCZOS).resize((w, h), Image.Resampling.LANCZOS)))
    return np.stack(channels, axis=2).astype(np.float32)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (H, W) shrunk by ``radius`` px (square structuring element); pixels beyond the border count as outside."""
    if radius <= 0:
        return np.asarray(mask, bool)
    outside = torch.from_numpy(~np.asarray(mask, bool)).float()[None, None]
    grown = torch.nn.functional.max_pool2d(outside, 2 * radius + 1, stride=1, padding=radius)
    grown = torch.nn.functional.pad(grown[..., radius:-radius, radius:-radius], (radius,) * 4, value=1.0)
    return (grown[0, 0] < 0.5).numpy()


def moire_indicator(candidate: np.ndarray, given: np.ndarray, mask: np.ndarray, factor: int,
                    given_lowpass: np.ndarray | None = None) -> float:
    """False low-frequency pattern in ``candidate`` relative to the fine texture ``given`` holds.

    ``mean_mask |L(candidate) - L(given)|^2 / mean_mask |given - L(given)|^2``, with ``L`` the
    latent-grid low-pass (:func:`latent_lowpass`), means over the mask's pixels and channels.

    Why: a latent grid ``factor`` times coarser than the image cannot represent texture above its
    Nyquist frequency ``1 / (2 factor)``. A model that keeps such texture (output = input) or blurs it
    away (output = ``L(input)``) leaves the band below that frequency as the input has it: the
    numerator is 0 for both. A model that aliases it folds that energy *into* the low band (a 3-px
    stripe sampled every 4 px comes back as a 12-px stripe), and the numerator grows with the folded
    energy. The denominator, the input's own energy above the latent Nyquist frequency, makes the
    figure the share of the fine texture that reappears as a false pattern (about 1 when all of it
    does). Any other low-frequency error (a tone or colour shift) also counts, so the figure is an
    upper bound on moire; NaN where the mask is empty or the input has no fine texture there.

    The means run over the mask eroded by ``2 factor`` px: nearer its edge, the low-pass mixes in
    pixels from outside it (the out-of-focus background, which every candidate changes on purpose).
    """
    mask = erode(np.asarray(mask, bool), 2 * factor)
    if not mask.any():
        return math.nan
    low_given = latent_lowpass(given, factor) if given_lowpass is None else given_lowpass
    fine_energy = float(np.mean((np.asarray(given, np.float32) - low_given)[mask] ** 2))
    if fine_energy <= 0.0:
        return math.nan
    false_low = float(np.mean((latent_lowpass(candidate, factor) - low_given)[mask] ** 2))
    return false_low / fine_energy


def in_focus_fidelity(candidate: np.ndarray, given: np.ndarray, in_focus: np.ndarray, factor: int,
                      given_lowpass: np.ndarray | None = None) -> dict[str, float]:
    """How a candidate treats the in-focus input (images (H, W, 3) in [0, 1], ``factor`` the VAE's).

    ``psnr_in_focus_vs_input``: PSNR against the input over the in-focus mask (peak 1);
    ``psnr_in_focus_vs_lowpass``: the same against :func:`latent_lowpass` of the input (a model
    that blurs fine texture to its latent grid scores high here, one that invents moire does not);
    ``sharpness_in_focus_vs_input``: gradient energy over the mask relative to the input's;
    ``moire_in_focus``: :func:`moire_indicator`.
    """
    low = latent_lowpass(given, factor) if given_lowpass is None else given_lowpass
    return {
        "psnr_in_focus_vs_input": psnr(given, candidate, peak=1.0, mask=in_focus),
        "psnr_in_focus_vs_lowpass": psnr(low, candidate, peak=1.0, mask=in_focus),
        "sharpness_in_focus_vs_input": gradient_energy(candidate, in_focus) / max(gradient_energy(given, in_focus), 1e-8),
        "moire_in_focus": moire_indicator(candidate, given, in_focus, factor, given_lowpass=low),
    }


def scene_metrics(candidate: np.ndarray, teacher: np.ndarray, in_focus: np.ndarray) -> dict[str, float]:
    return {
        "psnr": psnr(teacher, candidate, peak=1.0),
        "ssim": ssim_np(candidate, teacher),
        "psnr_in_focus": psnr(teacher, candidate, peak=1.0, mask=in_focus),
        "psnr_out_of_focus": psnr(teacher, candidate, peak=1.0, mask=~in_focus),
        "sharpness_in_focus": gradient_energy(candidate, in_focus) / max(gradient_energy(teacher, in_focus), 1e-8),
    }


def evaluate_scene(model: MagicBokeh, scene: Scene) -> SceneResult:
    output, in_focus = run_model_on_scene(model, scene)
    gaussian = gaussian_background_blur(scene.degraded, scene.depth, scene.focus, scene.aperture_k,
                                        in_focus_threshold=model.config.defocus_in_focus_threshold)
    factor = model.config.vae_factor
    low = latent_lowpass(scene.degraded, factor)
    metrics = {
        name: scene_metrics(candidate, scene.teacher, in_focus)
        | in_focus_fidelity(candidate, scene.degraded, in_focus, factor, given_lowpass=low)
        for name, candidate in (("model", output), ("input", scene.degraded), ("gaussian_blur", gaussian))
    }
    return SceneResult(scene, output, gaussian, in_focus, metrics)


def _mean(values: list[float]) -> float:
    """Mean of the finite values; inf when every value is inf (identical images), else NaN if none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return float(np.mean(finite))
    return math.inf if values and all(v == math.inf for v in values) else float("nan")


def evaluate_model(
    model: MagicBokeh,
    seeds: list[int],
    size: int,
    family: str = "dead_leaves",
    keep: int = 0,
) -> tuple[dict[str, Any], list[SceneResult]]:
    """Evaluate on the given scene seeds; returns the summary and the first ``keep`` scene results."""
    model = model.eval()
    per_scene: list[dict[str, Any]] = []
    kept: list[SceneResult] = []
    for seed in seeds:
        result = evaluate_scene(model, generate_scene(seed, size, family))
        per_scene.append({"seed": seed, "aperture_k": result.scene.aperture_k, "focus": result.scene.focus,
                          "in_focus_fraction": float(result.in_focus.mean()), **result.metrics})
        if len(kept) < keep:
            kept.append(result)
    summary: dict[str, Any] = {"family": family, "size": size, "scenes": len(seeds),
                               "first_seed": seeds[0] if seeds else None, "vae_factor": model.config.vae_factor}
    for cand in CANDIDATES:
        keys = per_scene[0][cand].keys() if per_scene else []
        summary[cand] = {k: _mean([s[cand][k] for s in per_scene]) for k in keys}
    summary["model_beats_input_psnr"] = sum(s["model"]["psnr"] > s["input"]["psnr"] for s in per_scene)
    summary["model_beats_gaussian_psnr"] = sum(s["model"]["psnr"] > s["gaussian_blur"]["psnr"] for s in per_scene)
    summary["per_scene"] = per_scene
    return summary, kept


QUANTIZATION_FIRST_SEED = 3_000_000
"""Seeds of the held-out tiles that calibrate and measure the simulated 8-bit model (their own range)."""
QUANTIZATION_FAMILIES = ("dead_leaves", "street")
"""Families those tiles alternate between (the kinds of scene the int8 recipe calibrates on)."""


def held_out_tiles(model: MagicBokeh, count: int, first_seed: int, families: tuple[str, ...] = QUANTIZATION_FAMILIES) -> list[dict[str, torch.Tensor]]:
    """``count`` tiles (``x``, ``defocus``, ``in_focus``) of held-out scenes one tile in size,
    built as the pipeline builds a tile's inputs; seeds ``first_seed``..., families alternating."""
    tiles = []
    for i in range(count):
        scene = generate_scene(first_seed + i, model.config.tile, families[i % len(families)])
        tiles.append(tile_inputs(scene.degraded, scene.depth, scene.focus, scene.aperture_k,
                                 model.config.defocus_in_focus_threshold))
    return tiles


# -- the held-out sets of the model card -------------------------------------------------------------

UNSEEN_FAMILY_FIRST_SEED = 2_000_000
FINE_TEXTURE_FIRST_SEED = 4_000_000
HELD_OUT_SETS: dict[str, tuple[str, int]] = {
    "dead_leaves": ("dead_leaves (held out)", HELD_OUT_FIRST_SEED),
    "street": ("street (unseen family)", UNSEEN_FAMILY_FIRST_SEED),
    "fine_texture": ("fine_texture (held out, evaluation only)", FINE_TEXTURE_FIRST_SEED),
}
"""Per family: the set's name in metrics.json and its first seed (``finish`` and ``evaluate`` share them,
so a previous model's figures line up with a new model's by name)."""

FINE_TEXTURE_TARGET_DB = 24.0
"""Issue 17's bar: in focus on ``fine_texture``, the output within this PSNR of the latent-low-passed input."""
W8A8_TARGET_DB = 30.0
"""Issue 17's bar: each component's simulated W8A8 output at least this PSNR from its fp32 output."""
ATTENTION_TOKEN_LIMIT = 4096
"""Issue 17's bar: no attention over more tokens than this at the model's tile."""
COMPONENT_MEMORY_LIMIT_MIB = 400.0
"""Issue 17's bar: each component's fp32 weights plus peak live activations within this many MiB."""


def evaluate_held_out_set(model: MagicBokeh, family: str, scenes: int, size: int, keep: int = 0) -> tuple[str, dict[str, Any], list[SceneResult]]:
    """(set name, summary, kept results) of ``scenes`` held-out scenes of ``family`` (see HELD_OUT_SETS)."""
    if family not in HELD_OUT_SETS:
        raise ValueError(f"no held-out set for family {family!r}; known: {sorted(HELD_OUT_SETS)}")
    name, first = HELD_OUT_SETS[family]
    summary, kept = evaluate_model(model, list(range(first, first + scenes)), size, family, keep=keep)
    return name, summary, kept


def compute_record(config: Any) -> dict[str, Any]:
    """Per tile component: params, FLOPs, peak live activations, fp32 weight bytes and the largest
    attention (tokens), from :func:`training.distill.cost.component_compute` (the counter the
    benchmarks use), with issue 17's bars checked."""
    from training.distill.cost import FLOP_CONVENTION, component_compute

    figures = component_compute(config)
    components: dict[str, dict[str, Any]] = {}
    for name in (n for n in figures if n != "tile_total"):
        f = figures[name]
        weight_bytes = 4 * f["params"]
        memory_mib = (weight_bytes + f["peak_live_activation_bytes"]) / 2**20
        components[name] = {
            "params": f["params"],
            "flops": f["flops"],
            "peak_live_activation_bytes": f["peak_live_activation_bytes"],
            "activation_bytes_written": f["activation_bytes_written"],
            "weight_bytes_fp32": weight_bytes,
            "memory_mib": memory_mib,
            "within_memory_limit": memory_mib <= COMPONENT_MEMORY_LIMIT_MIB,
            "max_attention_tokens": f["max_attention_tokens"],
        }
    total = figures["tile_total"]
    return {
        "flop_convention": FLOP_CONVENTION,
        "tile": int(config.tile),
        "components": components,
        "tile_flops": total["flops"],
        "params": total["params"],
        "max_attention_tokens": total["max_attention_tokens"],
        "attention_token_limit": ATTENTION_TOKEN_LIMIT,
        "attention_within_limit": total["max_attention_tokens"] <= ATTENTION_TOKEN_LIMIT,
        "memory_limit_mib": COMPONENT_MEMORY_LIMIT_MIB,
        "memory_definition": "fp32 weights + peak live activations of one tile (a lower bound on a runtime's working set)",
        "all_within_memory_limit": all(c["within_memory_limit"] for c in components.values()),
    }
