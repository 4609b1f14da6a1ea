"""ONNX Runtime backends: ``onnxruntime`` (CPU EP) and ``qnn-htp`` (the HTP of onnxruntime-qnn).

``onnxruntime`` runs the artifacts' QDQ models (or, as ``onnxruntime-fp32``, the fp32 ONNX files)
on ONNX Runtime's CPU execution provider: the same graph the NPU runs, with exact integer
quantize/dequantize arithmetic, so its error against torch is the *quantization* error.
``qnn-htp`` runs the same QDQ models (or their precompiled EPContext binaries) on the HTP backend
of the QNN execution provider: on an x86 machine that is Qualcomm's HTP simulator, on a Snapdragon
device the NPU, with the same code. CPU fallback is always disabled, so a graph that does not run
entirely on the HTP fails to load instead of silently running partly on the CPU; its error
against the CPU-QDQ run is the *backend* error.

A component the exporter split into parts (``parts`` in the manifest: a full-size denoiser whose
context binary would pass what a phone maps) loads as a chain: one session per part, run in
order, each fed the named tensors the component's inputs and the earlier parts provide. Each
part's session is checked against the manifest's tensor names when it loads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .base import BackendUnavailableError, ComponentFn, register_backend

#: Snapdragon SoCs the exporter targets: QNN ``soc_model`` id and Hexagon (HTP) architecture.
#: Source: the QNN SDK's ``QnnTypes.h`` SoC constants as mirrored in ExecuTorch's Qualcomm backend
#: (``backends/qualcomm/serialization/qc_schema.py``: SM8550 = 43 v73, SM8650 = 57 v75, SM8750 = 69 v79).
SOCS: dict[str, dict[str, str]] = {
    "SM8550": {"soc_model": "43", "htp_arch": "73", "name": "Snapdragon 8 Gen 2"},
    "SM8650": {"soc_model": "57", "htp_arch": "75", "name": "Snapdragon 8 Gen 3"},
    "SM8750": {"soc_model": "69", "htp_arch": "79", "name": "Snapdragon 8 Elite"},
}
DEFAULT_SOC = "SM8650"
QNN_EP = "QNNExecutionProvider"
QNN_ARTIFACT_BACKENDS = ("qnn",)

_registration_lock = threading.Lock()
_registered = False


def soc_options(soc: str) -> dict[str, str]:
    """QNN EP provider options for one SoC (HTP backend), refusing unknown SoCs by name."""
    key = soc.upper()
    if key not in SOCS:
        raise ValueError(f"unknown Snapdragon SoC {soc!r}; known: {sorted(SOCS)} ({', '.join(v['name'] for v in SOCS.values())})")
    return {"backend_type": "htp", "soc_model": SOCS[key]["soc_model"], "htp_arch": SOCS[key]["htp_arch"]}


def register_qnn_ep() -> list[Any]:
    """Register onnxruntime-qnn's plugin EP once per process; returns its devices.

    Raises :class:`BackendUnavailableError` when onnxruntime-qnn is not installed (e.g. macOS).
    """
    global _registered
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the QNN HTP backend needs the onnxruntime-qnn package (Linux x86-64, Windows): {exc}"
        ) from None
    with _registration_lock:
        if not _registered:
            try:
                ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
            except Exception as exc:  # already registered by someone else in this process is fine
                if "already" not in str(exc).lower():
                    raise BackendUnavailableError(f"could not register the QNN execution provider: {exc}") from None
            _registered = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]
    if not devices:
        raise BackendUnavailableError("onnxruntime-qnn is installed but exposes no QNN device on this machine")
    return devices


def htp_session_options(
    soc: str = DEFAULT_SOC,
    *,
    context_path: Path | str | None = None,
    extra_provider_options: Mapping[str, str] | None = None,
):
    """Session options selecting the QNN HTP, CPU fallback disabled; with ``context_path`` the
    session also writes an EPContext model (precompiled context binary embedded) there."""
    import onnxruntime as ort

    devices = register_qnn_ep()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the QNN EP warns about every unused feature
    options.add_provider_for_devices(devices, {**soc_options(soc), **dict(extra_provider_options or {})})
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_path is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_path))
        options.add_session_config_entry("ep.context_embed_mode", "1")
    return options


def htp_session(model_path: Path | str, soc: str = DEFAULT_SOC, **kwargs: Any):
    """An InferenceSession on the HTP that refuses to load unless every node runs there."""
    import onnxruntime as ort

    options = htp_session_options(soc, **kwargs)
    try:
        return ort.InferenceSession(str(model_path), options)
    except BackendUnavailableError:
        raise
    except Exception as exc:
        raise HtpLoadError(
            f"{Path(model_path).name} does not run entirely on the QNN HTP ({soc}) with CPU fallback disabled: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc


def cpu_session(model_path: Path | str, threads: int | None = None, optimize: bool = True):
    """A CPU EP session; ``optimize=False`` turns graph optimisations off (no fusion reorders sums,
    so a split graph's parts reproduce the whole graph bit for bit)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class HtpLoadError(RuntimeError):
    """A model could not be placed entirely on the HTP (some node would need the CPU)."""


def wrap_session(session: Any, name: str) -> ComponentFn:
    """numpy in (declared order), numpy float32 out; checks the inputs' count and shapes by name."""
    inputs = session.get_inputs()
    input_names = [i.name for i in inputs]
    shapes = [tuple(i.shape) for i in inputs]
    output_name = session.get_outputs()[0].name

    def run(*arrays: np.ndarray) -> np.ndarray:
        if len(arrays) != len(input_names):
            raise ValueError(f"component {name!r} takes {len(input_names)} inputs {input_names}, got {len(arrays)}")
        feeds = {}
        for input_name, shape, array in zip(input_names, shapes, arrays):
            array = np.ascontiguousarray(array, dtype=np.float32)
            if all(isinstance(d, int) for d in shape) and array.shape != shape:
                raise ValueError(f"component {name!r}: input {input_name!r} has shape {array.shape}, expected {shape}")
            feeds[input_name] = array
        return session.run([output_name], feeds)[0].astype(np.float32, copy=False)

    run.session = session  # type: ignore[attr-defined]
    run.component_name = name  # type: ignore[attr-defined]
    return run


PartFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class PartFiles:
    """One part of a split component: its files and the tensor names it reads and writes."""

    index: int
    qdq: Path
    fp32: Path | None
    contexts: dict[str, Path]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ComponentFiles:
    """The files one component has in a QNN artifacts folder (``parts``: when it is split)."""

    qdq: Path | None
    fp32: Path | None
    contexts: dict[str, Path]
    parts: tuple[PartFiles, ...] = ()
    inputs: tuple[str, ...] = ()
    output: str = ""


def wrap_part(session: Any, part: PartFiles, component: str, path: Path | None = None) -> PartFn:
    """A part's session as ``{input name: array} -> {output name: array}``, its names checked
    against the manifest's now (a ManifestError names the part and the tensor)."""
    from ..manifest import ManifestError

    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    if sorted(have_in) != sorted(part.inputs) or not set(part.outputs) <= set(have_out):
        raise ManifestError(
            f"component {component!r} part {part.index} ({(path or part.qdq).name}): the model reads {have_in} and writes "
            f"{have_out}, the manifest says it reads {list(part.inputs)} and writes {list(part.outputs)}")
    outputs = list(part.outputs)

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = session.run(outputs, {n: np.ascontiguousarray(feeds[n], dtype=np.float32) for n in part.inputs})
        return dict(zip(outputs, arrays))

    run.session = session  # type: ignore[attr-defined]
    run.part = part  # type: ignore[attr-defined]
    return run


def chain_parts(name: str, files: ComponentFiles, part_fns: list[PartFn], shapes: list[tuple[Any, ...]]) -> ComponentFn:
    """A split component as one callable (declared input order in, its output out); each part's
    wall time accumulates in ``part_seconds`` (and its run count in ``part_calls``)."""
    import time

    input_names = list(files.inputs)

    def run(*arrays: np.ndarray) -> np.ndarray:
        if len(arrays) != len(input_names):
            raise ValueError(f"component {name!r} takes {len(input_names)} inputs {input_names}, got {len(arrays)}")
        values: dict[str, np.ndarray] = {}
        for input_name, shape, array in zip(input_names, shapes, arrays):
            array = np.ascontiguousarray(array, dtype=np.float32)
            if all(isinstance(d, int) for d in shape) and array.shape != tuple(shape):
                raise ValueError(f"component {name!r}: input {input_name!r} has shape {array.shape}, expected {shape}")
            values[input_name] = array
        for index, part in enumerate(part_fns):
            start = time.perf_counter()
            values.update(part(values))
            run.part_seconds[index] += time.perf_counter() - start  # type: ignore[attr-defined]
            run.part_calls[index] += 1  # type: ignore[attr-defined]
        return values[files.output].astype(np.float32, copy=False)

    run.parts = part_fns  # type: ignore[attr-defined]
    run.part_seconds = [0.0] * len(part_fns)  # type: ignore[attr-defined]
    run.part_calls = [0] * len(part_fns)  # type: ignore[attr-defined]
    run.component_name = name  # type: ignore[attr-defined]
    return run


def component_files(artifacts: Path | str | Mapping[str, Any], components: tuple[str, ...] | None) -> dict[str, ComponentFiles]:
    """Resolve what to load: a QNN artifacts folder (manifest checked) or ``{name: path-to-.onnx}``."""
    if isinstance(artifacts, Mapping):
        names = components or tuple(artifacts)
        missing = [n for n in names if n not in artifacts]
        if missing:
            raise ValueError(f"no model given for components {missing}; given: {sorted(artifacts)}")
        return {n: ComponentFiles(qdq=Path(artifacts[n]), fp32=Path(artifacts[n]), contexts={}) for n in names}
    from ..manifest import ManifestError, check_matches, read_manifest

    if artifacts is None:
        raise TypeError("the ONNX Runtime backends load an artifacts folder written by export.to_qnn")
    folder = Path(artifacts)
    manifest = read_manifest(folder)
    if manifest.backend not in QNN_ARTIFACT_BACKENDS:
        raise ManifestError(f"{folder} holds {manifest.backend!r} artifacts; the ONNX Runtime backends load "
                            f"{QNN_ARTIFACT_BACKENDS} artifacts (export.to_qnn)")
    names = components or tuple(manifest.components)
    check_matches(manifest, components=names)
    files = {}
    for name in names:
        entry = manifest.components[name]
        extra = entry.extra
        parts = tuple(
            PartFiles(index=p.index, qdq=folder / p.file, fp32=folder / p.fp32_file if p.fp32_file else None,
                      contexts={soc: folder / f for soc, f in p.context_files.items()},
                      inputs=tuple(p.input_names), outputs=tuple(p.output_names))
            for p in entry.parts or ())
        files[name] = ComponentFiles(
            qdq=None if parts else folder / entry.file,
            fp32=folder / extra["fp32_file"] if extra.get("fp32_file") else None,
            contexts={soc: folder / path for soc, path in extra.get("context_files", {}).items()},
            parts=parts, inputs=tuple(s["name"] for s in entry.inputs),
            output=entry.outputs[0]["name"] if entry.outputs else "",
        )
    return files


def _declared_shapes(artifacts: Any, name: str) -> list[tuple[Any, ...]]:
    from ..manifest import read_manifest

    entry = read_manifest(Path(artifacts), verify_files=False).components[name]
    return [tuple(s["shape"]) for s in entry.inputs]


class OnnxRuntimeBackend:
    """ONNX Runtime CPU EP over the QDQ models (``model="qdq"``) or the fp32 ONNX files (``"fp32"``)."""

    def __init__(self, model: str = "qdq", threads: int | None = None, optimize: bool = True):
        if model not in ("qdq", "fp32"):
            raise ValueError(f"model must be 'qdq' or 'fp32', got {model!r}")
        self.model = model
        self.threads = threads
        self.optimize = optimize
        self.name = "onnxruntime" if model == "qdq" else "onnxruntime-fp32"

    def load(self, artifacts=None, components=None) -> dict[str, ComponentFn]:  # type: ignore[override]
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime is not installed: {exc}") from None
        fns = {}
        for name, files in component_files(artifacts, components).items():
            if files.parts and (self.model == "qdq" or files.fp32 is None):
                fns[name] = chain_parts(name, files, self.load_parts(files, name), _declared_shapes(artifacts, name))
                continue
            path = files.qdq if self.model == "qdq" else files.fp32
            if path is None:
                raise ValueError(f"component {name!r} has no {self.model} model in these artifacts")
            fns[name] = wrap_session(cpu_session(path, self.threads, self.optimize), name)
        return fns

    def load_part(self, part: PartFiles, component: str) -> PartFn:
        """One part of a split component (its QDQ or fp32 file, as this backend runs)."""
        path = part.qdq if self.model == "qdq" else part.fp32
        if path is None:
            raise ValueError(f"component {component!r} part {part.index} has no {self.model} model in these artifacts")
        return wrap_part(cpu_session(path, self.threads, self.optimize), part, component, path)

    def load_parts(self, files: ComponentFiles, component: str) -> list[PartFn]:
        return [self.load_part(p, component) for p in files.parts]


class QnnHtpBackend:
    """The QNN HTP (simulated on x86, the NPU on a Snapdragon), CPU fallback disabled.

    Loads each component's precompiled context model for ``soc`` when the artifacts hold one
    (``use_context``), else compiles the QDQ model at load time.
    """

    name = "qnn-htp"

    def __init__(self, soc: str = DEFAULT_SOC, use_context: bool = True):
        soc_options(soc)  # validate early
        self.soc = soc.upper()
        self.use_context = use_context

    def load(self, artifacts=None, components=None) -> dict[str, ComponentFn]:  # type: ignore[override]
        register_qnn_ep()
        fns = {}
        for name, files in component_files(artifacts, components).items():
            if files.parts:
                fns[name] = chain_parts(name, files, [self.load_part(p, name) for p in files.parts],
                                        _declared_shapes(artifacts, name))
                continue
            context = files.contexts.get(self.soc) if self.use_context else None
            path = context if context is not None and context.exists() else files.qdq
            if path is None:
                raise ValueError(f"component {name!r} has no QDQ model in these artifacts")
            fns[name] = wrap_session(htp_session(path, self.soc), name)
        return fns

    def load_part(self, part: PartFiles, component: str) -> PartFn:
        """One part on the HTP: its context model for this SoC when there is one, else its QDQ model."""
        register_qnn_ep()
        context = part.contexts.get(self.soc) if self.use_context else None
        path = context if context is not None and context.exists() else part.qdq
        return wrap_part(htp_session(path, self.soc), part, component, path)


register_backend("onnxruntime", OnnxRuntimeBackend)
register_backend("onnxruntime-fp32", lambda: OnnxRuntimeBackend("fp32"))
register_backend("qnn-htp", QnnHtpBackend)
