"""ExecuTorch lowering: XNNPACK fp32 parity, PT2E int8, the Core ML delegate, the QNN message.

The cheap components (encoder, decoder) are lowered here; the denoiser and the whole-image
pipeline through ExecuTorch are in test_to_executorch_e2e.py (each file stays short).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.executorch_lowering import QnnSdkMissingError, check_qnn_sdk, lower_component
from export.flow import ExportSettings, export_target, resolve_steps
from export.prepare import (
    DEFAULT_FOCUS_IMPLEMENTATION,
    ExportError,
    export_component,
    focus_implementation_for,
    rewrites_for,
)
from export.targets import VerifySpec, get_target
from quantize.recipes import CalibrationSpec
from runtime_py.backends import BackendUnavailableError, get_backend
from runtime_py.backends.torch_backend import TorchBackend
from runtime_py.components import tile_components
from runtime_py.manifest import read_manifest
from runtime_py.model import build_model, get_config
from runtime_py.parity import ParityThresholds, run_parity
from runtime_py.samples import scene_samples

CONFIG = get_config("tiny")
WEIGHTS = "ee" * 32
CHEAP = ["encoder", "decoder"]


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG, seed=0)


@pytest.fixture(scope="module")
def components(model):
    return tile_components(model)


@pytest.fixture(scope="module")
def samples():
    return scene_samples(1, 192, seed=11)


def export(components, folder, target, names, **kwargs):
    return export_target(target, components, folder, weights_sha256=WEIGHTS, log=lambda _m: None,
                         settings=ExportSettings(components=tuple(names), **kwargs.pop("settings", {})), **kwargs)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, components):
    # The whole flow, verify included, on the same scene as the ``samples`` fixture (seed 11, 192 px).
    folder = tmp_path_factory.mktemp("et") / "fp32"
    return export(components, folder, "executorch-xnnpack-fp32", CHEAP,
                  settings={"verify": VerifySpec(num_scenes=1, scene_size=192, seed=11, max_tiles_per_image=2)})


@pytest.fixture(scope="module")
def fp32_folder(fp32_export):
    return fp32_export.folder


def test_flow_result_has_every_step_and_component(fp32_export):
    result = fp32_export
    assert [r.status for r in result.steps.values()] == ["done", "skipped", "done", "done", "done"]
    assert all(result.steps[s].seconds > 0 for s in ("prepare", "lower", "package", "verify"))
    assert list(result.components) == CHEAP
    for name, component in result.components.items():
        assert component.file == f"{name}.pte" and component.bytes == (result.folder / component.file).stat().st_size
        assert component.precision == "fp32" and component.seconds["lower"] > 0
        assert component.parity["psnr_db"] >= 60.0  # the executorch numerics bar, met per component
    assert result.passed and (result.folder / "parity.json").is_file() and (result.folder / "parity.md").is_file()
    recipe = result.manifest.recipe
    assert recipe["target"] == "executorch-xnnpack-fp32" and recipe["precision"] == "fp32"


def test_fp32_xnnpack_parity_at_least_60_db(fp32_folder, components, samples):
    manifest = read_manifest(fp32_folder)
    assert sorted(manifest.components) == sorted(CHEAP) and manifest.precision == "fp32"
    for entry in manifest.components.values():
        assert entry.extra["delegate"] == "xnnpack"
        assert entry.extra["delegation"]["delegated_nodes"] > 0
    tested = get_backend("executorch").load(fp32_folder, config=CONFIG, weights_sha256=WEIGHTS)
    reference = TorchBackend().load(components)
    result = run_parity(reference, tested, samples, config=CONFIG, max_tiles_per_image=2,
                        thresholds=ParityThresholds(min_psnr_component=60.0))
    assert result.passed, result.failures
    assert result.end_to_end is None  # the denoiser is not in these artifacts


def test_executorch_backend_checks_inputs(fp32_folder):
    fns = get_backend("executorch").load(fp32_folder, components=("encoder",))
    with pytest.raises(ValueError, match="input 0 has shape"):
        fns["encoder"](np.zeros((1, 3, 64, 64), np.float32))
    out = fns["encoder"](np.zeros((1, 3, 128, 128), np.float32))
    assert out.shape == (1, 4, 16, 16) and out.dtype == np.float32


def test_int8_xnnpack_runs_and_parity_is_reported(tmp_path, components, samples):
    # The encoder only: int8 lowering is the slowest step here; the exporter's by-hand run
    # reports every component (see the export report).
    folder = tmp_path / "int8"
    result = export(components, folder, "executorch-xnnpack-int8", ["encoder"], skip=("verify",),
                    settings={"calibration": CalibrationSpec(num_scenes=1, max_tiles_per_image=2, seed=11)})
    assert result.steps["quantize"].status == "done" and result.steps["verify"].status == "skipped"
    manifest = read_manifest(folder)
    assert manifest.extra["calibration"]["batches"] == {"encoder": 2}
    assert manifest.precision == "w8a8"
    assert all(e.extra["calibration_batches"] == 2 for e in manifest.components.values())
    tested = get_backend("executorch").load(folder)
    result = run_parity(TorchBackend().load(components), tested, samples, config=CONFIG, max_tiles_per_image=2)
    for name in ["encoder"]:
        figures = result.components[name]
        # int8 activations on random-weight graphs: well below fp32 parity, but a working
        # quantization keeps the signal. 15 dB is an RMS error of ~18% of the peak; a broken
        # scale or a wrong calibration range gives single digits or negative values.
        assert math.isfinite(figures["psnr_db"]) and figures["psnr_db"] > 15.0, (name, figures)
        assert figures["psnr_db"] < 100.0  # really quantized (fp32 reaches > 100 dB here)


def test_int8_needs_calibration(components):
    with pytest.raises(ValueError, match="needs calibration inputs"):
        lower_component(components["encoder"], get_target("executorch-xnnpack-int8"))
    with pytest.raises(ValueError, match="'lower' needs 'quantize'"):
        resolve_steps(get_target("executorch-xnnpack-int8"), skip=["quantize"])


def test_coreml_delegate_lowers_and_refuses_to_run_here(tmp_path, components):
    folder = tmp_path / "coreml"
    result = export(components, folder, "executorch-coreml-fp16", ["encoder"])
    entry = read_manifest(folder).components["encoder"]
    assert entry.extra["delegate"] == "coreml" and entry.bytes > 0 and (folder / "encoder.pte").is_file()
    # The verify step cannot run the Core ML delegate on Linux: reported as such, not failed, not faked.
    assert result.steps["verify"].status == "unavailable" and "Apple" in result.steps["verify"].detail
    assert result.passed is None and not (folder / "parity.json").exists()
    with pytest.raises(BackendUnavailableError, match="coreml delegate.*Apple"):
        get_backend("executorch").load(folder)


def test_qnn_without_sdk_is_a_clear_message(monkeypatch, tmp_path, components):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    with pytest.raises(QnnSdkMissingError, match="set QNN_SDK_ROOT"):
        export(components, tmp_path / "qnn", "executorch-qnn-fp16", ["encoder"])
    assert not (tmp_path / "qnn").exists()
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))
    with pytest.raises(QnnSdkMissingError, match="not a QNN SDK"):
        check_qnn_sdk()


def test_focus_choice_per_target_and_rewrites(components):
    assert focus_implementation_for("coreml") == "split" and focus_implementation_for("xnnpack") == "bias"
    assert focus_implementation_for("xnnpack", "split") == "split"
    assert set(DEFAULT_FOCUS_IMPLEMENTATION) >= {"xnnpack", "coreml", "qnn"}
    with pytest.raises(ValueError, match="unknown export target"):
        focus_implementation_for("tpu")
    with pytest.raises(ValueError, match="focus implementation must be one of"):
        focus_implementation_for("xnnpack", "dense")
    assert "group_norm" in rewrites_for("xnnpack") and rewrites_for("coreml") == ()
    with pytest.raises(ValueError, match="unknown export rewrites"):
        rewrites_for("xnnpack", ["fuse_everything"])
    # The rewrites are the same arithmetic: the rewritten decoder graph matches eager closely.
    import torch

    decoder = components["decoder"]
    (x0,) = decoder.example_inputs(3)
    program = export_component(decoder, (x0,), target="xnnpack")
    with torch.no_grad():
        err = (program.module()(x0) - decoder(x0)).abs().max().item()
    assert err < 1e-4  # fp32 re-association of the norm's sums; outputs are in [-1, 1]
    with pytest.raises(ExportError, match="component 'decoder'.*input 'x0' has shape"):
        export_component(decoder, (torch.zeros(1, 4, 8, 8),), target="xnnpack")


@pytest.mark.parametrize("shape", [(1, 16, 128, 96), (1, 8, 4096)])
def test_group_norm_rewrite_is_group_norm_in_two_mean_passes(shape):
    """The XNNPACK group-norm rewrite computes F.group_norm (4-D tiles and the VAE attention's
    3-D (B, C, HW) input), its means in rows of at most MEAN_ROW elements."""
    import torch
    import torch.nn.functional as F

    from export.prepare import MEAN_ROW, _group_mean, _group_norm_4d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 5
    weight, bias = torch.rand(shape[1], generator=g), torch.randn(shape[1], generator=g)
    torch.testing.assert_close(_group_norm_4d(x, 4, weight, bias, 1e-6), F.group_norm(x, 4, weight, bias, 1e-6),
                               rtol=1e-5, atol=1e-5)
    grouped = x.reshape(1, 4, shape[1] // 4, -1)
    torch.testing.assert_close(_group_mean(grouped), grouped.mean(dim=(2, 3), keepdim=True), rtol=1e-6, atol=1e-6)
    assert MEAN_ROW <= 1024
