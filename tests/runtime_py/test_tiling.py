"""Tile order, counts and blending weights of runtime_py.tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime_py import tiling
from runtime_py.tiling import TilingError, blend_tiles, blend_weights, plan_tiles, tile_boxes

PUBLISHED = (512, 256)


@pytest.mark.parametrize(
    "height, width, counts",
    [
        # (grid, bottom, right, corner)
        (512, 512, (1, 0, 0, 0)),
        (1024, 1024, (9, 0, 0, 0)),  # the model notes: 9 tiles for 1024 x 1024
        (600, 1000, (2, 2, 1, 1)),
        (513, 777, (2, 2, 1, 1)),
        (768, 1024, (6, 0, 0, 0)),  # multiples of 256: the grid reaches both edges
        (600, 1024, (3, 3, 0, 0)),  # only the bottom needs flush tiles, no corner
        (1024, 600, (3, 0, 3, 0)),  # only the right
        (3000, 4000, (140, 14, 10, 1)),  # 12 MP: the model notes say 165 tiles
    ],
)
def test_counts_at_published_size(height: int, width: int, counts: tuple[int, int, int, int]) -> None:
    plan = plan_tiles(height, width, *PUBLISHED)
    described = plan.describe()
    assert (described["grid"], described["bottom"], described["right"], described["corner"]) == counts
    assert plan.count == sum(counts)


def test_order_grid_then_bottom_then_right_then_corner() -> None:
    boxes = tile_boxes(600, 1000, *PUBLISHED)
    assert [(b.top, b.left, b.kind) for b in boxes] == [
        (0, 0, "grid"), (0, 256, "grid"),
        (88, 0, "bottom"), (88, 256, "bottom"),
        (0, 488, "right"),
        (88, 488, "corner"),
    ]
    assert [b.index for b in boxes] == list(range(len(boxes)))


def test_order_with_several_rows_and_columns() -> None:
    boxes = tile_boxes(900, 1100, *PUBLISHED)
    grid = [(b.top, b.left) for b in boxes if b.kind == "grid"]
    assert grid == [(t, l) for t in (0, 256) for l in (0, 256, 512)]  # row-major
    assert [(b.top, b.left) for b in boxes if b.kind == "bottom"] == [(388, 0), (388, 256), (388, 512)]
    assert [(b.top, b.left) for b in boxes if b.kind == "right"] == [(0, 588), (256, 588)]
    assert [(b.top, b.left) for b in boxes if b.kind == "corner"] == [(388, 588)]
    kinds = [b.kind for b in boxes]
    assert kinds == sorted(kinds, key=["grid", "bottom", "right", "corner"].index)


@pytest.mark.parametrize("height, width, tile, stride",
                         [(600, 1000, 512, 256), (513, 777, 512, 256), (128, 128, 128, 64),
                          (600, 1000, 128, 64), (131, 257, 128, 64), (300, 200, 128, 128), (140, 150, 128, 96)])
def test_boxes_inside_unique_and_cover_every_pixel(height: int, width: int, tile: int, stride: int) -> None:
    boxes = tile_boxes(height, width, tile, stride)
    assert len({(b.top, b.left) for b in boxes}) == len(boxes)
    covered = np.zeros((height, width), dtype=int)
    for box in boxes:
        assert 0 <= box.top and box.bottom <= height and 0 <= box.left and box.right <= width
        assert box.size == tile
        rows, cols = box.slices()
        covered[rows, cols] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("height, width, tile, stride",
                         [(600, 1000, 512, 256), (513, 777, 512, 256), (1024, 1024, 512, 256),
                          (600, 1000, 128, 64), (131, 257, 128, 64), (300, 200, 128, 128), (140, 150, 128, 96)])
def test_blending_reproduces_constant_and_identity(height: int, width: int, tile: int, stride: int) -> None:
    # A constant stream must come back unchanged: sum(w * c) / sum(w) = c up to float32 rounding of
    # the two sums (a few ulps of values ~1, far below 1e-6).
    constant = blend_tiles(height, width, tile, stride, lambda box: np.full((3, tile, tile), 0.375, np.float32))
    assert constant.shape == (3, height, width)
    np.testing.assert_allclose(constant, 0.375, rtol=0, atol=1e-6)
    # Tiles cut from one image blend back into that image (every pixel gets its own value).
    image = np.random.default_rng(0).uniform(-1, 1, (2, height, width)).astype(np.float32)
    blended = blend_tiles(height, width, tile, stride, lambda box: image[(slice(None),) + box.slices()])
    np.testing.assert_allclose(blended, image, rtol=0, atol=1e-6)


def test_weights_sum_positive_everywhere() -> None:
    height, width, tile, stride = 600, 1000, 512, 256
    total = np.zeros((height, width), np.float32)
    for box in tile_boxes(height, width, tile, stride):
        total[box.slices()] += blend_weights(box, height, width, stride)
    assert total.min() > 0


def test_ramps_are_torch_linspace_not_numpy() -> None:
    # An interior tile ramps up over its first 256 rows/cols and down over its last 256.
    box = tile_boxes(1024, 1024, *PUBLISHED)[4]
    assert (box.top, box.left) == (256, 256)
    weight = blend_weights(box, 1024, 1024, 256)
    rising = torch.linspace(0, 1, 256, dtype=torch.float32).numpy()
    np.testing.assert_array_equal(weight[255, :256], rising)  # row 255 has weight exactly 1
    np.testing.assert_array_equal(weight[255, 256:], rising[::-1])
    # Pin WHY torch: numpy's float32 linspace differs in the last bit at some points.
    assert not np.array_equal(rising, np.linspace(0, 1, 256, dtype=np.float32))
    assert not np.array_equal(rising, np.linspace(0, 1, 256).astype(np.float32))


def test_border_tiles_have_no_ramp_on_the_border_side() -> None:
    boxes = tile_boxes(600, 1000, *PUBLISHED)
    first = blend_weights(boxes[0], 600, 1000, 256)  # top-left: ramps only down/right
    assert first[0, 0] == 1.0 and first[255, 255] == 1.0
    assert first[511, 0] == 0.0 and first[0, 511] == 0.0
    corner = blend_weights(boxes[-1], 600, 1000, 256)  # bottom-right: ramps only up/left
    assert corner[511, 511] == 1.0 and corner[0, 511] == 0.0 and corner[511, 0] == 0.0
    single = blend_weights(tile_boxes(512, 512, *PUBLISHED)[0], 512, 512, 256)
    assert np.all(single == 1.0)


def test_run_tile_sees_every_box_in_order() -> None:
    seen = []
    blend_tiles(600, 1000, 512, 256, lambda box: seen.append(box) or np.zeros((1, 512, 512), np.float32))
    assert seen == tile_boxes(600, 1000, 512, 256)


@pytest.mark.parametrize("height, width, tile, stride, message",
                         [(511, 600, 512, 256, "smaller than one 512x512 tile"),
                          (600, 100, 512, 256, "smaller than one"),
                          (600, 600, 512, 600, "must not exceed"),
                          (600, 600, 512, 0, "positive"),
                          (600.0, 600, 512, 256, "integer")])
def test_bad_geometry_is_refused(height, width, tile, stride, message) -> None:
    with pytest.raises(TilingError, match=message):
        tile_boxes(height, width, tile, stride)


def test_wrong_tile_output_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected a \(C, 512, 512\) array"):
        blend_tiles(512, 512, 512, 256, lambda box: np.zeros((3, 256, 256), np.float32))


def test_zero_weight_sum_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiling, "blend_weights", lambda box, h, w, s: np.zeros((box.size, box.size), np.float32))
    with pytest.raises(RuntimeError, match="sum to 0"):
        blend_tiles(512, 512, 512, 256, lambda box: np.ones((1, 512, 512), np.float32))
