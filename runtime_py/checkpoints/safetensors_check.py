"""Check a ``.safetensors`` file's header before any tensor is read.

The format is an 8-byte little-endian header length, a JSON header, then the tensor bytes. The
``safetensors`` library validates most of this too, but with messages that do not name what is
wrong in user terms and after choosing its own limits; checking here first means every reader of
the toolkit applies the same, stated limits and reports one clear line:

* header length at most :data:`MAX_HEADER_BYTES` and inside the file; JSON that is an object;
* at most :data:`MAX_TENSORS` entries, each ``{"dtype", "shape", "data_offsets"}`` with a known
  dtype, at most 32 non-negative dims, and ``end - begin == prod(shape) * itemsize``;
* the entries' byte ranges do not overlap and exactly tile the data section (no hidden bytes, no
  range past the end of the file);
* ``__metadata__`` (optional) maps strings to strings.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptCheckpointError, short_repr

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "SafetensorsHeader", "TensorEntry", "read_safetensors_header"]

MAX_HEADER_BYTES = 4 << 20  # a MagicBokeh native file's header is ~0.3 MB; JSON objects cost up to ~30x their text
MAX_TENSORS = 200_000
_MAX_DIMS = 32
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_bytes: int


def read_safetensors_header(path: Path | str) -> SafetensorsHeader:
    """The checked header of ``path`` (see the module docstring); reads no tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            file_size = handle.tell()
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptCheckpointError(f"{path} is not a safetensors file: {file_size} bytes, too short for a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > file_size:
                raise CorruptCheckpointError(
                    f"{path}: the safetensors header claims {length} bytes; the file has {file_size} and at most "
                    f"{MAX_HEADER_BYTES} are allowed (not a safetensors file, or truncated)"
                )
            raw = handle.read(length)
    except OSError as err:
        raise CorruptCheckpointError(f"{path} cannot be read: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptCheckpointError(f"{path}: the safetensors header is not valid JSON ({short_repr(str(err), 100)})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: the safetensors header is a {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptCheckpointError(f"{path}: the safetensors __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise CorruptCheckpointError(f"{path}: {len(header)} tensors, more than the {MAX_TENSORS} allowed")
    data_bytes = file_size - 8 - length
    tensors = {name: _entry(path, name, value, data_bytes) for name, value in header.items()}
    spans = sorted((e.begin, e.end, name) for name, e in tensors.items())
    position = 0
    for begin, end, name in spans:
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else f"leaves {begin - position} unused bytes before it"
            raise CorruptCheckpointError(f"{path}: tensor {short_repr(name)} {what}")
        position = end
    if position != data_bytes:
        raise CorruptCheckpointError(
            f"{path}: the tensors cover {position} bytes but the data section has {data_bytes} (truncated or padded file)"
        )
    return SafetensorsHeader(tensors, dict(metadata), data_bytes)


def _entry(path: Path, name: str, value: object, data_bytes: int) -> TensorEntry:
    where = f"{path}: tensor {short_repr(name)}"
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise CorruptCheckpointError(f"{where} is not a {{dtype, shape, data_offsets}} entry")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise CorruptCheckpointError(f"{where} has unknown dtype {short_repr(dtype)}")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(
        type(n) is int and 0 <= n < 1 << 62 for n in shape
    ):
        raise CorruptCheckpointError(f"{where} has a malformed shape {short_repr(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets):
        raise CorruptCheckpointError(f"{where} has malformed data_offsets {short_repr(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise CorruptCheckpointError(f"{where} has data_offsets [{begin}, {end}] outside the {data_bytes}-byte data section")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise CorruptCheckpointError(
            f"{where}: {dtype} of shape {tuple(shape)} needs {expected} bytes, its data_offsets give {end - begin}"
        )
    return TensorEntry(dtype, tuple(shape), begin, end)
