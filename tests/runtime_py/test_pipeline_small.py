"""The whole-image pipeline with the ``small`` configuration: the published 512 / 256 tiling."""

from __future__ import annotations

import numpy as np
import torch

from runtime_py.backends import get_backend
from runtime_py.components import tile_components
from runtime_py.model import build_model
from runtime_py.pipeline import FocusPoint, render_image


def test_small_config_renders_a_large_image_with_flush_tiles() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription stalls
    try:
        components = get_backend("torch").load(tile_components(build_model("small", seed=0)))
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)
        depth = np.tile(np.linspace(0, 1, 1000, dtype=np.float32), (600, 1))
        result = render_image(image, depth, components=components, config="small", K=32,
                              focus=FocusPoint(500, 300))
    finally:
        torch.set_num_threads(before)
    # 600 x 1000 at 512 / 256: 2 grid tiles, 2 flush with the bottom, 1 with the right, 1 corner.
    assert result.plan.describe()["tiles"] == 6 and result.plan.count_of("corner") == 1
    assert result.image.shape == (600, 1000, 3) and result.image.dtype == np.uint8
    assert result.focus == float(np.float32(result.depth_u8[300, 500]) / np.float32(255))
    # The tent of in-focus pixels around column 500: depth within 0.1 * 32 / 32 of the focus.
    assert result.in_focus[:, 500].all() and not result.in_focus[:, 0].any()
