"""Fixtures of the Android demo's tests: the built-in model's ExecuTorch export (once per session),
the photos, the golden vectors from ``python -m runtime_py golden``, and one JUnit run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "android_demo"


def export_default_xnnpack_fp32(work: Path) -> Path:
    """Export the built-in model's tile components to ExecuTorch XNNPACK fp32; returns the artifacts folder.

    The one place that knows the exporter's command line (``--out`` is the artifacts folder itself).
    ``MAGICBOKEH_TEST_ET_ARTIFACTS=DIR`` reuses an export made earlier by the same command (a
    developer's shortcut; the tests still verify its manifest and hashes).
    """
    reuse = os.environ.get("MAGICBOKEH_TEST_ET_ARTIFACTS")
    if reuse:
        return Path(reuse)
    folder = work / "artifacts" / "executorch-xnnpack-fp32"
    subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_executorch.py"), "--recipe", "xnnpack-fp32",
         "--components", "encoder", "denoiser", "decoder", "--skip", "verify", "--out", str(folder)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return folder


@pytest.fixture(scope="session")
def default_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in (default) model's XNNPACK fp32 artifacts, shared by every test of the session."""
    return export_default_xnnpack_fp32(tmp_path_factory.mktemp("android_export"))


@dataclass(frozen=True)
class Photo:
    image: Path
    depth: Path
    mask: Path
    height: int
    width: int


def write_photo(folder: Path, height: int, width: int, seed: int) -> Photo:
    """A generated scene (runtime_py.scenes) cropped to height x width, with its depth and subject mask."""
    from runtime_py.samples import scene_samples

    sample = scene_samples(1, max(height, width), seed=seed)[0]
    image = np.ascontiguousarray(sample.image_u8[:height, :width])
    depth = np.ascontiguousarray(sample.depth[:height, :width].astype(np.float32))
    mask = getattr(sample.focus, "mask", None)
    mask = np.zeros((height, width), bool) if mask is None else np.asarray(mask)[:height, :width].astype(bool)
    if not mask.any():  # the subject fell outside the crop: select a central block instead
        mask[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = True
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "photo.png")
    np.save(folder / "depth.npy", depth)
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return Photo(folder / "photo.png", folder / "depth.npy", folder / "mask.png", height, width)


# name -> (config, height, width, focus, K, seed); GoldenTest.java reads these folder names.
TINY_GOLDENS = {
    "tiny_mask": (150, 200, "mask", 16, 1),
    "tiny_point": (200, 260, "point", 8, 2),
    "tiny_small": (90, 100, "mask", 20, 3),
    "tiny_nonmultiple": (193, 257, "point", 12, 4),
    "tiny_k1": (128, 192, "mask", 1, 5),
    "tiny_k32": (150, 140, "point", 32, 6),
}
DEFAULT_GOLDENS = {
    "default_mask": (512, 600, "mask", 24, 7),  # 2 tiles (grid + right): each costs seconds
    "default_point_small": (300, 420, "point", 32, 8),
}


def _golden(out: Path, photo: Photo, focus: str, K: int, extra: list[str]) -> None:
    from runtime_py.cli import main

    focus_args = ["--mask", str(photo.mask)] if focus == "mask" else [
        "--focus-point", f"{photo.width // 3},{photo.height // 2}"]
    code = main(["golden", "--image", str(photo.image), "--depth", str(photo.depth), *focus_args, "--K", str(K),
                 "--out", str(out), *extra])
    assert code == 0, f"python -m runtime_py golden failed for {out.name}"


def _hash_fixture(folder: Path) -> None:
    """A folder shaped like an .mlpackage, and Python's sha256_file of it (ManifestTest compares)."""
    from runtime_py.manifest import sha256_file

    package = folder / "model.mlpackage"
    for rel, data in {"Manifest.json": b"{}", "Data/com.apple.CoreML/model.mlmodel": b"\x01\x02",
                      "Data/com.apple.CoreML/weights/weight.bin": b"w" * 100, "Data-x/a": b"sorted by parts"}.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_bytes(data)
    (folder / "sha256.txt").write_text(sha256_file(package) + "\n")


def _depth_fixture(folder: Path) -> None:
    """estimate_depth_static's host steps around a fixed stand-in network (DepthEstimatorTest has
    the same one in Java): photo, S and the expected depth map, raw little-endian."""
    from runtime_py.model.depth import estimate_depth_static

    size, height, width = 28, 37, 53  # S: a multiple of the 14-px patch
    image = np.random.default_rng(11).integers(0, 256, (height, width, 3), dtype=np.uint8)

    def network(rgb: np.ndarray) -> np.ndarray:  # (1, 3, S, S) -> (1, 1, S, S)
        rows = np.arange(size, dtype=np.float32)[:, None] / np.float32(size)
        d = rgb[0, 0] * np.float32(0.3) + rgb[0, 1] * np.float32(0.5) + rgb[0, 2] * np.float32(0.2) + rows * np.float32(0.1)
        return d[None, None].astype(np.float32)

    depth = estimate_depth_static(network, image, size)
    folder.mkdir(parents=True)
    (folder / "image_u8.raw").write_bytes(image.tobytes())
    (folder / "depth_f32.raw").write_bytes(depth.astype("<f4").tobytes())
    (folder / "meta.txt").write_text(f"{size} {height} {width}\n")


@pytest.fixture(scope="session")
def goldens(tmp_path_factory: pytest.TempPathFactory, default_artifacts: Path) -> Path:
    """Every golden case GoldenTest.java and JniRunnerTest.java read, by ``python -m runtime_py golden``
    (run in this process through its CLI entry point, to spare six interpreter start-ups)."""
    root = tmp_path_factory.mktemp("goldens")
    photos = tmp_path_factory.mktemp("golden_photos")
    for name, (height, width, focus, K, seed) in TINY_GOLDENS.items():
        _golden(root / name, write_photo(photos / name, height, width, seed), focus, K, ["--config", "tiny"])
    for name, (height, width, focus, K, seed) in DEFAULT_GOLDENS.items():
        _golden(root / name, write_photo(photos / name, height, width, seed), focus, K,
                ["--backend", "executorch", "--artifacts", str(default_artifacts)])
    _hash_fixture(root / "hash_fixture")
    _depth_fixture(root / "depth_fixture")
    return root


@dataclass(frozen=True)
class JUnitRun:
    results: dict[str, tuple[str, str]]  # "Class.method" -> (outcome, message)
    output: str


@pytest.fixture(scope="session")
def junit_run(tmp_path_factory: pytest.TempPathFactory, goldens: Path, default_artifacts: Path) -> JUnitRun:
    """Build core, the JNI runner and the tests, and run the whole JUnit suite once."""
    if shutil.which("javac") is None or not Path("/usr/share/java/junit-platform-console-standalone.jar").is_file():
        pytest.fail("javac or Debian's junit5 is missing: scripts/setup_env.sh installs them")
    reports = tmp_path_factory.mktemp("junit")
    proc = subprocess.run(["bash", str(DEMO / "host" / "test.sh"), "--goldens", str(goldens),
                           "--artifacts", str(default_artifacts), "--reports-dir", str(reports)],
                          capture_output=True, text=True)
    results: dict[str, tuple[str, str]] = {}
    for xml in reports.glob("*.xml"):
        for case in ElementTree.parse(xml).getroot().iter("testcase"):
            key = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name', '').split('(')[0]}"
            failure = case.find("failure")
            if failure is None:
                failure = case.find("error")
            skipped = case.find("skipped")
            if failure is not None:
                results[key] = ("failed", (failure.get("message") or "") + "\n" + (failure.text or "")[:3000])
            elif skipped is not None:
                results[key] = ("skipped", skipped.get("message") or "")
            else:
                results[key] = ("passed", "")
    return JUnitRun(results, proc.stdout[-4000:] + proc.stderr[-4000:])
