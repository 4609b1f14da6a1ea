"""Core ML weight compression: w8 / w4 packages executed by the interpreter, and mixed-bit choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("coremltools")

from export.coreml_lowering import convert_exported, export_graph, used_parameter_names  # noqa: E402
from quantize.coreml import (  # noqa: E402
    CompressionError,
    LayerSensitivity,
    MixedPlan,
    choose_bits,
    compress_mlmodel,
    plan_mixed_bits,
)
from runtime_py.coreml_interpreter import read_mil_program  # noqa: E402
from runtime_py.components import tile_components  # noqa: E402
from runtime_py.coreml_interpreter import load_mlpackage  # noqa: E402
from runtime_py.manifest import size_bytes  # noqa: E402
from runtime_py.model import build_model  # noqa: E402
from runtime_py.parity import psnr  # noqa: E402


@pytest.fixture(scope="module")
def decoder_case():
    """The tiny decoder, converted once (fp16), with its torch output on one input."""
    component = tile_components(build_model("tiny", seed=0))["decoder"].eval()
    inputs = component.example_inputs(seed=2)
    program = export_graph(component, inputs, ane_layout=True)
    mlmodel = convert_exported(program, ["x0"], [tuple(inputs[0].shape)], ["rgb"])
    with torch.no_grad():
        reference = component(*inputs).numpy()
    return mlmodel, inputs[0].numpy(), reference, component, sorted(set(used_parameter_names(program, component).values()))


def _saved(mlmodel, path):
    mlmodel.save(str(path))
    return load_mlpackage(path), size_bytes(path)


def test_w8_package_reaches_35_db(decoder_case, tmp_path) -> None:
    """8-bit per-channel weights: the issue's bar is >= 35 dB against the fp32 reference."""
    mlmodel, x0, reference = decoder_case[:3]
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
    mlmodel, x0, reference = decoder_case[:3]
    compressed, _ = compress_mlmodel(mlmodel, "w4")
    program, _ = _saved(compressed, tmp_path / "w4.mlpackage")
    assert program.op_counts.get("constexpr_lut_to_dense", 0) > 0
    assert psnr(reference, program(x0)) > 20.0


def _layer(name: str, elements: int, psnr_db: float) -> LayerSensitivity:
    """A layer whose palettization error shrinks 16x per two extra bits (k-means on smooth weights)."""
    return LayerSensitivity(name, elements, psnr_db, {2: 256.0, 4: 16.0, 6: 1.0, 8: 1 / 16})


def test_choose_bits_gives_sensitive_layers_more_bits() -> None:
    layers = [_layer("robust", 1000, 70.0), _layer("fragile", 1000, 20.0), _layer("middle", 1000, 45.0)]
    bits = choose_bits(layers, average_bits=6.0)
    assert bits == {"fragile": 8, "middle": 6, "robust": 4}
    assert set(choose_bits(layers, average_bits=4.0).values()) == {4}
    # A layer that 4 bits already reproduces exactly (inf dB) is never given more.
    lossless = [LayerSensitivity("exact", 1000, float("inf")), _layer("noisy", 1000, 30.0)]
    assert choose_bits(lossless, average_bits=8.0) == {"exact": 4, "noisy": 8}
    with pytest.raises(CompressionError, match="average bits"):
        choose_bits(layers, average_bits=9.0)


def test_choose_bits_respects_the_budget() -> None:
    """Element-weighted average bits never exceed the budget, and little of it is left unused."""
    rng = np.random.default_rng(0)
    layers = [_layer(f"l{i}", int(rng.integers(100, 100_000)), float(rng.uniform(15, 60))) for i in range(60)]
    total = sum(s.elements for s in layers)
    for budget in (4.0, 4.3, 5.0, 6.5, 8.0):
        bits = choose_bits(layers, average_bits=budget, choices=(4, 6, 8))
        average = sum(bits[s.name] * s.elements for s in layers) / total
        assert average <= budget + 1e-9
        smallest_step = 2 * min(s.elements for s in layers) / total
        assert budget - average < max(smallest_step, 0.25), (budget, average)


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


def _package_bits(path) -> dict[str, tuple[int, int]]:
    """Palettized weights of a saved package: op name -> (bits, elements), read from its LUT ops."""
    program = read_mil_program(path)
    out = {}
    for op in program.functions["main"].find_ops(op_type="constexpr_lut_to_dense"):
        lut = op.inputs["lut"].val
        shape = op.inputs["shape"].val if "shape" in op.inputs else op.outputs[0].shape
        out[op.name] = (int(np.log2(lut.shape[-1] if lut.ndim == 1 else lut.shape[-2])), int(np.prod(shape)))
    return out


def test_mixed_bits_follow_measured_sensitivity(tmp_path) -> None:
    """The constructed case: torch-measured sensitivity gives the fragile layer 8 bits and the
    lossless one 4, the package holds those LUT sizes, and executing it beats uniform 4 bits."""
    module = _TwoLayers().eval()
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    plan = plan_mixed_bits(module, [(x.numpy(),)], ["fragile.weight", "robust.weight"], average_bits=6.0)
    scores = {s.name: s.psnr_db for s in plan.sensitivities}
    assert scores["fragile.weight"] < 60.0 and scores["robust.weight"] == float("inf")
    assert plan.bits == {"fragile.weight": 8, "robust.weight": 4}

    with torch.no_grad():
        program = torch.export.export(module, (x,), strict=False)
        reference = module(x).numpy()
    mlmodel = convert_exported(program, ["x"], [tuple(x.shape)], ["y"])
    compressed, recipe = compress_mlmodel(mlmodel, "mixed", mixed_plan=plan)
    assert recipe["average_bits"] <= 6.0 and not recipe["kept_fp16"]
    assert {v["parameter"]: v["bits"] for v in recipe["layers"].values()} == plan.bits
    mixed, _ = _saved(compressed, tmp_path / "mixed.mlpackage")
    assert sorted(b for b, _ in _package_bits(tmp_path / "mixed.mlpackage").values()) == [4, 8]
    w4, _ = _saved(compress_mlmodel(mlmodel, "w4")[0], tmp_path / "w4.mlpackage")
    assert psnr(reference, mixed(x.numpy())) > psnr(reference, w4(x.numpy())) + 10.0


def test_tiny_mixed_package_beats_uniform_4_bit_at_the_same_size(decoder_case, tmp_path) -> None:
    """Tiny decoder, budget 4.25 bits: the executed mixed package is within 2% of the uniform 4-bit
    package's bytes, respects the budget (read back from its LUTs), and has higher PSNR on an input
    the sensitivity was not measured on than both uniform 4 bits and the same bits given to the
    LEAST sensitive layers (so the measurement, not just the extra bits, is what helps)."""
    mlmodel, _x0, _reference, component, names = decoder_case
    calibration = component.example_inputs(seed=7)
    held_out = component.example_inputs(seed=11)
    with torch.no_grad():
        reference = component(*held_out).numpy()
    plan = plan_mixed_bits(component, [tuple(t.numpy() for t in calibration)], names, average_bits=4.25)
    assert plan.average_bits <= 4.25 and max(plan.bits.values()) > 4

    mixed, recipe = compress_mlmodel(mlmodel, "mixed", mixed_plan=plan)
    program, mixed_bytes = _saved(mixed, tmp_path / "mixed.mlpackage")
    packed = _package_bits(tmp_path / "mixed.mlpackage")
    average = sum(b * n for b, n in packed.values()) / sum(n for _, n in packed.values())
    assert average <= 4.25 + 1e-9 and abs(average - recipe["average_bits"]) < 1e-9
    w4, w4_bytes = _saved(compress_mlmodel(mlmodel, "w4")[0], tmp_path / "w4.mlpackage")
    assert mixed_bytes <= 1.02 * w4_bytes

    # The same budget spent on the least sensitive layers: reverse the measured order.
    reversed_plan = MixedPlan(
        choose_bits([LayerSensitivity(s.name, s.elements, -s.psnr_db, s.weight_mse) for s in plan.sensitivities], 4.25),
        plan.sensitivities, 4.25, plan.choices, arrays=plan.arrays)
    wrong, _ = _saved(compress_mlmodel(mlmodel, "mixed", mixed_plan=reversed_plan)[0], tmp_path / "wrong.mlpackage")
    x = held_out[0].numpy()
    mixed_db, w4_db, wrong_db = psnr(reference, program(x)), psnr(reference, w4(x)), psnr(reference, wrong(x))
    assert mixed_db > w4_db + 1.0, (mixed_db, w4_db)
    assert mixed_db > wrong_db, (mixed_db, wrong_db)


def test_mixed_needs_a_plan(decoder_case) -> None:
    with pytest.raises(CompressionError, match="plan"):
        compress_mlmodel(decoder_case[0], "mixed")
    with pytest.raises(CompressionError, match="unknown Core ML compression"):
        compress_mlmodel(decoder_case[0], "w3")
    module = _TwoLayers().eval()
    with pytest.raises(CompressionError, match="sample"):
        plan_mixed_bits(module, [], ["fragile.weight"])
    with pytest.raises(CompressionError, match="bit choices"):
        plan_mixed_bits(module, [(np.zeros((1, 64), np.float32),)], ["fragile.weight"], choices=(3, 4))
