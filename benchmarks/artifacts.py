"""Produce the artifacts a benchmark measures, by calling the exporters' LIBRARY functions.

Each target is one exporter call into ``<work>/<target>/`` (run in its own process by the caller,
so its time and peak memory are its own). Targets:

* ``executorch-xnnpack-fp32`` / ``executorch-xnnpack-int8``: ``export.executorch_lowering.export_executorch``
  (int8 calibrated on real tiles from ``quantize.calibration``);
* ``qnn-w8a16``: ``export.qnn_lowering.export_qnn``: fp32 ONNX + QDQ ONNX + an HTP context binary;
  the ``onnxruntime-fp32``, ``onnxruntime`` (QDQ) and ``qnn-htp`` backends all load this folder;
* ``onnx-fp32``: ``export.onnx_export.export_onnx`` only (the full-scale ONNX check: no quantization);
* ``coreml-fp16``: ``export.coreml_lowering.export_coreml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runtime_py.components import TILE_COMPONENTS

EXPORT_TARGETS = ("executorch-xnnpack-fp32", "executorch-xnnpack-int8", "qnn-w8a16", "onnx-fp32", "coreml-fp16")


def benchmark_model(config_name: str):
    """The model every run of one benchmark uses: the default model at ``config_name`` (seeded)."""
    from runtime_py.default_model import load_default_model

    return load_default_model(config_name)


def _calibration(components: Any, config: Any, scenes: int, tiles: int):
    from quantize.calibration import build_calibration_set
    from quantize.recipes import CalibrationSpec

    return build_calibration_set(components, config, CalibrationSpec(num_scenes=scenes, max_tiles_per_image=tiles),
                                 components=TILE_COMPONENTS)


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


def export_target(target: str, config_name: str, out_dir: str, calibration_scenes: int = 1,
                  calibration_tiles: int = 2, threads: int | None = None, contexts: bool = True) -> dict[str, Any]:
    """Export the tile components of the benchmark model for ``target`` into ``out_dir``.

    Returns seconds per stage and the artifact sizes; raises on failure (the caller records it).
    ``contexts=False`` skips precompiling the QNN context binary (the HTP then compiles the QDQ model
    when it loads it, inside its own timed run).
    """
    if target not in EXPORT_TARGETS:
        raise ValueError(f"unknown export target {target!r}; choose one of {EXPORT_TARGETS}")
    from runtime_py.checkpoints import weights_sha256
    from runtime_py.components import tile_components

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    started = time.perf_counter()
    model, label = benchmark_model(config_name)
    components = tile_components(model)
    config = model.config
    digest = weights_sha256(model)
    build_seconds = time.perf_counter() - started
    out = Path(out_dir)
    start = time.perf_counter()
    if target.startswith("executorch-"):
        from export.executorch_lowering import export_executorch

        recipe = target.removeprefix("executorch-")
        calibration = None
        if recipe.endswith("int8"):
            calibration = _calibration(components, config, calibration_scenes, calibration_tiles).as_torch()
        export_executorch(components, out, recipe=recipe, config=config, weights_sha256=digest, model_label=label,
                          calibration=calibration, names=TILE_COMPONENTS)
        sizes = artifact_sizes(out)
    elif target == "qnn-w8a16":
        from export.qnn_lowering import QnnOptions, export_qnn
        from quantize.recipes import CalibrationSpec

        options = QnnOptions(recipe="w8a16", calibration=CalibrationSpec(num_scenes=calibration_scenes,
                                                                        max_tiles_per_image=calibration_tiles),
                             contexts=contexts)
        export_qnn(components, out, options=options, names=TILE_COMPONENTS, config=config.to_dict(),
                   weights_sha256=digest, model_label=label, parity=False, log=lambda _m: None)
        sizes = artifact_sizes(out)
    elif target == "onnx-fp32":
        from export.onnx_export import export_onnx

        out.mkdir(parents=True, exist_ok=True)
        sizes = {"backend": "onnx", "precision": "fp32", "components": {}}
        for name in TILE_COMPONENTS:
            result = export_onnx(components[name], out / f"{name}.fp32.onnx", target="qnn")
            sizes["components"][name] = {"fp32": int(result.bytes)}
    else:  # coreml-fp16
        from export.coreml_lowering import CoreMLOptions, export_coreml

        export_coreml(components, out, options=CoreMLOptions(precision="fp16"), names=TILE_COMPONENTS, config=config,
                      weights_sha256=digest, model_label=label, parity=False, log=lambda _m: None)
        sizes = artifact_sizes(out)
    return {"target": target, "config": config.name, "folder": str(out), "build_model_seconds": build_seconds,
            "export_seconds": time.perf_counter() - start, "sizes": sizes}
