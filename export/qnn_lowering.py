"""The ``qnn`` family's lowering: components -> ONNX -> HTP rewrites -> QDQ -> context binaries.

Components: the three tile components (encoder, denoiser, decoder) and the depth component
(Depth Anything V2 at its static square input, calibrated on host-resized photos).

For each component: export to ONNX (static shapes, opset 21), rewrite the graph for the HTP
(``export.qnn_rewrites``), quantize to QDQ with ONNX Runtime's QNN configuration on the flow's
calibration inputs (real tiles; ``quantize.qnn``), then compile it on the HTP backend of
onnxruntime-qnn with CPU fallback disabled, once per chosen Snapdragon SoC, saving the EPContext
model (the precompiled context binary embedded in a one-node ONNX file). A component that does not
run entirely on the HTP fails the export with the reason; nothing silently falls back. An fp32
target (``onnx-fp32``) stops after the rewrites.

The artifacts folder (``manifest.json`` backend ``"qnn"``) holds per component the fp32 ONNX file
(after the rewrites), the QDQ file (the manifest's main file) and one context model per SoC. The
verify step separates the two sources of error: QDQ on the CPU against the fp32 torch reference
(quantization) and the HTP against QDQ on the CPU (backend), per component and end to end.

Calibration streams activation ranges by default (``quantize.streaming_calibration``: one session,
a running min/max per tensor; the same ranges as onnxruntime's MinMax calibrator in a model's worth
of memory, which is what lets the SD2.1-size denoiser quantize on a 24 GB host).

A component whose estimated context binary (:func:`estimated_context_bytes`) would pass
``max_part_mb`` is split (``export.qnn_split``) into parts run in sequence: the whole fp32 graph is
calibrated once, each part is quantized with those ranges and compiled on its own, and the
manifest lists the parts (``ComponentEntry.parts``) with their files and tensor names. The verify
step then also measures each part on its own (fed the fp32 parts' intermediate tensors), with the
wall time of each part's HTP run.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runtime_py.backends.onnxruntime_backend import DEFAULT_SOC, SOCS, HtpLoadError, htp_session, soc_options
from runtime_py.components import Component
from runtime_py.manifest import ComponentEntry, ComponentPart

from .onnx_export import DEFAULT_OPSET, export_onnx
from .prepare import ExportError
from .qnn_rewrites import rewrite_for_htp

#: A context binary holds the weights at the recipe's bit width plus what the estimate leaves out
#: (per-channel scales, int32 biases, the compiled graph); this allowance on the weights' share
#: is a planning margin, not a measurement: each part's real context size is recorded in the
#: manifest (``context_bytes``, ``fits_part_limit``).
CONTEXT_MARGIN = 1.25
CALIBRATIONS = ("streaming", "onnxruntime")


@dataclass
class Options:
    """The QNN lowering's settings: target SoCs, per-tensor bit overrides, opset, focus, contexts."""

    socs: tuple[str, ...] = (DEFAULT_SOC,)
    overrides: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # component -> tensor -> entries
    opset: int = DEFAULT_OPSET
    focus: str | None = None
    contexts: bool = True
    #: Split a component whose estimated context binary passes this many MiB (None: never split).
    max_part_mb: float | None = None
    #: Activation calibration: "streaming" (running min/max, fits any size) or "onnxruntime" (its own).
    calibration: str = "streaming"

    def validate(self) -> "Options":
        if not self.socs:
            raise ValueError("name at least one Snapdragon SoC")
        if self.max_part_mb is not None and not self.max_part_mb > 0:
            raise ValueError(f"the part limit must be a positive number of MiB, got {self.max_part_mb}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        self.socs = tuple(s.upper() for s in self.socs)
        for soc in self.socs:
            soc_options(soc)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"socs": list(self.socs), "opset": self.opset, "focus": self.focus, "contexts": self.contexts,
                "max_part_mb": self.max_part_mb, "calibration": self.calibration,
                "overrides": {c: {t: [{k: getattr(v, "name", v) for k, v in e.items()} for e in entries]
                                  for t, entries in o.items()} for c, o in self.overrides.items()}}


def file_names(name: str, precision: str, soc: str | None = None, part: int | None = None) -> str:
    """The artifact file names: ``<c>.fp32.onnx``, ``<c>.<precision>.onnx``, ``<c>.<precision>.<soc>.ctx.onnx``;
    a part of a split component inserts ``.part<i>`` after the precision."""
    stem = f"{name}.{precision}" + (f".part{part}" if part is not None else "")
    if precision == "fp32":
        return f"{stem}.onnx"
    return f"{stem}.{soc}.ctx.onnx" if soc else f"{stem}.onnx"


def fp32_weight_bytes(model_path: Path | str) -> int:
    """Bytes of a model's initializers as stored (read without loading external weights)."""
    import onnx

    from .qnn_split import tensor_bytes

    model = onnx.load(str(model_path), load_external_data=False)
    return sum(tensor_bytes(init) for init in model.graph.initializer)


def context_bytes_per_weight_byte(recipe: Any) -> float:
    """Estimated context-binary bytes per fp32 weight byte: the recipe's weight bits / 32, with the margin."""
    bits = recipe.weight_bits if recipe.quantized and recipe.weight_bits else 32
    return bits / 32 * CONTEXT_MARGIN


def estimated_context_bytes(weight_bytes: int, recipe: Any) -> int:
    """The planning estimate of a context binary holding ``weight_bytes`` of fp32 weights."""
    return int(weight_bytes * context_bytes_per_weight_byte(recipe))


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


def lower(job: Any) -> Any:
    """The flow's lower step: per component the rewritten fp32 ONNX, the QDQ model, one context per SoC."""
    from export.flow import LoweringOutput
    from quantize.qnn import quantize_qdq

    options, target = job.options, job.target
    recipe = target.recipe.quantization
    precision = target.precision
    contexts_on = options.contexts and recipe.quantized
    entries: dict[str, ComponentEntry] = {}
    folder = job.folder
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        for name in job.names:
            stage: dict[str, Any] = {}
            job.log(f"[lower] {name}: ONNX export (opset {options.opset})")
            raw = export_onnx(job.components[name], Path(tmp) / f"{name}.raw.onnx", opset=options.opset,
                              target="qnn", focus=options.focus)
            seconds = {"onnx_export": raw.seconds}
            fp32_file = file_names(name, "fp32")
            start = time.perf_counter()
            rewrites = rewrite_for_htp(raw.path, folder / fp32_file, name, external_data=raw.external_data)
            seconds["rewrites"] = time.perf_counter() - start
            stage["rewrites"] = rewrites.to_dict() | {"seconds": seconds["rewrites"]}
            job.log(f"[lower] {name}: {rewrites.folded_nodes} nodes folded, {rewrites.bias_adds_to_sub} bias adds -> sub")
            weights = fp32_weight_bytes(folder / fp32_file)
            estimate = estimated_context_bytes(weights, recipe)
            limit = None if options.max_part_mb is None else int(options.max_part_mb * 2**20)
            if limit is not None and estimate > limit:
                entries[name] = _lower_parts(job, name, fp32_file, weights, limit, Path(tmp), raw, seconds, stage)
                continue
            main_file, contexts = fp32_file, {}
            if recipe.quantized:
                qdq_file = file_names(name, precision)
                batches = job.calibration.inputs[name]
                job.log(f"[lower] {name}: quantizing {precision} on {len(batches)} real inputs "
                        f"({options.calibration} calibration)")
                overrides = dict(options.overrides.get(name) or {})
                if recipe.sensitivity_mixed:
                    from quantize.qnn import mixed_overrides

                    chosen, stage["mixed_precision"] = mixed_overrides(folder / fp32_file, job.components[name], batches,
                                                                       recipe, name, log=job.log)
                    overrides = chosen | overrides  # the user's per-tensor overrides win
                quant = quantize_qdq(folder / fp32_file, folder / qdq_file, batches, component=name, recipe=recipe,
                                     overrides=overrides or None, external_data=raw.external_data,
                                     calibration=options.calibration)
                seconds["quantize"] = quant.seconds
                stage["quantization"] = quant.to_dict() | {"path": qdq_file}
                main_file = qdq_file
            for soc in options.socs if contexts_on else ():
                ctx_file = file_names(name, precision, soc)
                job.log(f"[lower] {name}: compiling on the HTP for {soc} ({SOCS[soc]['name']}), CPU fallback disabled")
                seconds[f"context_{soc}"] = compile_context(folder / main_file, folder / ctx_file, soc)
                contexts[soc] = ctx_file
            sizes = {"weight_bytes": weights, "estimated_context_bytes": estimate}
            if contexts:
                sizes["context_bytes"] = {soc: (folder / f).stat().st_size for soc, f in contexts.items()}
                sizes["fits_part_limit"] = None if limit is None else max(sizes["context_bytes"].values()) <= limit
            entries[name] = ComponentEntry.from_component(
                job.components[name], main_file, precision,
                fp32_file=fp32_file, context_files=contexts, runs_entirely_on_htp=bool(contexts),
                focus_implementation=raw.focus_implementation, opset=options.opset,
                seconds={k: round(v, 3) for k, v in seconds.items()}, **sizes, **stage,
            )
    return LoweringOutput(entries, {"socs": {s: SOCS[s] for s in options.socs}})


def _lower_parts(job: Any, name: str, fp32_file: str, weights: int, limit: int, tmp: Path, raw: Any,
                 seconds: dict[str, float], stage: dict[str, Any]) -> ComponentEntry:
    """Split the rewritten fp32 graph under ``limit`` estimated context bytes per part; calibrate the
    whole graph once (streaming); quantize and compile each part on its own. Parts land in the
    folder as ``<c>.fp32.part<i>.onnx``, ``<c>.<precision>.part<i>.onnx`` and one context per SoC."""
    import shutil

    from quantize.qnn import calibrate_whole_graph, quantize_qdq

    from .qnn_split import split_model

    options, recipe, folder = job.options, job.target.recipe.quantization, job.folder
    precision = job.target.precision
    contexts_on = options.contexts and recipe.quantized
    budget = int(limit / context_bytes_per_weight_byte(recipe))
    start = time.perf_counter()
    split_dir = tmp / f"{name}.parts"
    split = split_model(folder / fp32_file, split_dir, budget, stem=f"{name}.fp32.split",
                        external_data=raw.external_data)
    seconds["split"] = time.perf_counter() - start
    job.log(f"[lower] {name}: estimated context {estimated_context_bytes(weights, recipe) / 2**20:.1f} MiB > "
            f"{limit / 2**20:g} MiB: split into {len(split.parts)} parts of <= {budget / 2**20:.1f} MiB fp32 weights")
    whole = None
    if recipe.quantized:
        if options.calibration != "streaming":
            raise ExportError(f"component {name!r}: a split component is calibrated on the whole graph with "
                              "streaming calibration; calibration 'onnxruntime' cannot be used with parts")
        batches = job.calibration.inputs[name]
        job.log(f"[lower] {name}: streaming calibration of the whole graph on {len(batches)} real inputs")
        whole = calibrate_whole_graph(folder / fp32_file, batches, component=name, recipe=recipe,
                                      overrides=options.overrides.get(name))
        seconds["calibration"] = whole.ranges.seconds
    description = split.describe()
    parts: list[ComponentPart] = []
    for part, described in zip(split.parts, description["parts"]):
        part_seconds: dict[str, float] = {}
        part_fp32 = file_names(name, "fp32", part=part.index)
        for suffix in ("", ".data"):  # the part and, when weights are external, its weight file
            if (split_dir / (part.file + suffix)).exists():
                shutil.move(split_dir / (part.file + suffix), folder / (part_fp32 + suffix))
        if raw.external_data:
            _relocate_external_data(folder / part_fp32, part.file + ".data", part_fp32 + ".data")
        main_file, contexts = part_fp32, {}
        if whole is not None:
            qdq_file = file_names(name, precision, part=part.index)
            job.log(f"[lower] {name} part {part.index}: quantizing {precision} with the whole graph's ranges")
            quant = quantize_qdq(folder / part_fp32, folder / qdq_file, [], component=name, recipe=recipe,
                                 overrides=whole.overrides_for(folder / part_fp32), external_data=raw.external_data,
                                 calibration="streaming", ranges=whole.ranges, sensitive=False)
            part_seconds["quantize"] = quant.seconds
            main_file = qdq_file
        for soc in options.socs if contexts_on else ():
            ctx_file = file_names(name, precision, soc, part=part.index)
            job.log(f"[lower] {name} part {part.index}: compiling on the HTP for {soc}, CPU fallback disabled")
            part_seconds[f"context_{soc}"] = compile_context(folder / main_file, folder / ctx_file, soc)
            contexts[soc] = ctx_file
        extra: dict[str, Any] = {"weight_bytes": part.initializer_bytes, "nodes": part.stop - part.start,
                                 "estimated_context_bytes": estimated_context_bytes(part.initializer_bytes, recipe),
                                 "seconds": {k: round(v, 3) for k, v in part_seconds.items()}}
        if contexts:
            extra["context_bytes"] = {soc: (folder / f).stat().st_size for soc, f in contexts.items()}
            extra["fits_part_limit"] = max(extra["context_bytes"].values()) <= limit
            if not extra["fits_part_limit"]:
                job.log(f"[lower] {name} part {part.index}: context {max(extra['context_bytes'].values()) / 2**20:.1f}"
                        f" MiB is over the {limit / 2**20:g} MiB limit (the estimate said "
                        f"{extra['estimated_context_bytes'] / 2**20:.1f}); lower --max-part-mb")
        keep = ("name", "dtype", "shape")
        parts.append(ComponentPart(
            index=part.index, file=main_file,
            inputs=[{k: t[k] for k in keep} for t in described["inputs"]],
            outputs=[{k: t[k] for k in keep} for t in described["outputs"]],
            fp32_file=part_fp32, context_files=contexts, extra=extra))
        for key, value in part_seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    shutil.rmtree(split_dir, ignore_errors=True)
    entry = ComponentEntry.from_component(
        job.components[name], parts[0].file, precision,
        fp32_file=fp32_file, context_files={}, runs_entirely_on_htp=contexts_on,
        focus_implementation=raw.focus_implementation, opset=options.opset,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        weight_bytes=weights, estimated_context_bytes=estimated_context_bytes(weights, recipe),
        split={"max_part_mb": options.max_part_mb, "part_weight_budget_bytes": budget, "parts": len(parts),
               "format": description["format"],
               "calibration": None if whole is None else {"method": "streaming min/max of the whole graph",
                                                          "samples": whole.ranges.samples,
                                                          "tensors": len(whole.ranges.ranges)}},
        **stage,
    )
    entry.parts = parts
    return entry


def _relocate_external_data(model_path: Path, old: str, new: str) -> None:
    """Point a moved part's external tensors at its renamed weight file (the graph is rewritten only)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(model, str(model_path))


def verify(job: Any) -> Any:
    """The verify step: split parity for quantized targets (QDQ on the CPU, then the HTP), plain otherwise."""
    from export.flow import VerifyOutput, parity_thresholds, verification_samples, verify_parity

    if not job.target.split_parity:
        return verify_parity(job)
    soc = job.options.socs[0]
    job.log("[verify] fp32 torch vs CPU QDQ (quantization) and CPU QDQ vs HTP (backend)")
    results = run_split_parity(job.folder, job.components, job.names, job.config, soc,
                               samples=verification_samples(job.config, job.spec),
                               max_tiles=job.spec.max_tiles_per_image,
                               quantization=parity_thresholds(job.target, "quantization"),
                               backend=parity_thresholds(job.target, "backend"),
                               meta={"recipe": job.target.precision, "artifacts": str(job.folder)},
                               title=f"{job.target.name} parity ({soc})")
    part_results = results.pop("parts", {})
    total = results.get("total") or results["quantization"]
    failures = [f"{part}: {f}" for part, r in results.items() for f in r.failures]
    failures += [f"parts: {f}" for r in part_results.values() for f in r.failures]
    for name, result in part_results.items():
        for row in result.parts:
            c = row["comparisons"]
            job.log(f"[verify] {name} part {row['index']}: quantization {c['quantization']['psnr_db']:.1f} dB, "
                    f"backend {c['backend']['psnr_db']:.1f} dB, total {c['total']['psnr_db']:.1f} dB, "
                    f"HTP {row['seconds_per_run']['htp']:.2f} s/run")
    for name, figures in total.components.items():
        q = results["quantization"].components.get(name, {})
        b = results["backend"].components.get(name, {})
        job.log(f"[verify] {name}: quantization {q.get('psnr_db', float('nan')):.1f} dB, "
                f"backend {b.get('psnr_db', float('nan')):.1f} dB, total {figures['psnr_db']:.1f} dB")
    report = {"passed": not failures, "split": list(results)} | {k: r.to_dict() for k, r in results.items()}
    if part_results:
        report["parts"] = {n: r.to_dict() for n, r in part_results.items()}
    return VerifyOutput(report, total.components, total.end_to_end, not failures, failures,
                        f"QNN HTP {soc} (simulated on x86) and ONNX Runtime CPU")


def run_split_parity(
    folder: Path,
    components: Mapping[str, Component],
    names: Sequence[str],
    config: Any,
    soc: str,
    *,
    samples: Sequence[Any],
    max_tiles: int | None = 4,
    quantization: Any = None,
    backend: Any = None,
    meta: Mapping[str, Any] | None = None,
    title: str = "QNN parity",
) -> dict[str, Any]:
    """Quantization error (CPU QDQ vs fp32 torch) and backend error (HTP vs CPU QDQ); writes parity.*

    ``quantization`` / ``backend`` are the two parts' ``ParityThresholds``. Every backend's
    callables are memoised (:class:`MemoisedFn`): the three comparisons feed the same inputs to the
    same backend, so each distinct HTP run happens once (the simulator takes seconds to minutes per
    512-px tile) and the "total" figure uses the very HTP outputs the "backend" figure used. The
    HTP's run count and seconds go into the report's meta. A component split into parts is also
    measured part by part (:func:`run_component_part_parity`, on the tiles of its per-component
    figure), with the HTP's wall time per part. Returns the ``ParityResult`` per split part
    ("quantization", "backend", "total"), plus ``"parts"`` (component -> ``PartParityResult``)
    when some component is split.
    """
    from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend, QnnHtpBackend
    from runtime_py.backends.torch_backend import wrap_component
    from runtime_py.parity import run_split_parity as split, write_split_parity_report

    started = time.perf_counter()
    reference = {n: MemoisedFn(wrap_component(c)) for n, c in components.items()}  # the whole fp32 chain
    cpu = {n: MemoisedFn(fn) for n, fn in OnnxRuntimeBackend("qdq").load(folder, tuple(names)).items()}
    device = {n: MemoisedFn(fn) for n, fn in QnnHtpBackend(soc).load(folder, tuple(names)).items()}
    results = split(reference, cpu, device, samples, config=config, max_tiles_per_image=max_tiles,
                    quantization_thresholds=quantization, backend_thresholds=backend,
                    meta=dict(meta or {}) | {"soc": soc})
    htp = {"htp_calls": {n: fn.calls for n, fn in device.items()},
           "htp_seconds": sum(fn.seconds for fn in device.values()),
           "htp_seconds_per_component": {n: fn.seconds for n, fn in device.items()},
           "scene_size": samples[0].shape[0], "max_tiles_per_image": max_tiles}
    chains = {n: fn.fn for n, fn in device.items() if hasattr(fn.fn, "part_seconds")}
    if chains:  # the HTP's seconds per part inside the component-level (chained) runs
        htp["htp_part_seconds_chained"] = {n: list(fn.part_seconds) for n, fn in chains.items()}
    parts = {}
    for name in chains:
        tiles = results["quantization"].components[name]["count"]  # the tiles of the per-component figure
        parts[name] = run_component_part_parity(folder, name, soc, list(reference[name].inputs.values())[:tiles],
                                                quantization=quantization, backend=backend, meta=meta)
        htp["htp_seconds_per_part"] = {n: [row["seconds"]["htp"] for row in r.parts] for n, r in parts.items()}
    htp["parity_seconds"] = time.perf_counter() - started
    for result in results.values():
        result.meta.update(htp)
    write_split_parity_report(results, folder, title=title, parts=parts)
    if parts:
        results["parts"] = parts  # type: ignore[assignment]
    return results


def run_component_part_parity(folder: Path, name: str, soc: str, inputs: Sequence[Sequence[Any]], *,
                              quantization: Any = None, backend: Any = None,
                              meta: Mapping[str, Any] | None = None) -> Any:
    """Each part of split component ``name`` on its own: fp32 ONNX part vs CPU QDQ part (quantization),
    CPU QDQ vs HTP (backend), fp32 vs HTP (total), all fed the fp32 parts' intermediate tensors on
    the component's real stage inputs ``inputs`` (declared order); the HTP's wall time per part."""
    from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend, QnnHtpBackend, component_files
    from runtime_py.parity import run_part_parity

    files = component_files(folder, (name,))[name]
    fp32, cpu, htp = OnnxRuntimeBackend("fp32"), OnnxRuntimeBackend("qdq"), QnnHtpBackend(soc)

    def open_part(index: int) -> dict[str, Any]:
        part = files.parts[index]
        return {"fp32": fp32.load_part(part, name), "cpu": cpu.load_part(part, name), "htp": htp.load_part(part, name)}

    feeds = [dict(zip(files.inputs, arrays)) for arrays in inputs]
    return run_part_parity(name, [(p.inputs, p.outputs) for p in files.parts], open_part, feeds, reference="fp32",
                           comparisons={"quantization": ("fp32", "cpu"), "backend": ("cpu", "htp"),
                                        "total": ("fp32", "htp")},
                           thresholds={"quantization": quantization, "backend": backend},
                           labels=[f"tile{i}" for i in range(len(feeds))],
                           meta=dict(meta or {}) | {"soc": soc, "files": [p.qdq.name for p in files.parts]})


class MemoisedFn:
    """A component callable that runs each distinct input once and counts its real runs and seconds.

    Why: parity compares three backends pairwise, so without this every HTP input would be
    simulated twice. Keys are a SHA-1 of the inputs' shapes, dtypes and bytes; outputs are kept
    (a few MiB at most: tiles and one depth map per scene).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.cache: dict[str, Any] = {}
        self.inputs: dict[str, tuple[Any, ...]] = {}  # key -> the distinct inputs, in first-call order
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
            self.inputs[key] = tuple(np.array(a, copy=True) for a in arrays)
        return self.cache[key].copy()
