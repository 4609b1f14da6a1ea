"""The safetensors header check: genuine files pass, hostile headers are one clear line each."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runtime_py.checkpoints import CorruptCheckpointError, read_native_metadata
from runtime_py.checkpoints.safetensors_check import MAX_HEADER_BYTES, read_safetensors_header


def _raw(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def test_a_genuine_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.float16)}, str(path), metadata={"k": "v"})
    header = read_safetensors_header(path)
    assert header.metadata == {"k": "v"}
    assert header.tensors["a"].shape == (2, 3) and header.tensors["b"].dtype == "F16"


_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({"a": _ENTRY}, bytes(8), MAX_HEADER_BYTES + 1, "header claims"),
        ({"a": _ENTRY}, bytes(8), 1 << 40, "header claims"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, b"", None, "not valid JSON"),
        ([1, 2], b"", None, "expected an object"),
        ({"a": {**_ENTRY, "data_offsets": [0, 1 << 40]}}, bytes(8), None, "outside"),
        ({"a": {**_ENTRY, "shape": [100_000, 100_000]}}, bytes(8), None, "needs 40000000000 bytes"),
        ({"a": {**_ENTRY, "dtype": "OBJECT"}}, bytes(8), None, "unknown dtype"),
        ({"a": {**_ENTRY, "shape": [-1]}}, bytes(8), None, "malformed shape"),
        ({"a": _ENTRY, "b": _ENTRY}, bytes(8), None, "overlaps"),
        ({"a": _ENTRY}, bytes(16), None, "cover 8 bytes but the data section has 16"),
        ({"a": _ENTRY, "__metadata__": {"k": ["not", "a", "string"]}}, bytes(8), None, "__metadata__"),
        ({"a": {**_ENTRY, "extra": 1}}, bytes(8), None, "not a {dtype, shape, data_offsets}"),
    ],
    ids=["header-over-cap", "header-past-file", "bad-json", "deep-json", "not-object", "offsets-outside",
         "shape-vs-bytes", "unknown-dtype", "negative-dim", "overlap", "padding", "metadata", "extra-field"],
)
@pytest.mark.timeout(60)
def test_hostile_headers_are_one_line_errors(tmp_path: Path, header, data, length, message) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, data, length=length)
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        read_safetensors_header(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CorruptCheckpointError):  # the native reader goes through the same check
        read_native_metadata(path)
