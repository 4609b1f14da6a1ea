"""Compute per component and per image: parameters, FLOPs, activation bytes, tiles per megapixel.

Parameters and FLOPs come from ``training.distill.cost`` (the one FLOP counter of the project:
``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-accumulate, matmul / conv /
attention only), on a model built on the ``meta`` device, so the SD2.1-scale model costs nothing
to count. Activation bytes are counted here by watching the same meta run op by op:

* ``activation_bytes_written``: bytes of every tensor an op produces (views and in-place results
  excluded): the memory *traffic* a runtime without fusion would write;
* ``peak_live_activation_bytes``: the largest total of produced tensors alive at one time: a lower
  bound on the working memory a runtime needs beside the weights (a fusing runtime can do better
  on traffic, not on this peak by much).

Per image: the tiling plan (``runtime_py.tiling.plan_tiles``, the one tiling implementation) gives
the tile count, and FLOPs per image = tiles x FLOPs per tile at that tile size.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from training.distill.cost import build_on_meta, count_flops, model_cost
from runtime_py.components import TILE_COMPONENTS
from runtime_py.model import MagicBokehConfig, get_config
from runtime_py.tiling import plan_tiles

FLOP_CONVENTION = ("torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-accumulate; "
                   "matmul, convolution and attention only (norms and activations not counted)")


# Ops that return a view of their input without saying so in their schema (``_unsafe_view`` is
# ``view`` without autograd's alias tracking): counting them would count the same bytes twice.
_UNMARKED_VIEWS = frozenset({torch.ops.aten._unsafe_view.default})


class ActivationCounter(TorchDispatchMode):
    """Counts bytes of the tensors ops produce, and the peak of those alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.live = 0
        self.peak_live = 0
        self.largest = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs, _ = tree_flatten(out)
        for index, tensor in enumerate(outputs):
            if not isinstance(tensor, torch.Tensor):
                continue
            schema = returns[index] if index < len(returns) else None
            if (schema is not None and schema.alias_info is not None) or func in _UNMARKED_VIEWS:
                continue  # a view or an in-place result: no new memory
            nbytes = tensor.numel() * tensor.element_size()
            self.written += nbytes
            self.largest = max(self.largest, nbytes)
            self.live += nbytes
            self.peak_live = max(self.peak_live, self.live)
            weakref.finalize(tensor, self._release, nbytes)
        return out


def count_activations(fn: Callable[[], Any]) -> dict[str, int]:
    """Activation bytes of everything ``fn`` runs (see the module docstring for the two figures)."""
    counter = ActivationCounter()
    with counter, torch.no_grad():
        result = fn()
    del result
    return {"activation_bytes_written": int(counter.written), "peak_live_activation_bytes": int(counter.peak_live),
            "largest_activation_bytes": int(counter.largest)}


def component_compute(config: MagicBokehConfig | str, tile: int | None = None) -> dict[str, dict[str, Any]]:
    """Params, FLOPs and activation bytes per tile component, at ``tile`` px (default: the config's)."""
    config = get_config(config)
    if tile is not None and tile != config.tile:
        config = config.replace(tile=int(tile), stride=min(config.stride, int(tile)))
    model = build_on_meta(config)
    cost = model_cost(model, config.name, "benchmark")
    t, lt = config.tile, config.latent_tile
    meta = {"device": "meta"}
    rgb = torch.zeros(1, 3, t, t, **meta)
    defocus = torch.zeros(1, 1, t, t, **meta)
    in_focus = torch.zeros(1, 1, t, t, **meta)
    latent = torch.zeros(1, config.latent_channels, lt, lt, **meta)
    runs = {
        "encoder": lambda: model.encode(rgb),
        "denoiser": lambda: model.denoise(latent, defocus, in_focus),
        "decoder": lambda: model.decode(latent),
    }
    out: dict[str, dict[str, Any]] = {}
    for name in TILE_COMPONENTS:
        part = getattr(cost, name)
        out[name] = {"params": int(part.params), "flops": int(part.flops), **count_activations(runs[name])}
    out["tile_total"] = {
        "params": sum(out[n]["params"] for n in TILE_COMPONENTS),
        "flops": sum(out[n]["flops"] for n in TILE_COMPONENTS),
        "activation_bytes_written": sum(out[n]["activation_bytes_written"] for n in TILE_COMPONENTS),
        "peak_live_activation_bytes": max(out[n]["peak_live_activation_bytes"] for n in TILE_COMPONENTS),
    }
    return out


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
