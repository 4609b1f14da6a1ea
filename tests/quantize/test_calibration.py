"""Calibration data are real tiles: the pipeline's tiling, defocus arithmetic and the reference's
stage outputs, from generated scenes and from a user's images folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from quantize.calibration import build_calibration_set, collect_calibration
from quantize.recipes import CalibrationSpec, get_recipe
from runtime_py.backends.torch_backend import TorchBackend
from runtime_py.components import tile_components
from runtime_py.images import InputError
from runtime_py.model import build_model, get_config
from runtime_py.pipeline import FocusMask, defocus_maps, depth_to_u8, image_to_model_range, resolve_focus
from runtime_py.samples import RealSample, folder_samples, scene_samples, select_tiles
from runtime_py.tiling import tile_boxes

CONFIG = get_config("tiny")


@pytest.fixture(scope="module")
def components():
    return tile_components(build_model("tiny", seed=0))


@pytest.fixture(scope="module")
def scene():
    return scene_samples(1, 192, seed=5)[0]


def test_inputs_are_the_pipelines_tiles_and_the_references_stage_outputs(components, scene):
    cal = collect_calibration(components, [scene], CONFIG, max_tiles_per_image=2)
    assert {k: len(v) for k, v in cal.inputs.items()} == {"encoder": 2, "denoiser": 2, "decoder": 2}
    boxes = select_tiles(tile_boxes(192, 192, CONFIG.tile, CONFIG.stride), 2)
    assert [b.index for b in boxes] == [0, 3]  # first and last tile in run order

    rgb = image_to_model_range(scene.image_u8)
    depth_u8 = depth_to_u8(scene.depth)
    defocus, in_focus = defocus_maps(depth_u8, resolve_focus(depth_u8, scene.focus), scene.K)
    ref = TorchBackend().load(components)
    for box, (enc_in,), (latent, d, m), (x0,) in zip(boxes, cal.inputs["encoder"], cal.inputs["denoiser"], cal.inputs["decoder"]):
        rows, cols = box.slices()
        # Exactly the pipeline's arithmetic, bit for bit (same functions, same order).
        np.testing.assert_array_equal(enc_in, rgb[:, :, rows, cols])
        np.testing.assert_array_equal(d[0, 0], defocus[rows, cols])
        np.testing.assert_array_equal(m[0, 0], in_focus[rows, cols])
        # Stage inputs are the reference's outputs of the stage before.
        np.testing.assert_array_equal(latent, ref["encoder"](enc_in))
        np.testing.assert_array_equal(x0, ref["denoiser"](latent, d, m))
    # Real maps: the in-focus mask is binary and agrees with the defocus threshold.
    all_d = np.concatenate([b[1].ravel() for b in cal.inputs["denoiser"]])
    all_m = np.concatenate([b[2].ravel() for b in cal.inputs["denoiser"]])
    assert set(np.unique(all_m)) <= {0.0, 1.0}
    np.testing.assert_array_equal(all_m == 1.0, all_d <= CONFIG.defocus_in_focus_threshold)


def test_scene_samples_are_deterministic_and_valid(scene):
    again = scene_samples(1, 192, seed=5)[0]
    np.testing.assert_array_equal(again.image_u8, scene.image_u8)
    assert scene.image_u8.dtype == np.uint8 and scene.image_u8.shape == (192, 192, 3)
    assert 0.0 <= scene.depth.min() and scene.depth.max() <= 1.0
    assert 1 <= scene.K <= 32
    assert isinstance(scene.focus, FocusMask) and scene.focus.mask.any()


def test_torch_batches_and_spec(components):
    cal = build_calibration_set(components, CONFIG, CalibrationSpec(num_scenes=1, max_tiles_per_image=1),
                                components=["encoder", "decoder"])
    assert set(cal.inputs) == {"encoder", "decoder"}
    (batch,) = cal.torch_inputs("encoder")
    assert batch[0].shape == (1, 3, 128, 128) and str(batch[0].dtype) == "torch.float32"
    described = cal.describe()
    assert described["batches"] == {"encoder": 1, "decoder": 1} and described["num_scenes"] == 1
    with pytest.raises(KeyError, match="no calibration inputs for component 'denoiser'"):
        cal.torch_inputs("denoiser")


def test_images_folder(tmp_path, components):
    rng = np.random.default_rng(0)
    (tmp_path / "input").mkdir()
    (tmp_path / "depth").mkdir()
    (tmp_path / "mask").mkdir()
    image = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    depth = np.tile(np.linspace(0, 1, 160, dtype=np.float32), (128, 1))
    mask = np.zeros((128, 160), dtype=np.uint8)
    mask[40:80, 60:100] = 255
    Image.fromarray(image).save(tmp_path / "input" / "photo.png")
    np.save(tmp_path / "depth" / "photo.npy", depth)
    Image.fromarray(mask).save(tmp_path / "mask" / "photo.png")
    (sample,) = folder_samples(tmp_path, K=16)
    assert isinstance(sample, RealSample) and sample.source == "folder" and sample.K == 16
    np.testing.assert_array_equal(sample.image_u8, image)
    assert isinstance(sample.focus, FocusMask) and sample.focus.mask.sum() == 40 * 40
    cal = collect_calibration(components, [sample], CONFIG)
    assert len(cal.inputs["denoiser"]) == len(tile_boxes(128, 160, CONFIG.tile, CONFIG.stride))

    (tmp_path / "depth" / "photo.npy").unlink()
    with pytest.raises(InputError, match="photo.png: no depth map"):
        folder_samples(tmp_path)


def test_bad_requests_are_clear(components, scene):
    with pytest.raises(ValueError, match="at least one sample"):
        collect_calibration(components, [], CONFIG)
    with pytest.raises(ValueError, match=r"no reference for components \['depth'\]"):
        collect_calibration(components, [scene], CONFIG, components=["depth"])
    small = RealSample("small", scene.image_u8[:100, :100], scene.depth[:100, :100], scene.focus, 8)
    with pytest.raises(InputError, match="each side >= 128"):
        collect_calibration(components, [small], CONFIG)
    with pytest.raises(ValueError, match="unknown quantization recipe"):
        get_recipe("w3a3")
    assert get_recipe("w8a8").precision_label == "w8a8" and get_recipe("fp16").precision_label == "fp16"
