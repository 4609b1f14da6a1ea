"""The main job's orchestration: target list, sample photo, and the summary built from the steps' own reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from export.run_all import (StepResult, build_parser, crop_sample_photo, main, planned_exports, summarise,
                            summary_markdown, write_sample_photo)
from export.targets import main_job_targets


def default_targets(out: Path, config: str | None):
    return planned_exports(out, config)


def test_targets_cover_every_backend_family(tmp_path: Path) -> None:
    targets = default_targets(tmp_path, None)
    assert [t.target for t in targets] == main_job_targets()  # the registry's main-job entries, in its order
    assert {t.backend for t in targets} == {"executorch", "coreml", "qnn-htp"}
    assert all(Path(t.exporter).name.startswith("to_") for t in targets)
    for t in targets:  # --out is the artifacts folder itself, and --recipe picks the registry target
        assert t.args[t.args.index("--out") + 1] == str(tmp_path / t.name)
        assert t.args[t.args.index("--recipe") + 1] == t.target.recipe.name


def test_sample_photo_has_matching_depth_and_a_non_empty_mask(tmp_path: Path) -> None:
    paths = write_sample_photo(tmp_path, seed=3, height=96, width=160)
    image = np.array(Image.open(paths["image"]))
    depth = np.load(paths["depth"])
    mask = np.array(Image.open(paths["mask"]))
    assert image.shape == (96, 160, 3) and depth.shape == (96, 160) and mask.shape == (96, 160)
    assert 0.0 <= depth.min() and depth.max() <= 1.0
    assert (mask > 0).any(), "the subject must be inside the crop"


def test_summary_reads_each_targets_own_reports(tmp_path: Path) -> None:
    targets = default_targets(tmp_path, None)
    done = targets[0]
    folder = tmp_path / done.folder
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"components": {"encoder": {"bytes": 2 * 2**20}}}))
    (folder / "parity.json").write_text(json.dumps({
        "components": {"encoder": {"psnr_db": 91.25, "max_abs": 1e-4}},
        "end_to_end": {"psnr_db": 61.5, "ssim": 0.9999},
    }))
    exports = {done.name: StepResult(done.name, [], 0, 12.0, "log"), targets[1].name: StepResult(targets[1].name, [], 2, 3.0, "bad.log")}
    summary = summarise(tmp_path, targets[:2], exports, {})
    md = summary_markdown(summary)
    assert "encoder 91.2" in md and "61.5 dB / SSIM 0.9999" in md and "2.0" in md
    assert "component >= 60, end to end >= 60" in md  # the bars come from export/numerics/executorch.json
    assert "exit 2 (see bad.log)" in md and "not measured" in md
    exports[done.name] = StepResult(done.name, [], 1, 12.0, "log")  # exporter's status: artifacts, parity below a bar
    assert "ok, parity below its bars" in summary_markdown(summarise(tmp_path, targets[:2], exports, {}))


def test_parity_below_bars_is_reported_and_fails_only_with_strict(tmp_path: Path, monkeypatch, capsys) -> None:
    """An exporter that wrote its artifacts but missed a bar (exit 1) is reported on stderr and in the
    summary; the main job fails on it only with --strict. An export that failed (exit 2) always fails it."""
    import export.run_all as run_all

    codes = {}
    monkeypatch.setattr(run_all, "run_step", lambda name, command, log: StepResult(name, command, codes[name], 0.1, str(log)))
    target = main_job_targets()[0].name
    codes[f"export {target}"] = 1
    args = ["--targets", target, "--no-render", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "parity below their bars" in capsys.readouterr().err
    assert main([*args, "--strict"]) == 1
    codes[f"export {target}"] = 2
    assert main(args) == 1
    assert "did not export here" in capsys.readouterr().err


def test_unknown_target_is_refused(capsys) -> None:
    assert main(["--targets", "nope", "--no-render", "--out", "/nonexistent/never-written"]) == 2
    assert "unknown targets" in capsys.readouterr().err
    assert build_parser().parse_args([]).photo_size == "640x1024"


def test_qnn_target_keeps_the_simulated_htp_parity_small(tmp_path: Path) -> None:
    qnn = next(t for t in default_targets(tmp_path, None) if t.name == "qnn-w8a16")
    args = qnn.args
    assert args[args.index("--parity-tiles") + 1] == "1" and args[args.index("--parity-scene-size") + 1] == "tile"


def test_summary_shows_a_split_reports_total_and_htp_work(tmp_path: Path) -> None:
    targets = [t for t in default_targets(tmp_path, None) if t.name == "qnn-w8a16"]
    folder = tmp_path / targets[0].folder
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"components": {}}))
    part = lambda psnr: {"components": {"depth": {"psnr_db": psnr}}, "end_to_end": {"psnr_db": psnr, "ssim": 0.99},  # noqa: E731
                         "meta": {"htp_calls": {"depth": 1}, "htp_seconds": 21.7, "scene_size": 512, "max_tiles_per_image": 1}}
    (folder / "parity.json").write_text(json.dumps({"split": ["quantization", "backend", "total"],
                                                    "quantization": part(40.0), "backend": part(70.0), "total": part(39.5)}))
    md = summary_markdown(summarise(tmp_path, targets, {targets[0].name: StepResult("q", [], 0, 1.0, "log")}, {}))
    assert "depth 39.5" in md and "39.5 dB / SSIM 0.9900" in md
    assert "HTP runs depth 1; 22 s on the simulator" in md and "512-px scene" in md


def test_qnn_render_uses_a_one_tile_crop_with_matching_depth_and_mask(tmp_path: Path) -> None:
    qnn = next(t for t in default_targets(tmp_path, None) if t.name == "qnn-w8a16")
    assert qnn.target.render_crop == (512, 512)
    photo = write_sample_photo(tmp_path / "full", seed=3, height=96, width=160)
    crop = crop_sample_photo(photo, tmp_path / "crop", 64, 80)
    image, depth = np.array(Image.open(crop["image"])), np.load(crop["depth"])
    assert image.shape == (64, 80, 3) and depth.shape == (64, 80) and np.array(Image.open(crop["mask"])).shape == (64, 80)
    np.testing.assert_array_equal(image, np.array(Image.open(photo["image"]))[-64:, :80])  # bottom-left
    assert crop_sample_photo(photo, tmp_path / "same", 512, 512) == photo  # already small enough: unchanged


def _write_reports(folder: Path, mib: float, e2e_psnr: float) -> None:
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"components": {"denoiser": {"bytes": int(mib * 2**20)}}}))
    (folder / "parity.json").write_text(json.dumps({"components": {"denoiser": {"psnr_db": e2e_psnr + 5}},
                                                    "end_to_end": {"psnr_db": e2e_psnr, "ssim": 0.95}}))


def test_summary_recommends_the_smallest_quantized_target_meeting_its_bar(tmp_path: Path) -> None:
    targets = [t for t in default_targets(tmp_path, None)
               if t.name in ("executorch-xnnpack-fp32", "executorch-xnnpack-int8", "executorch-xnnpack-int8-mixed")]
    assert len(targets) == 3  # the mixed recipe is one of the main job's targets
    bar = next(t for t in targets if t.name == "executorch-xnnpack-int8").target.tile_chain_bar
    _write_reports(tmp_path / "executorch-xnnpack-fp32", 8.0, 80.0)
    _write_reports(tmp_path / "executorch-xnnpack-int8", 2.0, bar - 3.0)  # smaller, but below the bar
    _write_reports(tmp_path / "executorch-xnnpack-int8-mixed", 3.0, bar + 6.0)
    steps = {t.name: StepResult(t.name, [], 0, 1.0, "log") for t in targets}
    summary = summarise(tmp_path, targets, steps, {})
    rec = summary["recommended_quantized"]["executorch-xnnpack"]
    assert rec["target"] == "executorch-xnnpack-int8-mixed" and rec["meets_bar"] and rec["psnr_db"] == bar + 6.0
    assert "executorch-xnnpack-fp32" not in rec["candidates"]  # float targets are not quantized recipes
    assert "`--recipe xnnpack-int8-mixed`" in summary_markdown(summary)
    (tmp_path / "executorch-xnnpack-int8" / "parity.json").write_text(json.dumps({"end_to_end": {"psnr_db": bar + 1}}))
    assert summarise(tmp_path, targets, steps, {})["recommended_quantized"]["executorch-xnnpack"]["target"] == \
        "executorch-xnnpack-int8"  # both meet the bar: the smaller one
