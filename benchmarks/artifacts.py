"""Produce the artifacts a benchmark measures: any registry target (``export/targets.py``) through
the one export flow (``export.flow.export_target``), into ``<work>/<target>/``.

Each export runs in its own process (the caller's ``benchmarks.memory.run_isolated``), so its time
and peak memory are its own. The benchmark skips the flow's verify step: it measures parity itself,
against the torch baseline of the same run, on the same tiles for every backend. The ``qnn-w8a16``
folder is loaded by three backend runs (``onnxruntime-fp32``, ``onnxruntime`` QDQ and ``qnn-htp``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime_py.components import TILE_COMPONENTS

def benchmark_model(config_name: str):
    """The model every run of one benchmark uses: the default model at ``config_name`` (seeded)."""
    from runtime_py.default_model import load_default_model

    return load_default_model(config_name)


def artifact_sizes(folder: Path | str) -> dict[str, Any]:
    """Bytes per component and file kind, read from the folder's manifest (and the files it names)."""
    from runtime_py.manifest import read_manifest, size_bytes

    folder = Path(folder)
    manifest = read_manifest(folder, verify_files=False)
    out: dict[str, Any] = {"backend": manifest.backend, "precision": manifest.precision, "components": {}}
    for name, entry in manifest.components.items():
        sizes = {manifest.precision: int(entry.bytes)}
        extra = entry.extra
        if extra.get("fp32_file"):
            sizes["fp32"] = size_bytes(folder / extra["fp32_file"]) + _data_bytes(folder / extra["fp32_file"])
        for soc, file in (extra.get("context_files") or {}).items():
            sizes[f"{manifest.precision}-context-{soc}"] = size_bytes(folder / file)
        if entry.parts:  # one size per part file; whether each context fits the phone's per-part limit
            del sizes[manifest.precision]
            rows = []
            for part in entry.parts:
                label = f"{manifest.precision}-part{part.index}"
                sizes[label] = size_bytes(folder / part.file) + _data_bytes(folder / part.file)
                contexts = {soc: size_bytes(folder / f) for soc, f in part.context_files.items()}
                for soc, size in contexts.items():
                    sizes[f"{label}-context-{soc}"] = size
                rows.append({"index": part.index, "bytes": sizes[label], "context_bytes": contexts,
                             "fits_part_limit": part.extra.get("fits_part_limit")})
            out.setdefault("parts", {})[name] = {"max_part_mb": (extra.get("split") or {}).get("max_part_mb"),
                                                 "parts": rows}
        out["components"][name] = sizes
    return out


def check_reusable(folder: Path | str, config_name: str) -> str | None:
    """Why an existing artifacts folder cannot stand for the benchmark model (None: it can).

    Parity against the torch baseline is only meaningful when the artifacts hold the same weights.
    """
    from runtime_py.checkpoints import weights_sha256
    from runtime_py.manifest import ManifestError, read_manifest

    try:
        manifest = read_manifest(folder)
    except (ManifestError, OSError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.config.get("name") != config_name:
        return f"it holds config {manifest.config.get('name')!r}, the benchmark measures {config_name!r}"
    missing = [n for n in TILE_COMPONENTS if n not in manifest.components]
    if missing:
        return f"it lacks components {missing}"
    model, _ = benchmark_model(config_name)
    if manifest.weights_sha256 != weights_sha256(model):
        return "its weights differ from the benchmark model's (the default model of that config)"
    return None


def _data_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return data.stat().st_size if data.exists() else 0


def export_for_benchmark(target: str, config_name: str, out_dir: str, calibration_scenes: int = 1,
                         calibration_tiles: int = 2, threads: int | None = None, contexts: bool = True,
                         max_part_mb: float | None = None) -> dict[str, Any]:
    """Export the tile components of the benchmark model for registry ``target`` into ``out_dir``.

    Returns seconds per step and the artifact sizes; raises on failure (the caller records it).
    ``contexts=False`` skips precompiling QNN context binaries (the HTP then compiles the QDQ model
    when it loads it, inside its own timed run); ``max_part_mb`` overrides a QNN target's part limit.
    """
    from export.flow import ExportSettings, export_target
    from export.targets import get_target

    spec = get_target(target)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    started = time.perf_counter()
    model, label = benchmark_model(config_name)
    build_seconds = time.perf_counter() - started
    calibration = spec.recipe.quantization.calibration
    if calibration is not None:
        calibration = replace(calibration, num_scenes=calibration_scenes, max_tiles_per_image=calibration_tiles)
    options = {"contexts": False} if not contexts and "contexts" in spec.recipe.lowering.options else {}
    if max_part_mb is not None:  # the QNN targets' per-part limit (MiB of estimated context binary)
        options["max_part_mb"] = max_part_mb
    settings = ExportSettings(components=TILE_COMPONENTS, calibration=calibration, options=options)
    result = export_target(spec, model, out_dir, skip=("verify",), settings=settings, model_label=label,
                           log=lambda _m: None)
    return {"target": target, "config": model.config.name, "folder": str(out_dir), "build_model_seconds": build_seconds,
            "export_seconds": result.seconds, "steps": {k: round(v.seconds, 2) for k, v in result.steps.items()},
            "sizes": artifact_sizes(out_dir), "thresholds": spec.thresholds()}
