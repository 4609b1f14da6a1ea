"""The ``onnxruntime`` (CPU EP), ``onnxruntime-fp32`` and ``qnn-htp`` backends on a tiny encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.onnx_export import export_onnx
from export.qnn_rewrites import rewrite_for_htp
from quantize.qnn import quantize_qdq
from runtime_py.backends import available_backends, get_backend
from runtime_py.backends.onnxruntime_backend import HtpLoadError, QnnHtpBackend, htp_session, soc_options
from runtime_py.backends.torch_backend import wrap_component
from runtime_py.components import tile_components
from runtime_py.manifest import ComponentEntry, Manifest, ManifestError, write_manifest
from runtime_py.model import build_model
from runtime_py.parity import psnr


@pytest.fixture(scope="module")
def encoder():
    return tile_components(build_model("tiny", seed=0))["encoder"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:
    """A one-component QNN artifacts folder: fp32 ONNX and W8A16 QDQ of the tiny encoder."""
    folder = tmp_path_factory.mktemp("ort")
    raw = export_onnx(encoder, folder / "raw.onnx")
    rewrite_for_htp(raw.path, folder / "encoder.fp32.onnx", "encoder")
    samples = [tuple(t.numpy() for t in encoder.example_inputs(seed=s)) for s in range(4)]
    quantize_qdq(folder / "encoder.fp32.onnx", folder / "encoder.w8a16.onnx", samples, component="encoder")
    entry = ComponentEntry.from_component(encoder, "encoder.w8a16.onnx", "w8a16", fp32_file="encoder.fp32.onnx")
    write_manifest(folder, Manifest("qnn", encoder.config.to_dict(), "0" * 64, {"encoder": entry}, "w8a16"))
    return folder


def test_backends_are_registered() -> None:
    assert {"onnxruntime", "onnxruntime-fp32", "qnn-htp"} <= set(available_backends())


def test_cpu_backends_against_torch(artifacts: Path, encoder) -> None:
    x = encoder.example_inputs(seed=9)[0].numpy()
    reference = wrap_component(encoder)(x)
    fp32 = get_backend("onnxruntime-fp32").load(artifacts)["encoder"](x)
    qdq = get_backend("onnxruntime").load(artifacts)["encoder"](x)
    assert fp32.dtype == np.float32 and qdq.shape == reference.shape
    assert psnr(reference, fp32) >= 60.0  # float rounding only
    # W8A16 on four random-tile calibration batches; measured ~45 dB. 30 dB is Qualcomm's bar.
    assert psnr(reference, qdq) >= 30.0


def test_htp_matches_cpu_qdq_with_fallback_disabled(artifacts: Path, encoder) -> None:
    x = encoder.example_inputs(seed=9)[0].numpy()
    cpu = get_backend("onnxruntime").load(artifacts)["encoder"](x)
    htp_fn = get_backend("qnn-htp").load(artifacts)["encoder"]
    options = htp_fn.session.get_session_options()
    assert options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    # Same integer graph on the HTP simulator at 16-bit activations: rounding-level differences
    # (measured ~72 dB for this encoder); 40 dB would flag a real backend fault.
    assert psnr(cpu, htp_fn(x)) >= 40.0


def test_wrong_input_shape_is_named(artifacts: Path) -> None:
    fn = get_backend("onnxruntime").load(artifacts)["encoder"]
    with pytest.raises(ValueError, match="input 'rgb' has shape"):
        fn(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="takes 1 inputs"):
        fn(np.zeros((1, 3, 128, 128), np.float32), np.zeros(1, np.float32))


def test_other_backends_artifacts_are_refused(artifacts: Path, tmp_path: Path, encoder) -> None:
    (tmp_path / "encoder.pte").write_bytes(b"x")
    entry = ComponentEntry.from_component(encoder, "encoder.pte", "fp32")
    write_manifest(tmp_path, Manifest("executorch", encoder.config.to_dict(), "0" * 64, {"encoder": entry}, "fp32"))
    with pytest.raises(ManifestError, match="'executorch' artifacts"):
        get_backend("onnxruntime").load(tmp_path)
    with pytest.raises(ManifestError, match="lack components"):
        get_backend("onnxruntime").load(artifacts, ("decoder",))


def test_a_node_the_htp_cannot_take_fails_loudly(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # what onnxruntime 1.31 reads (onnx 1.23 would stamp 14)
    onnx.save(model, tmp_path / "det.onnx")
    # Det has no HTP kernel: with CPU fallback disabled the session must refuse to load
    with pytest.raises(HtpLoadError, match="does not run entirely on the QNN HTP.*fallback"):
        htp_session(tmp_path / "det.onnx")


def test_unknown_soc_is_refused() -> None:
    assert soc_options("sm8750") == {"backend_type": "htp", "soc_model": "69", "htp_arch": "79"}
    with pytest.raises(ValueError, match="unknown Snapdragon SoC 'SM8999'"):
        QnnHtpBackend("SM8999")


def test_split_parity_report_keeps_the_two_sources_apart(tmp_path: Path) -> None:
    import json

    from runtime_py.parity import ParityResult, ParityThresholds, write_split_parity_report

    def result(db: float, threshold: float | None = None) -> ParityResult:
        figures = {"psnr_db": db, "psnr_db_worst": db - 1, "max_abs": 0.1, "count": 2, "items": []}
        thresholds = ParityThresholds(min_psnr_component=threshold)
        failures = [f"component encoder: PSNR {db} dB < {threshold} dB"] if threshold and db < threshold else []
        return ParityResult({"encoder": figures}, None, thresholds, failures, [])

    results = {"quantization": result(35.0, 30.0), "backend": result(20.0), "total": result(19.5)}
    json_path, md_path = write_split_parity_report(results, tmp_path, title="QNN parity")
    data = json.loads(json_path.read_text())
    assert data["split"] == ["quantization", "backend", "total"] and data["passed"] is True
    assert data["backend"]["components"]["encoder"]["psnr_db"] == 20.0
    text = md_path.read_text()
    assert "| quantization | encoder | 35.00 |" in text and "| backend | encoder | 20.00 |" in text


def _recording(fns: dict, calls: dict[str, list]) -> dict:
    """Wrap each callable to keep (inputs, output) of every call, memoising repeated inputs (as
    the QNN exporter does for the slow simulator)."""
    def wrap(name, fn):
        memo: dict[bytes, np.ndarray] = {}

        def run(*arrays):
            key = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
            if key not in memo:
                memo[key] = np.asarray(fn(*arrays), dtype=np.float32)
                calls.setdefault(name, []).append((key, memo[key]))
            return memo[key]
        return run
    return {n: wrap(n, f) for n, f in fns.items()}


def test_split_parity_on_a_real_qdq_model_measures_each_pair(artifacts: Path, encoder) -> None:
    """run_split_parity on the W8A16 QDQ encoder: CPU EP (quantized) and the HTP simulator (device).

    Each part's figure is recomputed here from the outputs the three backends actually returned on
    the same tiles: "quantization" = fp32 torch vs CPU QDQ, "backend" = CPU QDQ vs HTP, "total" =
    fp32 torch vs HTP (pooled PSNR, peak max|reference|). A runner that compared the wrong pair, fed
    a part other inputs, or mislabelled the parts gives other numbers.
    """
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.parity import run_split_parity
    from runtime_py.samples import gather_samples

    model_config = encoder.config
    reference_calls: dict[str, list] = {}
    cpu_calls: dict[str, list] = {}
    device_calls: dict[str, list] = {}
    # The reference holds the whole chain (it cuts the tiles); the artifacts hold the encoder only.
    reference = _recording(TorchBackend().load(tile_components(build_model("tiny", seed=0))), reference_calls)
    cpu = _recording(get_backend("onnxruntime").load(artifacts), cpu_calls)
    device = _recording(get_backend("qnn-htp").load(artifacts), device_calls)
    samples = gather_samples(model_config, num_scenes=1, seed=31)  # not the calibration inputs
    results = run_split_parity(reference, cpu, device, samples, config=model_config, max_tiles_per_image=2,
                               end_to_end=False)
    assert set(results) == {"quantization", "backend", "total"}
    tiles = [key for key, _ in cpu_calls["encoder"]]
    assert len(tiles) == 2 and [key for key, _ in device_calls["encoder"]] == tiles  # the same two tiles
    outputs = {
        "reference": {k: v for k, v in reference_calls["encoder"]},
        "cpu": dict(cpu_calls["encoder"]),
        "device": dict(device_calls["encoder"]),
    }

    def pooled(ref_name: str, test_name: str) -> float:
        ref = np.concatenate([outputs[ref_name][k].ravel() for k in tiles]).astype(np.float64)
        test = np.concatenate([outputs[test_name][k].ravel() for k in tiles]).astype(np.float64)
        return psnr(ref, test)

    expected = {"quantization": pooled("reference", "cpu"), "backend": pooled("cpu", "device"),
                "total": pooled("reference", "device")}
    for part, value in expected.items():
        figures = results[part].components["encoder"]
        assert figures["count"] == 2, part
        assert figures["psnr_db"] == pytest.approx(value, abs=1e-6), part
    # And the figures are what this model measures. Quantization: the fixture calibrated on four
    # random example inputs, not on photo tiles, so real tiles sit partly outside its ranges
    # (measured ~26 dB here; 20 dB still separates that from a wrong graph, < 10 dB). Backend: the
    # HTP simulator runs the same integer graph as the CPU at this 16 x 16 latent size (rounding
    # level; 40 dB would flag a backend fault), so the total is set by quantization.
    assert expected["quantization"] >= 20.0 and expected["backend"] >= 40.0, expected
    assert expected["backend"] > expected["quantization"] + 10.0, expected
    assert abs(expected["total"] - expected["quantization"]) < 3.0, expected
