"""Core ML weight compression: w8 / w4 packages executed by the interpreter, and mixed-bit choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("coremltools")

from export.coreml_lowering import convert_exported, export_graph  # noqa: E402
from quantize.coreml import (  # noqa: E402
    CompressionError,
    LayerSensitivity,
    choose_bits,
    compress_mlmodel,
    measure_sensitivity,
)
from runtime_py.components import tile_components  # noqa: E402
from runtime_py.coreml_interpreter import load_mlpackage  # noqa: E402
from runtime_py.manifest import size_bytes  # noqa: E402
from runtime_py.model import build_model  # noqa: E402
from runtime_py.parity import psnr  # noqa: E402


@pytest.fixture(scope="module")
def decoder_case():
    """The tiny decoder, converted once (fp16), with its torch output on one input."""
    component = tile_components(build_model("tiny", seed=0))["decoder"]
    inputs = component.example_inputs(seed=2)
    program = export_graph(component, inputs, ane_layout=True)
    mlmodel = convert_exported(program, ["x0"], [tuple(inputs[0].shape)], ["rgb"])
    with torch.no_grad():
        reference = component(*inputs).numpy()
    return mlmodel, inputs[0].numpy(), reference


def _saved(mlmodel, path):
    mlmodel.save(str(path))
    return load_mlpackage(path), size_bytes(path)


def test_w8_package_reaches_35_db(decoder_case, tmp_path) -> None:
    """8-bit per-channel weights: the issue's bar is >= 35 dB against the fp32 reference."""
    mlmodel, x0, reference = decoder_case
    fp16, fp16_bytes = _saved(mlmodel, tmp_path / "fp16.mlpackage")
    compressed, recipe = compress_mlmodel(mlmodel, "w8")
    program, w8_bytes = _saved(compressed, tmp_path / "w8.mlpackage")
    assert program.op_counts.get("constexpr_affine_dequantize", 0) > 0
    assert "int8" in recipe["method"]
    assert psnr(reference, program(x0)) >= 35.0
    assert w8_bytes < fp16_bytes


def test_w4_palettized_lut_path_runs(decoder_case, tmp_path) -> None:
    """4-bit k-means: the program holds look-up-table ops and the interpreter decodes them. The
    issue only asks for the figure to be reported; a floor of 20 dB (a 4-bit LUT keeps about 24 dB
    of weight SNR) catches a mis-decoded LUT, which gives noise (< 10 dB)."""
    mlmodel, x0, reference = decoder_case
    compressed, _ = compress_mlmodel(mlmodel, "w4")
    program, _ = _saved(compressed, tmp_path / "w4.mlpackage")
    assert program.op_counts.get("constexpr_lut_to_dense", 0) > 0
    assert psnr(reference, program(x0)) > 20.0


def test_choose_bits_gives_sensitive_layers_more_bits() -> None:
    layers = [LayerSensitivity("robust", 1000, 70.0), LayerSensitivity("fragile", 1000, 20.0),
              LayerSensitivity("middle", 1000, 45.0)]
    bits = choose_bits(layers, average_bits=6.0)
    assert bits["fragile"] == 8 and bits["robust"] == 4
    assert sum(bits.values()) / 3 <= 6.0
    assert set(choose_bits(layers, average_bits=4.0).values()) == {4}
    with pytest.raises(CompressionError, match="average bits"):
        choose_bits(layers, average_bits=9.0)


class _TwoLayers(nn.Module):
    """``robust`` holds only 16 distinct fp16-exact values (a 4-bit LUT is lossless for it);
    ``fragile`` holds Gaussian values (4-bit k-means costs it real error)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fragile = nn.Linear(64, 64, bias=False)
        self.robust = nn.Linear(64, 64, bias=False)
        with torch.no_grad():
            self.fragile.weight.copy_(torch.randn(64, 64, generator=g) * 0.15)
            levels = (torch.arange(16, dtype=torch.float32) - 7.5) / 64
            self.robust.weight.copy_(levels[torch.randint(0, 16, (64, 64), generator=g)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.robust(self.fragile(x))


def test_mixed_bits_follow_measured_sensitivity(tmp_path) -> None:
    module = _TwoLayers().eval()
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        program = torch.export.export(module, (x,), strict=False)
    mlmodel = convert_exported(program, ["x"], [tuple(x.shape)], ["y"])
    samples = [{"x": x.numpy()}]

    scores = {s.name: s for s in measure_sensitivity(mlmodel, samples)}
    fragile = next(s for n, s in scores.items() if "fragile" in n)
    robust = next(s for n, s in scores.items() if "robust" in n)
    assert fragile.psnr_db < robust.psnr_db

    compressed, recipe = compress_mlmodel(mlmodel, "mixed", sensitivity_inputs=samples, average_bits=6.0)
    layers = recipe["layers"]
    assert layers[fragile.name]["bits"] == 8 and layers[robust.name]["bits"] == 4
    assert recipe["average_bits"] <= 6.0

    with torch.no_grad():
        reference = module(x).numpy()
    mixed, _ = _saved(compressed, tmp_path / "mixed.mlpackage")
    w4, _ = _saved(compress_mlmodel(mlmodel, "w4")[0], tmp_path / "w4.mlpackage")
    assert psnr(reference, mixed(x.numpy())) > psnr(reference, w4(x.numpy()))


def test_mixed_needs_samples(decoder_case) -> None:
    with pytest.raises(CompressionError, match="sample"):
        compress_mlmodel(decoder_case[0], "mixed", sensitivity_inputs=[])
    with pytest.raises(CompressionError, match="unknown Core ML compression"):
        compress_mlmodel(decoder_case[0], "w3")
