"""QDQ quantization for the HTP: W8A16 vs W8A8 on real tiles, per-channel weights, overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import export_onnx
from export.qnn_rewrites import rewrite_for_htp
from quantize.calibration import build_calibration_set
from quantize.qnn import QuantizationError, parse_overrides, quantize_qdq, x0_step_tensors
from quantize.recipes import CalibrationSpec, get_recipe
from runtime_py.backends.onnxruntime_backend import cpu_session
from runtime_py.components import tile_components
from runtime_py.model import build_model
from runtime_py.parity import psnr


@pytest.fixture(scope="module")
def decoder_setup(tmp_path_factory: pytest.TempPathFactory):
    """The tiny decoder as fp32 ONNX plus real calibration and held-out tiles (different scenes)."""
    folder = tmp_path_factory.mktemp("quant")
    model = build_model("tiny", seed=0)
    components = tile_components(model)
    raw = export_onnx(components["decoder"], folder / "raw.onnx")
    rewrite_for_htp(raw.path, folder / "decoder.fp32.onnx", "decoder")
    # Two scenes, two tiles each: the first scene's tiles calibrate, the second's are held out.
    tiles = build_calibration_set(components, model.config, CalibrationSpec(num_scenes=2, max_tiles_per_image=2, seed=11),
                                  components=["decoder"]).inputs["decoder"]
    return folder, tiles[:2], tiles[2:], components["decoder"]


def _psnr_on(path: Path, tiles, component) -> float:
    session = cpu_session(path)
    refs, outs = [], []
    for (x0,) in tiles:
        outs.append(session.run(None, {"x0": x0})[0])
        with torch.no_grad():
            refs.append(component(torch.from_numpy(x0)).numpy())
    return psnr(np.concatenate(refs), np.concatenate(outs))


def test_w8a16_beats_w8a8_and_meets_the_bar(decoder_setup) -> None:
    folder, calib, held, component = decoder_setup
    results = {}
    for recipe in ("w8a16", "w8a8"):
        q = quantize_qdq(folder / "decoder.fp32.onnx", folder / f"decoder.{recipe}.onnx", calib,
                         component="decoder", recipe=recipe)
        assert q.calibration_samples == len(calib)
        results[recipe] = _psnr_on(q.path, held, component)
    print(f"decoder on held-out real tiles: W8A16 {results['w8a16']:.1f} dB, W8A8 {results['w8a8']:.1f} dB")
    # 16-bit activations remove the activation rounding but not the (shared) 8-bit weight error,
    # so W8A16 must be better (measured +3 dB);
    # 25 dB is a floor for this random-weight tiny decoder (measured ~31 dB), not Qualcomm's 30 dB
    # bar, which the exporter reports for the real model.
    assert results["w8a16"] > results["w8a8"] + 1.0
    assert results["w8a16"] >= 25.0


def test_weights_are_per_channel_and_activations_16_bit(decoder_setup) -> None:
    folder = decoder_setup[0]
    model = onnx.load(str(folder / "decoder.w8a16.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    conv_weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                      and len(inits[n.input[0]].dims) == 4]
    assert conv_weight_dq, "no quantized conv weights"
    for node in conv_weight_dq:
        scale = numpy_helper.to_array(inits[node.input[1]])
        assert scale.ndim == 1 and scale.size == inits[node.input[0]].dims[0]  # one scale per output channel
    activation_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    zero_points = {numpy_helper.to_array(inits[n.input[2]]).dtype for n in activation_q if len(n.input) > 2}
    assert zero_points == {np.dtype(np.uint16)}


def _x0_step_graph() -> onnx.ModelProto:
    """conv -> eps; x0 = (latent - c * eps) / d: the denoiser's last step in miniature."""
    latent = helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 4, 8, 8])
    x0 = helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 4, 8, 8])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.1, "w")
    c = numpy_helper.from_array(np.array(0.9977, np.float32), "c")
    d = numpy_helper.from_array(np.array(0.0683, np.float32), "d")
    nodes = [helper.make_node("Conv", ["latent", "w"], ["eps"], name="conv_out", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["eps", "c"], ["scaled"], name="mul"),
             helper.make_node("Sub", ["latent", "scaled"], ["diff"], name="sub"),
             helper.make_node("Div", ["diff", "d"], ["x0"], name="div")]
    model = helper.make_model(helper.make_graph(nodes, "step", [latent], [x0], [w, c, d]),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # what onnxruntime 1.31 reads (onnx 1.23 would stamp 14)
    return model


def test_w8a8_keeps_the_x0_step_in_16_bits(tmp_path: Path) -> None:
    model = _x0_step_graph()
    assert set(x0_step_tensors(model)) == {"x0", "diff", "scaled", "eps"}
    onnx.save(model, tmp_path / "step.onnx")
    rng = np.random.default_rng(1)
    samples = [(rng.standard_normal((1, 4, 8, 8)).astype(np.float32),) for _ in range(4)]
    result = quantize_qdq(tmp_path / "step.onnx", tmp_path / "step.qdq.onnx", samples, component="denoiser", recipe="w8a8")
    assert set(result.overrides) == {"x0", "diff", "scaled", "eps"}
    q = onnx.load(str(tmp_path / "step.qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    # the step's tensors are 16-bit; the graph input keeps the recipe's 8 bits (converted on entry)
    for tensor in ("x0", "diff", "scaled", "eps"):
        assert inits[f"{tensor}_zero_point"].dtype == np.uint16, tensor
    assert inits["latent_zero_point"].dtype == np.uint8


def test_bad_overrides_and_recipes_are_refused(decoder_setup, tmp_path: Path) -> None:
    folder, calib = decoder_setup[0], decoder_setup[1]
    with pytest.raises(QuantizationError, match="not in the graph"):
        quantize_qdq(folder / "decoder.fp32.onnx", tmp_path / "x.onnx", calib, component="decoder",
                     overrides=parse_overrides({"no_such_tensor": "16"}))
    with pytest.raises(QuantizationError, match="float activations"):
        quantize_qdq(folder / "decoder.fp32.onnx", tmp_path / "x.onnx", calib, component="decoder", recipe="fp16")
    with pytest.raises(QuantizationError, match="no calibration samples"):
        quantize_qdq(folder / "decoder.fp32.onnx", tmp_path / "x.onnx", [], component="decoder")
    with pytest.raises(QuantizationError, match="must be '8', '16'"):
        parse_overrides({"t": "12"})
    assert get_recipe("w8a16").activation_bits == 16
