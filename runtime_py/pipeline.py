"""The whole-image reference pipeline: photo + depth + focus -> bokeh photo of the same size.

It reproduces the published inference step by step (see the project's model notes):

1. depth float map in [0, 1] -> ``uint8(depth * 255)`` (truncating) -> ``/ 255`` from then on;
2. focus value ``f``: torch's median (lower middle for an even count) of the 8-bit depth under
   a focus mask, / 255; or the depth at a tapped pixel; or a value given directly;
3. defocus ``D = |depth - f| * K / 32`` and in-focus mask ``m = 1 - [D > 0.1]``
   (:mod:`runtime_py.contract`, shared with training, distillation and the bokeh renderer);
4. per tile: ``x = 2 * rgb / 255 - 1`` -> encoder -> denoiser(latent, D, m) -> decoder -> [-1, 1];
5. tiles blended (:mod:`runtime_py.tiling`), ``uint8(((y + 1) / 2).clamp(0, 1) * 255)``;
6. colour fix: per-channel mean / std of the output matched to the input photo, back to uint8.

All arithmetic on maps is done with torch in float32, as the published code does, so that last
bits (``/ 255`` and ``linspace``) match. The model itself is reached only through backend
callables (numpy in, numpy out; :mod:`runtime_py.backends`), so every backend shares this file.

Differences from the published code, on purpose:

* an empty focus mask is an error (the published code silently focuses at depth 0);
* K must be an integer in 1..32 (the demo's range; larger K would push D past 1);
* images with a side smaller than one tile are reflect-padded (bottom / right) up to the tile
  size and the output cropped back (the published code cannot render them). The focus value and
  the colour statistics come from the unpadded image.
* the VAE latent is the distribution's mean, not a sample (deterministic deployment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends.base import ComponentFn
from .components import TILE_COMPONENTS
from .contract import (
    FocusMask,
    FocusPoint,
    FocusSpec,
    FocusValue,
    defocus_maps,
    depth_to_u8,
    resolve_focus,
)
from .contract import u8_to_unit as _u8_to_unit
from .images import InputError, validate_aperture, validate_depth, validate_image, validate_mask, validate_point
from .model.config import MagicBokehConfig, get_config
from .tiling import TileBox, TilingPlan, blend_tiles, plan_tiles

DepthFn = Callable[[np.ndarray], np.ndarray]
"""(H, W, 3) uint8 RGB -> (H, W) float depth in [0, 1] (larger = nearer)."""

TileObserver = Callable[["TileBox", "TileInputs", "TileStages"], None]
"""Called once per tile, in run order, with the tile's inputs and what each stage produced
(golden vectors for the apps record them; nothing else needs them)."""

COLOUR_FIX_EPS = 1e-5


def _writable_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` of a contiguous copy where needed: torch warns on read-only arrays (a
    decoded or memory-mapped image), and may write into what it is given."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


# -- image <-> model range (the maps' arithmetic is runtime_py.contract's) ---------------------
def image_to_model_range(image_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 ``2 * (rgb / 255) - 1`` in [-1, 1]."""
    rgb = _u8_to_unit(_writable_tensor(image_u8).permute(2, 0, 1))
    return (rgb * 2 - 1).unsqueeze(0).contiguous().numpy()


def model_range_to_u8(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [-1, 1] -> (H, W, 3) uint8 ``trunc(((y + 1) / 2).clamp(0, 1) * 255)``."""
    y = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
    return ((y + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).contiguous().numpy()


def colour_statistics(image_u8: np.ndarray, eps: float = COLOUR_FIX_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and ``sqrt(unbiased var + eps)`` of an (H, W, 3) uint8 image on [0, 1], float32."""
    mean, std = _channel_mean_std(_u8_to_unit(_writable_tensor(image_u8).permute(2, 0, 1)), eps)
    return mean.flatten().numpy(), std.flatten().numpy()


def _channel_mean_std(t: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    channels = t.shape[0]
    flat = t.reshape(channels, -1)
    std = (flat.var(dim=1) + eps).sqrt().view(channels, 1, 1)
    return flat.mean(dim=1).view(channels, 1, 1), std


def colour_fix(output_u8: np.ndarray, reference_u8: np.ndarray, eps: float = COLOUR_FIX_EPS) -> np.ndarray:
    """Match each channel's mean and std of ``output_u8`` to ``reference_u8`` (both (H, W, 3) uint8).

    Works on [0, 1] floats, std = sqrt(unbiased var + eps); clamps to [0, 1] and truncates back to
    uint8. Undoes the colour drift the VAE round trip introduces.
    """
    if output_u8.shape != reference_u8.shape or output_u8.ndim != 3:
        raise ValueError(f"colour_fix needs two (H, W, 3) images of one size, got {output_u8.shape} "
                         f"and {reference_u8.shape}")
    y = _u8_to_unit(_writable_tensor(output_u8).permute(2, 0, 1))
    x = _u8_to_unit(_writable_tensor(reference_u8).permute(2, 0, 1))
    mean_y, std_y = _channel_mean_std(y, eps)
    mean_x, std_x = _channel_mean_std(x, eps)
    fixed = (y - mean_y) / std_y * std_x + mean_x
    return fixed.clamp(0, 1).mul(255).byte().permute(1, 2, 0).contiguous().numpy()


# -- one tile ---------------------------------------------------------------------------------
@dataclass
class TileInputs:
    """One tile's component inputs: ``rgb`` (1, 3, T, T) in [-1, 1], ``defocus`` and ``in_focus`` (1, 1, T, T)."""

    rgb: np.ndarray
    defocus: np.ndarray
    in_focus: np.ndarray


@dataclass
class TileStages:
    """What one tile produced at each stage (numpy, batch of 1) and how long each stage took."""

    latent: np.ndarray
    x0: np.ndarray
    rgb: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def _check_output(name: str, out: Any, expected: tuple[int, ...] | None) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"the {name} component returned {type(out).__name__}, expected a numpy array")
    if expected is not None and out.shape != expected:
        raise ValueError(f"the {name} component returned shape {out.shape}, expected {expected}")
    if out.ndim != 4 or out.shape[0] != 1:
        raise ValueError(f"the {name} component returned shape {out.shape}, expected (1, C, h, w)")
    return out.astype(np.float32, copy=False)


def run_tile_stages(
    components: Mapping[str, ComponentFn],
    rgb: np.ndarray,
    defocus: np.ndarray,
    in_focus: np.ndarray,
) -> TileStages:
    """Run one tile through encoder -> denoiser -> decoder and keep every intermediate.

    ``rgb`` is (1, 3, T, T) in [-1, 1], ``defocus`` and ``in_focus`` are (1, 1, T, T) float32.
    The parity checks compare backends stage by stage with this.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    latent = _check_output("encoder", components["encoder"](rgb), None)
    seconds["encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    x0 = _check_output("denoiser", components["denoiser"](latent, defocus, in_focus), latent.shape)
    seconds["denoiser"] = time.perf_counter() - start
    start = time.perf_counter()
    out = _check_output("decoder", components["decoder"](x0), rgb.shape)
    seconds["decoder"] = time.perf_counter() - start
    return TileStages(latent=latent, x0=x0, rgb=out, seconds=seconds)


def _check_components(components: Mapping[str, ComponentFn], config: MagicBokehConfig) -> None:
    missing = [name for name in TILE_COMPONENTS if name not in components]
    if missing:
        raise ValueError(f"components {missing} are missing; render_image needs {list(TILE_COMPONENTS)}, "
                         f"got {sorted(components)}")
    # A torch-backed callable knows its component; catch a model built for another tile size
    # before it fails deep inside a convolution.
    component = getattr(components["encoder"], "component", None)
    if component is not None and hasattr(component, "input_specs"):
        shape = tuple(component.input_specs()[0].shape)
        if shape[-2:] != (config.tile, config.tile):
            raise ValueError(f"the encoder takes {shape[-2]}x{shape[-1]} tiles but config {config.name!r} "
                             f"tiles at {config.tile}x{config.tile}")


# -- the whole image --------------------------------------------------------------------------
@dataclass
class RenderResult:
    """The output photo and the intermediates a caller may want to show or check."""

    image: np.ndarray  # (H, W, 3) uint8, after the colour fix
    raw: np.ndarray  # (H, W, 3) uint8, blended model output before the colour fix
    depth_u8: np.ndarray  # (H, W) uint8
    focus: float  # f in [0, 1]
    defocus: np.ndarray  # (H, W) float32 D
    in_focus: np.ndarray  # (H, W) float32 m in {0, 1}
    plan: TilingPlan  # tiling of the (possibly padded) image
    padding: tuple[int, int]  # (rows, cols) added at the bottom / right for small images
    seconds: dict[str, float]
    blended: np.ndarray | None = None  # (3, Hp, Wp) float32 blend of the padded image, when kept

    @property
    def tile_count(self) -> int:
        return self.plan.count


def _pad_to_tile(array: np.ndarray, pad_rows: int, pad_cols: int) -> np.ndarray:
    if pad_rows == 0 and pad_cols == 0:
        return array
    widths = [(0, pad_rows), (0, pad_cols)] + [(0, 0)] * (array.ndim - 2)
    # numpy's reflect mode repeats the reflection when the pad exceeds the size (and repeats the
    # edge of a 1-pixel side), so any side >= 1 works.
    return np.pad(array, widths, mode="reflect")


def render_image(
    image_u8: np.ndarray,
    depth: np.ndarray | None = None,
    *,
    components: Mapping[str, ComponentFn],
    config: MagicBokehConfig | str,
    K: int,
    focus: FocusSpec,
    depth_fn: DepthFn | None = None,
    progress: bool = False,
    on_tile: TileObserver | None = None,
    keep_blended: bool = False,
) -> RenderResult:
    """Render the bokeh version of a photo with the given backend callables.

    ``depth`` is the (H, W) float map in [0, 1]; when it is None, ``depth_fn(image_u8)`` computes
    it (``depth`` wins when both are given). Output size = input size. ``on_tile`` sees every
    tile's inputs and stages; ``keep_blended`` keeps the float blend in the result (both exist
    for the apps' golden vectors and cost nothing when unused).
    """
    total_start = time.perf_counter()
    config = get_config(config)
    image_u8 = validate_image(image_u8)
    height, width = image_u8.shape[:2]
    K = validate_aperture(K)
    if not isinstance(focus, (FocusMask, FocusPoint, FocusValue)):
        raise InputError(f"focus must be a FocusMask, FocusPoint or FocusValue, got {type(focus).__name__}")
    if isinstance(focus, FocusMask):  # fail before any expensive work
        validate_mask(focus.mask, (height, width), name="focus mask")
    elif isinstance(focus, FocusPoint):
        validate_point(focus.x, focus.y, (height, width))
    _check_components(components, config)

    seconds: dict[str, float] = {}
    if depth is None:
        if depth_fn is None:
            raise InputError("no depth map given and no depth model to compute one: pass depth or depth_fn")
        start = time.perf_counter()
        depth = validate_depth(depth_fn(image_u8), (height, width), name="depth from depth_fn")
        seconds["depth"] = time.perf_counter() - start
    else:
        depth = validate_depth(depth, (height, width))

    depth_u8 = depth_to_u8(depth)
    f = resolve_focus(depth_u8, focus)

    tile, stride = config.tile, config.stride
    pad_rows, pad_cols = max(0, tile - height), max(0, tile - width)
    padded_u8 = _pad_to_tile(depth_u8, pad_rows, pad_cols)
    defocus, in_focus = defocus_maps(padded_u8, f, K, config.defocus_in_focus_threshold)
    rgb = image_to_model_range(_pad_to_tile(image_u8, pad_rows, pad_cols))
    plan = plan_tiles(height + pad_rows, width + pad_cols, tile, stride)

    stage_seconds = {"encoder": 0.0, "denoiser": 0.0, "decoder": 0.0}
    bar = tqdm(total=plan.count, desc="tiles", unit="tile", disable=not progress, leave=False)

    def run_tile(box: TileBox) -> np.ndarray:
        rows, cols = box.slices()
        inputs = TileInputs(
            np.ascontiguousarray(rgb[:, :, rows, cols]),
            np.ascontiguousarray(defocus[None, None, rows, cols]),
            np.ascontiguousarray(in_focus[None, None, rows, cols]),
        )
        stages = run_tile_stages(components, inputs.rgb, inputs.defocus, inputs.in_focus)
        for name, value in stages.seconds.items():
            stage_seconds[name] += value
        if on_tile is not None:
            on_tile(box, inputs, stages)
        bar.update(1)
        return stages.rgb[0]

    start = time.perf_counter()
    try:
        blended = blend_tiles(plan.height, plan.width, tile, stride, run_tile)
    finally:
        bar.close()
    seconds["tiles"] = time.perf_counter() - start
    seconds.update(stage_seconds)

    start = time.perf_counter()
    raw = model_range_to_u8(blended[:, :height, :width])
    output = colour_fix(raw, image_u8)
    seconds["colour_fix"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - total_start
    return RenderResult(
        image=output,
        raw=raw,
        depth_u8=depth_u8,
        focus=f,
        defocus=np.ascontiguousarray(defocus[:height, :width]),
        in_focus=np.ascontiguousarray(in_focus[:height, :width]),
        plan=plan,
        padding=(pad_rows, pad_cols),
        seconds=seconds,
        blended=blended if keep_blended else None,
    )
