"""The QNN export end to end on a micro model: ONNX fidelity, HTP rewrites, W8A16 on the HTP with
CPU fallback disabled for all four components (the three tile components and Depth Anything V2
depth), EPContext models, depth parity, and a photo rendered through the ``qnn-htp`` backend with
its depth map computed on the HTP too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.flow import ExportSettings, export_target
from export.qnn_rewrites import HtpRewriteError, bias_add_to_sub, check_static_graph
from quantize.recipes import CalibrationSpec
from runtime_py.backends import get_backend
from runtime_py.backends.torch_backend import wrap_component
from runtime_py.components import depth_component, tile_components
from runtime_py.manifest import read_manifest
from runtime_py.model import build_model
from runtime_py.model.config import CONFIGS
from runtime_py.parity import psnr

# The "tiny" test configuration with 64-px tiles and one layer per block: the same operator mix as
# the real model (GroupNorm, attention with the focus mask, up-sampling, the x0 step) in ~1/3 of
# the nodes, so that exporting, quantizing and compiling all three components fits a CI test.
MICRO = CONFIGS["tiny"].replace(name="micro", tile=64, stride=32, layers_per_block=1)
NAMES = ("encoder", "denoiser", "decoder")
# The depth component at the tiny config's 70-px input (a 5 x 5 patch grid): the same ViT + DPT
# graph as the default model's 518-px one (LayerNorm, GELU, softmax attention, ConvTranspose,
# align-corners bilinear Resize), small enough to quantize and simulate in about a second.
ALL_NAMES = (*NAMES, "depth")


@pytest.fixture(scope="module")
def model():
    return build_model(MICRO, seed=0)


@pytest.fixture(scope="module")
def components(model):
    from runtime_py.model.depth import build_depth_model

    return {**tile_components(model), "depth": depth_component(build_depth_model(MICRO.depth_size), MICRO)}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, components) -> Path:
    out = tmp_path_factory.mktemp("qnn") / "qnn-w8a16"
    settings = ExportSettings(components=ALL_NAMES, options={"socs": ("SM8650",)},
                              calibration=CalibrationSpec(num_scenes=1, max_tiles_per_image=1, seed=5))
    export_target("qnn-w8a16", components, out, skip=("verify",), settings=settings, weights_sha256="0" * 64,
                  model_label="micro test model", log=lambda *_: None)
    return out


def test_every_component_compiled_for_the_htp_with_cpu_fallback_disabled(artifacts: Path) -> None:
    # the qnn lowering compiles each QDQ model in a session with session.disable_cpu_ep_fallback=1: a
    # single node the HTP could not take would have failed the export. The context model it saved
    # is the proof that the session was created.
    manifest = read_manifest(artifacts)
    assert manifest.backend == "qnn" and manifest.precision == "w8a16"
    assert set(manifest.components) == set(ALL_NAMES)
    for name in ALL_NAMES:
        entry = manifest.components[name]
        assert entry.extra["runs_entirely_on_htp"] is True
        ctx = onnx.load(str(artifacts / entry.extra["context_files"]["SM8650"]), load_external_data=False)
        assert [n.op_type for n in ctx.graph.node] == ["EPContext"]
        qdq = onnx.load(str(artifacts / entry.file))
        assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
        assert qdq.opset_import[0].version >= 21


def test_onnx_export_matches_torch(artifacts: Path, components) -> None:
    fp32 = get_backend("onnxruntime-fp32").load(artifacts)
    for name in ALL_NAMES:
        inputs = [t.numpy() for t in components[name].example_inputs(seed=3)]
        reference = wrap_component(components[name])(*inputs)
        # fp32 ONNX (after folding and Add->Sub rewrites) vs eager torch: only float rounding differs
        # (different kernels and summation orders), which sits far above 60 dB.
        assert psnr(reference, fp32[name](*inputs)) >= 60.0, name


# What the HTP simulator (onnxruntime-qnn 2.7, SM8650) reproduces, measured as HTP vs CPU QDQ on
# the same integer graph: at this micro size the tile components come back 9-14 dB from CPU QDQ
# (8 x 8 latents and smaller: the simulator's own drift, see the "Open" note in
# export/qnn_rewrites.py), while the depth component is at ~70 dB. At the tiny size (16 x 16
# latents) the encoder is at ~71 dB and the decoder at ~58 dB on the components' example inputs,
# and the encoder at 39.5-40+ dB on real tiles (test_tile_parity_on_the_htp_at_16x16);
# the denoiser was not measured at that size (its drift at 8 x 8 is the note's open problem).
# Parity is asserted where the simulator is faithful; elsewhere only that the graphs run.
HTP_FAITHFUL_AT_MICRO = ("depth",)
#: HTP vs CPU QDQ floor: both run the same integer graph, so only requantization rounding differs
#: (measured 58-72 dB where the simulator is faithful); 40 dB is far below that and far above a
#: broken lowering (a wrong layout, op or scale lands under 20 dB, like the drift above).
HTP_VS_CPU_MIN_PSNR_DB = 40.0
HTP_TINY_NAMES = ("encoder", "decoder")
#: The same comparison on real photo tiles, whose activations leave the ranges a 2-tile calibration
#: saw, where the HTP's saturation and rounding differ more from the CPU EP's (encoder measured
#: 39.5 dB). 30 dB (Qualcomm's bar for a quantized component) is still 19 dB above the simulator's
#: drift at 8 x 8 latents (11 dB), the failure this must catch.
HTP_VS_CPU_MIN_PSNR_DB_REAL_TILES = 30.0


def test_htp_runs_every_context_model(artifacts: Path, components) -> None:
    htp = get_backend("qnn-htp").load(artifacts)
    cpu = get_backend("onnxruntime").load(artifacts)
    for name in ALL_NAMES:
        inputs = [t.numpy() for t in components[name].example_inputs(seed=4)]
        out = htp[name](*inputs)
        assert out.shape == tuple(components[name].output_specs()[0].shape) and np.isfinite(out).all(), name
        if name in HTP_FAITHFUL_AT_MICRO:
            assert psnr(cpu[name](*inputs), out) >= HTP_VS_CPU_MIN_PSNR_DB, name


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W8A16 QDQ of the tiny model's encoder and decoder (no context binaries: the HTP backend
    compiles the QDQ model when it loads it, still with CPU fallback disabled)."""
    out = tmp_path_factory.mktemp("qnn-tiny") / "qnn-w8a16"
    model = build_model("tiny", seed=0)
    settings = ExportSettings(components=tuple(HTP_TINY_NAMES), options={"socs": ("SM8650",), "contexts": False},
                              calibration=CalibrationSpec(num_scenes=1, max_tiles_per_image=2, seed=5))
    export_target("qnn-w8a16", tile_components(model), out, skip=("verify",), settings=settings,
                  weights_sha256="0" * 64, model_label="tiny test model", log=lambda *_: None)
    return out


def test_tile_parity_on_the_htp_at_16x16(tiny_artifacts: Path) -> None:
    """Real tiles (scenes of another seed than the calibration's) through torch fp32, CPU QDQ and the
    HTP; each component fed the fp32 chain's stage inputs."""
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.parity import run_split_parity
    from runtime_py.samples import gather_samples

    model = build_model("tiny", seed=0)
    results = run_split_parity(TorchBackend().load(tile_components(model)),
                               get_backend("onnxruntime").load(tiny_artifacts),
                               get_backend("qnn-htp").load(tiny_artifacts),
                               gather_samples(model.config, num_scenes=1, seed=99), config=model.config,
                               max_tiles_per_image=2, end_to_end=False, total=False)
    for name in HTP_TINY_NAMES:
        backend = results["backend"].components[name]
        assert backend["count"] == 2 and backend["psnr_db"] >= HTP_VS_CPU_MIN_PSNR_DB_REAL_TILES, (name, backend["psnr_db"])
        assert backend["psnr_db"] < 1e3, (name, "HTP vs CPU bit-identical: is the HTP really running?")
        # Quantization itself (calibrated on 2 tiles) is not what this checks; measured 27 dB for the
        # decoder on these tiles. 20 dB only guards against comparing garbage (< 10 dB).
        assert results["quantization"].components[name]["psnr_db"] >= 20.0, name


# ~10-20 s of simulated HTP time: the "renders a photo through the QNN HTP backend" check.
def test_photo_renders_through_the_qnn_htp_backend(artifacts: Path) -> None:
    from runtime_py.pipeline import FocusValue, render_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    depth = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (96, 1))
    result = render_image(image, depth, components=get_backend("qnn-htp").load(artifacts), config=MICRO,
                          K=16, focus=FocusValue(0.5))
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    assert result.tile_count >= 4


def _real_depth_inputs(seed: int) -> list[np.ndarray]:
    """Host-resized photos of generated scenes: what the depth component gets in use."""
    from runtime_py.samples import depth_inputs, gather_samples

    samples = gather_samples(MICRO, num_scenes=2, seed=seed, scene_size=96)
    return [rgb for _, rgb in depth_inputs(samples, MICRO.depth_input)]


def test_depth_parity_on_the_htp(artifacts: Path, components) -> None:
    # Scenes with a seed other than the calibration's (5), so the figure is not measured in-sample.
    cpu = get_backend("onnxruntime").load(artifacts, ("depth",))["depth"]
    htp = get_backend("qnn-htp").load(artifacts, ("depth",))["depth"]
    reference = wrap_component(components["depth"])
    for rgb in _real_depth_inputs(seed=99):
        ref, q, h = reference(rgb), cpu(rgb), htp(rgb)
        assert h.shape == (1, 1, MICRO.depth_input, MICRO.depth_input) and np.isfinite(h).all()
        # Quantization error: Qualcomm's 30 dB bar for a W8A16 component (measured ~42 dB here).
        assert psnr(ref, q) >= 30.0
        # Backend error: the HTP runs the very integer graph the CPU runs; only the simulator's
        # requantization rounding differs (measured ~58 dB at 70 px, ~77 dB at 518 px). 40 dB is
        # far below that and far above a broken lowering (wrong layout or op: < 20 dB).
        assert psnr(q, h) >= 40.0
        assert float(np.max(np.abs(q - h))) <= 0.05 * float(np.max(np.abs(q)))


def test_photo_renders_with_depth_and_tiles_all_on_the_htp(artifacts: Path) -> None:
    # The whole-image pipeline with no depth map given: the depth component runs on the HTP (host
    # resize around it), then the tile components; all four on the simulated NPU.
    from runtime_py.model.depth import estimate_depth_static
    from runtime_py.pipeline import FocusValue, render_image

    htp = get_backend("qnn-htp").load(artifacts)
    image = np.random.default_rng(2).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    depth_fn = lambda img: estimate_depth_static(htp["depth"], img, MICRO.depth_input)  # noqa: E731
    result = render_image(image, None, components={n: htp[n] for n in NAMES}, config=MICRO, K=16,
                          focus=FocusValue(0.5), depth_fn=depth_fn)
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    assert "depth" in result.seconds


def test_memoised_fn_runs_each_distinct_input_once() -> None:
    from export.qnn_lowering import MemoisedFn

    seen: list[float] = []

    def double(x: np.ndarray) -> np.ndarray:
        seen.append(float(x.sum()))
        return 2 * x

    fn = MemoisedFn(double)
    a, b = np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)
    np.testing.assert_array_equal(fn(a), 2 * a)
    out = fn(a.copy())  # equal bytes: served from the cache
    out[...] = 7  # callers get a copy, so this cannot poison the cache
    np.testing.assert_array_equal(fn(a), 2 * a)
    fn(b)
    assert fn.calls == 2 and len(seen) == 2


def test_cli_components_include_depth_and_reject_bad_input() -> None:
    from export.targets import get_target
    from export.to_qnn import main

    assert get_target("qnn-w8a16").components == ("encoder", "denoiser", "decoder", "depth")  # no args: all four
    with pytest.raises(SystemExit):
        main(["--components", "encoder", "--depth-checkpoint", "depth.safetensors"])
    with pytest.raises(SystemExit):
        main(["--components", "depth", "ears"])
    with pytest.raises(SystemExit):
        main(["--parity-tiles", "0"])


@pytest.mark.slow
def test_default_size_depth_runs_on_the_htp(tmp_path: Path) -> None:
    """The default model's depth component (518 px, 37 x 37 patches): ~1 min, mostly the simulator."""
    from runtime_py.model.config import get_config
    from runtime_py.model.depth import build_depth_model

    small = get_config("small")
    depth = depth_component(build_depth_model(small.depth_size), small)
    from export.targets import VerifySpec

    settings = ExportSettings(components=("depth",), options={"socs": ("SM8650",)},
                              calibration=CalibrationSpec(num_scenes=2, max_tiles_per_image=1, seed=5),
                              verify=VerifySpec(num_scenes=1, max_tiles_per_image=1,
                                                scene_size=small.depth_input, seed=4321))
    result = export_target("qnn-w8a16", {"depth": depth}, tmp_path / "qnn", settings=settings,
                           weights_sha256="0" * 64, log=lambda *_: None)
    parity = result.verify.report
    quant = parity["quantization"]["components"]["depth"]
    backend = parity["backend"]["components"]["depth"]
    print(f"518-px depth W8A16: quantization {quant['psnr_db']:.2f} dB (max abs {quant['max_abs']:.4g}), "
          f"backend {backend['psnr_db']:.2f} dB (max abs {backend['max_abs']:.4g}), "
          f"HTP {parity['backend']['meta']['htp_seconds']:.1f} s, export {result.seconds:.0f} s")
    assert quant["psnr_db"] >= 30.0 and backend["psnr_db"] >= 40.0  # see test_depth_parity_on_the_htp
    assert parity["backend"]["meta"]["htp_calls"] == {"depth": 1}


def _add_graph(bias: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 2])
    nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Sigmoid", ["s"], ["g"]),
             helper.make_node("Mul", ["s", "g"], ["y"])]
    graph = helper.make_graph(nodes, "silu", [x], [y], [numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # what onnxruntime 1.31 reads (onnx 1.23 would stamp 14)
    return model


def test_bias_add_becomes_an_exact_sub() -> None:
    import onnxruntime as ort

    bias = np.array([0.5, -1.25, 3.0], np.float32).reshape(3, 1, 1)
    model = _add_graph(bias)
    x = np.random.default_rng(1).standard_normal((1, 3, 2, 2)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert bias_add_to_sub(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Sub", "Sigmoid", "Mul"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)  # negation is exact, so x - (-b) == x + b bit for bit


def test_static_check_names_run_time_shape_ops() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Shape", ["x"], ["y"], name="shape_of_x")],
                                                "g", [x], [y]), opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(HtpRewriteError, match="shape_of_x"):
        check_static_graph(model, "encoder")


def test_manifest_records_recipe_and_files(artifacts: Path) -> None:
    data = json.loads((artifacts / "manifest.json").read_text())
    assert data["recipe"]["precision"] == "w8a16" and data["recipe"]["target"] == "qnn-w8a16"
    assert data["recipe"]["options"]["socs"] == ["SM8650"]
    assert data["extra"]["calibration"]["batches"]["depth"] == 16  # the depth photos, one input each
    assert data["extra"]["socs"]["SM8650"]["soc_model"] == "57"
    assert data["components"]["denoiser"]["extra"]["focus_implementation"] == "split"


@pytest.mark.slow
def test_sd21_denoiser_exports_with_external_data(tmp_path: Path) -> None:
    """Full scale: the SD2.1-shaped denoiser (~4.4 GB of fp32 weights) must go to external data."""
    import time

    from export.onnx_export import external_data_path, export_onnx
    from runtime_py.memory import peak_rss_mib
    from export.qnn_rewrites import rewrite_for_htp

    denoiser = tile_components(build_model("sd21", seed=0))["denoiser"]
    start = time.perf_counter()
    result = export_onnx(denoiser, tmp_path / "denoiser.raw.onnx")
    exported = time.perf_counter() - start
    report = rewrite_for_htp(result.path, tmp_path / "denoiser.fp32.onnx", "denoiser", external_data=True)
    print(f"sd21 denoiser: ONNX export {exported:.0f} s, rewrites {time.perf_counter() - start - exported:.0f} s, "
          f"{result.bytes / 2**30:.2f} GiB, {report.nodes_after} nodes, peak RSS {peak_rss_mib():.0f} MiB")
    assert result.external_data and external_data_path(result.path).stat().st_size > 2**31
    assert external_data_path(tmp_path / "denoiser.fp32.onnx").exists()


def test_onnx_fp32_target_is_the_routes_float_stage(tmp_path: Path, components) -> None:
    """The registry's onnx-fp32 target: the same lowering without quantization or contexts, verified on
    ONNX Runtime's CPU EP against torch (fp32 on both sides: only operator order differs)."""
    from export.targets import VerifySpec

    settings = ExportSettings(components=("decoder",),
                              verify=VerifySpec(num_scenes=1, max_tiles_per_image=1, scene_size=96, seed=3))
    result = export_target("onnx-fp32", components, tmp_path / "onnx", settings=settings, weights_sha256="0" * 64,
                           log=lambda *_: None)
    entry = result.manifest.components["decoder"]
    assert entry.file == entry.extra["fp32_file"] == "decoder.fp32.onnx" and entry.extra["context_files"] == {}
    assert result.manifest.precision == "fp32" and result.steps["quantize"].status == "skipped"
    assert result.verify.executed_by == "onnxruntime-fp32" and result.passed is not False
    assert result.components["decoder"].parity["psnr_db"] >= 60.0, result.components["decoder"].parity
