"""QNN export in parts: a forced small per-part limit splits the micro denoiser; the fp32 parts chain
back to the unsplit fp32 graph exactly; each quantized part is measured on its own in the verify
step (quantization, backend, total, with the HTP's wall time per part); the runtime runs the parts
in sequence; a corrupt parts entry is one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.flow import ExportSettings, export_target
from export.qnn_lowering import estimated_context_bytes
from export.targets import VerifySpec, get_target
from quantize.recipes import CalibrationSpec
from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend, QnnHtpBackend, component_files, cpu_session
from runtime_py.components import tile_components
from runtime_py.manifest import ManifestError, read_manifest
from runtime_py.model import build_model
from runtime_py.model.config import CONFIGS

# The test_to_qnn micro model: the real operator mix (GroupNorm, focus-masked attention, x0 step) at 64 px.
MICRO = CONFIGS["tiny"].replace(name="micro", tile=64, stride=32, layers_per_block=1)
# A limit of a third of the denoiser's estimated context: at least 2 parts (3 when the cuts fall evenly).
PART_FRACTION = 3


@pytest.fixture(scope="module")
def components():
    return tile_components(build_model(MICRO, seed=0))


@pytest.fixture(scope="module")
def part_limit_mb(components) -> float:
    weights = sum(p.numel() * 4 for p in components["denoiser"].parameters())
    return estimated_context_bytes(weights, get_target("qnn-w8a16").recipe.quantization) / PART_FRACTION / 2**20


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, components, part_limit_mb):
    out = tmp_path_factory.mktemp("qnn-parts") / "qnn-w8a16"
    settings = ExportSettings(components=("denoiser",), options={"socs": ("SM8650",), "max_part_mb": part_limit_mb},
                              calibration=CalibrationSpec(num_scenes=1, max_tiles_per_image=2, seed=5),
                              verify=VerifySpec(num_scenes=1, max_tiles_per_image=1, scene_size="tile", seed=11))
    logs: list[str] = []
    result = export_target("qnn-w8a16", components, out, settings=settings, weights_sha256="0" * 64,
                           model_label="micro test model", log=logs.append)
    return result, out, logs


def test_forced_part_limit_splits_the_denoiser_into_parts_under_the_limit(exported, part_limit_mb) -> None:
    result, out, _ = exported
    entry = read_manifest(out).components["denoiser"]  # hashes of every part checked
    assert entry.parts is not None and len(entry.parts) >= 2
    assert entry.file == entry.parts[0].file and entry.extra["context_files"] == {}
    split = entry.extra["split"]
    assert split["parts"] == len(entry.parts) and split["calibration"]["samples"] == 2  # 1 scene x 2 tiles
    limit = part_limit_mb * 2**20
    for part in entry.parts:
        assert part.extra["estimated_context_bytes"] <= limit  # the planner's promise
        assert set(part.context_files) == {"SM8650"} and (out / part.context_files["SM8650"]).is_file()
        assert part.extra["context_bytes"]["SM8650"] > 0 and isinstance(part.extra["fits_part_limit"], bool)
        assert part.fp32_file and (out / part.fp32_file).is_file()
    # The chain's interface: the first part reads the component's inputs, the last writes its output.
    assert set(entry.parts[0].input_names) <= {s["name"] for s in entry.inputs}
    assert entry.outputs[0]["name"] in entry.parts[-1].output_names
    assert result.components["denoiser"].bytes == sum(p.bytes for p in entry.parts)
    assert json.loads((out / "manifest.json").read_text())["recipe"]["options"]["calibration"] == "streaming"


def test_fp32_parts_in_sequence_equal_the_unsplit_fp32_graph_exactly(exported, components) -> None:
    """Same nodes, same order, optimisations off on both sides: bit for bit."""
    _, out, _ = exported
    files = component_files(out, ("denoiser",))["denoiser"]
    inputs = [t.numpy() for t in components["denoiser"].example_inputs(seed=3)]
    whole = cpu_session(files.fp32, optimize=False)
    expected = whole.run(None, dict(zip([i.name for i in whole.get_inputs()], inputs)))[0]
    backend = OnnxRuntimeBackend("fp32", optimize=False)
    values = dict(zip(files.inputs, inputs))
    for part in files.parts:
        values.update(backend.load_part(part, "denoiser")(values))
    np.testing.assert_array_equal(values[files.output], expected)


def test_runtime_backends_run_the_parts_in_sequence(exported, components) -> None:
    _, out, _ = exported
    inputs = [t.numpy() for t in components["denoiser"].example_inputs(seed=4)]
    cpu = OnnxRuntimeBackend("qdq").load(out)["denoiser"]
    htp = QnnHtpBackend("SM8650").load(out)["denoiser"]
    expected_shape = tuple(components["denoiser"].output_specs()[0].shape)
    for fn in (cpu, htp):
        y = fn(*inputs)
        assert y.shape == expected_shape and np.isfinite(y).all()
        assert len(fn.part_seconds) >= 2 and all(s > 0 for s in fn.part_seconds) and set(fn.part_calls) == {1}


def test_verify_measures_every_part_with_the_htp_time_of_each(exported) -> None:
    result, out, logs = exported
    parts = len(read_manifest(out).components["denoiser"].parts)
    report = json.loads((out / "parity.json").read_text())
    rows = report["parts"]["denoiser"]["parts"]
    assert [r["index"] for r in rows] == list(range(parts))
    for row in rows:
        assert set(row["comparisons"]) == {"quantization", "backend", "total"}
        for figures in row["comparisons"].values():
            assert np.isfinite(figures["psnr_db"]) and figures["count"] == len(row["outputs"])  # 1 tile x outputs
        assert row["seconds"]["htp"] > 0 and row["seconds_per_run"]["htp"] > 0
        # W8A16 of a part against its own fp32 part: far from garbage (< 10 dB) on the micro model.
        assert row["comparisons"]["quantization"]["psnr_db"] > 20.0, row["comparisons"]
    assert len(report["total"]["meta"]["htp_seconds_per_part"]["denoiser"]) == parts
    assert "Parts of denoiser" in (out / "parity.md").read_text()
    assert sum(f"[verify] denoiser part {i}:" in line for i in range(parts) for line in logs) == parts
    # The pass/fail covers the parts: a part below its bar is a named failure.
    part_failures = [f for f in result.verify.failures if f.startswith("parts:")]
    assert report["parts"]["denoiser"]["failures"] == [f.removeprefix("parts: ") for f in part_failures]


def _copy(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data["components"]["denoiser"])
    path.write_text(json.dumps(data))


def test_a_part_whose_model_has_other_tensor_names_is_refused_when_loaded(exported, tmp_path: Path) -> None:
    """Names renamed consistently in the manifest (so the chain itself is sound) but not in the files."""
    _, out, _ = exported
    folder = _copy(out, tmp_path)

    def rename(entry):
        name = entry["parts"][0]["outputs"][0]["name"]
        for part in entry["parts"]:
            for tensor in part["inputs"] + part["outputs"]:
                if tensor["name"] == name:
                    tensor["name"] = "renamed_tensor"

    _edit(folder, rename)
    read_manifest(folder)  # the chain is consistent
    with pytest.raises(ManifestError, match=r"part 0 .*the manifest says it reads .* and writes .*renamed_tensor"):
        OnnxRuntimeBackend("qdq").load(folder)


def test_missing_part_file_is_one_clear_error(exported, tmp_path: Path) -> None:
    _, out, _ = exported
    folder = _copy(out, tmp_path)
    part = read_manifest(folder).components["denoiser"].parts[1]
    (folder / part.context_files["SM8650"]).unlink()
    with pytest.raises(ManifestError, match=r"component 'denoiser' part 1: .*ctx.onnx is listed in the manifest but missing"):
        read_manifest(folder)
