"""The model's input contract, written once: depth -> 8-bit depth -> focus -> defocus map -> in-focus mask.

MagicBokeh's denoiser takes, beside the latent, two maps derived from a depth map (float in
[0, 1], larger = nearer), a focus depth ``f`` and an aperture ``K``:

* ``D = |depth - f| * K / 32`` (:func:`defocus_map`), the defocus map;
* ``m = [D <= threshold]`` (:func:`in_focus_mask`), the in-focus mask, threshold 0.1 by default
  (:data:`IN_FOCUS_THRESHOLD`; a model configuration may state another).

At inference the published code first truncates the depth map to 8 bits and works on
``depth_u8 / 255`` (:func:`depth_to_u8`, :func:`defocus_maps`), and finds ``f`` from a mask, a
tapped pixel or a value (:func:`resolve_focus`). The pipeline, the training and distillation
data and the bokeh renderer all compute the maps here, in float32 torch arithmetic, so that they
agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, Union

import numpy as np
import torch

from .images import InputError, validate_aperture, validate_depth, validate_focus_value, validate_mask, validate_point

DEFOCUS_NORMALISER = 32
"""``D = |depth - f| * K / DEFOCUS_NORMALISER``: K = 32 and a full unit of depth difference give D = 1."""

IN_FOCUS_THRESHOLD = 0.1
"""The published in-focus threshold: a pixel is in focus when ``D <= 0.1``."""

Maps = TypeVar("Maps", np.ndarray, torch.Tensor)


# -- focus ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FocusMask:
    """Focus on the median depth under a mask (non-zero pixels), e.g. a saliency mask."""

    mask: np.ndarray


@dataclass(frozen=True)
class FocusPoint:
    """Focus on the depth at one pixel (column ``x``, row ``y``): a tap on a phone screen."""

    x: int
    y: int


@dataclass(frozen=True)
class FocusValue:
    """Focus on a depth value in [0, 1] given directly (used as is, not rounded to 8 bits)."""

    value: float


FocusSpec = Union[FocusMask, FocusPoint, FocusValue]


# -- 8-bit depth ------------------------------------------------------------------------------
def u8_to_unit(t: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], as torchvision's ToTensor computes it (``/ 255``)."""
    return t.to(torch.float32).div(255)


def depth_to_u8(depth: np.ndarray) -> np.ndarray:
    """``uint8(depth * 255)``, truncating, in the precision the depth map was given in."""
    depth = validate_depth(depth)
    return (depth * 255).astype(np.uint8)


def resolve_focus(depth_u8: np.ndarray, focus: FocusSpec) -> float:
    """The focus depth ``f`` in [0, 1] (a float32 value) for a focus specification.

    A mask gives torch's median of the 8-bit depth under it (the lower middle value when the
    count is even) / 255; an empty mask is refused. A point gives the 8-bit depth there / 255.
    """
    shape = depth_u8.shape
    depth_t = torch.from_numpy(np.ascontiguousarray(depth_u8))
    if isinstance(focus, FocusMask):
        selected = validate_mask(focus.mask, shape, name="focus mask")
        median_u8 = torch.median(depth_t[torch.from_numpy(selected)])
        return float(u8_to_unit(median_u8))
    if isinstance(focus, FocusPoint):
        x, y = validate_point(focus.x, focus.y, shape)
        return float(u8_to_unit(depth_t[y, x]))
    if isinstance(focus, FocusValue):
        return float(np.float32(validate_focus_value(focus.value)))
    raise InputError(f"focus must be a FocusMask, FocusPoint or FocusValue, got {type(focus).__name__}")


# -- the maps ---------------------------------------------------------------------------------
def _as_float32_tensor(value: float | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


def defocus_map(depth: Maps, focus: float | np.ndarray | torch.Tensor, aperture: float | np.ndarray | torch.Tensor) -> Maps:
    """``D = |depth - focus| * aperture / 32`` in float32, numpy in -> numpy out, torch in -> torch out.

    ``focus`` and ``aperture`` are numbers or arrays that broadcast against ``depth`` (per-sample
    values of a batch: shape (B, 1, 1, 1) for (B, 1, H, W) maps). No range checks: training draws
    non-integer K; the pipeline checks K (:func:`defocus_maps`).
    """
    as_numpy = not isinstance(depth, torch.Tensor)
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)) if as_numpy else depth.to(torch.float32)
    defocus = (d - _as_float32_tensor(focus).to(d.device)).abs() * _as_float32_tensor(aperture).to(d.device) / DEFOCUS_NORMALISER
    return defocus.numpy() if as_numpy else defocus


def in_focus_mask(defocus: Maps, threshold: float = IN_FOCUS_THRESHOLD) -> Maps:
    """``1`` where ``D <= threshold``, else ``0``, float32 (numpy in -> numpy out, torch in -> torch out)."""
    if isinstance(defocus, torch.Tensor):
        return (defocus <= threshold).to(torch.float32)
    return (torch.from_numpy(np.ascontiguousarray(defocus, dtype=np.float32)) <= threshold).to(torch.float32).numpy()


def defocus_inputs(
    depth: Maps,
    focus: float | np.ndarray | torch.Tensor,
    aperture: float | np.ndarray | torch.Tensor,
    threshold: float = IN_FOCUS_THRESHOLD,
) -> tuple[Maps, Maps]:
    """The denoiser's two map inputs from a depth map in [0, 1]: ``(D, in-focus mask)``."""
    defocus = defocus_map(depth, focus, aperture)
    return defocus, in_focus_mask(defocus, threshold)


def defocus_maps(depth_u8: np.ndarray, focus: float, K: int, threshold: float = IN_FOCUS_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The inference path: ``D = |depth_u8 / 255 - f| * K / 32`` and ``m = [D <= threshold]``, float32 (H, W).

    ``K`` must be an integer in 1..32 (the published demo's range).
    """
    K = validate_aperture(K)
    depth = u8_to_unit(torch.from_numpy(np.ascontiguousarray(depth_u8)))
    defocus, in_focus = defocus_inputs(depth, focus, K, threshold)
    return defocus.numpy(), in_focus.numpy()
