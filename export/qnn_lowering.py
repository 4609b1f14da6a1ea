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
from runtime_py.manifest import ComponentEntry

from .onnx_export import DEFAULT_OPSET, export_onnx
from .prepare import ExportError
from .qnn_rewrites import rewrite_for_htp


@dataclass
class Options:
    """The QNN lowering's settings: target SoCs, per-tensor bit overrides, opset, focus, contexts."""

    socs: tuple[str, ...] = (DEFAULT_SOC,)
    overrides: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # component -> tensor -> entries
    opset: int = DEFAULT_OPSET
    focus: str | None = None
    contexts: bool = True

    def validate(self) -> "Options":
        if not self.socs:
            raise ValueError("name at least one Snapdragon SoC")
        self.socs = tuple(s.upper() for s in self.socs)
        for soc in self.socs:
            soc_options(soc)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"socs": list(self.socs), "opset": self.opset, "focus": self.focus, "contexts": self.contexts,
                "overrides": {c: {t: [{k: getattr(v, "name", v) for k, v in e.items()} for e in entries]
                                  for t, entries in o.items()} for c, o in self.overrides.items()}}


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
            main_file, contexts = fp32_file, {}
            if recipe.quantized:
                qdq_file = file_names(name, precision)
                batches = job.calibration.inputs[name]
                job.log(f"[lower] {name}: quantizing {precision} on {len(batches)} real inputs")
                overrides = dict(options.overrides.get(name) or {})
                if recipe.sensitivity_mixed:
                    from quantize.qnn import mixed_overrides

                    chosen, stage["mixed_precision"] = mixed_overrides(folder / fp32_file, job.components[name], batches,
                                                                       recipe, name, log=job.log)
                    overrides = chosen | overrides  # the user's per-tensor overrides win
                quant = quantize_qdq(folder / fp32_file, folder / qdq_file, batches, component=name, recipe=recipe,
                                     overrides=overrides or None, external_data=raw.external_data)
                seconds["quantize"] = quant.seconds
                stage["quantization"] = quant.to_dict() | {"path": qdq_file}
                main_file = qdq_file
            for soc in options.socs if contexts_on else ():
                ctx_file = file_names(name, precision, soc)
                job.log(f"[lower] {name}: compiling on the HTP for {soc} ({SOCS[soc]['name']}), CPU fallback disabled")
                seconds[f"context_{soc}"] = compile_context(folder / main_file, folder / ctx_file, soc)
                contexts[soc] = ctx_file
            entries[name] = ComponentEntry.from_component(
                job.components[name], main_file, precision,
                fp32_file=fp32_file, context_files=contexts, runs_entirely_on_htp=bool(contexts),
                focus_implementation=raw.focus_implementation, opset=options.opset,
                seconds={k: round(v, 3) for k, v in seconds.items()}, **stage,
            )
    return LoweringOutput(entries, {"socs": {s: SOCS[s] for s in options.socs}})


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
    total = results.get("total") or results["quantization"]
    failures = [f"{part}: {f}" for part, r in results.items() for f in r.failures]
    for name, figures in total.components.items():
        q = results["quantization"].components.get(name, {})
        b = results["backend"].components.get(name, {})
        job.log(f"[verify] {name}: quantization {q.get('psnr_db', float('nan')):.1f} dB, "
                f"backend {b.get('psnr_db', float('nan')):.1f} dB, total {figures['psnr_db']:.1f} dB")
    report = {"passed": not failures, "split": list(results)} | {k: r.to_dict() for k, r in results.items()}
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
    HTP's run count and seconds go into the report's meta. Returns the ``ParityResult`` per part.
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
           "parity_seconds": time.perf_counter() - started,
           "scene_size": samples[0].shape[0], "max_tiles_per_image": max_tiles}
    for result in results.values():
        result.meta.update(htp)
    write_split_parity_report(results, folder, title=title)
    return results


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
