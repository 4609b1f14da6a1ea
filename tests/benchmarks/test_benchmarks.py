"""Benchmarks: compute figures, tiling counts, same-run ratios, devices, report rendering, a tiny run.

Everything runs on the ``tiny`` configuration (128-px tiles) with one CPU thread per run, so the
file stays well under a minute on a shared 2-core machine.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.compute import count_activations, component_compute, image_compute
from benchmarks.devices import NOT_MEASURED, device_section
from benchmarks.latency import BASELINE, measure_backend, tile_inputs, time_callable
from benchmarks.memory import run_isolated
from benchmarks.report import latency_section, plans_section, recommend, report_markdown
from benchmarks.run import BenchmarkOptions, run_benchmark
from benchmarks.tiling_plans import candidate_plans, evaluate_plans
from runtime_py.tiling import tile_boxes


def test_compute_figures_positive_and_tiles_match_tiling():
    figures = component_compute("tiny")
    for name in ("encoder", "denoiser", "decoder"):
        for key in ("params", "flops", "activation_bytes_written", "peak_live_activation_bytes"):
            assert figures[name][key] > 0, (name, key)
        # The peak of live tensors can never exceed everything written.
        assert figures[name]["peak_live_activation_bytes"] <= figures[name]["activation_bytes_written"]
    assert figures["tile_total"]["flops"] == sum(figures[n]["flops"] for n in ("encoder", "denoiser", "decoder"))
    for h, w, tile, stride in [(1024, 1024, 512, 256), (1000, 1500, 512, 256), (4032, 3024, 512, 256), (256, 320, 128, 64)]:
        image = image_compute(h, w, tile, stride, flops_per_tile=7)
        tiles = len(tile_boxes(h, w, tile, stride))
        assert image["tiles"] == tiles
        assert image["tiles_per_megapixel"] == pytest.approx(tiles / (h * w / 1e6))
        assert image["flops_per_image"] == 7 * tiles
    # The model notes: a 1024 x 1024 photo needs 9 tiles at 512 / 256.
    assert image_compute(1024, 1024, 512, 256, 1)["tiles"] == 9


def test_activation_counter_on_a_linear_layer():
    layer = torch.nn.Linear(8, 16).to("meta")
    x = torch.zeros(4, 8, device="meta")
    counted = count_activations(lambda: layer(x))
    # addmm writes one (4, 16) float32 output; the transposed weight is a view (not counted).
    assert counted["activation_bytes_written"] == 4 * 16 * 4
    assert counted["peak_live_activation_bytes"] == 4 * 16 * 4


def test_time_callable_counts_calls_and_orders_stats():
    calls = []
    stats, out = time_callable(lambda v: calls.append(v) or v * 2, (3,), warmup=2, repeats=5)
    assert len(calls) == 7 and out == 6
    assert len(stats.samples_s) == 5 and stats.p90_s >= stats.median_s >= min(stats.samples_s)
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_callable(lambda: None, (), warmup=0, repeats=0)


def test_run_isolated_reports_errors_and_timeouts():
    # Light targets (no torch import in the child) keep this fast.
    failed = run_isolated("json:loads", {"s": "{not json"}, timeout_s=120)
    assert failed.status == "error" and "JSONDecodeError" in failed.error
    ok = run_isolated("json:loads", {"s": "[1, 2]"}, timeout_s=120)
    assert ok.ok and ok.value == [1, 2] and ok.peak_rss_bytes > 0
    slow = run_isolated("tests.benchmarks._helpers:sleep", {"seconds": 60}, timeout_s=2)
    assert slow.status == "timeout" and "timed out" in slow.error
    with pytest.raises(ValueError, match="module:function"):
        run_isolated("benchmarks.latency", {}, 1)


def _fake_run(median_enc: float, median_den: float, median_dec: float, psnr: float | None = None) -> dict:
    comps = {}
    for name, m in (("encoder", median_enc), ("denoiser", median_den), ("decoder", median_dec)):
        comps[name] = {"latency": {"warmup": 1, "repeats": 3, "median_s": m, "p90_s": 1.5 * m, "samples_s": [m] * 3}}
        if psnr is not None:
            comps[name]["parity_vs_baseline"] = {"psnr_db": psnr, "identical": False, "max_abs": 0.1}
    value = {"load_seconds": 0.1, "components": comps, "tile_median_s": median_enc + median_den + median_dec}
    if psnr is not None:
        value["tile_chain_parity_vs_baseline"] = {"psnr_db": psnr, "identical": False, "max_abs": 0.1}
    return {"status": "ok", "value": value, "error": None, "seconds": 1.0, "peak_rss_bytes": 2**20}


def test_ratios_come_from_same_run_figures_and_missing_runs_say_why():
    runs = {
        BASELINE: _fake_run(0.2, 0.4, 0.3),
        "executorch-xnnpack-fp32": _fake_run(0.1, 0.1, 0.6, psnr=80.0),
        "executorch-xnnpack-int8": {"status": "not measured", "error": "export failed: boom", "seconds": None,
                                    "peak_rss_bytes": None},
    }
    section = latency_section(runs)
    base = section["backends"][BASELINE]
    for name in ("encoder", "denoiser", "decoder"):
        assert base["components"][name]["median_vs_baseline"] == 1.0
        assert base["components"][name]["p90_vs_baseline"] == 1.0
    assert base["tile"]["median_vs_baseline"] == 1.0
    other = section["backends"]["executorch-xnnpack-fp32"]
    assert other["components"]["decoder"]["median_vs_baseline"] == pytest.approx(0.6 / 0.3)
    assert other["tile"]["median_vs_baseline"] == pytest.approx(0.8 / 0.9)
    missing = section["backends"]["executorch-xnnpack-int8"]
    assert missing["status"] == NOT_MEASURED and "boom" in missing["reason"]
    sizes = {"executorch-xnnpack-fp32": {"status": "measured", "total_bytes": 1000, "components": {}}}
    rec = recommend({"status": NOT_MEASURED, "reason": "skipped"}, section, sizes)
    assert rec["precision"]["label"] == "executorch-xnnpack-fp32"  # 80 dB >= the 40 dB fp32 bar
    assert "int8" in json.dumps(rec["precision_candidates"])  # the unmeasured one is listed with its reason


def test_missing_device_results_are_not_measured(tmp_path: Path):
    section = device_section([tmp_path], [tmp_path])
    assert section["qualcomm_ai_hub"]["status"] == NOT_MEASURED
    assert section["coreml_mac"]["status"] == NOT_MEASURED
    (tmp_path / "hub.json").write_text(json.dumps(
        {"devices": {"Samsung Galaxy S24 (Family)": {"denoiser": {"latency_ms": 12.5, "peak_memory_bytes": 10}}}}))
    (tmp_path / "coreml_mac_timing.json").write_text(json.dumps({"schema": "something-else"}))
    section = device_section([tmp_path], [tmp_path])
    hub = section["qualcomm_ai_hub"]
    assert hub["status"] == "measured"
    assert hub["devices"]["Samsung Galaxy S24 (Family)"]["denoiser"]["latency_ms"] == 12.5
    assert section["coreml_mac"]["status"] == NOT_MEASURED and "magicbokeh-coreml-mac-timing" in section["coreml_mac"]["reason"]


def test_candidate_plans_start_with_the_published_plan():
    plans = candidate_plans("small")
    assert (plans[0].tile, plans[0].stride, plans[0].label) == (512, 256, "published")
    assert len({(p.tile, p.stride) for p in plans}) == len(plans)
    assert all(p.tile % 64 == 0 and p.stride % 64 == 0 and p.stride <= p.tile for p in plans)
    assert len(candidate_plans("small", quick=True)) < len(plans)


def test_tiling_plans_are_compared_with_the_published_plan():
    torch.set_num_threads(1)
    plans = [p.to_dict() for p in candidate_plans("tiny", quick=True)]
    raw = evaluate_plans("tiny", 192, plans)  # in this process: the child entry point is a plain function
    rows = raw["plans"]
    assert rows[0]["parity_vs_published"]["identical"] and rows[0]["tiles"] == len(tile_boxes(192, 192, 128, 64))
    no_overlap = next(r for r in rows if r["stride"] == r["tile"])
    assert no_overlap["tiles"] == len(tile_boxes(192, 192, 128, 128))
    # Different blending seams: the output differs from the published plan's, but is the same photo.
    assert no_overlap["parity_vs_published"]["psnr_db"] is not None and no_overlap["parity_vs_published"]["ssim"] > 0
    section = plans_section({"status": "ok", "value": raw}, "tiny", {128: 1000})
    assert section["plans"][1]["flops_per_image"] == 1000 * section["plans"][1]["tiles"]
    assert all(r["host_seconds_derived"] > 0 for r in section["plans"])


def _fake_full_scale_file(folder: Path) -> Path:
    """A small file shaped like run_full_scale's JSON: one target exported, one killed."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"backend": "onnx", "precision": "fp32", "components": {"denoiser": {"fp32": 3 * 2**30}}}
    data = {"config": "sd21", "weights": "seeded random (structural)", "finished_utc": "2026-11-26 03:00 UTC",
            "targets": {"onnx-fp32": {"target": "onnx-fp32", "config": "sd21", "status": "ok", "error": None,
                                      "seconds": 123.0, "peak_rss_bytes": 9 * 2**30, "sizes": sizes},
                        "executorch-xnnpack-fp32": {"target": "executorch-xnnpack-fp32", "config": "sd21",
                                                    "status": "error", "error": "killed", "seconds": 5.0,
                                                    "peak_rss_bytes": None}}}
    path = folder / "full_scale.json"
    path.write_text(json.dumps(data))
    return path


def test_full_scale_results_are_validated(tmp_path: Path):
    from benchmarks.full_scale import load_full_scale_results

    good = _fake_full_scale_file(tmp_path)
    section = load_full_scale_results(good)
    assert section["config"] == "sd21" and section["targets"]["onnx-fp32"]["peak_rss_bytes"] == 9 * 2**30
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"targets": {"onnx-fp32": {"status": "ok"}}}))
    with pytest.raises(ValueError, match="no 'sizes'"):
        load_full_scale_results(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        load_full_scale_results(bad)
    with pytest.raises(ValueError, match="not both"):
        BenchmarkOptions(config="tiny", full_scale=True, full_scale_results=good).resolved()
    with pytest.raises(ValueError, match="no such file"):
        BenchmarkOptions(config="tiny", quick=True, full_scale_results=tmp_path / "missing.json").resolved()


ET_FP32 = "executorch-xnnpack-fp32"


def test_quick_run_on_tiny_writes_the_report(tmp_path: Path, tiny_executorch_artifacts: Path):
    # Two real backends, each timed in its own child process: the torch baseline and ExecuTorch
    # XNNPACK fp32 (the session's tiny export, reused as --reuse-artifacts). Plans are tested above
    # in-process. The simulated HTP and int8 are asked for but --quick leaves them out, saying so.
    full_scale_file = _fake_full_scale_file(tmp_path / "earlier")
    out = tmp_path / "run"
    options = BenchmarkOptions(out=out, config="tiny", quick=True, image_size=192, threads=1, plans=False,
                               backends=(BASELINE, ET_FP32, "qnn-htp-simulated-w8a16", "executorch-xnnpack-int8"),
                               run_timeout_s=240, compare_sd21=False, reuse_artifacts=tiny_executorch_artifacts,
                               full_scale_results=full_scale_file, log=lambda _m: None)
    report = run_benchmark(options)
    data = json.loads((out / "report.json").read_text())
    for key in ("latency", "size", "memory", "compute", "photo", "tiling_plans", "devices", "full_scale",
                "recommendation", "exports", "machine", "settings"):
        assert key in data, key
    backends = data["latency"]["backends"]
    base, et = backends[BASELINE], backends[ET_FP32]
    assert base["status"] == et["status"] == "measured"
    assert base["tile"]["median_vs_baseline"] == 1.0  # the baseline against itself, same run
    # Every ratio of the ExecuTorch run is ITS median over the BASELINE's, both measured in this run
    # (each median recomputed from the run's own timed samples, so neither figure is taken on trust).
    for c in ("encoder", "denoiser", "decoder"):
        base_median = float(np.median(base["components"][c]["samples_s"]))
        et_median = float(np.median(et["components"][c]["samples_s"]))
        assert base_median > 0 and et_median > 0 and base_median != et_median, c
        assert base["components"][c]["median_s"] == pytest.approx(base_median)
        assert et["components"][c]["median_vs_baseline"] == pytest.approx(et_median / base_median), c
        assert et["components"][c]["p90_vs_baseline"] == pytest.approx(
            et["components"][c]["p90_s"] / base["components"][c]["p90_s"]), c
    assert et["tile"]["median_vs_baseline"] == pytest.approx(et["tile"]["median_s"] / base["tile"]["median_s"])
    assert et["tile"]["median_vs_baseline"] != 1.0
    assert data["photo"]["backends"][ET_FP32]["host_seconds_vs_baseline"] == pytest.approx(
        data["photo"]["backends"][ET_FP32]["host_seconds"] / data["photo"]["backends"][BASELINE]["host_seconds"])
    # Parity against the same run's baseline outputs: XNNPACK fp32 differs from eager torch by
    # float rounding only (summation order), far above the 60 dB the fp32 export tests require.
    chain = et["tile_chain_parity_vs_baseline"]
    assert not chain["identical"] and chain["psnr_db"] >= 60.0
    assert all(et["components"][c]["parity_vs_baseline"]["psnr_db"] >= 60.0 for c in ("encoder", "denoiser", "decoder"))
    assert data["memory"][BASELINE]["peak_rss_bytes"] > 0 and data["memory"][ET_FP32]["peak_rss_bytes"] > 0
    photo = data["photo"]
    assert photo["tiles"] == len(tile_boxes(192, 192, 128, 64))
    assert photo["backends"][BASELINE]["host_seconds_vs_baseline"] == 1.0
    assert data["tiling_plans"]["status"] == NOT_MEASURED and "--no-plans" in data["tiling_plans"]["reason"]
    htp = backends["qnn-htp-simulated-w8a16"]
    assert htp["status"] == NOT_MEASURED and htp["reason"].startswith("not run in --quick")
    int8 = backends["executorch-xnnpack-int8"]
    assert int8["status"] == NOT_MEASURED and int8["reason"].startswith("not run in --quick")
    assert list(data["exports"]) == [ET_FP32] and data["exports"][ET_FP32]["reused"]  # nothing else exported
    assert data["size"][ET_FP32]["status"] == "measured" and data["size"][ET_FP32]["total_bytes"] > 0
    assert any("qnn-htp-simulated" in r["what"] for r in data["not_run_in_quick"])
    assert any("executorch-xnnpack-int8" in r["what"] for r in data["not_run_in_quick"])
    assert data["size"]["executorch-xnnpack-int8"]["reason"].startswith("not run in --quick")
    # The earlier full-scale measurement is merged as it was, with its source.
    assert data["full_scale"]["source"] == str(full_scale_file.resolve())
    assert data["full_scale"]["targets"]["onnx-fp32"]["seconds"] == 123.0
    assert not any("full-scale" in r["what"] for r in data["not_run_in_quick"])
    assert data["devices"]["qualcomm_ai_hub"]["status"] == NOT_MEASURED
    assert data["recommendation"]["plan"] is None and "not measured" in data["recommendation"]["plan_reason"]
    assert data["recommendation"]["precision"]["label"] == ET_FP32  # measured, and above the fp32 bar
    markdown = (out / "report.md").read_text()
    assert "# MagicBokeh benchmark" in markdown and "Recommendation" in markdown and "not measured" in markdown
    assert "## Not run in --quick" in markdown and "merged from file" in markdown and str(full_scale_file.resolve()) in markdown
    assert "executorch-xnnpack-fp32: error: killed" in markdown  # a failed full-scale target keeps its error
    assert markdown == report_markdown(report)
    assert (out / "latency.png").stat().st_size > 0
    assert not any(isinstance(v, float) and math.isnan(v) for v in np.ravel([base["tile"]["median_s"]]))


def _write_tile_inputs(path: Path) -> None:
    """What run_benchmark does at the start of every run: write this run's tile inputs afresh."""
    before = path.stat().st_mtime_ns if path.exists() else None
    np.savez(path, **tile_inputs("tiny", 1))
    if before is not None and path.stat().st_mtime_ns == before:  # a coarse clock: make the rewrite visible
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_a_stale_baseline_reference_is_never_reused(tmp_path: Path, tiny_executorch_artifacts: Path, monkeypatch):
    """A run whose baseline fails must not compare with the reference an earlier run left in --out."""
    torch.set_num_threads(1)
    work = tmp_path / "work"
    work.mkdir()
    inputs, reference = work / "tile_inputs.npz", work / "reference"
    args = dict(config_name="tiny", inputs_path=str(inputs), reference_dir=str(reference), warmup=0, repeats=1,
                whole_image_size=128, threads=1)
    et_folder = str(tiny_executorch_artifacts / ET_FP32)

    # Run 1: the baseline writes its outputs; the ExecuTorch run compares with them.
    _write_tile_inputs(inputs)
    measure_backend(BASELINE, artifacts=None, **args)
    first = measure_backend(ET_FP32, artifacts=et_folder, **args)
    assert first["tile_chain_parity_vs_baseline"]["psnr_db"] >= 60.0
    assert first["whole_image"]["parity_vs_baseline"]["psnr_db"] >= 40.0
    # Make run 1's reference recognisably wrong, so that reusing it could not go unnoticed.
    with np.load(reference / "tiles.npz") as saved:
        doctored = {k: saved[k] for k in saved.files}
    doctored["out"] = doctored["out"] + 0.5
    np.savez(reference / "tiles.npz", **doctored)

    # Run 2 in the same folder: new inputs file, and the baseline never runs (killed before it started).
    _write_tile_inputs(inputs)
    second = measure_backend(ET_FP32, artifacts=et_folder, **args)
    for name in ("encoder", "denoiser", "decoder"):
        parity = second["components"][name]["parity_vs_baseline"]
        assert parity["psnr_db"] is None and "another run" in parity["unavailable"], name
    chain = second["tile_chain_parity_vs_baseline"]
    assert chain["psnr_db"] is None and not chain["identical"] and "another run" in chain["unavailable"]
    assert "another run" in second["whole_image"]["parity_vs_baseline"]["unavailable"]

    # Run 3: the baseline starts but fails while loading; it must leave no reference behind.
    _write_tile_inputs(inputs)

    def broken_load(*_a, **_k):
        raise RuntimeError("baseline failed")

    monkeypatch.setattr("benchmarks.latency.load_backend", broken_load)
    with pytest.raises(RuntimeError, match="baseline failed"):
        measure_backend(BASELINE, artifacts=None, **args)
    monkeypatch.undo()
    assert not (reference / "tiles.npz").exists() and not list(reference.glob("whole_*"))
    third = measure_backend(ET_FP32, artifacts=et_folder, **args)
    assert "did not finish" in third["tile_chain_parity_vs_baseline"]["unavailable"]

    # The report says "not measured" rather than a figure, and the recommendation does not count it.
    runs = {BASELINE: {"status": "error", "error": "baseline failed", "seconds": 1.0, "peak_rss_bytes": None},
            ET_FP32: {"status": "ok", "value": second, "error": None, "seconds": 1.0, "peak_rss_bytes": 1}}
    section = latency_section(runs)
    row = section["backends"][ET_FP32]
    assert row["tile"]["median_vs_baseline"] is None
    assert "another run" in row["tile_chain_parity_vs_baseline"]["unavailable"]
    sizes = {ET_FP32: {"status": "measured", "total_bytes": 1000, "components": {}}}
    rec = recommend({"status": NOT_MEASURED, "reason": "skipped"}, section, sizes)
    assert rec["precision"] is None and "tile-chain PSNR unknown" in rec["precision_reason"]


def test_sizes_per_backend_come_from_its_export():
    from benchmarks.report import run_sizes

    exports = {
        "qnn-w8a16": {"status": "ok", "sizes": {"components": {
            name: {"w8a16": 10, "fp32": 40, "w8a16-context-SM8650": 12} for name in ("encoder", "denoiser", "decoder")}}},
        "executorch-xnnpack-int8": {"status": "error", "error": "lowering failed"},
    }
    assert run_sizes("onnxruntime-cpu-fp32", exports)["total_bytes"] == 120
    assert run_sizes("onnxruntime-cpu-qdq-w8a16", exports)["total_bytes"] == 30
    assert run_sizes("qnn-htp-simulated-w8a16", exports)["total_bytes"] == 36  # the HTP loads the context binary
    missing = run_sizes("executorch-xnnpack-int8", exports)
    assert missing["status"] == NOT_MEASURED and "lowering failed" in missing["reason"]
    assert run_sizes(BASELINE, exports)["status"] == NOT_MEASURED
    skipped = run_sizes("qnn-htp-simulated-w8a16", exports, {"qnn-htp-simulated-w8a16": "not run in --quick (why)"})
    assert skipped["status"] == NOT_MEASURED and skipped["reason"] == "not run in --quick (why)"
    assert "not exported" in run_sizes("executorch-xnnpack-fp32", exports)["reason"]


@pytest.mark.skipif(__import__("platform").system() == "Darwin", reason="checks the non-Apple refusal")
def test_coreml_mac_timing_refuses_clearly_off_apple(tmp_path: Path):
    from benchmarks.coreml_mac_timing import main

    with pytest.raises(SystemExit, match="macOS"):
        main([str(tmp_path), "--out", str(tmp_path / "t.json")])


def test_executorch_thread_pool_follows_the_threads_setting():
    pytest.importorskip("executorch.extension.pybindings.portable_lib")
    from benchmarks.latency import set_executorch_threads

    # Without this the XNNPACK pool uses every core while the torch baseline uses --threads.
    assert set_executorch_threads(1) == 1
    assert set_executorch_threads(None) == 1
