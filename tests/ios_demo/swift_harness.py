"""What the pytest wrapper of the Swift package needs: golden and artifacts fixtures written by
the Python reference, the Swift test cases listed from the sources, and ``swift test``'s output
parsed into one result per case."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ios_demo"
SWIFT_TESTS = PACKAGE / "Tests" / "MagicBokehKitTests"
#: The project's machines install Swift under /opt/swift; a non-login shell may not have it on PATH.
_SWIFT_FALLBACK = "/opt/swift/usr/bin"
SWIFT = shutil.which("swift") or shutil.which("swift", path=_SWIFT_FALLBACK)
SWIFTC = shutil.which("swiftc") or shutil.which("swiftc", path=_SWIFT_FALLBACK)

# name -> (config or None for the default model, (height, width), focus ("mask" or (x, y)), K, seed)
GOLDEN_CASES: dict[str, tuple[str | None, tuple[int, int], object, int, int]] = {
    "tiny_mask_k32": ("tiny", (140, 150), "mask", 32, 1),
    "tiny_point_k1": ("tiny", (128, 192), (100, 50), 1, 2),
    "tiny_small_mask": ("tiny", (50, 90), "mask", 8, 3),
    "tiny_point_wide": ("tiny", (100, 200), (150, 60), 16, 4),
    "default_point_small": (None, (200, 300), (40, 150), 24, 5),
}

_CLASS = re.compile(r"^\s*(?:final\s+)?class\s+(\w+)\s*:\s*XCTestCase\b")
_TEST = re.compile(r"^\s*func\s+(test\w+)\s*\(")
# swift-corelibs-xctest: "Test Case 'Class.testName' passed (0.001 seconds)"; Darwin: '-[Module.Class testName]'.
_RESULT = re.compile(r"Test Case '(?:-\[)?(?:\w+\.)?(\w+)[. ](test\w+)\]?' (passed|failed|skipped)")


def swift_test_cases() -> list[str]:
    """Every ``Class.testMethod`` declared in the Swift test sources, in file order."""
    cases: list[str] = []
    for path in sorted(SWIFT_TESTS.glob("*.swift")):
        current = None
        for line in path.read_text().splitlines():
            if match := _CLASS.match(line):
                current = match.group(1)
            elif (match := _TEST.match(line)) and current is not None:
                cases.append(f"{current}.{match.group(1)}")
    return cases


def parse_results(output: str) -> dict[str, str]:
    """``Class.testMethod -> passed | failed | skipped`` from ``swift test`` output."""
    results: dict[str, str] = {}
    for match in _RESULT.finditer(output):
        case = f"{match.group(1)}.{match.group(2)}"
        # A case reported twice (never expected) keeps its worst outcome.
        if results.get(case) != "failed":
            results[case] = match.group(3)
    return results


def synthetic_photo(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise photo, a depth ramp with texture (so the mask's median and ties matter), a mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :] * np.ones((height, 1), np.float32)
    depth = np.clip(0.8 * ramp + 0.2 * rng.random((height, width), dtype=np.float32), 0, 1).astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 4 + max(2, height // 5), width // 3: width // 3 + max(2, width // 6)] = 255
    return image, depth, mask


def write_inputs(folder: Path, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None) -> list[str]:
    """Save the inputs as the golden command takes them; returns its input arguments."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "image.png")
    np.save(folder / "depth.npy", depth)
    args = ["--image", str(folder / "image.png"), "--depth", str(folder / "depth.npy")]
    if mask is not None:
        Image.fromarray(mask).save(folder / "mask.png")
        args += ["--mask", str(folder / "mask.png")]
    return args


def run_golden_command(args: list[str]) -> None:
    """``python -m runtime_py golden ARGS``, in this process (one torch import for all goldens)."""
    from runtime_py.cli import main

    code = main(["golden", *args])
    if code not in (0, None):
        raise RuntimeError(f"python -m runtime_py golden {' '.join(args)} exited with {code}")


def write_goldens(root: Path, inputs: Path) -> None:
    for name, (config, (height, width), focus, K, seed) in GOLDEN_CASES.items():
        image, depth, mask = synthetic_photo(height, width, seed)
        args = write_inputs(inputs / name, image, depth, mask if focus == "mask" else None)
        if focus != "mask":
            args += ["--focus-point", f"{focus[0]},{focus[1]}"]
        args += ["--K", str(K), "--out", str(root / name)]
        if config is not None:
            args += ["--config", config]
        run_golden_command(args)


def write_artifacts_fixture(folder: Path) -> None:
    """A Core ML-style artifacts folder of the tiny config written by runtime_py.manifest: real
    manifest, stand-in package folders (so the folder hashing is exercised, including names whose
    component-wise and character-wise orders differ), and a denoiser split into two chunks."""
    import torch

    from runtime_py.components import tile_components
    from runtime_py.manifest import ComponentEntry, Manifest, write_manifest
    from runtime_py.model import build_model
    from runtime_py.model.config import get_config

    config = get_config("tiny")
    torch.manual_seed(0)
    components = tile_components(build_model("tiny").eval())

    def package(path: Path, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for relative in ("Manifest.json", "Data/weights.bin", "Data/com.apple.CoreML/model.mlmodel", "Data-x/a", "Data.b/c"):
            file = path / relative
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(rng.integers(0, 256, 64 + seed, dtype=np.uint8).tobytes())

    folder.mkdir(parents=True)
    package(folder / "encoder.mlpackage", 1)
    package(folder / "decoder.mlpackage", 2)
    package(folder / "denoiser.chunks" / "chunk_00.mlpackage", 3)
    package(folder / "denoiser.chunks" / "chunk_01.mlpackage", 4)
    chunks = [
        {"file": "denoiser.chunks/chunk_00.mlpackage", "inputs": ["latent", "defocus", "in_focus"], "outputs": ["hidden_0"]},
        {"file": "denoiser.chunks/chunk_01.mlpackage", "inputs": ["hidden_0", "latent"], "outputs": ["x0"]},
    ]
    entries = {
        "encoder": ComponentEntry.from_component(components["encoder"], "encoder.mlpackage", "fp16", io_dtype="float16", format="mlpackage"),
        "denoiser": ComponentEntry.from_component(components["denoiser"], "denoiser.chunks", "fp16", io_dtype="float16",
                                                  format="mlpackage", chunks=chunks),
        "decoder": ComponentEntry.from_component(components["decoder"], "decoder.mlpackage", "fp16", io_dtype="float16", format="mlpackage"),
    }
    write_manifest(folder, Manifest(backend="coreml", config=config.to_dict(), weights_sha256="0" * 64, components=entries,
                                    precision="fp16", model_label="artifacts fixture for the Swift tests"))


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def write_depth_host_fixture(folder: Path) -> None:
    """The host steps around the static depth component, recorded from
    runtime_py.model.depth.estimate_depth_static with a stand-in component: the resized photo it
    was fed and the depth map it returned for a fixed disparity (for DepthHost.swift)."""
    import json

    from runtime_py.model.depth import estimate_depth_static

    height, width, size = 37, 53, 28
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    disparity = (rng.random((1, 1, size, size), dtype=np.float32) * 3).astype(np.float32)
    fed: list[np.ndarray] = []

    def component(rgb: np.ndarray) -> np.ndarray:
        fed.append(np.array(rgb, dtype=np.float32))
        return disparity

    depth = estimate_depth_static(component, image, size)
    folder.mkdir(parents=True)
    for name, array in (("image_u8", image), ("rgb_resized", fed[0]), ("disparity", disparity), ("depth", depth)):
        np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tofile(folder / f"{name}.raw")
    np.save(folder / "depth_f32.npy", depth.astype(np.float32))  # for NPYReader
    np.save(folder / "depth_f64.npy", depth.astype(np.float64))
    (folder / "shape.json").write_text(json.dumps({"height": height, "width": width, "size": size}))
