"""Quality of a bokeh model on held-out generated scenes, against the physically based teacher.

For every scene three candidates are compared with the teacher (the renderer applied to the
*clean* scene): the model's output on the degraded input, the degraded input unchanged, and the
naive baseline (a Gaussian blur of the degraded input pasted behind its in-focus region). Figures:
PSNR and SSIM on the whole tile, PSNR on the in-focus region (``D <= 0.1``) and on the rest, and
the in-focus sharpness ratio ``gradient energy(candidate) / gradient energy(teacher)`` over the
in-focus region (1 = as sharp as the teacher; a blurred subject falls well below 1).

The model runs on whole tiles (scene size = the model's tile), exactly the tile inputs the
pipeline builds, without the pipeline's colour fix, so the figures measure the network itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
    metrics = {
        "model": scene_metrics(output, scene.teacher, in_focus),
        "input": scene_metrics(scene.degraded, scene.teacher, in_focus),
        "gaussian_blur": scene_metrics(gaussian, scene.teacher, in_focus),
    }
    return SceneResult(scene, output, gaussian, in_focus, metrics)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


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
                               "first_seed": seeds[0] if seeds else None}
    for cand in CANDIDATES:
        keys = per_scene[0][cand].keys() if per_scene else []
        summary[cand] = {k: _mean([s[cand][k] for s in per_scene]) for k in keys}
    summary["model_beats_input_psnr"] = sum(s["model"]["psnr"] > s["input"]["psnr"] for s in per_scene)
    summary["model_beats_gaussian_psnr"] = sum(s["model"]["psnr"] > s["gaussian_blur"]["psnr"] for s in per_scene)
    summary["per_scene"] = per_scene
    return summary, kept
