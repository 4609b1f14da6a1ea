"""Cutting a whole image into overlapping tiles and blending the tile outputs back.

The model runs on fixed-size square tiles (512 px at SD2.1 scale, stride 256). Which tiles are
run, in which order, and how their outputs are weighted decides the last bits of the result, so
there is ONE implementation here, shared by every backend (torch, ExecuTorch, ONNX Runtime, ...)
and by the parity checks:

* :func:`tile_boxes` lists the tiles in the published order: the regular grid row-major, then the
  tiles flush with the bottom edge (left to right), then those flush with the right edge (top to
  bottom), then the bottom-right corner; the last three only when the grid does not already reach
  that edge.
* :func:`blend_weights` gives a tile's separable weight: a linear ramp 0 -> 1 over its first
  ``tile - stride`` rows/columns unless it starts at the image border, and 1 -> 0 over its last
  ``tile - stride`` unless it ends there. The ramp is ``torch.linspace`` (numpy's linspace differs
  from it in the last bit at some points, and the published code uses torch's).
* :func:`blend_tiles` runs a per-tile callable over every box and returns
  ``sum(weight * tile) / sum(weight)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


class TilingError(ValueError):
    """The image cannot be tiled with the requested tile and stride."""


@dataclass(frozen=True)
class TileBox:
    """One tile: its top-left corner and size in pixels, and its position in the run order."""

    index: int
    top: int
    left: int
    size: int
    kind: str  # "grid", "bottom", "right" or "corner"

    @property
    def bottom(self) -> int:
        return self.top + self.size

    @property
    def right(self) -> int:
        return self.left + self.size

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices that cut this tile out of an (..., H, W) array."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


@dataclass(frozen=True)
class TilingPlan:
    """How an image of a given size is tiled: enough for benchmarks to predict the cost."""

    height: int
    width: int
    tile: int
    stride: int
    boxes: tuple[TileBox, ...]

    @property
    def count(self) -> int:
        return len(self.boxes)

    def count_of(self, kind: str) -> int:
        return sum(1 for box in self.boxes if box.kind == kind)

    def describe(self) -> dict[str, int]:
        """Counts for a report or manifest (JSON-friendly)."""
        return {
            "height": self.height,
            "width": self.width,
            "tile": self.tile,
            "stride": self.stride,
            "tiles": self.count,
            "grid": self.count_of("grid"),
            "bottom": self.count_of("bottom"),
            "right": self.count_of("right"),
            "corner": self.count_of("corner"),
        }


def _check_geometry(height: int, width: int, tile: int, stride: int) -> None:
    for name, value in (("height", height), ("width", width), ("tile", tile), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TilingError(f"{name} must be an integer, got {value!r}")
    if tile <= 0 or stride <= 0:
        raise TilingError(f"tile and stride must be positive, got tile={tile}, stride={stride}")
    if stride > tile:
        # Tiles would leave uncovered gaps between them.
        raise TilingError(f"stride ({stride}) must not exceed the tile size ({tile})")
    if height < tile or width < tile:
        raise TilingError(
            f"image of {height}x{width} (HxW) is smaller than one {tile}x{tile} tile; "
            f"each side must be >= {tile} (pad the image first)"
        )


def _grid_starts(length: int, tile: int, stride: int) -> list[int]:
    return list(range(0, length - tile + 1, stride))


def _needs_flush(length: int, tile: int, stride: int) -> bool:
    """True when the regular grid stops short of the far edge."""
    return (length - tile) % stride != 0


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[TileBox]:
    """Every tile for an image of ``height`` x ``width``, in the order they are run and blended."""
    _check_geometry(height, width, tile, stride)
    rows = _grid_starts(height, tile, stride)
    cols = _grid_starts(width, tile, stride)
    need_bottom = _needs_flush(height, tile, stride)
    need_right = _needs_flush(width, tile, stride)

    positions: list[tuple[int, int, str]] = [(top, left, "grid") for top in rows for left in cols]
    if need_bottom:
        positions += [(height - tile, left, "bottom") for left in cols]
    if need_right:
        positions += [(top, width - tile, "right") for top in rows]
    if need_bottom and need_right:
        positions.append((height - tile, width - tile, "corner"))
    return [TileBox(i, top, left, tile, kind) for i, (top, left, kind) in enumerate(positions)]


def plan_tiles(height: int, width: int, tile: int, stride: int) -> TilingPlan:
    """The tiling of one image size, without running anything."""
    return TilingPlan(height, width, tile, stride, tuple(tile_boxes(height, width, tile, stride)))


def _ramp_1d(start: int, length: int, tile: int, stride: int) -> torch.Tensor:
    """Weights along one axis of a tile that starts at ``start`` on an axis of ``length`` pixels."""
    weight = torch.ones(tile, dtype=torch.float32)
    ramp = tile - stride
    if ramp == 0:
        return weight
    if start > 0:
        weight[:ramp] *= torch.linspace(0.0, 1.0, ramp, dtype=torch.float32)
    if start + tile < length:
        # torch.linspace(1, 0, n) is bit-identical to the flipped rising ramp (torch fills both
        # halves symmetrically), so rising and falling edges of neighbouring tiles mirror exactly.
        weight[tile - ramp:] *= torch.linspace(1.0, 0.0, ramp, dtype=torch.float32)
    return weight


def blend_weights(box: TileBox, height: int, width: int, stride: int) -> np.ndarray:
    """The (T, T) float32 weight of one tile: outer product of its row and column ramps."""
    rows = _ramp_1d(box.top, height, box.size, stride)
    cols = _ramp_1d(box.left, width, box.size, stride)
    return (rows[:, None] * cols[None, :]).numpy()


def blend_tiles(
    height: int,
    width: int,
    tile: int,
    stride: int,
    run_tile: Callable[[TileBox], np.ndarray],
) -> np.ndarray:
    """Run ``run_tile`` on every tile and blend the (C, T, T) results into one (C, H, W) image.

    Accumulates ``sum(weight * tile)`` and ``sum(weight)`` in float32, in tile order, then divides.
    """
    boxes = tile_boxes(height, width, tile, stride)
    accumulated: np.ndarray | None = None
    weight_sum = np.zeros((height, width), dtype=np.float32)
    for box in boxes:
        out = np.asarray(run_tile(box))
        if out.ndim != 3 or out.shape[1:] != (tile, tile):
            raise ValueError(
                f"tile {box.index} ({box.kind} at top={box.top}, left={box.left}): expected a "
                f"(C, {tile}, {tile}) array from run_tile, got shape {out.shape}"
            )
        if accumulated is None:
            accumulated = np.zeros((out.shape[0], height, width), dtype=np.float32)
        elif out.shape[0] != accumulated.shape[0]:
            raise ValueError(
                f"tile {box.index}: {out.shape[0]} channels, earlier tiles had {accumulated.shape[0]}"
            )
        weight = blend_weights(box, height, width, stride)
        rows, cols = box.slices()
        accumulated[:, rows, cols] += out.astype(np.float32, copy=False) * weight
        weight_sum[rows, cols] += weight
    if not np.all(weight_sum > 0):
        zero = np.argwhere(weight_sum <= 0)[0]
        raise RuntimeError(
            f"blending weights sum to 0 at pixel (row={zero[0]}, col={zero[1]}) for a {height}x{width} "
            f"image with tile {tile} / stride {stride}; this tiling leaves pixels without weight"
        )
    assert accumulated is not None  # at least one tile always exists
    return accumulated / weight_sum
