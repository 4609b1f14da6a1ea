"""The QNN export as a library: components -> ONNX -> HTP rewrites -> QDQ -> context binaries.

Components: the three tile components (encoder, denoiser, decoder) and the depth component
(Depth Anything V2 at its static square input, calibrated on host-resized photos).

For each component: export to ONNX (static shapes, opset 21), rewrite the graph for the HTP
(``export.qnn_rewrites``), quantize to QDQ with ONNX Runtime's QNN configuration calibrated on
real tiles (``quantize.qnn``, ``quantize.calibration``), then compile it on the HTP backend of
onnxruntime-qnn with CPU fallback disabled, once per chosen Snapdragon SoC, saving the EPContext
model (the precompiled context binary embedded in a one-node ONNX file). A component that does not
run entirely on the HTP fails the export with the reason; nothing silently falls back.

The artifacts folder (``manifest.json`` backend ``"qnn"``) holds per component the fp32 ONNX file
(after the rewrites), the QDQ file (the manifest's main file) and one context model per SoC. The
parity report separates the two sources of error: QDQ on the CPU against the fp32 torch reference
(quantization) and the HTP against QDQ on the CPU (backend), per component and end to end.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from quantize.recipes import CalibrationSpec, QuantRecipe, get_recipe
from runtime_py.atomic import atomic_path
from runtime_py.backends.onnxruntime_backend import DEFAULT_SOC, SOCS, HtpLoadError, htp_session, soc_options
from runtime_py.components import Component
from runtime_py.manifest import ComponentEntry, Manifest, write_manifest
from runtime_py.memory import peak_rss_mib

from .onnx_export import DEFAULT_OPSET, export_onnx, model_bytes
from .prepare import ExportError
from .qnn_rewrites import rewrite_for_htp

QNN_BACKEND = "qnn"
QNN_RECIPES = ("w8a16", "w8a8")
#: Qualcomm's own bar for a quantized component against its float reference (AI Hub's PSNR check).
W8A16_COMPONENT_PSNR_DB = 30.0


@dataclass
class QnnOptions:
    """How to lower: recipe, target SoCs, calibration, overrides, opset."""

    recipe: str = "w8a16"
    socs: tuple[str, ...] = (DEFAULT_SOC,)
    calibration: CalibrationSpec = field(default_factory=lambda: CalibrationSpec(num_scenes=4, max_tiles_per_image=4))
    images_dir: str | None = None
    overrides: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # component -> tensor -> entries
    opset: int = DEFAULT_OPSET
    focus: str | None = None
    contexts: bool = True
    #: Photos that calibrate the depth component. One photo is one depth input (against several
    #: tiles per photo for the tile components), and min/max ranges from a handful of photos did
    #: not generalise: on held-out scenes the W8A16 depth measured ~24 dB from 1 photo, 30-37 dB
    #: from 4 and 36-44 dB from 16 (test-size network, 70-px input).
    depth_calibration_images: int = 16

    def validate(self) -> "QnnOptions":
        if self.recipe not in QNN_RECIPES:
            raise ValueError(f"the QNN path supports recipes {QNN_RECIPES}, not {self.recipe!r}")
        if not self.socs:
            raise ValueError("name at least one Snapdragon SoC")
        if self.depth_calibration_images < 1:
            raise ValueError(f"depth_calibration_images must be >= 1, got {self.depth_calibration_images}")
        self.socs = tuple(s.upper() for s in self.socs)
        for soc in self.socs:
            soc_options(soc)
        return self

    @property
    def quant_recipe(self) -> QuantRecipe:
        return get_recipe(self.recipe).with_calibration(**self.calibration.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "socs": list(self.socs), "calibration": self.calibration.to_dict(),
                "depth_calibration_images": self.depth_calibration_images,
                "images_dir": self.images_dir, "opset": self.opset, "focus": self.focus, "contexts": self.contexts,
                "overrides": {c: {t: [{k: getattr(v, "name", v) for k, v in e.items()} for e in entries]
                                  for t, entries in o.items()} for c, o in self.overrides.items()}}


@dataclass
class QnnExportResult:
    folder: Path
    manifest: Manifest
    stages: dict[str, dict[str, Any]]
    parity: dict[str, Any]
    seconds: float
    peak_rss_mib: float


def depth_calibration_set(components: Mapping[str, Component], options: QnnOptions, config: Any):
    """Calibration photos for the depth component (a ``CalibrationSet`` with ``depth`` only).

    Generated scenes at the depth input's size (the host resizes every photo to that square
    anyway, and smaller scenes are quicker to generate), plus the user's photos if given.
    """
    from quantize.calibration import collect_calibration
    from runtime_py.samples import gather_samples

    spec = options.calibration
    samples = gather_samples(config, num_scenes=options.depth_calibration_images, images_dir=options.images_dir,
                             seed=spec.seed, scene_size=config.depth_input, K=spec.K)
    result = collect_calibration(components, samples, config, components=["depth"])
    result.spec.update({"num_scenes": options.depth_calibration_images, "scene_size": config.depth_input,
                        "seed": spec.seed, "images_dir": options.images_dir})
    return result


def file_names(name: str, precision: str, soc: str | None = None) -> str:
    """The artifact file names: ``<c>.fp32.onnx``, ``<c>.<precision>.onnx``, ``<c>.<precision>.<soc>.ctx.onnx``."""
    if precision == "fp32":
        return f"{name}.fp32.onnx"
    return f"{name}.{precision}.{soc}.ctx.onnx" if soc else f"{name}.{precision}.onnx"


def compile_context(qdq_path: Path, ctx_path: Path, soc: str) -> float:
    """Compile a QDQ model on the HTP with CPU fallback disabled and save its EPContext model; seconds."""
    start = time.perf_counter()
    try:
        session = htp_session(qdq_path, soc, context_path=ctx_path)
    except HtpLoadError as exc:
        raise ExportError(str(exc)) from exc
    del session
    if not ctx_path.exists():
        raise ExportError(f"the QNN EP did not write a context model for {qdq_path.name} ({soc})")
    return time.perf_counter() - start


def export_qnn(
    components: Mapping[str, Component],
    out: Path | str,
    *,
    options: QnnOptions | None = None,
    names: Sequence[str] | None = None,
    config: Mapping[str, Any],
    weights_sha256: str,
    model_label: Any = "",
    parity: bool = True,
    parity_scenes: int = 1,
    parity_max_tiles: int | None = 4,
    parity_scene_size: int | None = None,
    log: Callable[[str], None] = print,
) -> QnnExportResult:
    """Lower the named components to QNN artifacts in ``out`` (replaced atomically).

    ``parity_max_tiles`` and ``parity_scene_size`` bound the parity step's simulated-HTP work (the
    report records how many HTP runs it made and how long they took).
    """
    from quantize.calibration import build_calibration_set
    from quantize.qnn import quantize_qdq
    from runtime_py.model import MagicBokehConfig

    options = (options or QnnOptions()).validate()
    names = list(names or components)
    unknown = [n for n in names if n not in components]
    if unknown:
        raise ValueError(f"unknown components {unknown}; available: {sorted(components)}")
    recipe = options.quant_recipe
    precision = recipe.precision_label
    model_config = MagicBokehConfig.from_dict(dict(config))
    started = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {n: {} for n in names}
    entries: dict[str, ComponentEntry] = {}
    parity_report: dict[str, Any] = {}
    out = Path(out)
    with atomic_path(out) as folder:
        folder.mkdir(parents=True)
        start = time.perf_counter()
        calibration_inputs: dict[str, list] = {}
        calibration_info: dict[str, Any] = {}
        tile_names = [n for n in names if n != "depth"]
        if tile_names:
            log(f"calibration: {recipe.calibration.num_scenes} scenes, up to {recipe.calibration.max_tiles_per_image} tiles each")
            calibration = build_calibration_set(components, model_config, recipe.calibration, components=tile_names,
                                                images_dir=options.images_dir)
            calibration_inputs.update(calibration.inputs)
            calibration_info["tiles"] = calibration.describe()
        if "depth" in names:
            log(f"calibration (depth): {options.depth_calibration_images} generated photos")
            depth_set = depth_calibration_set(components, options, model_config)
            calibration_inputs["depth"] = depth_set.inputs["depth"]
            calibration_info["depth"] = depth_set.describe()
        calibration_seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            for name in names:
                stage = stages[name]
                log(f"{name}: ONNX export (opset {options.opset})")
                raw = export_onnx(components[name], Path(tmp) / f"{name}.raw.onnx", opset=options.opset,
                                  target="qnn", focus=options.focus)
                stage["onnx_export"] = raw.to_dict() | {"path": None}
                fp32_file = file_names(name, "fp32")
                start = time.perf_counter()
                rewrites = rewrite_for_htp(raw.path, folder / fp32_file, name, external_data=raw.external_data)
                stage["rewrites"] = rewrites.to_dict() | {"seconds": time.perf_counter() - start}
                log(f"{name}: {rewrites.folded_nodes} nodes folded, {rewrites.bias_adds_to_sub} bias adds -> sub; "
                    f"quantizing {precision} on {len(calibration_inputs[name])} real inputs")
                qdq_file = file_names(name, precision)
                quant = quantize_qdq(folder / fp32_file, folder / qdq_file, calibration_inputs[name], component=name,
                                     recipe=recipe, overrides=options.overrides.get(name),
                                     external_data=raw.external_data)
                stage["quantize"] = quant.to_dict() | {"path": qdq_file}
                contexts: dict[str, str] = {}
                if options.contexts:
                    for soc in options.socs:
                        ctx_file = file_names(name, precision, soc)
                        log(f"{name}: compiling on the HTP for {soc} ({SOCS[soc]['name']}), CPU fallback disabled")
                        seconds = compile_context(folder / qdq_file, folder / ctx_file, soc)
                        contexts[soc] = ctx_file
                        stage.setdefault("contexts", {})[soc] = {"file": ctx_file, "seconds": seconds,
                                                                 "bytes": model_bytes(folder / ctx_file)}
                stage["bytes"] = {"fp32": model_bytes(folder / fp32_file), "qdq": model_bytes(folder / qdq_file)}
                entries[name] = ComponentEntry.from_component(
                    components[name], qdq_file, precision,
                    fp32_file=fp32_file, context_files=contexts, runs_entirely_on_htp=bool(contexts),
                    focus_implementation=raw.focus_implementation, opset=options.opset,
                    rewrites=stage["rewrites"], quantization=stage["quantize"],
                )
        manifest = Manifest(
            backend=QNN_BACKEND,
            config=dict(config),
            weights_sha256=weights_sha256,
            components=entries,
            precision=precision,
            recipe=recipe.to_dict() | {"qnn": options.to_dict()},
            model_label=model_label,
            extra={"socs": {s: SOCS[s] for s in options.socs}, "calibration": calibration_info,
                   "calibration_seconds": calibration_seconds},
        )
        write_manifest(folder, manifest)
        if parity:
            log("parity: fp32 torch vs CPU QDQ (quantization) and CPU QDQ vs HTP (backend)")
            parity_report = run_split_parity(folder, components, names, model_config, options.socs[0],
                                             num_scenes=parity_scenes, max_tiles=parity_max_tiles,
                                             scene_size=parity_scene_size,
                                             quant_threshold=W8A16_COMPONENT_PSNR_DB if options.recipe == "w8a16" else None,
                                             meta={"recipe": precision, "artifacts": str(out), "model_label": model_label})
    seconds = time.perf_counter() - started
    return QnnExportResult(out, manifest, stages, parity_report, seconds, peak_rss_mib())


def run_split_parity(
    folder: Path,
    components: Mapping[str, Component],
    names: Sequence[str],
    config: Any,
    soc: str,
    *,
    num_scenes: int = 1,
    max_tiles: int | None = 4,
    scene_size: int | None = None,
    quant_threshold: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantization error (CPU QDQ vs fp32 torch) and backend error (HTP vs CPU QDQ); writes parity.*

    Every backend's callables are memoised (:class:`MemoisedFn`): the three comparisons feed the
    same inputs to the same backend, so each distinct HTP run happens once (the simulator takes
    seconds to minutes per 512-px tile) and the "total" figure uses the very HTP outputs the
    "backend" figure used. The HTP's run count and seconds go into the report's meta.
    """
    from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend, QnnHtpBackend
    from runtime_py.backends.torch_backend import wrap_component
    from runtime_py.parity import ParityThresholds, run_split_parity as split, write_split_parity_report
    from runtime_py.samples import gather_samples

    started = time.perf_counter()
    samples = gather_samples(config, num_scenes=num_scenes, seed=4321, scene_size=scene_size)  # not the calibration seed
    reference = {n: MemoisedFn(wrap_component(components[n])) for n in names}
    cpu = {n: MemoisedFn(fn) for n, fn in OnnxRuntimeBackend("qdq").load(folder, tuple(names)).items()}
    device = {n: MemoisedFn(fn) for n, fn in QnnHtpBackend(soc).load(folder, tuple(names)).items()}
    results = split(reference, cpu, device, samples, config=config, max_tiles_per_image=max_tiles,
                    quantization_thresholds=ParityThresholds(min_psnr_component=quant_threshold),
                    meta=dict(meta or {}) | {"soc": soc})
    htp = {"htp_calls": {n: fn.calls for n, fn in device.items()},
           "htp_seconds": sum(fn.seconds for fn in device.values()),
           "htp_seconds_per_component": {n: fn.seconds for n, fn in device.items()},
           "parity_seconds": time.perf_counter() - started,
           "scene_size": samples[0].shape[0], "max_tiles_per_image": max_tiles}
    for result in results.values():
        result.meta.update(htp)
    write_split_parity_report(results, folder, title=f"QNN parity ({meta.get('recipe') if meta else ''}, {soc})")
    return {key: result.to_dict() for key, result in results.items()}


class MemoisedFn:
    """A component callable that runs each distinct input once and counts its real runs and seconds.

    Why: parity compares three backends pairwise, so without this every HTP input would be
    simulated twice. Keys are a SHA-1 of the inputs' shapes, dtypes and bytes; outputs are kept
    (a few MiB at most: tiles and one depth map per scene).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.cache: dict[str, Any] = {}
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, *arrays: Any) -> Any:
        import numpy as np

        digest = hashlib.sha1()
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(array.tobytes())
        key = digest.hexdigest()
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = np.asarray(self.fn(*arrays))
            self.seconds += time.perf_counter() - start
            self.calls += 1
        return self.cache[key].copy()


def summary_rows(result: QnnExportResult) -> list[tuple[str, ...]]:
    """One row per component: sizes and the two parity figures (for the CLI's table)."""
    rows = []
    for name, stage in result.stages.items():
        q = result.parity.get("quantization", {}).get("components", {}).get(name, {})
        b = result.parity.get("backend", {}).get("components", {}).get(name, {})
        ctx = stage.get("contexts", {})
        rows.append((
            name,
            result.manifest.precision,
            f"{stage['bytes']['fp32'] / 2**20:.1f} MiB",
            f"{stage['bytes']['qdq'] / 2**20:.1f} MiB",
            ", ".join(f"{s} {v['bytes'] / 2**20:.1f} MiB" for s, v in ctx.items()) or "-",
            f"{q['psnr_db']:.1f}" if q else "-",
            f"{b['psnr_db']:.1f}" if b else "-",
        ))
    return rows
