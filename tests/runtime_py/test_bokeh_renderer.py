"""The physically based bokeh renderer: identity in focus, disk-shaped scatter, occlusion, energy."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_py.bokeh_renderer import (
    BokehInputError,
    BokehSettings,
    disk_kernel,
    gaussian_background_blur,
    render_bokeh,
    signed_blur_radius,
)

LINEAR = BokehSettings(gamma=1.0, highlight_gain=0.0)  # plain light transport, no tone curves


def _distance_from_centre(size: int, cy: int, cx: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(yy - cy, xx - cx)


def test_in_focus_scene_is_returned_unchanged():
    rng = np.random.default_rng(0)
    image = rng.random((48, 40, 3)).astype(np.float32)
    depth = np.full((48, 40), 0.6, np.float32)
    assert np.array_equal(render_bokeh(image, depth, 0.6, 32), image)
    # Depth within +-0.01 of the focus at K = 32 is a radius below 0.5 px: still the identity.
    depth_near = (0.6 + rng.uniform(-0.01, 0.01, (48, 40))).astype(np.float32)
    assert np.array_equal(render_bokeh(image, depth_near, 0.6, 32), image)


def test_in_focus_layer_is_untouched_beside_a_blurred_one():
    rng = np.random.default_rng(1)
    image = rng.random((64, 64, 3)).astype(np.float32)
    depth = np.zeros((64, 64), np.float32)
    depth[:, 32:] = 1.0  # right half near and in focus, left half far and blurred
    out = render_bokeh(image, depth, 1.0, 16)
    # In-focus pixels only pass through the tone curve and its tabulated inverse: the table's
    # grid step (1/8192) bounds the round-trip error.
    assert np.abs(out[:, 32:] - image[:, 32:]).max() < 2e-4
    assert np.abs(out[:, :24] - image[:, :24]).mean() > 0.1  # the far half really is blurred


@pytest.mark.parametrize("radius", [4, 9])
def test_point_highlight_becomes_a_flat_disk_of_the_expected_radius(radius):
    size, c = 64, 32
    image = np.zeros((size, size, 3), np.float32)
    image[c, c] = 1.0
    depth = np.zeros((size, size), np.float32)
    # r = |depth - focus| * K * px_per_unit = 1 * K * 1.0 px.
    out = render_bokeh(image, depth, 1.0, float(radius))
    lum = out.mean(axis=2)
    dist = _distance_from_centre(size, c, c)
    lit = lum > 0.02
    # The anti-aliased disk reaches radius + 0.5; FFT round-off stays far below the threshold.
    assert dist[lit].max() <= radius + 1.0
    assert lit[dist <= radius - 1.0].all()
    inner = lum[dist <= radius - 1.0]
    assert inner.std() / inner.mean() < 0.01  # a disk (flat), not a Gaussian (peaked)


def test_point_highlight_is_boosted_above_linear_blur():
    image = np.zeros((48, 48, 3), np.float32)
    image[24, 24] = 1.0
    depth = np.zeros((48, 48), np.float32)
    boosted = render_bokeh(image, depth, 1.0, 6).max()
    plain = render_bokeh(image, depth, 1.0, 6, BokehSettings(highlight_gain=0.0)).max()
    assert boosted > plain * 1.5


def test_sharp_near_object_occludes_blurred_background():
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    background = np.where((xx // 3) % 2 == 0, 0.95, 0.05).astype(np.float32)  # fine stripes
    image = np.repeat(background[..., None], 3, axis=2)
    square = (yy >= 30) & (yy < 66) & (xx >= 30) & (xx < 66)
    image[square] = (0.3, 0.5, 0.2)
    depth = np.where(square, 1.0, 0.0).astype(np.float32)
    out = render_bokeh(image, depth, 1.0, 20)
    # No background light on the sharp foreground, right up to its edge (allowing ~1 px).
    inner = (yy >= 31) & (yy < 65) & (xx >= 31) & (xx < 65)
    assert np.abs(out[inner] - image[inner]).max() < 2e-4
    # ... while the stripes beside it are blurred into a uniform grey.
    far = ~((yy >= 8) & (yy < 88) & (xx >= 8) & (xx < 88))
    assert out[far].std() < 0.5 * image[far].std()


def test_blurred_near_object_spills_over_sharp_background():
    size = 80
    image = np.zeros((size, size, 3), np.float32)
    image[:, :40] = 1.0
    depth = np.zeros((size, size), np.float32)
    depth[:, :40] = 1.0  # bright near half, out of focus; dark far half in focus
    out = render_bokeh(image, depth, 0.0, 8, LINEAR)
    # A scatter renders the near object's blur over the background behind it (a gather would not).
    assert out[40, 41:45].min() > 0.05
    assert out[40, 50:].max() < 1e-4  # but not beyond the disk radius (8 px + anti-aliasing)


def test_light_is_conserved_in_linear_mode():
    size = 64
    image = np.full((size, size, 3), 0.2, np.float32)
    image[28:36, 28:36] = 0.9
    depth = np.zeros((size, size), np.float32)
    out = render_bokeh(image, depth, 1.0, 6, LINEAR)
    # Single layer, flat surround: the blurred patch keeps its light (sum) and the image its mean.
    assert abs(out.sum() - image.sum()) / image.sum() < 1e-4
    assert abs(out.mean() - image.mean()) < 1e-5


def test_disk_kernel_and_radius_helpers():
    assert np.array_equal(disk_kernel(0.3), np.ones((1, 1), np.float32))
    k = disk_kernel(5.0)
    assert k.shape == (13, 13) and abs(k.sum() - 1.0) < 1e-6
    depth = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(signed_blur_radius(depth, 0.5, 16), [[-8.0, 0.0, 8.0]])


def test_gaussian_baseline_keeps_in_focus_pixels():
    rng = np.random.default_rng(2)
    image = rng.random((40, 40, 3)).astype(np.float32)
    depth = np.zeros((40, 40), np.float32)
    depth[10:30, 10:30] = 0.8
    out = gaussian_background_blur(image, depth, 0.8, 16)
    assert np.array_equal(out[10:30, 10:30], image[10:30, 10:30])
    assert out[:5].std() < image[:5].std()


@pytest.mark.parametrize(
    "image, depth, focus, k, message",
    [
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32), 0.5, 4, "RGB"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 9), np.float32), 0.5, 4, "depth must be"),
        (np.full((8, 8, 3), 2.0, np.float32), np.zeros((8, 8), np.float32), 0.5, 4, "image values"),
        (np.zeros((8, 8, 3), np.float32), np.full((8, 8), np.nan, np.float32), 0.5, 4, "finite"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.float32), 1.5, 4, "focus"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.float32), 0.5, -1, "aperture"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32), 0.5, 4, "float"),
    ],
)
def test_bad_inputs_are_named(image, depth, focus, k, message):
    with pytest.raises(BokehInputError, match=message):
        render_bokeh(image, depth, focus, k)


def test_bad_settings_are_named():
    with pytest.raises(BokehInputError, match="px_per_unit"):
        BokehSettings(px_per_unit=0)
    with pytest.raises(BokehInputError, match="highlight_threshold"):
        BokehSettings(highlight_threshold=1.0)
