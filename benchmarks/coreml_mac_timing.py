"""Time Core ML packages on a Mac: ``python benchmarks/coreml_mac_timing.py ARTIFACTS [--out FILE]``.

Core ML only runs on Apple OSes (``MLModel.predict`` does not exist in Linux builds of
coremltools), so the benchmark on Linux cannot time it. Run this on a Mac with the folder that
``export/to_coreml.py`` wrote; it loads every component once per compute-unit setting (all,
cpu_and_ne, cpu_and_gpu, cpu_only), runs ``warmup`` untimed and ``repeats`` timed predictions
on inputs of the declared shapes, and writes ``coreml_mac_timing.json`` (median and p90 per
component and compute unit, plus load time and the machine). Pass that file to
``python benchmarks/run.py --coreml-timings FILE`` to merge it into the report.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMPUTE_UNITS = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")
SCHEMA = "magicbokeh-coreml-mac-timing"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (the Mac model when sysctl can say)."""
    info: dict[str, Any] = {"system": platform.system(), "release": platform.mac_ver()[0] or platform.release(),
                            "arch": platform.machine()}
    try:
        info["name"] = subprocess.run(["sysctl", "-n", "hw.model"], capture_output=True, text=True,
                                      timeout=5).stdout.strip() or platform.node()
    except (OSError, subprocess.SubprocessError):
        info["name"] = platform.node()
    return info


def time_package_folder(folder: Path, compute_units: Sequence[str], warmup: int, repeats: int) -> dict[str, Any]:
    """{compute_units: {component: {load_s, median_s, p90_s, ...}}} for one Core ML artifacts folder."""
    import numpy as np

    from benchmarks.latency import time_callable
    from runtime_py.backends.coreml_backend import _chain, _mlmodel_piece, coreml_runtime_available
    from runtime_py.manifest import read_manifest

    if not coreml_runtime_available():
        raise SystemExit("error: Core ML predictions need macOS with coremltools' native runtime "
                         "(coremltools.libcoremlpython); this machine cannot time Core ML")
    manifest = read_manifest(folder)
    if manifest.backend != "coreml":
        raise SystemExit(f"error: {folder} holds {manifest.backend!r} artifacts, not Core ML (export/to_coreml.py)")
    results: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for units in compute_units:
        results[units] = {}
        for name, entry in manifest.components.items():
            chunks = entry.extra.get("chunks") or [{"file": entry.file, "inputs": [s["name"] for s in entry.inputs],
                                                    "outputs": [s["name"] for s in entry.outputs]}]
            dtype = np.float16 if entry.extra.get("io_dtype") == "float16" else np.float32
            inputs = []
            for spec in entry.inputs:
                lo, hi = spec.get("value_range") or (-1.0, 1.0)
                inputs.append((rng.random(spec["shape"]) * (hi - lo) + lo).astype(dtype))
            try:
                start = time.perf_counter()
                pieces = [_mlmodel_piece(folder / c["file"], units) for c in chunks]
                load_s = time.perf_counter() - start
                fn = _chain(name, entry, chunks, pieces)
                stats, _ = time_callable(fn, inputs, warmup, repeats)
                results[units][name] = {"load_s": load_s, **stats.to_dict(), "chunks": len(chunks)}
            except Exception as exc:  # one setting failing (e.g. no ANE) must not hide the others
                results[units][name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"precision": manifest.precision, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/coreml_mac_timing.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="Core ML artifacts folder (export/to_coreml.py output)")
    parser.add_argument("--out", type=Path, default=Path("coreml_mac_timing.json"), help="JSON to write")
    parser.add_argument("--compute-units", nargs="+", choices=COMPUTE_UNITS, default=list(COMPUTE_UNITS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    if not args.artifacts.is_dir():
        parser.error(f"artifacts folder {args.artifacts} does not exist")
    from runtime_py.atomic import write_json

    timed = time_package_folder(args.artifacts, args.compute_units, args.warmup, args.repeats)
    data = {"schema": SCHEMA, "machine": machine_info(), "artifacts": str(args.artifacts),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timed}
    write_json(args.out, data)
    for units, rows in timed["results"].items():
        for name, row in rows.items():
            figure = f"{row['median_s'] * 1e3:.1f} ms" if "median_s" in row else row.get("error")
            print(f"{units:<12} {name:<9} {figure}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
