"""``python -m runtime_py golden``: the apps' golden vectors hold what the reference computes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runtime_py.backends import get_backend
from runtime_py.cli import main
from runtime_py.components import tile_components
from runtime_py.golden import GOLDEN_INDEX, GoldenError, read_golden, write_golden
from runtime_py.model import build_model
from runtime_py.pipeline import FocusMask, FocusPoint, render_image


@pytest.fixture(scope="module")
def tiny_components():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    return get_backend("torch").load(tile_components(model))


def _photo(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 3: width // 2] = True
    return image, depth, mask


def _ramp_blend(index: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Blend the recorded tile outputs with the recorded weights, float32, in plan order."""
    height, width = index["padded_size"]
    acc = np.zeros((3, height, width), np.float32)
    wsum = np.zeros((height, width), np.float32)
    for tile, box in zip(index["tiles"], index["plan"]["boxes"]):
        weight = arrays[tile["arrays"]["weight"]]
        rows = slice(box["top"], box["top"] + box["size"])
        cols = slice(box["left"], box["left"] + box["size"])
        acc[:, rows, cols] += arrays[tile["arrays"]["decoded"]][0] * weight
        wsum[rows, cols] += weight
    return acc / wsum


@pytest.mark.parametrize("size,focus_kind,K", [((150, 200), "mask", 32), ((100, 90), "point", 1)])
def test_golden_records_the_reference_render(tmp_path: Path, tiny_components, size, focus_kind, K):
    image, depth, mask = _photo(*size)
    focus = FocusMask(mask) if focus_kind == "mask" else FocusPoint(30, 20)
    summary = write_golden(tmp_path / "g", image, depth, focus=focus, K=K, components=tiny_components,
                           config="tiny", model={"backend": "torch"})
    index, arrays = read_golden(summary.folder)
    reference = render_image(image, depth, components=tiny_components, config="tiny", K=K, focus=focus)

    assert np.array_equal(arrays["final_u8"], reference.image)
    assert np.array_equal(arrays["raw_u8"], reference.raw)
    assert np.array_equal(arrays["depth_u8"], reference.depth_u8)
    assert index["focus_value_bits"] == struct.unpack("<I", struct.pack("<f", reference.focus))[0]
    assert index["input"]["focus"]["mode"] == focus_kind
    assert len(index["tiles"]) == reference.plan.count == len(index["plan"]["boxes"])
    height, width = size
    assert index["padding"] == [max(0, 128 - height), max(0, 128 - width)]
    # The tiles' inputs are slices of the padded whole-image maps, and the blend of the recorded
    # outputs with the recorded weights is the recorded blend, bit for bit.
    for tile, box in zip(index["tiles"], index["plan"]["boxes"]):
        rows = slice(box["top"], box["top"] + box["size"])
        cols = slice(box["left"], box["left"] + box["size"])
        assert np.array_equal(arrays[tile["arrays"]["defocus"]][0, 0], arrays["defocus"][rows, cols])
        assert np.array_equal(arrays[tile["arrays"]["in_focus"]][0, 0], arrays["in_focus"][rows, cols])
        expected_rgb = arrays["image_u8_padded"][rows, cols].transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1
        assert np.array_equal(arrays[tile["arrays"]["rgb"]][0], expected_rgb.astype(np.float32))
    assert np.array_equal(_ramp_blend(index, arrays), arrays["blended"])
    assert np.array_equal(arrays["in_focus"], (1 - (arrays["defocus"] > 0.1)).astype(np.float32))
    if focus_kind == "mask":
        assert np.array_equal(arrays["mask"], mask.astype(np.uint8))
    else:
        assert "mask" not in arrays


def test_golden_arrays_are_little_endian_raw_files(tmp_path: Path, tiny_components):
    image, depth, mask = _photo(130, 140)
    write_golden(tmp_path / "g", image, depth, focus=FocusMask(mask), K=8, components=tiny_components,
                 config="tiny", model={"backend": "torch"})
    index = json.loads((tmp_path / "g" / GOLDEN_INDEX).read_text())
    entry = index["arrays"]["image_u8"]
    raw = (tmp_path / "g" / entry["file"]).read_bytes()
    assert raw == image.tobytes() and entry["shape"] == [130, 140, 3] and entry["dtype"] == "uint8"
    weight = index["arrays"]["tile000_weight"]
    assert weight["dtype"] == "float32" and weight["shape"] == [128, 128]


def test_bad_input_writes_nothing(tmp_path: Path, tiny_components):
    image, depth, _ = _photo(150, 200)
    with pytest.raises(ValueError, match="empty"):
        write_golden(tmp_path / "g", image, depth, focus=FocusMask(np.zeros((150, 200), bool)), K=4,
                     components=tiny_components, config="tiny", model={"backend": "torch"})
    with pytest.raises(ValueError, match="depth map is"):
        write_golden(tmp_path / "g", image, depth[:, :100], focus=FocusPoint(1, 1), K=4,
                     components=tiny_components, config="tiny", model={"backend": "torch"})
    assert not (tmp_path / "g").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_read_golden_refuses_other_schemas(tmp_path: Path):
    (tmp_path / GOLDEN_INDEX).write_text(json.dumps({"schema": "magicbokeh-golden", "schema_version": 99}))
    with pytest.raises(GoldenError, match="schema"):
        read_golden(tmp_path)
    with pytest.raises(GoldenError, match="no golden.json"):
        read_golden(tmp_path / "missing")


def test_golden_cli(tmp_path: Path, capsys):
    image, depth, mask = _photo(140, 150)
    Image.fromarray(image).save(tmp_path / "photo.png")
    np.save(tmp_path / "depth.npy", depth)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    common = ["golden", "--config", "tiny", "--image", str(tmp_path / "photo.png"), "--depth", str(tmp_path / "depth.npy")]
    assert main([*common, "--mask", str(tmp_path / "mask.png"), "--K", "16", "--out", str(tmp_path / "g")]) == 0
    assert "wrote" in capsys.readouterr().out
    index, arrays = read_golden(tmp_path / "g")
    assert index["model"]["backend"] == "torch" and index["input"]["K"] == 16
    assert arrays["final_u8"].shape == (140, 150, 3)
    # One clear line for a bad point, nothing written.
    assert main([*common, "--focus-point", "999,1", "--out", str(tmp_path / "bad")]) == 2
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
