"""Core ML backend: runs exported .mlpackage components.

Two registered names:

* ``"coreml"``: ``MLModel.predict`` where Core ML exists (macOS), otherwise the numpy Core ML
  program interpreter (``runtime_py.coreml_interpreter``), which executes the saved program op by
  op in its declared precision. Either way the artifact itself runs, never the torch model.
* ``"coreml-interpreter"``: always the interpreter (cross-checks the interpreter on a Mac, and
  makes runs on Linux explicit).

Components that were split into chunks (weights > 1 GB) run their chunk packages in sequence,
passing tensors by name as the manifest records.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..manifest import ManifestError, check_matches, read_manifest
from .base import BackendUnavailableError, ComponentFn, register_backend


def coreml_runtime_available() -> bool:
    """True where coremltools can run predictions (Apple systems with libcoremlpython)."""
    if platform.system() != "Darwin":
        return False
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreter_piece(path: Path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    from ..coreml_interpreter import load_mlpackage

    program = load_mlpackage(path)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return program.run({i.name: feeds[i.name] for i in program.inputs})

    run.program = program  # type: ignore[attr-defined]
    return run


def _mlmodel_piece(path: Path, compute_units: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import coremltools as ct

    units = getattr(ct.ComputeUnit, {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU",
                                      "cpu_only": "CPU_ONLY"}.get(compute_units, "ALL"))
    model = ct.models.MLModel(str(path), compute_units=units)
    input_names = [i.name for i in model.get_spec().description.input]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in model.predict({n: feeds[n] for n in input_names}).items()}

    return run


class CoreMLBackend:
    """Loads a Core ML artifacts folder; see the module docstring for how it executes."""

    name = "coreml"

    def __init__(self, force_interpreter: bool = False):
        self.force_interpreter = force_interpreter

    @property
    def uses_interpreter(self) -> bool:
        return self.force_interpreter or not coreml_runtime_available()

    def describe(self) -> str:
        if self.uses_interpreter:
            return "numpy Core ML program interpreter (runtime_py.coreml_interpreter)"
        return "Core ML MLModel.predict"

    def load(
        self,
        artifacts: Path | str | None = None,
        components: tuple[str, ...] | None = None,
        *,
        config: Any = None,
        weights_sha256: str | None = None,
    ) -> Mapping[str, ComponentFn]:
        if artifacts is None or isinstance(artifacts, Mapping):
            raise TypeError("the coreml backend loads an artifacts folder written by export/to_coreml.py")
        folder = Path(artifacts)
        try:
            import coremltools  # noqa: F401
        except ImportError as exc:  # pragma: no cover - coremltools is a dependency
            raise BackendUnavailableError(f"coremltools is not installed: {exc}") from None
        manifest = read_manifest(folder)
        check_matches(manifest, backend="coreml", config=config, weights_sha256=weights_sha256,
                      components=components or ())
        names = components or tuple(manifest.components)
        fns: dict[str, ComponentFn] = {}
        for name in names:
            entry = manifest.components[name]
            chunks = entry.extra.get("chunks") or [{
                "file": entry.file,
                "inputs": [s["name"] for s in entry.inputs],
                "outputs": [s["name"] for s in entry.outputs],
            }]
            pieces = [self._piece(folder / c["file"], entry.extra.get("compute_units", "all")) for c in chunks]
            fns[name] = _chain(name, entry, chunks, pieces)
        return fns

    def _piece(self, path: Path, compute_units: str):
        if not path.exists():
            raise ManifestError(f"Core ML package {path} is missing")
        if self.uses_interpreter:
            return _interpreter_piece(path)
        return _mlmodel_piece(path, compute_units)


def _chain(name: str, entry: Any, chunks: list[dict[str, Any]], pieces: list[Callable]) -> ComponentFn:
    input_names = [s["name"] for s in entry.inputs]
    input_shapes = [tuple(s["shape"]) for s in entry.inputs]
    output_name = entry.outputs[0]["name"]

    def run(*arrays: np.ndarray) -> np.ndarray:
        if len(arrays) != len(input_names):
            raise ValueError(f"component {name!r} takes {len(input_names)} inputs {input_names}, got {len(arrays)}")
        values: dict[str, np.ndarray] = {}
        for spec_name, shape, array in zip(input_names, input_shapes, arrays):
            array = np.asarray(array)
            if tuple(array.shape) != shape:
                raise ValueError(f"component {name!r}: input {spec_name!r} has shape {array.shape}, expected {shape}")
            values[spec_name] = array
        for chunk, piece in zip(chunks, pieces):
            values.update(piece({n: values[n] for n in chunk["inputs"]}))
        return np.asarray(values[output_name], dtype=np.float32)

    run.pieces = pieces  # type: ignore[attr-defined]
    return run


class CoreMLInterpreterBackend(CoreMLBackend):
    name = "coreml-interpreter"

    def __init__(self):
        super().__init__(force_interpreter=True)


register_backend("coreml", CoreMLBackend)
register_backend("coreml-interpreter", CoreMLInterpreterBackend)
