"""The input contract (runtime_py.contract) is one computation, whoever calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime_py.bokeh_renderer import gaussian_background_blur
from runtime_py.contract import (
    IN_FOCUS_THRESHOLD,
    defocus_inputs,
    defocus_map,
    defocus_maps,
    in_focus_mask,
    u8_to_unit,
)
from runtime_py.images import InputError
from runtime_py.model.config import CONFIGS


def test_defocus_map_is_the_published_formula_in_float32():
    depth = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(defocus_map(depth, 0.5, 16), np.array([[0.25, 0.0, 0.25]], np.float32))
    rng = np.random.default_rng(0)
    depth = rng.random((17, 23)).astype(np.float32)
    d = defocus_map(depth, 0.37, 21)
    assert d.dtype == np.float32
    # float32 arithmetic on values <= 1: a few ulps from the float64 formula.
    np.testing.assert_allclose(d, np.abs(depth.astype(np.float64) - np.float32(0.37)) * 21 / 32, rtol=0, atol=1e-6)


def test_numpy_and_torch_give_the_same_bits():
    depth = np.random.default_rng(1).random((9, 11)).astype(np.float32)
    d_np, m_np = defocus_inputs(depth, 0.42, 13.0)
    d_t, m_t = defocus_inputs(torch.from_numpy(depth), 0.42, 13.0)
    assert isinstance(d_t, torch.Tensor) and isinstance(d_np, np.ndarray)
    np.testing.assert_array_equal(d_np, d_t.numpy())
    np.testing.assert_array_equal(m_np, m_t.numpy())


def test_per_sample_focus_and_aperture_broadcast_like_single_calls():
    depth = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    focus = torch.tensor([0.1, 0.5, 0.9])
    aperture = torch.tensor([1.0, 16.0, 32.0])
    batch, mask = defocus_inputs(depth, focus.reshape(-1, 1, 1, 1), aperture.reshape(-1, 1, 1, 1), 0.2)
    for i in range(3):
        one, one_mask = defocus_inputs(depth[i], float(focus[i]), float(aperture[i]), 0.2)
        assert torch.equal(batch[i], one) and torch.equal(mask[i], one_mask)


def test_in_focus_mask_includes_the_threshold():
    d = np.array([0.0, np.float32(IN_FOCUS_THRESHOLD), np.nextafter(np.float32(IN_FOCUS_THRESHOLD), np.float32(1))], np.float32)
    np.testing.assert_array_equal(in_focus_mask(d), [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(in_focus_mask(d, 0.0), [1.0, 0.0, 0.0])


def test_inference_path_is_eight_bit_depth_through_the_same_maps():
    depth_u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    defocus, in_focus = defocus_maps(depth_u8, 100 / 255, 7)
    d, m = defocus_inputs(u8_to_unit(torch.from_numpy(depth_u8)).numpy(), 100 / 255, 7)
    np.testing.assert_array_equal(defocus, d)
    np.testing.assert_array_equal(in_focus, m)
    with pytest.raises(InputError):
        defocus_maps(depth_u8, 0.5, 33)  # the pipeline keeps the demo's K range


def test_every_configuration_defaults_to_the_published_threshold():
    assert all(cfg.defocus_in_focus_threshold == IN_FOCUS_THRESHOLD for cfg in CONFIGS.values())


def test_bokeh_baseline_keeps_exactly_the_contracts_in_focus_pixels():
    rng = np.random.default_rng(3)
    image = rng.random((32, 32, 3)).astype(np.float32)
    depth = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    out = gaussian_background_blur(image, depth, 0.5, 32)
    sharp = in_focus_mask(defocus_map(depth, 0.5, 32)).astype(bool)
    assert sharp.any() and (~sharp).any()
    np.testing.assert_array_equal(out[sharp], image[sharp])
    assert not np.array_equal(out[~sharp], image[~sharp])
