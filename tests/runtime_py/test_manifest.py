"""The artifacts manifest: round trip, tamper detection, refusal of artifacts from another model
(the atomic export folder is tested with the export flow, tests/export/test_flow.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime_py.backends.executorch_backend import ExecuTorchBackend
from runtime_py.components import tile_components
from runtime_py.manifest import (
    MANIFEST_NAME,
    ComponentEntry,
    Manifest,
    ManifestError,
    check_matches,
    read_manifest,
    write_manifest,
)
from runtime_py.model import build_model, get_config


@pytest.fixture(scope="module")
def components():
    return tile_components(build_model("tiny", seed=0))


def _write_artifacts(folder: Path, components, backend: str = "executorch") -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, component in components.items():
        (folder / f"{name}.pte").write_bytes(f"payload of {name}".encode())
        entries[name] = ComponentEntry.from_component(component, f"{name}.pte", "fp32", delegate="xnnpack")
    manifest = Manifest(backend=backend, config=get_config("tiny").to_dict(), weights_sha256="ab" * 32,
                        components=entries, precision="fp32", recipe={"name": "xnnpack-fp32"},
                        model_label="structural test")
    write_manifest(folder, manifest)
    return manifest


def test_round_trip_keeps_every_field(tmp_path, components):
    written = _write_artifacts(tmp_path / "art", components)
    read = read_manifest(tmp_path / "art")
    def as_json(m: Manifest) -> dict:  # tuples in the config become lists in JSON
        return json.loads(json.dumps(m.to_dict()))

    assert as_json(read) == as_json(written)
    assert read.model_config == get_config("tiny")
    entry = read.components["denoiser"]
    assert entry.input_shapes() == [(1, 4, 16, 16), (1, 1, 128, 128), (1, 1, 128, 128)]
    assert entry.sha256 and entry.bytes == len(b"payload of denoiser")
    data = json.loads((tmp_path / "art" / MANIFEST_NAME).read_text())
    assert data["tiling"]["tile"] == 128 and data["tiling"]["stride"] == 64


def test_tampered_file_is_refused(tmp_path, components):
    _write_artifacts(tmp_path / "art", components)
    (tmp_path / "art" / "decoder.pte").write_bytes(b"something else")
    with pytest.raises(ManifestError, match="decoder.*does not match the manifest"):
        read_manifest(tmp_path / "art")
    with pytest.raises(ManifestError, match="decoder"):
        ExecuTorchBackend().load(tmp_path / "art")


def test_missing_file_and_missing_manifest_are_refused(tmp_path, components):
    _write_artifacts(tmp_path / "art", components)
    (tmp_path / "art" / "encoder.pte").unlink()
    with pytest.raises(ManifestError, match="encoder.*missing"):
        read_manifest(tmp_path / "art")
    (tmp_path / "half").mkdir()
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path / "half")


def test_artifacts_of_another_model_are_refused(tmp_path, components):
    manifest = _write_artifacts(tmp_path / "art", components)
    with pytest.raises(ManifestError, match="config 'tiny'"):
        check_matches(manifest, config=get_config("small"))
    with pytest.raises(ManifestError, match="other weights"):
        check_matches(manifest, weights_sha256="cd" * 32)
    with pytest.raises(ManifestError, match="backend 'executorch', not 'coreml'"):
        check_matches(manifest, backend="coreml")
    with pytest.raises(ManifestError, match="lack components"):
        check_matches(manifest, components=["depth"])
    # The backend refuses before it touches a program file (these are not real programs).
    with pytest.raises(ManifestError, match="config 'tiny'"):
        ExecuTorchBackend().load(tmp_path / "art", config=get_config("small"))
    other = _write_artifacts(tmp_path / "other", components, backend="onnxruntime")
    assert other.backend == "onnxruntime"
    with pytest.raises(ManifestError, match="not 'executorch'"):
        ExecuTorchBackend().load(tmp_path / "other")


def test_wrong_schema_version_is_refused(tmp_path, components):
    _write_artifacts(tmp_path / "art", components)
    path = tmp_path / "art" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema version 999"):
        read_manifest(tmp_path / "art")
