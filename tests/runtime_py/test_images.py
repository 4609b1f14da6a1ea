"""Reading and validating photos, depth maps and masks (runtime_py.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_py.images import (
    InputError,
    load_depth,
    load_image,
    load_mask,
    parse_point,
    validate_aperture,
    validate_depth,
    validate_focus_value,
)


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)


def test_rgb_png_and_jpeg_round_trip(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), pixels)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    assert load_image(tmp_path / "a.jpg").shape == (7, 9, 3)


def test_alpha_is_dropped_and_grey_is_replicated(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgba[..., :3])
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))


def test_unsupported_and_broken_images_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    with pytest.raises(InputError, match="unsupported pixel mode"):
        load_image(tmp_path / "deep.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="image file not found"):
        load_image(tmp_path / "missing.png")


def test_depth_files(tmp_path: Path) -> None:
    depth = np.random.default_rng(2).random((4, 5)).astype(np.float32)
    np.save(tmp_path / "d.npy", depth)
    np.testing.assert_array_equal(load_depth(tmp_path / "d.npy"), depth)
    np.save(tmp_path / "d1.npy", depth[None])  # (1, H, W) is squeezed
    assert load_depth(tmp_path / "d1.npy").shape == (4, 5)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read depth map"):
        load_depth(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read depth map"):  # pickles are never loaded
        load_depth(tmp_path / "obj.npy")
    with pytest.raises(InputError, match="depth file not found"):
        load_depth(tmp_path / "none.npy")


def test_depth_values_are_checked() -> None:
    assert validate_depth(np.zeros((2, 2), np.float16)).dtype == np.float32
    assert validate_depth(np.zeros((2, 2), np.float64)).dtype == np.float64
    with pytest.raises(InputError, match=r"2 depth value\(s\) are NaN or infinite"):
        validate_depth(np.array([[0.1, np.inf], [np.nan, 0.2]], np.float32))
    with pytest.raises(InputError, match=r"found range \[-0.5, 0.3\]"):
        validate_depth(np.array([[-0.5, 0.3]], np.float32))
    with pytest.raises(InputError, match=r"expected an \(H, W\) depth map"):
        validate_depth(np.zeros((2, 3, 4), np.float32))


def test_masks_are_non_zero_pixels(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:4] = 1  # even value 1 counts: "non-zero", not "> 127"
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), mask != 0)
    (tmp_path / "m_bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot read mask"):
        load_mask(tmp_path / "m_bad.png")


def test_points_values_and_aperture() -> None:
    assert parse_point("12, 34") == (12, 34)
    for text in ("12", "a,b", "1,2,3", "1.5,2"):
        with pytest.raises(InputError, match="X,Y"):
            parse_point(text)
    assert validate_focus_value(0) == 0.0 and validate_focus_value(1.0) == 1.0
    for bad in (-0.01, 1.01, float("nan"), "0.5", True):
        with pytest.raises(InputError):
            validate_focus_value(bad)
    assert validate_aperture(np.int64(32)) == 32 and validate_aperture(8.0) == 8
    for bad in (0, -3, 33, 2.5, "8", None, False):
        with pytest.raises(InputError, match="1..32"):
            validate_aperture(bad)
