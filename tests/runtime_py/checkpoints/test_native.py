"""The native checkpoint: one safetensors file with the config inside; exact round trip; clear errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from runtime_py.checkpoints import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    load_model,
    load_native,
    read_native_config,
    save_native,
    weights_sha256,
)
from runtime_py.checkpoints.native import NATIVE_FORMAT
from runtime_py.model import MagicBokehConfig, build_model, get_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_model("tiny", seed=5)
    path = save_native(model, tmp_path_factory.mktemp("native") / "model.safetensors")
    return model, path


def _header(path: Path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def test_round_trip_is_exact(saved) -> None:
    model, path = saved
    loaded = load_native(path)
    assert loaded.config == model.config
    reference = model.state_dict()
    state = loaded.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    assert weights_sha256(loaded) == weights_sha256(model)
    assert not loaded.training and all(not p.is_meta for p in loaded.parameters())
    # Non-persistent buffers (derived from the config) are rebuilt, not stored.
    assert torch.equal(loaded.sqrt_alpha, model.sqrt_alpha)
    rgb = torch.rand(1, 3, model.config.tile, model.config.tile, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(rgb), model.encode(rgb))


def test_file_is_plain_safetensors_with_config_metadata(saved) -> None:
    model, path = saved
    metadata = _header(path)["__metadata__"]
    assert metadata["format"] == NATIVE_FORMAT
    assert MagicBokehConfig.from_dict(json.loads(metadata["config"])) == model.config
    assert metadata["weights_sha256"] == weights_sha256(model)
    assert read_native_config(path) == model.config
    with safe_open(str(path), framework="pt") as handle:  # any safetensors reader can read it
        assert set(handle.keys()) == set(model.state_dict())


def test_weights_sha256_identifies_weights() -> None:
    model = build_model("tiny", seed=5)
    state = model.state_dict()
    digest = weights_sha256(model)
    assert digest == weights_sha256(dict(reversed(list(state.items()))))  # order-independent
    assert digest == weights_sha256(build_model("tiny", seed=5))  # reproducible
    assert digest != weights_sha256(build_model("tiny", seed=6))
    changed = dict(state)
    name = sorted(changed)[7]
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1e-6
    assert digest != weights_sha256(changed)
    renamed = {("x" + k if k == name else k): v for k, v in state.items()}
    assert digest != weights_sha256(renamed)


def test_config_guard(saved) -> None:
    _, path = saved
    assert load_native(path, config="tiny").config == get_config("tiny")
    with pytest.raises(CheckpointMismatchError, match="holds a 'tiny' model, but config 'small'"):
        load_native(path, config="small")
    with pytest.raises(CheckpointMismatchError, match="same name, different fields"):
        load_native(path, config=get_config("tiny").replace(focus_rank=7))


def test_damaged_files(saved, tmp_path: Path) -> None:
    model, path = saved
    data = path.read_bytes()
    header_len = 8 + struct.unpack("<Q", data[:8])[0]

    flipped = tmp_path / "flipped.safetensors"
    body = bytearray(data)
    body[header_len + 100] ^= 0xFF  # one byte of tensor data
    flipped.write_bytes(bytes(body))
    with pytest.raises(CorruptCheckpointError, match="weights_sha256"):
        load_native(flipped)
    load_native(flipped, verify=False)  # readable when the caller opts out of the check

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError, match="truncated.safetensors"):
        load_native(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptCheckpointError, match="garbage.safetensors"):
        load_native(garbage)

    with pytest.raises(CheckpointNotFoundError, match="absent.safetensors"):
        load_native(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointNotFoundError, match="not a file"):
        load_native(tmp_path)


def test_foreign_safetensors_and_missing_keys(saved, tmp_path: Path) -> None:
    model, path = saved
    state = load_file(str(path))
    plain = tmp_path / "plain.safetensors"
    save_file(state, str(plain))  # a bare state dict: no format metadata
    with pytest.raises(CorruptCheckpointError, match="not a MagicBokeh native checkpoint"):
        load_native(plain)

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    dropped = "vae.decoder.conv_out.weight"
    partial = {k: v for k, v in state.items() if k != dropped}
    incomplete = tmp_path / "incomplete.safetensors"
    save_file(partial, str(incomplete), metadata={**metadata, "weights_sha256": weights_sha256(partial)})
    with pytest.raises(CheckpointMismatchError, match=rf"missing {dropped}"):
        load_native(incomplete)

    future = tmp_path / "future.safetensors"
    save_file(state, str(future), metadata={**metadata, "format_version": "99"})
    with pytest.raises(CorruptCheckpointError, match="version '99'"):
        load_native(future)


def test_save_is_atomic_and_checks_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_native(build_model("tiny"), tmp_path / "model.pt")
    with pytest.raises(TypeError, match="MagicBokeh"):
        save_native(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    from runtime_py.checkpoints.official import _empty_model

    target = tmp_path / "empty.safetensors"
    with pytest.raises(ValueError, match="meta"):
        save_native(_empty_model(get_config("tiny")), target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_load_model_dispatch(saved, tmp_path: Path) -> None:
    model, path = saved
    assert weights_sha256(load_model(checkpoint=path)) == weights_sha256(model)
    with pytest.raises(ValueError, match="not both"):
        load_model(sd21=tmp_path, lora=tmp_path / "l.pkl", checkpoint=path)
    with pytest.raises(ValueError, match="no weights given"):
        load_model()
    with pytest.raises(ValueError, match="need both sd21= .* and lora="):
        load_model(sd21=tmp_path)
    with pytest.raises(ValueError, match="got only lora="):
        load_model(lora=tmp_path / "l.pkl")
    with pytest.raises(CheckpointNotFoundError, match="nope.safetensors"):
        load_model(checkpoint=tmp_path / "nope.safetensors")
