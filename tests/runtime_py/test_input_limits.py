"""Hostile inputs besides checkpoints: image bombs, .npy depth maps and manifest.json.

Each ends in one clear line (InputError / ManifestError), quickly and without allocating what the
file claims. The bombs are also loaded in a fresh subprocess whose peak-RSS growth is measured
(``getrusage`` after resetting the peak mark) and bounded by :data:`RSS_GROWTH_BOUND_MB`; a
decoded 100000 x 100000 image would need 30 GB.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_py import images
from runtime_py.images import InputError, load_depth, load_image, load_mask
from runtime_py.manifest import ManifestError, read_manifest

RSS_GROWTH_BOUND_MB = 64.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose IHDR is rewritten to declare ``width x height`` (CRC fixed)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IHDR")
    data[at + 4:at + 12] = struct.pack(">II", width, height)
    data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
    path.write_bytes(bytes(data))
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"\0" * 64) -> Path:
    """A .npy header promising ``shape`` followed by only ``payload``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", [100_000, 8_193])
def test_image_bombs_are_refused_from_the_header(tmp_path: Path, side: int) -> None:
    path = png_bomb(tmp_path / "bomb.png", side, 8_192)
    for loader, what in ((load_image, "image"), (load_mask, "mask")):
        with pytest.raises(InputError, match="pixels") as info:
            loader(path)
        assert str(info.value).startswith(what) and "\n" not in str(info.value)


def test_an_image_at_the_limit_is_accepted_by_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 12)
    Image.new("RGB", (4, 3)).save(tmp_path / "ok.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "ok.png").shape == (3, 4, 3)
    with pytest.raises(InputError, match="more than the 12 allowed"):
        load_image(tmp_path / "big.png")


@pytest.mark.timeout(60)
def test_npy_bombs_and_pickles_are_refused(tmp_path: Path) -> None:
    claims = npy_claiming(tmp_path / "claims.npy", (100_000, 100_000))
    with pytest.raises(InputError, match="cannot read depth map") as info:
        load_depth(claims)
    assert "\n" not in str(info.value)

    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read depth map"):
        load_depth(objects)


def test_npy_size_is_checked_against_the_cap_and_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.full((5, 5), 0.5, dtype=np.float32))
    assert load_depth(path, shape=(5, 5)).shape == (5, 5)
    with pytest.raises(InputError, match=r"image is 4x4"):
        load_depth(path, shape=(4, 4))
    monkeypatch.setattr(images, "MAX_PIXELS", 24)
    with pytest.raises(InputError, match="more than the 24 allowed"):
        load_depth(path)


_RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    from runtime_py.images import InputError, load_depth, load_image

    def peak_kb():
        # getrusage's ru_maxrss is max(the kernel's peak mark, the RSS the parent had at exec),
        # so in a child of a big test runner it can report the parent; VmHWM is the mark alone.
        return min(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, status_kb("VmHWM"))

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    out = {}
    for loader, path in json.loads(sys.argv[1]):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = status_kb("VmRSS")
        try:
            (load_image if loader == "image" else load_depth)(path)
            out[path] = "loaded"
        except InputError:
            out[path] = (peak_kb() - before) / 1024
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(300)
def test_bombs_stay_within_the_memory_bound(tmp_path: Path) -> None:
    jobs = [["image", str(png_bomb(tmp_path / "bomb.png", 100_000, 100_000))],
            ["image", str(png_bomb(tmp_path / "edge.png", 8_193, 8_192))],
            ["depth", str(npy_claiming(tmp_path / "claims.npy", (100_000, 100_000)))]]
    run = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(jobs)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    growth = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(value != "loaded" and value < RSS_GROWTH_BOUND_MB for value in growth.values()), growth


# -- manifest.json ------------------------------------------------------------------------------
def _manifest(folder: Path, data: object) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


def _valid(file: str = "unet.pte") -> dict:
    return {"schema": "magicbokeh-artifacts", "schema_version": 1, "backend": "executorch", "precision": "fp32",
            "model": {"config": {}, "weights_sha256": "0" * 64},
            "components": {"unet": {"name": "unet", "file": file, "inputs": [], "outputs": [], "precision": "fp32",
                                    "sha256": "0" * 64, "bytes": 0, "extra": {}}}}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[" * 200_000 + "]" * 200_000, "not valid JSON"),
        ("\xff", "not valid JSON"),
        ([1, 2], "expected an object"),
        ({**_valid(), "components": []}, "'components' is missing or not a dict"),
        ({**_valid(), "model": {"config": [], "weights_sha256": 1}}, "'model' needs"),
        (_valid("../../outside.pte"), "not a path inside the artifacts folder"),
        (_valid("/etc/passwd"), "not a path inside the artifacts folder"),
        ({**_valid(), "components": {"unet": {**_valid()["components"]["unet"], "bytes": "many"}}}, "'bytes' is not a int"),
    ],
    ids=["deep-json", "not-utf8", "not-object", "components-type", "model-type", "parent-path", "absolute-path",
         "field-type"],
)
def test_hostile_manifests_are_one_line_errors(tmp_path: Path, data: object, message: str) -> None:
    folder = _manifest(tmp_path / "artifacts", data)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(folder, verify_files=False)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_oversized_manifest_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime_py.manifest as manifest

    folder = _manifest(tmp_path / "artifacts", _valid())
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ManifestError, match="more than the 100"):
        read_manifest(folder, verify_files=False)
