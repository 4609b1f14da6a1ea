"""The three tile components through ExecuTorch/XNNPACK fp32: per-component parity >= 60 dB on
real tiles, and the whole-image pipeline renders the same photo through ExecuTorch and torch.

The artifacts are the session's tiny ExecuTorch export (``tests/conftest.py``,
``tiny_executorch_artifacts``: the ``tiny`` benchmark model, all three tile components), shared
with the parity CLI and benchmark tests: lowering the denoiser is the slowest ExecuTorch step, so
the suite does it once. The torch reference is the same model (``benchmarks.artifacts.benchmark_model``).
"""

from __future__ import annotations

import numpy as np
import pytest

from export.flow import export_target
from runtime_py.backends import get_backend
from runtime_py.backends.torch_backend import TorchBackend
from runtime_py.components import tile_components
from runtime_py.memory import peak_rss_bytes
from runtime_py.model import build_model, get_config
from runtime_py.parity import ParityThresholds, psnr, run_parity
from runtime_py.pipeline import render_image
from runtime_py.samples import scene_samples

CONFIG = get_config("tiny")
#: The folder of the session export under its root (tests/conftest.py's TINY_EXECUTORCH_TARGET).
TINY_EXECUTORCH_TARGET = "executorch-xnnpack-fp32"


@pytest.fixture(scope="module")
def exported(tiny_executorch_artifacts):
    """(torch components of the exported model, the ExecuTorch backend on the session's export)."""
    from benchmarks.artifacts import benchmark_model
    from runtime_py.checkpoints import weights_sha256

    model, _label = benchmark_model(CONFIG.name)
    folder = tiny_executorch_artifacts / TINY_EXECUTORCH_TARGET
    # The weights check makes sure the reference is the model the artifacts were exported from.
    tested = get_backend("executorch").load(folder, config=CONFIG, weights_sha256=weights_sha256(model))
    return tile_components(model), tested


def test_fp32_parity_per_component_and_end_to_end(exported):
    components, tested = exported
    samples = scene_samples(1, 192, seed=3)
    # 60 dB is the bar for fp32: float re-association differences sit near 100+ dB,
    # a wrong op or layout is below 40.
    result = run_parity(TorchBackend().load(components), tested, samples, config=CONFIG, max_tiles_per_image=2,
                        thresholds=ParityThresholds(min_psnr_component=60.0, min_psnr_end_to_end=60.0, min_ssim=0.999))
    assert result.passed, result.failures
    assert result.components["denoiser"]["count"] == 2


def test_pipeline_renders_the_same_photo_through_executorch(exported):
    components, tested = exported
    sample = scene_samples(1, 200, seed=4)[0]  # 200 px: grid, bottom, right and corner tiles
    kwargs = dict(config=CONFIG, K=sample.K, focus=sample.focus)
    ref = render_image(sample.image_u8, sample.depth, components=TorchBackend().load(components), **kwargs)
    out = render_image(sample.image_u8, sample.depth, components=tested, **kwargs)
    assert out.image.shape == ref.image.shape == sample.image_u8.shape
    assert out.tile_count == ref.tile_count == 9
    # fp32 differences of ~1e-6 can flip an 8-bit truncation of the blended output: at most one
    # level, on few pixels. The colour fix rescales by std_x / std_y, which may widen such a flip
    # by a level or two, so the final photo is held to a PSNR bar instead.
    diff = np.abs(out.raw.astype(int) - ref.raw.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert psnr(ref.image, out.image) >= 40.0


@pytest.mark.slow
def test_sd21_scale_export_time_and_memory(tmp_path):
    """Full SD2.1-scale lowering (random weights): prints time and peak memory; fp32 parity on one tile."""
    import torch

    config = get_config("sd21")
    components = tile_components(build_model(config, seed=0))
    result = export_target("executorch-xnnpack-fp32", components, tmp_path / "sd21", skip=("verify",),
                           weights_sha256="22" * 32)
    print(f"sd21 xnnpack-fp32 export: {result.seconds:.0f} s, peak RSS {result.peak_rss_mib / 1024:.1f} GiB, "
          f"sizes {[(c.name, c.bytes) for c in result.components.values()]}")
    tested = get_backend("executorch").load(tmp_path / "sd21")
    reference = TorchBackend().load(components)
    with torch.no_grad():
        for name, component in components.items():
            inputs = [t.numpy() for t in component.example_inputs(1)]
            assert psnr(reference[name](*inputs), tested[name](*inputs)) >= 60.0, name
