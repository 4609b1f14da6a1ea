"""The host renderer (android_demo/host/render.sh: the app's Java core + the JNI ExecuTorch runner)
against ``python -m runtime_py render --backend executorch`` on the same artifacts, its errors,
and the benchmark JSON it writes for benchmarks/devices.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import DEMO, ROOT, write_photo

RENDER = DEMO / "host" / "render.sh"


def _host(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RENDER), *args], capture_output=True, text=True)


def test_host_render_matches_the_python_executorch_backend(default_artifacts: Path, tmp_path: Path,
                                                           record_property) -> None:
    # A scene neither the goldens nor the exporter's parity saw (own seed), 4 tiles at the default
    # model's 512 px with bottom / right / corner blending.
    photo = write_photo(tmp_path / "in", 600, 640, seed=20261207)
    common = ["--image", str(photo.image), "--depth", str(photo.depth), "--mask", str(photo.mask), "--K", "20"]

    start = time.perf_counter()
    python_run = subprocess.run(
        [sys.executable, "-m", "runtime_py", "render", "--backend", "executorch", "--artifacts", str(default_artifacts),
         *common, "--out", str(tmp_path / "python.png"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True)
    python_wall = time.perf_counter() - start
    assert python_run.returncode == 0, python_run.stderr[-2000:]

    bash_build = subprocess.run(["bash", str(DEMO / "host" / "build.sh")], capture_output=True, text=True)
    assert bash_build.returncode == 0, bash_build.stderr[-2000:]
    start = time.perf_counter()
    host_run = _host("--artifacts", str(default_artifacts), *common, "--out", str(tmp_path / "host.png"))
    host_wall = time.perf_counter() - start
    assert host_run.returncode == 0, host_run.stderr[-2000:]

    python_img = np.asarray(Image.open(tmp_path / "python.png").convert("RGB")).astype(int)
    with Image.open(tmp_path / "host.png") as png:
        host_img = np.asarray(png.convert("RGB")).astype(int)
        text = dict(png.text)
    assert host_img.shape == python_img.shape == (600, 640, 3)
    diff = np.abs(host_img - python_img)
    within_one = float(np.mean(diff <= 1))
    identical = float(np.mean(diff == 0))
    # The bar: within one grey level at >= 99.9 % of values. Both sides run the same .pte
    # through the same XNNPACK kernels; differences come from float32 re-association (colour
    # statistics summed in another order), which moves a value across an 8-bit boundary at most by one.
    assert within_one >= 0.999, f"only {within_one:.5%} of values within one level (max diff {diff.max()})"

    manifest = json.loads((default_artifacts / "manifest.json").read_text())
    label = manifest["model"]["label"]
    assert json.loads(text["magicbokeh:model"]) == label if isinstance(label, dict) else text["magicbokeh:model"] == label

    host_json = json.loads((tmp_path / "host.json").read_text())
    python_json = json.loads((tmp_path / "python.json").read_text())
    tiles = host_json["tiles"]
    assert tiles == 4
    figures = {
        "within_one_level": within_one, "identical": identical, "max_abs_diff": int(diff.max()),
        "host_seconds_per_tile": host_json["seconds_per_tile"],
        "python_seconds_per_tile": python_json["seconds"]["tiles"] / tiles,
        "host_wall_seconds": host_wall, "python_wall_seconds": python_wall,
        "host_stage_seconds": {k: host_json["seconds"][k] for k in ("encoder", "denoiser", "decoder")},
        "python_stage_seconds": {k: python_json["seconds"][k] for k in ("encoder", "denoiser", "decoder")},
    }
    for key, value in figures.items():
        record_property(key, value)
    report = os.environ.get("MAGICBOKEH_ANDROID_FIGURES")
    if report:  # where a run that wants the numbers (e.g. the closing note) collects them
        Path(report).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def _broken_artifacts(source: Path, target: Path, edit) -> Path:
    """A copy of the artifacts (component files linked, not copied) with an edited manifest."""
    target.mkdir()
    for item in source.iterdir():
        if item.name != "manifest.json":
            (target / item.name).symlink_to(item)
    manifest = json.loads((source / "manifest.json").read_text())
    edit(manifest, target)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _wrong_hash(manifest: dict, folder: Path) -> None:
    manifest["components"]["denoiser"]["sha256"] = "0" * 64


def _wrong_schema(manifest: dict, folder: Path) -> None:
    manifest["schema_version"] = 99


def _missing_component(manifest: dict, folder: Path) -> None:
    del manifest["components"]["decoder"]


BAD_ARTIFACTS = {
    "wrong_hash": (_wrong_hash, "does not match the manifest"),
    "wrong_schema": (_wrong_schema, "schema version 99 is not supported"),
    "missing_component": (_missing_component, "lack the 'decoder' component"),
}


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory: pytest.TempPathFactory):
    return write_photo(tmp_path_factory.mktemp("bad_inputs"), 120, 160, seed=3)


def _assert_one_line_error(run: subprocess.CompletedProcess, phrase: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("[android_demo]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert phrase in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(BAD_ARTIFACTS))
def test_host_render_refuses_bad_artifacts(case: str, default_artifacts: Path, small_photo, tmp_path: Path) -> None:
    edit, phrase = BAD_ARTIFACTS[case]
    folder = _broken_artifacts(default_artifacts, tmp_path / "artifacts", edit)
    run = _host("--artifacts", str(folder), "--image", str(small_photo.image), "--depth", str(small_photo.depth),
                "--focus-point", "5,5", "--out", str(tmp_path / "o.png"))
    _assert_one_line_error(run, phrase)
    assert not (tmp_path / "o.png").exists()


def test_host_render_refuses_a_depth_map_of_another_size(default_artifacts: Path, small_photo, tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((160, 120), np.float32))
    run = _host("--artifacts", str(default_artifacts), "--image", str(small_photo.image), "--depth", str(tmp_path / "d.npy"),
                "--focus-point", "5,5", "--out", str(tmp_path / "o.png"))
    _assert_one_line_error(run, "depth map is 160x120 (HxW) but the image is 120x160")


def test_host_render_refuses_an_empty_mask(default_artifacts: Path, small_photo, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((120, 160), np.uint8)).save(tmp_path / "empty.png")
    run = _host("--artifacts", str(default_artifacts), "--image", str(small_photo.image), "--depth", str(small_photo.depth),
                "--mask", str(tmp_path / "empty.png"), "--out", str(tmp_path / "o.png"))
    _assert_one_line_error(run, "the focus mask is empty")


def test_host_render_refuses_out_of_range_float64_depth_and_a_missing_photo(default_artifacts: Path, small_photo,
                                                                   tmp_path: Path) -> None:
    np.save(tmp_path / "d64.npy", np.load(small_photo.depth).astype(np.float64) * 2)  # out of range, float64
    run = _host("--artifacts", str(default_artifacts), "--image", str(small_photo.image), "--depth", str(tmp_path / "d64.npy"),
                "--focus-point", "5,5", "--out", str(tmp_path / "o.png"))
    _assert_one_line_error(run, "must be finite and lie in [0, 1]")
    run = _host("--artifacts", str(default_artifacts), "--image", str(tmp_path / "none.png"), "--depth",
                str(small_photo.depth), "--focus-point", "5,5", "--out", str(tmp_path / "o.png"))
    _assert_one_line_error(run, "image file not found")


def test_benchmark_json_is_merged_by_benchmarks_devices(default_artifacts: Path, tmp_path: Path) -> None:
    from benchmarks.devices import HUB_FILE, find_files, load_hub_results

    out = tmp_path / "phone" / HUB_FILE
    run = _host("--artifacts", str(default_artifacts), "--benchmark", "1", "--out", str(out), "--device", "host JVM")
    assert run.returncode == 0, run.stderr[-2000:]
    merged = load_hub_results(find_files([tmp_path], HUB_FILE))
    assert merged["status"] == "measured", merged
    rows = merged["devices"]["host JVM"]
    assert set(rows) == {"encoder", "denoiser", "decoder"}
    assert all(row["latency_ms"] > 0 for row in rows.values())
