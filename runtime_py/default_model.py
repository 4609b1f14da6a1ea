"""The model the toolkit uses when the user names no weights.

For the ``small`` configuration (the default) this is the trained default model shipped in
``runtime_py/default_weights/`` (see its MODEL_CARD.md: a small network with the published
MagicBokeh topology, trained on generated scenes against the physically based bokeh renderer).
A missing or damaged weights file is an error, never a silent fallback to random weights.

Other configurations (``tiny`` for fast tests, ``sd21`` without a user checkpoint) have no
trained weights: they get a seeded random model labelled :data:`STRUCTURAL_DESCRIPTION`, which
exercises every part of the pipeline (shapes, tiling, backends, export) but does NOT render bokeh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .model import MagicBokeh, build_model

DEFAULT_CONFIG = "small"
DEFAULT_SEED = 0
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "default_weights"
DEFAULT_WEIGHTS = DEFAULT_WEIGHTS_DIR / "magicbokeh_small.safetensors"
STRUCTURAL_DESCRIPTION = "structural test model (seeded random weights), not a bokeh renderer"
DEFAULT_METRICS = DEFAULT_WEIGHTS_DIR / "metrics.json"
HELD_OUT_SET = "dead_leaves (held out)"


def trained_description(metrics_path: Path = DEFAULT_METRICS) -> str:
    """What the shipped default model is and how it measured, from the card's ``metrics.json``
    (never a figure typed by hand; "not measured" when the file is missing or unreadable)."""
    base = "built-in default MagicBokeh model (small), trained on generated scenes against the physically based bokeh renderer"
    try:
        metrics = json.loads(Path(metrics_path).read_text())
        minutes = metrics["training"]["train_minutes"]
        held = metrics["evaluation"][HELD_OUT_SET]
        model, given, blur = (held[c]["psnr"] for c in ("model", "input", "gaussian_blur"))
    except (OSError, ValueError, KeyError, TypeError):
        return f"{base}; held-out quality not measured (see runtime_py/default_weights/MODEL_CARD.md)"
    verdict = "closer to the teacher than" if model > max(given, blur) else "NOT closer to the teacher than"
    return (f"{base} for {minutes:.0f} minutes; on {held['scenes']} held-out scenes its PSNR against the renderer is "
            f"{model:.2f} dB, {verdict} the unchanged input ({given:.2f} dB) and a Gaussian blur of the background "
            f"({blur:.2f} dB) (see runtime_py/default_weights/MODEL_CARD.md)")


class DefaultModelError(RuntimeError):
    """The shipped default weights are missing or cannot be loaded."""


def default_model_label(config: str = DEFAULT_CONFIG, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The provenance label of a seeded structural model (configurations without trained weights)."""
    return {
        "kind": "structural-test",
        "description": STRUCTURAL_DESCRIPTION,
        "config": config,
        "seed": seed,
    }


def trained_model_label(path: Path, weights_sha256: str) -> dict[str, Any]:
    """The provenance label every output of the trained default model carries."""
    return {
        "kind": "trained-default",
        "description": trained_description(),
        "config": DEFAULT_CONFIG,
        "weights": path.name,
        "weights_sha256": weights_sha256,
    }


def load_default_model(config: str | None = None, weights_path: Path | str | None = None) -> tuple[MagicBokeh, dict[str, Any]]:
    """The built-in model (float32, eval mode) and its label.

    ``config`` None or ``"small"``: the trained default weights (``weights_path`` overrides the
    shipped file, for tests). Any other configuration name: ``build_model(config, seed=0)``.
    """
    from .checkpoints import load_native
    from .checkpoints.errors import CheckpointError
    from .checkpoints.native import read_native_metadata

    name = config or DEFAULT_CONFIG
    if name != DEFAULT_CONFIG:
        return build_model(name, seed=DEFAULT_SEED), default_model_label(name, DEFAULT_SEED)
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise DefaultModelError(
            f"the default model's weights {path} are missing (a broken install?); reinstall the toolkit "
            "or recreate them with `python -m export.train_default train` then `... finish`"
        )
    try:
        model = load_native(path, config=DEFAULT_CONFIG)
        sha = read_native_metadata(path)["weights_sha256"]
    except CheckpointError as err:
        raise DefaultModelError(f"the default model's weights {path} cannot be loaded: {err}") from None
    return model.float().eval(), trained_model_label(path, sha)


def load_default_depth_fn() -> Callable[[np.ndarray], np.ndarray] | None:
    """The built-in depth model as an ``(H, W, 3) uint8 -> (H, W) [0, 1]`` callable, if any.

    None until a depth model ships; callers then require a depth map from the user.
    """
    return None
