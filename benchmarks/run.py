"""Benchmark MagicBokeh on this machine: ``python benchmarks/run.py [--quick] [options]``.

Exports the default model to every target (through the exporters' library functions), times each
backend and precision per component (warm-up, repeats, median, p90) against torch eager fp32
measured in the same run, records artifact sizes and each run's peak memory (every run in its own
process), counts compute at the default and SD2.1 scale, compares tiling plans, merges device
results measured elsewhere (AI Hub, a Mac), and optionally exports the SD2.1-scale model (or merges a
full-scale JSON measured earlier, ``--full-scale-results``). Writes ``report.json``, ``report.md``,
``latency.png`` and ``size_vs_psnr.png`` into ``--out``.

``--quick`` measures the same sections with less: everything it leaves out is listed in the report
under "Not run in --quick" with the reason, never dropped silently.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.latency import BACKEND_RUNS, BASELINE, get_backend_run  # noqa: E402

DEFAULT_OUT = Path("outputs") / "benchmark"
SIMULATED_REPEATS = 2
#: Calibration (generated scenes, tiles per scene) of the int8 / W8A16 exports: the exporters' own
#: defaults in a full run, so its int8 parity is the shipped export's; fewer in --quick, for time.
CALIBRATION_FULL = (4, 4)
CALIBRATION_QUICK = (1, 2)


@dataclass
class BenchmarkOptions:
    """What one benchmark run measures (the CLI fills it; tests build small ones)."""

    out: Path = DEFAULT_OUT
    config: str | None = None  # None: the default model's configuration
    quick: bool = False
    image_size: int = 1024
    warmup: int | None = None
    repeats: int | None = None
    tiles: int | None = None
    backends: tuple[str, ...] = tuple(r.label for r in BACKEND_RUNS)
    whole_image: bool | None = None  # None: measured in full mode, derived from per-tile times in quick mode
    plans: bool = True
    run_timeout_s: float = 1800.0
    full_scale: bool | None = None  # None: on in full mode, off in quick mode
    full_scale_timeout_s: float = 3600.0
    full_scale_results: Path | None = None  # a full-scale JSON measured earlier: merged, not re-exported
    simulated: bool | None = None  # time the simulated HTP; None: on in full mode, off in quick mode
    int8: bool | None = None  # export and time ExecuTorch XNNPACK int8; None: on in full mode, off in quick mode
    hub_results: tuple[Path, ...] = ()
    coreml_timings: tuple[Path, ...] = ()
    reuse_artifacts: Path | None = None
    threads: int | None = None  # torch / ONNX Runtime CPU threads per run (None: library default)
    compare_sd21: bool = True  # also count compute at the SD2.1 scale
    size_only_targets: tuple[str, ...] | None = None  # exported for their size only (None: Core ML fp16 in full mode)
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))

    def resolved(self) -> "BenchmarkOptions":
        from runtime_py.default_model import DEFAULT_CONFIG
        from runtime_py.model import get_config

        self.config = self.config or DEFAULT_CONFIG
        get_config(self.config)
        self.warmup = (1 if self.quick else 2) if self.warmup is None else self.warmup
        self.repeats = (3 if self.quick else 10) if self.repeats is None else self.repeats
        self.tiles = (1 if self.quick else 4) if self.tiles is None else self.tiles
        self.whole_image = (not self.quick) if self.whole_image is None else self.whole_image
        self.full_scale = (not self.quick) if self.full_scale is None else self.full_scale
        self.simulated = (not self.quick) if self.simulated is None else self.simulated
        self.int8 = (not self.quick) if self.int8 is None else self.int8
        if self.full_scale_results is not None:
            if self.full_scale:
                raise ValueError("give either --full-scale (export now) or --full-scale-results FILE (merge), not both")
            if not Path(self.full_scale_results).is_file():
                raise ValueError(f"--full-scale-results {self.full_scale_results}: no such file")
        if self.size_only_targets is None:
            self.size_only_targets = () if self.quick else ("coreml-fp16",)
        from export.targets import get_target

        for target in self.size_only_targets:
            get_target(target)  # a registry entry, or a one-line error naming the choices
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0 or self.repeats < 1 or self.tiles < 1:
            raise ValueError(f"need warmup >= 0, repeats >= 1 and tiles >= 1 (got {self.warmup}, {self.repeats}, {self.tiles})")
        if self.image_size < get_config(self.config).tile:
            raise ValueError(f"--image-size {self.image_size} is smaller than one {get_config(self.config).tile}-px tile "
                             f"of config {self.config!r}")
        for label in self.backends:
            get_backend_run(label)
        if BASELINE not in self.backends:
            self.backends = (BASELINE, *self.backends)  # ratios need the same-run baseline
        self.backends = tuple(sorted(set(self.backends), key=[r.label for r in BACKEND_RUNS].index))
        return self


def machine_info() -> dict[str, Any]:
    import torch

    return {"platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__}


def _not_run(reason: str) -> dict[str, Any]:
    return {"status": "not measured", "error": reason, "seconds": None, "peak_rss_bytes": None}


QUICK_SIMULATED_REASON = ("not run in --quick (the QNN HTP simulator takes minutes per tile on an x86 CPU and its time "
                          "says nothing about a phone; run without --quick, or add --simulated)")


QUICK_INT8_REASON = ("not run in --quick (its PT2E calibration and XNNPACK lowering take 8-20 minutes on 2 CPU "
                     "cores, more than the rest of --quick together); run without --quick, or add --int8")


def quick_omissions(o: BenchmarkOptions) -> list[dict[str, str]]:
    """What this run measured less of than a full run, each with the reason (the report lists them)."""
    if not o.quick:
        return []
    full = BenchmarkOptions(config=o.config).resolved()
    rows = [{"what": "repeats and tiles compared",
             "reason": f"{o.warmup} warm-up + {o.repeats} timed calls per component and {o.tiles} tile(s) compared for "
                       f"parity (full run: {full.warmup} + {full.repeats}, {full.tiles} tiles): quicker, noisier medians"}]
    if not o.whole_image:
        rows.append({"what": "whole-image renders per backend",
                     "reason": f"not run in --quick (the {o.image_size}-px photo is a tile chain per tile on every "
                               "backend); the per-photo host time is derived as tiles x the measured per-tile median"})
    if not o.simulated:
        sim = [r.label for r in BACKEND_RUNS if r.simulated]
        rows.append({"what": ", ".join(sim), "reason": QUICK_SIMULATED_REASON})
    if not o.int8:
        rows.append({"what": "executorch-xnnpack-int8 (export and latency)", "reason": QUICK_INT8_REASON})
    if "coreml-fp16" not in (o.size_only_targets or ()):
        rows.append({"what": "Core ML fp16 export (size only)",
                     "reason": "not run in --quick (Core ML conversion adds minutes; it cannot be timed off Apple OSes)"})
    rows.append({"what": "int8 / W8A16 calibration set",
                 "reason": f"{CALIBRATION_QUICK[0]} scene x {CALIBRATION_QUICK[1]} tiles (full run and the exporters' "
                           f"default: {CALIBRATION_FULL[0]} x {CALIBRATION_FULL[1]}): quantized parity may be lower "
                           "than the shipped export's"})
    rows.append({"what": "QNN HTP context binary (precompiled .bin) and its size",
                 "reason": "not run in --quick (compiling it runs the HTP toolchain per component)"})
    if o.plans:
        rows.append({"what": "tiling plans at other tile sizes (2x, 1.5x the model's tile)",
                     "reason": "not run in --quick (each renders the whole photo again); only the published plan and "
                               "less overlap at the model's tile are compared"})
    if not o.full_scale and o.full_scale_results is None:
        rows.append({"what": "full-scale (sd21) exports",
                     "reason": "not run in --quick (an sd21 export takes an hour or more on a CPU); run without "
                               "--quick, or merge an earlier measurement with --full-scale-results FILE"})
    return rows


def run_benchmark(options: BenchmarkOptions) -> dict[str, Any]:
    """Measure everything ``options`` asks for and write the report; returns the report dict."""
    import numpy as np

    from benchmarks.artifacts import benchmark_model
    from benchmarks.compute import compute_section, tile_flops
    from benchmarks.devices import device_section, not_measured
    from benchmarks.full_scale import FULL_SCALE_CONFIG, export_row, load_full_scale_results, run_full_scale
    from benchmarks.latency import tile_inputs
    from benchmarks.memory import run_isolated
    from benchmarks.report import (SCHEMA, SCHEMA_VERSION, latency_section, photo_section, plans_section, recommend,
                                   run_sizes, write_report)
    from benchmarks.tiling_plans import candidate_plans
    from runtime_py.manifest import MANIFEST_NAME

    o = options.resolved()
    log = o.log
    started = time.perf_counter()
    out = Path(o.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "mode": "quick" if o.quick else "full",
                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info()}
    _model, label = benchmark_model(o.config)  # the label of the weights every run measures (trained or seeded)
    del _model
    report["model"] = {"config": o.config, **label}
    report["settings"] = {"warmup": o.warmup, "repeats": o.repeats, "tiles_compared": o.tiles,
                          "image_size": o.image_size, "whole_image_measured": o.whole_image,
                          "backends": list(o.backends), "run_timeout_s": o.run_timeout_s,
                          "threads": o.threads or "library default (all cores)",
                          "reused_artifacts": str(o.reuse_artifacts) if o.reuse_artifacts else None}
    report["not_run_in_quick"] = quick_omissions(o)
    skipped = {b: QUICK_SIMULATED_REASON for b in o.backends if get_backend_run(b).simulated and not o.simulated}
    if not o.int8 and "executorch-xnnpack-int8" in o.backends:
        skipped["executorch-xnnpack-int8"] = QUICK_INT8_REASON

    inputs_path = work / "tile_inputs.npz"
    np.savez(inputs_path, **tile_inputs(o.config, o.tiles))
    reference_dir = work / "reference"

    # 1. exports (each in its own process), only those the chosen backends load
    exports: dict[str, Any] = {}
    targets = [get_backend_run(b).artifact for b in o.backends if get_backend_run(b).artifact and b not in skipped]
    targets += list(o.size_only_targets)
    for target in dict.fromkeys(targets):
        reused = o.reuse_artifacts / target if o.reuse_artifacts else None
        if reused is not None and (reused / MANIFEST_NAME).is_file():
            from benchmarks.artifacts import artifact_sizes, check_reusable

            problem = check_reusable(reused, o.config)
            if problem is None:
                exports[target] = {"target": target, "config": o.config, "status": "ok", "reused": str(reused),
                                   "folder": str(reused), "sizes": artifact_sizes(reused), "error": None,
                                   "seconds": 0.0, "peak_rss_bytes": None}
                log(f"[export] {target}: reusing {reused}")
                continue
            log(f"[export] {target}: not reusing {reused}: {problem}")
        log(f"[export] {target} ({o.config}) ...")
        scenes, tiles = CALIBRATION_QUICK if o.quick else CALIBRATION_FULL
        exports[target] = export_row(target, o.config, work / "artifacts" / target, o.run_timeout_s, o.threads,
                                     contexts=not o.quick, calibration_scenes=scenes, calibration_tiles=tiles)
        exports[target]["calibration"] = {"scenes": scenes, "tiles_per_scene": tiles}
        row = exports[target]
        log(f"[export] {target}: {row['status']} in {row['seconds']:.0f} s" + (f": {row['error']}" if row.get("error") else ""))

    # 2. latency per backend (baseline first; each in its own process)
    runs: dict[str, Any] = {}
    for backend in o.backends:
        run = get_backend_run(backend)
        if backend in skipped:
            runs[backend] = _not_run(skipped[backend])
            log(f"[latency] {backend}: {skipped[backend]}")
            continue
        if run.artifact and exports.get(run.artifact, {}).get("status") != "ok":
            runs[backend] = _not_run(f"export {run.artifact} did not succeed: {exports[run.artifact].get('error')}")
            log(f"[latency] {backend}: not measured ({runs[backend]['error'][:160]})")
            continue
        log(f"[latency] {backend} ...")
        kwargs = {"label": backend, "config_name": o.config,
                  "artifacts": exports[run.artifact]["folder"] if run.artifact else None,
                  "inputs_path": str(inputs_path), "reference_dir": str(reference_dir),
                  # A simulator's time means nothing for a phone: time it just enough to show it ran.
                  "warmup": 0 if run.simulated else o.warmup,
                  "repeats": min(o.repeats, 1 if o.quick else SIMULATED_REPEATS) if run.simulated else o.repeats, "whole_image_size": o.image_size if o.whole_image else None,
                  "threads": o.threads}
        result = run_isolated("benchmarks.latency:measure_backend", kwargs, o.run_timeout_s)
        runs[backend] = {"status": result.status, "value": result.value, "error": result.error,
                         "seconds": result.seconds, "peak_rss_bytes": result.peak_rss_bytes}
        if result.ok:
            log(f"[latency] {backend}: tile median {result.value['tile_median_s'] * 1e3:.1f} ms, "
                f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB")
        else:
            log(f"[latency] {backend}: {result.status}: {result.error}")

    # 3. compute (meta device, in this process: no memory)
    log("[compute] counting params, FLOPs and activations ...")
    scales = {"default": o.config}
    if o.compare_sd21 and o.config != FULL_SCALE_CONFIG:
        scales["sd21"] = FULL_SCALE_CONFIG
    compute = compute_section(scales, o.image_size, o.image_size)

    # 4. tiling plans
    plan_specs = candidate_plans(o.config, quick=o.quick)
    if o.plans:
        log(f"[plans] rendering {len(plan_specs)} plans on a {o.image_size} px photo ...")
        result = run_isolated("benchmarks.tiling_plans:evaluate_plans",
                              {"config_name": o.config, "image_size": o.image_size,
                               "plans": [p.to_dict() for p in plan_specs], "threads": o.threads}, o.run_timeout_s)
        plans_raw = {"status": result.status, "value": result.value, "error": result.error,
                     "peak_rss_bytes": result.peak_rss_bytes}
        log(f"[plans] {result.status}" + (f": {result.error}" if result.error else ""))
    else:
        plans_raw = {"status": "skipped", "reason": "skipped (--no-plans)"}
    flops_for_tile = {p.tile: tile_flops(o.config, p.tile) for p in plan_specs}

    # 5. devices measured elsewhere
    hub_roots = [*o.hub_results, *(Path(e["folder"]) for e in exports.values() if e.get("folder"))]
    devices = device_section(hub_roots, [*o.coreml_timings, out])

    # 6. full scale
    if o.full_scale_results is not None:
        full = load_full_scale_results(o.full_scale_results)
        log(f"[full scale] merged {o.full_scale_results} (measured {full.get('finished_utc') or 'earlier'})")
    elif o.full_scale:
        full = run_full_scale(work / "full_scale", timeout_s=o.full_scale_timeout_s, log=log, threads=o.threads)
    else:
        full = not_measured("not run in --quick (an sd21 export takes an hour or more on a CPU): run without --quick, "
                            "with --full-scale, or merge an earlier measurement with --full-scale-results FILE"
                            if o.quick else "not requested (--no-full-scale)")

    latency = latency_section(runs)
    sizes = {b: run_sizes(b, exports, skipped) for b in o.backends}
    plans = plans_section(plans_raw, o.config, flops_for_tile)
    report.update({
        "exports": exports,
        "latency": latency,
        "size": sizes,
        "memory": {b: {"peak_rss_bytes": runs[b].get("peak_rss_bytes"), "status": runs[b]["status"]} for b in o.backends}
                  | {f"export:{t}": {"peak_rss_bytes": e.get("peak_rss_bytes"), "status": e["status"]} for t, e in exports.items()},
        "compute": compute,
        "photo": photo_section(latency, compute, "default"),
        "tiling_plans": plans,
        "devices": devices,
        "full_scale": full,
    })
    report["recommendation"] = recommend(plans, latency, sizes)
    report["seconds"] = time.perf_counter() - started
    paths = write_report(report, out)
    log(f"wrote {paths['json']} and {paths['markdown']} in {report['seconds']:.0f} s")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true",
                   help="reduced set: fewer repeats, one tile, 3 tiling plans, whole-image time derived from per-tile "
                        "times, no ExecuTorch int8, no simulated HTP, no Core ML / full-scale exports (the report lists "
                        "what was left out)")
    p.add_argument("--config", default=None, help="model configuration (default: the default model's, 'small')")
    p.add_argument("--image-size", type=int, default=1024, help="square photo size for the per-image figures (default 1024)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 1 quick / 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 3 quick / 10)")
    p.add_argument("--tiles", type=int, default=None, help="tiles compared for parity (default 1 quick / 4)")
    p.add_argument("--backends", nargs="+", choices=[r.label for r in BACKEND_RUNS], default=None,
                   help="backend runs to measure (default all; the torch baseline is always included)")
    whole = p.add_mutually_exclusive_group()
    whole.add_argument("--whole-image", dest="whole_image", action="store_true", default=None,
                       help="render the whole photo on every backend (default in full mode)")
    whole.add_argument("--no-whole-image", dest="whole_image", action="store_false")
    p.add_argument("--no-plans", action="store_true", help="skip the tiling-plan comparison")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per export / backend run (default 1800)")
    full = p.add_mutually_exclusive_group()
    full.add_argument("--full-scale", dest="full_scale", action="store_true", default=None,
                      help="export the sd21-scale model to each target (default in full mode)")
    full.add_argument("--no-full-scale", dest="full_scale", action="store_false")
    p.add_argument("--full-scale-timeout", type=float, default=3600.0, help="seconds per full-scale export (default 3600)")
    p.add_argument("--full-scale-results", type=Path, default=None, metavar="FILE",
                   help="merge a full-scale JSON measured earlier (benchmarks.full_scale.run_full_scale's result, "
                        "e.g. outputs/full_scale/full_scale_*.json) instead of exporting sd21 again")
    sim = p.add_mutually_exclusive_group()
    sim.add_argument("--simulated", dest="simulated", action="store_true", default=None,
                     help="also time the simulated QNN HTP (default in full mode; minutes per tile on x86)")
    sim.add_argument("--no-simulated", dest="simulated", action="store_false")
    i8 = p.add_mutually_exclusive_group()
    i8.add_argument("--int8", dest="int8", action="store_true", default=None,
                    help="also export and time ExecuTorch XNNPACK int8 (default in full mode; 8-20 min on 2 cores)")
    i8.add_argument("--no-int8", dest="int8", action="store_false")
    p.add_argument("--hub-results", type=Path, action="append", default=[],
                   help="an export/to_qnn.py --hub artifacts folder or hub.json (repeatable)")
    p.add_argument("--coreml-timings", type=Path, action="append", default=[],
                   help="a coreml_mac_timing.json from benchmarks/coreml_mac_timing.py, or its folder (repeatable)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / ONNX Runtime CPU threads in every run (default: the libraries' default, all cores); "
                        "1 gives stable figures on a busy shared machine")
    p.add_argument("--reuse-artifacts", type=Path, default=None,
                   help="folder holding <target>/ artifacts from an earlier run's work/artifacts: skip those exports")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BenchmarkOptions(
        out=args.out, config=args.config, quick=args.quick, image_size=args.image_size, warmup=args.warmup,
        repeats=args.repeats, tiles=args.tiles, whole_image=args.whole_image, plans=not args.no_plans,
        run_timeout_s=args.timeout, full_scale=args.full_scale, full_scale_timeout_s=args.full_scale_timeout,
        hub_results=tuple(args.hub_results), coreml_timings=tuple(args.coreml_timings),
        reuse_artifacts=args.reuse_artifacts, threads=args.threads, full_scale_results=args.full_scale_results,
        simulated=args.simulated,
        int8=args.int8,
    )
    if args.backends:
        options.backends = tuple(args.backends)
    try:
        report = run_benchmark(options)
    except ValueError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    rec = report["recommendation"]
    print(f"plan rule: {rec['plan_rule']}\n  -> {rec['plan_reason']}")
    print(f"precision rule: {rec['precision_rule']}\n  -> {rec['precision_reason']}")
    print(f"report: {Path(options.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
