"""Check a ``torch.save`` zip archive byte by byte before anything in it is interpreted.

``torch.load`` hands a zip that looks like TorchScript to ``torch.jit.load``, which runs the
archive's code; a legacy (non-zip) stream is unpickled by whatever pickle module it is given; and
deflated records are inflated without a limit. So :func:`open_torch_archive` reads the zip
structure itself and accepts only exactly what ``torch.save`` writes:

* one top-level folder ``<prefix>/`` holding ``data.pkl``, storages ``data/<number>`` and the
  small markers ``byteorder``, ``version``, ``.format_version``, ``.storage_alignment``,
  ``.data/version`` and ``.data/serialization_id``; anything else (TorchScript's ``code/`` and
  ``constants.pkl``, extra files) is refused;
* stored (uncompressed), unencrypted records whose local headers agree with the central directory,
  lie inside the file and do not overlap, so the bytes the records hold are at most the bytes
  the file has (no compression amplification, no record counted twice);
* a bounded central directory and record count, a bounded ``data.pkl``, little-endian storages.

Legacy tar archives, legacy (pre-1.6) ``torch.save`` streams and plain pickles are refused with a
message saying so; nothing in them is read further. Record data is read on demand and its CRC-32
checked, so a flipped byte is reported rather than silently loaded.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "MAX_CENTRAL_DIRECTORY_BYTES",
    "MAX_DATA_PKL_BYTES",
    "MAX_RECORDS",
    "ArchiveRecord",
    "TorchArchive",
    "describe_non_zip",
    "open_torch_archive",
]

# A MagicBokeh lora.pkl holds a few thousand storages and a data.pkl well under 1 MiB (the SD2.1
# injector alone pickles to ~140 KB); the caps leave a wide margin while bounding the work a
# hostile file can ask for.
MAX_RECORDS = 200_000
MAX_CENTRAL_DIRECTORY_BYTES = 16 << 20
MAX_DATA_PKL_BYTES = 32 << 20
_MAX_MARKER_BYTES = 256  # byteorder, version, ... are a few bytes each

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_LEGACY_TORCH_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # LONG1 0x1950a86a20f9469cfc6c
_MARKERS = frozenset({"byteorder", "version", ".format_version", ".storage_alignment", ".data/version",
                      ".data/serialization_id"})
_STORAGE_NAME = re.compile(r"data/(\d{1,12})")


@dataclass(frozen=True)
class ArchiveRecord:
    """One checked zip record: where its bytes lie in the file and their CRC-32."""

    name: str
    offset: int  # first data byte in the file
    size: int
    crc32: int


class TorchArchive:
    """An opened, structurally checked ``torch.save`` archive (see the module docstring)."""

    def __init__(self, path: Path, handle: BinaryIO, prefix: str, records: dict[str, ArchiveRecord]):
        self.path = path
        self._handle = handle
        self.prefix = prefix
        self._records = records
        self.storage_keys = frozenset(name[len("data/"):] for name in records if name.startswith("data/"))
        self.storage_bytes = sum(r.size for n, r in records.items() if n.startswith("data/"))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "TorchArchive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return name in self._records

    def storage_size(self, key: str) -> int:
        """Size in bytes of storage record ``data/<key>`` (an error if there is none)."""
        record = self._records.get(f"data/{key}") if isinstance(key, str) else None
        if record is None:
            raise CorruptCheckpointError(f"the pickle refers to storage {str(key)[:40]!r}, which the archive does not hold")
        return record.size

    def read(self, name: str, into: bytearray | memoryview | None = None) -> bytes | bytearray | memoryview:
        """The bytes of record ``name`` (relative to the prefix), CRC-checked."""
        record = self._records[name]
        buffer = bytearray(record.size) if into is None else into
        if len(buffer) != record.size:
            raise ValueError("buffer size differs from the record size")
        self._handle.seek(record.offset)
        view = memoryview(buffer)
        got = 0
        while got < record.size:
            n = self._handle.readinto(view[got:])
            if not n:
                raise CorruptCheckpointError(f"{self.path}: record {name} is truncated")
            got += n
        if zlib.crc32(view) != record.crc32:
            raise CorruptCheckpointError(f"{self.path}: record {name} fails its CRC-32 check (the file is damaged)")
        return buffer

    def read_storage(self, key: str) -> bytearray:
        return self.read(f"data/{key}")  # type: ignore[return-value]


def describe_non_zip(head: bytes) -> str | None:
    """Why a file that is not a zip is refused (None if it looks like a zip)."""
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return None
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ("a tar archive (torch.save's format before PyTorch 0.4); this loader reads only the zip archive "
                "torch.save writes since PyTorch 1.6")
    if head[:2] == b"\x80\x02" and head[2:14] == _LEGACY_TORCH_MAGIC:
        return ("a legacy torch.save stream (written with _use_new_zipfile_serialization=False or PyTorch < 1.6); "
                "this loader reads only the zip archive torch.save writes by default; re-save it with "
                "torch.save(obj, path) where you trust its contents")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"c", b"}", b"]"):
        return ("a plain pickle, not a torch.save zip archive; this loader reads only the zip archive "
                "torch.save writes")
    return "not a torch.save zip archive (no zip signature)"


def _end_of_central_directory(handle: BinaryIO, file_size: int) -> tuple[int, int, int]:
    """(entries, central directory size, central directory offset), zip64 included."""
    tail_size = min(file_size, _EOCD.size + 0xFFFF)
    handle.seek(file_size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise CorruptCheckpointError("not a complete zip archive (no end-of-central-directory record; truncated?)")
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if disk or cd_disk:
        raise CorruptCheckpointError("a multi-disk zip archive; torch.save writes a single file")
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        locator_at = at - _ZIP64_LOCATOR.size
        if locator_at < 0:
            raise CorruptCheckpointError("zip64 archive without its zip64 locator")
        signature, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        if signature != b"PK\x06\x07" or zip64_offset + _ZIP64_EOCD.size > file_size:
            raise CorruptCheckpointError("zip64 archive with a broken zip64 locator")
        handle.seek(zip64_offset)
        record = handle.read(_ZIP64_EOCD.size)
        if len(record) != _ZIP64_EOCD.size:
            raise CorruptCheckpointError("zip64 archive with a truncated zip64 end record")
        signature, _, _, _, _, _, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
        if signature != b"PK\x06\x06":
            raise CorruptCheckpointError("zip64 archive with a broken zip64 end record")
    return entries, cd_size, cd_offset


def open_torch_archive(path: Path | str) -> TorchArchive:
    """Open ``path`` and check it is exactly a ``torch.save`` zip archive (see the module docstring).

    Raises :class:`UnsafeCheckpointError` for a TorchScript archive and
    :class:`CorruptCheckpointError` for every other format or structural problem.
    """
    path = Path(path)
    handle = open(path, "rb")
    try:
        archive = _check_archive(path, handle)
    except BaseException:
        handle.close()
        raise
    return archive


def _check_archive(path: Path, handle: BinaryIO) -> TorchArchive:
    handle.seek(0, 2)
    file_size = handle.tell()
    handle.seek(0)
    head = handle.read(512)
    refusal = describe_non_zip(head)
    if refusal is not None:
        raise CorruptCheckpointError(f"{path} is {refusal}" if file_size else f"{path} is empty")
    entries, cd_size, cd_offset = _end_of_central_directory(handle, file_size)
    if entries > MAX_RECORDS:
        raise CorruptCheckpointError(f"{path}: the zip lists {entries} records, more than the {MAX_RECORDS} allowed")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES or cd_offset + cd_size > file_size:
        raise CorruptCheckpointError(
            f"{path}: the zip central directory ({cd_size} bytes at {cd_offset}) is too large or lies outside "
            f"the {file_size}-byte file"
        )
    handle.seek(0)
    try:
        infos = zipfile.ZipFile(handle).infolist()  # parses only the (bounded) central directory
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - zipfile raises many types (NotImplementedError for versions, ...)
        raise CorruptCheckpointError(f"{path}: broken zip structure: {type(err).__name__}: {str(err)[:200]}") from None
    if len(infos) != entries:
        raise CorruptCheckpointError(f"{path}: the zip central directory lists {len(infos)} records, its end record {entries}")
    if not infos:
        raise CorruptCheckpointError(f"{path}: empty zip archive")

    names = [info.filename for info in infos]
    prefix = names[0].split("/", 1)[0]
    if any(not name.startswith(prefix + "/") for name in names):
        raise CorruptCheckpointError(f"{path}: the zip records do not share one top-level folder, as torch.save writes them")
    relative = [name[len(prefix) + 1:] for name in names]
    if len(set(relative)) != len(relative):
        raise CorruptCheckpointError(f"{path}: the zip holds the same record name twice")
    script = sorted(name for name in relative
                    if name == "constants.pkl" or name.startswith(("code/", "constants/", "extra/", ".data/ts_code/")))
    if script:
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (it holds {script[0][:60]}); its code would run while loading, so "
            "it is refused unread; the published lora.pkl is a plain torch.save archive"
        )
    unexpected = [name for name in relative if name != "data.pkl" and name not in _MARKERS
                  and not _STORAGE_NAME.fullmatch(name)]
    if unexpected:
        raise CorruptCheckpointError(
            f"{path}: the zip holds {unexpected[0][:60]!r}, which torch.save does not write (expected only "
            "data.pkl, data/<n>, byteorder, version and markers)"
        )
    if "data.pkl" not in relative:
        raise CorruptCheckpointError(f"{path}: the zip has no {prefix}/data.pkl; not a torch.save archive")

    records: dict[str, ArchiveRecord] = {}
    spans = []
    for info, name in zip(infos, relative):
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CorruptCheckpointError(
                f"{path}: record {name[:60]} is compressed; torch.save writes stored records only (a compressed "
                "record could inflate far beyond the file size)"
            )
        if info.flag_bits & 0x1:
            raise CorruptCheckpointError(f"{path}: record {name[:60]} is encrypted")
        offset = _record_data_offset(handle, info, file_size, path)
        end = offset + info.file_size
        if end > cd_offset:
            raise CorruptCheckpointError(f"{path}: record {name[:60]} runs past the record area of the file")
        spans.append((info.header_offset, end, name))
        records[name] = ArchiveRecord(name, offset, info.file_size, info.CRC)
    spans.sort()
    for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
        if start < end:
            raise CorruptCheckpointError(f"{path}: records {name[:60]} and {other[:60]} overlap")
    if records["data.pkl"].size > MAX_DATA_PKL_BYTES:
        raise CorruptCheckpointError(
            f"{path}: data.pkl is {records['data.pkl'].size} bytes, more than the {MAX_DATA_PKL_BYTES} allowed "
            "(a MagicBokeh checkpoint's is well under 1 MiB)"
        )
    archive = TorchArchive(path, handle, prefix, records)
    for marker in _MARKERS & set(records):
        if records[marker].size > _MAX_MARKER_BYTES:
            raise CorruptCheckpointError(f"{path}: record {marker} is {records[marker].size} bytes; torch.save writes a few")
    if "byteorder" in records:
        order = bytes(archive.read("byteorder"))
        if order != b"little":
            raise CorruptCheckpointError(
                f"{path}: storages are stored {order[:20]!r}-endian; only little-endian archives are read"
            )
    return archive


def _record_data_offset(handle: BinaryIO, info: zipfile.ZipInfo, file_size: int, path: Path) -> int:
    """Where a record's bytes start, after checking its local header agrees with the directory."""
    if info.header_offset + _LOCAL_HEADER.size > file_size:
        raise CorruptCheckpointError(f"{path}: record {info.filename[:60]} has a header outside the file")
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    signature, _, _, method, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _ZIP_MAGIC or method != zipfile.ZIP_STORED:
        raise CorruptCheckpointError(f"{path}: record {info.filename[:60]} has a broken or compressed local header")
    name = handle.read(name_length)
    if name.decode("utf-8", "replace") != info.filename and name.decode("cp437", "replace") != info.filename:
        raise CorruptCheckpointError(f"{path}: record {info.filename[:60]}'s local header names another file")
    offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if offset + info.file_size > file_size:
        raise CorruptCheckpointError(f"{path}: record {info.filename[:60]} runs past the end of the file (truncated?)")
    return offset
