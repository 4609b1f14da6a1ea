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


# -- components split into parts (a full-size QNN denoiser) ---------------------------------------------

from tests.fixtures.qnn_parts import write_parted_artifacts as _write_parted  # noqa: E402


def test_parts_round_trip_and_unsplit_components_carry_no_parts_key(tmp_path, components):
    written = _write_parted(tmp_path / "art", components)
    data = json.loads((tmp_path / "art" / MANIFEST_NAME).read_text())
    assert "parts" not in data["components"]["encoder"]  # older readers see unsplit entries unchanged
    assert [p["index"] for p in data["components"]["denoiser"]["parts"]] == [0, 1]
    read = read_manifest(tmp_path / "art")
    assert read.components["denoiser"].parts == written.components["denoiser"].parts
    parts = read.components["denoiser"].parts
    assert parts[0].sha256 and parts[1].bytes == len(b"denoiser.w8a16.part1.onnx bytes")
    assert read.components["denoiser"].total_bytes == sum(p.bytes for p in parts)
    assert read.components["encoder"].parts is None
    assert read.to_dict()["components"] == json.loads(json.dumps(written.to_dict()))["components"]


def _corrupt(folder: Path, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data["components"]["denoiser"]["parts"])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda parts: parts[1].update(file="../outside.onnx"), r"part 1: file '\.\./outside\.onnx' is not a path inside"),
    (lambda parts: parts[0].update(fp32_file="/etc/passwd"), r"part 0 fp32_file: file '/etc/passwd' is not a path inside"),
    (lambda parts: parts[0]["context_files"].update(SM8650="..\\x.ctx"), r"part 0 context file for 'SM8650'.*not a path"),
    (lambda parts: parts[1]["inputs"][1].update(name="nowhere"),
     r"part 1 \(denoiser.w8a16.part1.onnx\) reads tensor 'nowhere', which neither the component's inputs nor an "
     r"earlier part provide"),
    (lambda parts: parts[1]["outputs"][0].update(name="other"), r"no part writes the component's output 'x0'"),
    (lambda parts: parts.reverse(), r"part 0 says it is part 1: parts must be listed in order"),
    (lambda parts: parts.clear(), r"'parts' is not a non-empty list"),
    (lambda parts: parts[0].pop("outputs"), r"part 0 outputs is not a non-empty list"),
])
def test_a_corrupt_parts_entry_is_one_clear_error(tmp_path, components, change, message):
    _write_parted(tmp_path / "art", components)
    _corrupt(tmp_path / "art", change)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "art")


def test_missing_or_changed_part_files_are_refused(tmp_path, components):
    _write_parted(tmp_path / "art", components)
    (tmp_path / "art" / "denoiser.fp32.part1.onnx").unlink()
    with pytest.raises(ManifestError, match=r"component 'denoiser' part 1: .*denoiser.fp32.part1.onnx is listed in "
                                            r"the manifest but missing"):
        read_manifest(tmp_path / "art")
    _write_parted(tmp_path / "b", components)
    (tmp_path / "b" / "denoiser.w8a16.part1.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=r"part 1: .*does not match the manifest"):
        read_manifest(tmp_path / "b")
    read_manifest(tmp_path / "b", verify_files=False)  # the structure alone is still sound


def test_a_manifest_with_parts_is_checked_before_it_is_written(tmp_path, components):
    from runtime_py.manifest import ComponentPart

    folder = tmp_path / "art"
    manifest = _write_parted(folder, components)
    manifest.components["denoiser"].parts.append(
        ComponentPart(2, "denoiser.w8a16.part1.onnx", [{"name": "never_written", "dtype": "float32", "shape": [1]}],
                      [{"name": "x0", "dtype": "float32", "shape": [1]}]))
    with pytest.raises(ManifestError, match="reads tensor 'never_written'"):
        write_manifest(folder, manifest)
