"""AI Hub job construction, offline: a stand-in client records what would be submitted."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from export import qai_hub_jobs as hubjobs
from runtime_py.components import tile_components
from runtime_py.manifest import ComponentEntry, Manifest, write_manifest
from runtime_py.model import build_model

DEVICES = ("Samsung Galaxy S24 (Family)", "Samsung Galaxy S25 (Family)")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QNN-shaped artifacts folder (placeholder model files: job construction never reads them)."""
    folder = tmp_path_factory.mktemp("qnn")
    model = build_model("tiny", seed=0)
    entries = {}
    for name, component in tile_components(model).items():
        (folder / f"{name}.w8a16.onnx").write_bytes(b"placeholder")
        entries[name] = ComponentEntry.from_component(component, f"{name}.w8a16.onnx", "w8a16")
    write_manifest(folder, Manifest("qnn", model.config.to_dict(), "0" * 64, entries, "w8a16"))
    (folder / "parity.json").write_text(json.dumps({"passed": True}))
    return folder


def fake_client(latency_us: int = 1234, output: np.ndarray | None = None) -> mock.MagicMock:
    client = mock.MagicMock(name="qai_hub client")
    target = mock.MagicMock(name="target model")
    client.submit_compile_job.return_value.get_target_model.return_value = target
    client.submit_compile_job.return_value.job_id = "jc1"
    job = client.submit_inference_job.return_value
    job.job_id = "ji1"
    job.download_profile.return_value = {"execution_summary": {"estimated_inference_time": latency_us,
                                                               "estimated_inference_peak_memory": 42}}
    job.download_output_data.return_value = {"out": [output if output is not None else np.zeros((1, 4, 16, 16), np.float32)]}
    return client


def test_compile_requests_cover_every_component_and_device(artifacts: Path) -> None:
    requests = hubjobs.compile_requests(artifacts, DEVICES)
    assert {(r.component, r.device) for r in requests} == {(c, d) for c in ("encoder", "denoiser", "decoder") for d in DEVICES}
    denoiser = next(r for r in requests if r.component == "denoiser")
    # input specs come from the manifest's declared shapes, in the component's input order
    assert list(denoiser.input_specs) == ["latent", "defocus", "in_focus"]
    assert denoiser.input_specs["defocus"] == ((1, 1, 128, 128), "float32")
    assert denoiser.options == "--target_runtime qnn_context_binary"
    assert denoiser.model == artifacts / "denoiser.w8a16.onnx"


def test_submit_builds_compile_then_profiled_inference_jobs(artifacts: Path) -> None:
    client = fake_client()
    requests = hubjobs.compile_requests(artifacts, DEVICES[:1], ["encoder"])
    rgb = np.zeros((1, 3, 128, 128), np.float32)
    jobs = hubjobs.submit(client, requests, {"encoder": (rgb,)}, device_factory=lambda name: f"device:{name}")
    kwargs = client.submit_compile_job.call_args.kwargs
    assert kwargs["device"] == f"device:{DEVICES[0]}"
    assert kwargs["input_specs"] == {"rgb": ((1, 3, 128, 128), "float32")}
    assert kwargs["model"].endswith("encoder.w8a16.onnx")
    run = client.submit_inference_job.call_args.kwargs
    assert run["profile"] is True
    assert run["model"] is client.submit_compile_job.return_value.get_target_model.return_value
    assert list(run["inputs"]) == ["rgb"] and run["inputs"]["rgb"][0].shape == (1, 3, 128, 128)
    assert set(jobs.inference) == {("encoder", DEVICES[0])}


def test_run_hub_downloads_and_merges_latency_and_parity(artifacts: Path) -> None:
    latent = np.full((1, 4, 16, 16), 0.5, np.float32)
    client = fake_client(latency_us=2500, output=latent + 0.01)
    cpu = {"encoder": lambda rgb: latent}
    results = hubjobs.run_hub(artifacts, DEVICES[:1], inputs={"encoder": (np.zeros((1, 3, 128, 128), np.float32),)},
                              components=["encoder"], client=client, device_factory=str, cpu_fns=cpu)
    row = results["devices"][DEVICES[0]]["encoder"]
    assert row["latency_ms"] == pytest.approx(2.5)
    assert row["vs_cpu_qdq"]["max_abs"] == pytest.approx(0.01, abs=1e-6)
    merged = json.loads((artifacts / "parity.json").read_text())
    assert merged["on_device"]["devices"][DEVICES[0]]["encoder"]["latency_ms"] == pytest.approx(2.5)
    assert (artifacts / "hub.json").is_file()
    assert (artifacts / "hub" / "samsung-galaxy-s24-family" / "encoder.output.npy").is_file()


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(hubjobs.TOKEN_ENV, raising=False)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(hubjobs.HubUnavailableError, match="no Qualcomm AI Hub API token"):
        hubjobs.connect()


def test_wrong_artifacts_and_no_devices_are_refused(artifacts: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one AI Hub device"):
        hubjobs.compile_requests(artifacts, [])
    with pytest.raises(ValueError, match="lack components"):
        hubjobs.compile_requests(artifacts, DEVICES, ["depth"])
