"""The model the toolkit uses when the user names no weights.

Until trained weights ship with the toolkit this is a seeded random model: it exercises every
part of the pipeline (shapes, tiling, backends, export) but does NOT render bokeh. Everything
written with it carries :data:`STRUCTURAL_LABEL` so that nobody mistakes its output for a result.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .model import MagicBokeh, build_model

DEFAULT_CONFIG = "small"
DEFAULT_SEED = 0
STRUCTURAL_DESCRIPTION = "structural test model (seeded random weights), not a bokeh renderer"


def default_model_label(config: str = DEFAULT_CONFIG, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The provenance label every output of the default model carries."""
    return {
        "kind": "structural-test",
        "description": STRUCTURAL_DESCRIPTION,
        "config": config,
        "seed": seed,
    }


def load_default_model(config: str | None = None) -> tuple[MagicBokeh, dict[str, Any]]:
    """The built-in model and its label: ``build_model(config or "small", seed=0)`` for now."""
    name = config or DEFAULT_CONFIG
    return build_model(name, seed=DEFAULT_SEED), default_model_label(name, DEFAULT_SEED)


def load_default_depth_fn() -> Callable[[np.ndarray], np.ndarray] | None:
    """The built-in depth model as an ``(H, W, 3) uint8 -> (H, W) [0, 1]`` callable, if any.

    None until a depth model ships; callers then require a depth map from the user.
    """
    return None
