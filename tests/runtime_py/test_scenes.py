"""Generated scenes: deterministic per seed, exact depth, valid ranges, teacher = renderer output."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_py.bokeh_renderer import render_bokeh
from runtime_py.scenes import SCENE_FAMILIES, SceneError, degrade_digital_zoom, generate_scene, pink_noise
from runtime_py.parity import psnr

SIZE = 96  # small enough for a fast test, large enough for text, lines and a subject


@pytest.fixture(scope="module", params=SCENE_FAMILIES)
def scene(request):
    return generate_scene(7, SIZE, request.param)


def test_same_seed_same_scene(scene):
    again = generate_scene(scene.seed, SIZE, scene.family)
    for name in ("clean", "degraded", "depth", "mask", "teacher"):
        assert np.array_equal(getattr(scene, name), getattr(again, name)), name
    assert (again.focus, again.aperture_k) == (scene.focus, scene.aperture_k)


def test_different_seeds_differ():
    a, b = generate_scene(1, SIZE), generate_scene(2, SIZE)
    assert not np.array_equal(a.clean, b.clean)


def test_value_ranges_and_shapes(scene):
    for name in ("clean", "degraded", "teacher"):
        image = getattr(scene, name)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
    assert scene.depth.shape == (SIZE, SIZE) and 0.0 <= scene.depth.min() and scene.depth.max() <= 1.0
    assert set(np.unique(scene.mask)) <= {0.0, 1.0} and scene.mask.sum() > 0
    assert 4 <= scene.aperture_k <= 32


def test_focus_is_the_subject_depth_exactly(scene):
    # The subject is one flat object: every visible subject pixel lies at the focus depth.
    assert np.array_equal(scene.depth[scene.mask > 0], np.full(int(scene.mask.sum()), scene.focus, np.float32))


def test_teacher_is_the_renderer_on_the_clean_scene(scene):
    expected = render_bokeh(scene.clean, scene.depth, scene.focus, scene.aperture_k)
    assert np.array_equal(scene.teacher, expected)


def test_scene_has_depth_layers_and_occlusion():
    scene = generate_scene(3, SIZE)
    assert len(np.unique(scene.depth)) >= 4  # several objects at distinct depths


def test_degradation_is_visible_but_keeps_the_content():
    scene = generate_scene(5, SIZE)
    value = psnr(scene.clean, scene.degraded, peak=1.0)
    # A 2-4x zoom with noise and JPEG loses detail (well below 40 dB) but keeps the picture
    # (above 12 dB, far above unrelated images).
    assert 12.0 < value < 40.0


def test_degradation_is_seeded():
    image = generate_scene(4, SIZE).clean
    a = degrade_digital_zoom(image, np.random.default_rng(0))
    b = degrade_digital_zoom(image, np.random.default_rng(0))
    assert np.array_equal(a, b) and a.shape == image.shape


def test_pink_noise_spectrum_falls_with_frequency():
    field = pink_noise(np.random.default_rng(0), (128, 128), 1.0)
    spectrum = np.abs(np.fft.rfft2(field - field.mean()))
    low, high = spectrum[1:4, 1:4].mean(), spectrum[40:60, 40:60].mean()
    assert low > 10 * high


def test_fixed_aperture():
    assert generate_scene(1, 64, aperture_k=12).aperture_k == 12.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"family": "forest"}, "unknown scene family"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"aperture_k": float("nan")}, "aperture"),
    ],
)
def test_bad_requests_are_named(kwargs, message):
    args = {"seed": 0, "size": 64} | kwargs
    with pytest.raises(SceneError, match=message):
        generate_scene(**args)


def test_degradation_rejects_non_rgb():
    with pytest.raises(SceneError, match="RGB|\\(H, W, 3\\)"):
        degrade_digital_zoom(np.zeros((8, 8), np.float32), np.random.default_rng(0))
