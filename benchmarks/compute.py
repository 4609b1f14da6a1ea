"""Compute per component and per image: parameters, FLOPs, activation bytes, tiles per megapixel.

Parameters, FLOPs, activation bytes and attention sizes per component come from
``training.distill.cost.component_compute`` (the one counter of the project, which the default
model's card uses too: ``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per
multiply-accumulate, matmul / conv / attention only), on a model built on the ``meta`` device, so
the SD2.1-scale model costs nothing to count. Activation bytes are counted by watching the same
meta run op by op:

* ``activation_bytes_written``: bytes of every tensor an op produces (views and in-place results
  excluded): the memory *traffic* a runtime without fusion would write;
* ``peak_live_activation_bytes``: the largest total of produced tensors alive at one time: a lower
  bound on the working memory a runtime needs beside the weights (a fusing runtime can do better
  on traffic, not on this peak by much).

Per image: the tiling plan (``runtime_py.tiling.plan_tiles``, the one tiling implementation) gives
the tile count, and FLOPs per image = tiles x FLOPs per tile at that tile size.
"""

from __future__ import annotations

from typing import Any

import torch

from training.distill.cost import (  # noqa: F401  (re-exported: the report's API)
    FLOP_CONVENTION,
    ActivationCounter,
    build_on_meta,
    component_compute,
    count_activations,
    count_flops,
)
from runtime_py.model import MagicBokehConfig, get_config
from runtime_py.tiling import plan_tiles

def tile_flops(config: MagicBokehConfig | str, tile: int) -> int:
    """FLOPs of one tile (encoder + denoiser + decoder) at ``tile`` px: FLOPs only, no activations."""
    config = get_config(config)
    if tile != config.tile:
        config = config.replace(tile=int(tile), stride=min(config.stride, int(tile)))
    model = build_on_meta(config)
    t, lt = config.tile, config.latent_tile
    rgb = torch.zeros(1, 3, t, t, device="meta")
    mask = torch.zeros(1, 1, t, t, device="meta")
    latent = torch.zeros(1, config.latent_channels, lt, lt, device="meta")
    return (count_flops(lambda: model.encode(rgb)) + count_flops(lambda: model.denoise(latent, mask, mask))
            + count_flops(lambda: model.decode(latent)))


def image_compute(height: int, width: int, tile: int, stride: int, flops_per_tile: int) -> dict[str, Any]:
    """Tiles, tiles per megapixel and FLOPs per image / per megapixel for one image size and plan."""
    plan = plan_tiles(height, width, tile, stride)
    megapixels = height * width / 1e6
    return {
        "height": height,
        "width": width,
        "tile": tile,
        "stride": stride,
        "tiles": plan.count,
        "tiles_per_megapixel": plan.count / megapixels,
        "flops_per_tile": int(flops_per_tile),
        "flops_per_image": int(plan.count * flops_per_tile),
        "flops_per_megapixel": plan.count * flops_per_tile / megapixels,
    }


def compute_section(configs: dict[str, str], height: int, width: int) -> dict[str, Any]:
    """The report's compute section: per config (label -> config name) its components and the image cost."""
    section: dict[str, Any] = {"flop_convention": FLOP_CONVENTION, "image": {"height": height, "width": width},
                               "configs": {}}
    for label, name in configs.items():
        config = get_config(name)
        components = component_compute(config)
        if min(height, width) >= config.tile:
            image = image_compute(height, width, config.tile, config.stride, components["tile_total"]["flops"])
        else:
            image = {"status": "not applicable", "reason": f"the image is smaller than one {config.tile}-px tile"}
        section["configs"][label] = {"config": config.name, "tile": config.tile, "stride": config.stride,
                                     "components": components, "image": image}
    return section
