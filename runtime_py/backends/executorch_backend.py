"""Run ExecuTorch ``.pte`` artifacts through the ExecuTorch Python runtime.

Loads an artifacts folder written by ``export/to_executorch.py``: the manifest is read and checked
first (schema, file hashes, the components asked for, and optionally the model config and
weights), then each ``.pte`` is loaded. Programs whose delegate this build of the runtime does not
have (Core ML on Linux, QNN without its libraries) raise :class:`BackendUnavailableError` with the
reason, not a runtime trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..manifest import Manifest, ManifestError, check_matches, read_manifest
from ..model import MagicBokehConfig
from .base import BackendUnavailableError, ComponentFn, register_backend

_DELEGATE_RUNTIME_NAMES = {"coreml": "CoreMLBackend", "qnn": "QnnBackend", "xnnpack": "XnnpackBackend"}


def _runtime():
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:  # pragma: no cover - executorch is a dependency
        raise BackendUnavailableError(f"the ExecuTorch runtime is not installed: {exc}") from None
    return Runtime.get()


def registered_delegates() -> list[str]:
    """Names of the delegate backends this ExecuTorch runtime build can run."""
    try:
        return list(_runtime().backend_registry.registered_backend_names)
    except Exception:
        return []


class ExecuTorchComponent:
    """One loaded ``.pte`` method wrapped as numpy in, numpy out, with input checks."""

    def __init__(self, name: str, method, input_shapes: list[tuple[int, ...]], output_shape: tuple[int, ...]):
        self.name = name
        self._method = method
        self.input_shapes = input_shapes
        self.output_shape = output_shape

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        import torch

        if len(arrays) != len(self.input_shapes):
            raise ValueError(f"component {self.name!r} takes {len(self.input_shapes)} inputs, got {len(arrays)}")
        tensors = []
        for i, (array, shape) in enumerate(zip(arrays, self.input_shapes)):
            array = np.ascontiguousarray(array, dtype=np.float32)
            if tuple(array.shape) != shape:
                raise ValueError(
                    f"component {self.name!r}: input {i} has shape {tuple(array.shape)}, the artifact was exported for {shape}"
                )
            tensors.append(torch.from_numpy(array))
        outputs = self._method.execute(tensors)
        out = outputs[0].detach().numpy() if hasattr(outputs[0], "detach") else np.asarray(outputs[0])
        return np.array(out, dtype=np.float32, copy=True)  # the runtime may reuse its output buffer


class ExecuTorchBackend:
    """``load(folder)`` -> {component: callable} for ExecuTorch artifacts."""

    name = "executorch"

    def load(
        self,
        artifacts: Path | str | None = None,
        components: tuple[str, ...] | None = None,
        *,
        config: MagicBokehConfig | None = None,
        weights_sha256: str | None = None,
    ) -> Mapping[str, ComponentFn]:
        if artifacts is None or isinstance(artifacts, Mapping):
            raise TypeError("the executorch backend loads an artifacts folder (export/to_executorch.py writes one)")
        folder = Path(artifacts)
        manifest = read_manifest(folder)
        names = tuple(components) if components else tuple(manifest.components)
        check_matches(manifest, backend=self.name, config=config, weights_sha256=weights_sha256, components=names)
        runtime = _runtime()
        loaded: dict[str, ComponentFn] = {}
        for name in names:
            loaded[name] = self._load_one(runtime, folder, manifest, name)
        return loaded

    def _load_one(self, runtime, folder: Path, manifest: Manifest, name: str) -> ComponentFn:
        entry = manifest.components[name]
        delegate = entry.extra.get("delegate", "xnnpack")
        runtime_name = _DELEGATE_RUNTIME_NAMES.get(delegate, delegate)
        available = registered_delegates()
        if available and runtime_name not in available:
            raise BackendUnavailableError(
                f"component {name!r} was lowered to the {delegate} delegate ({runtime_name}), which this ExecuTorch "
                f"runtime cannot run (registered: {sorted(available)}); "
                + ("run it on an Apple OS" if delegate == "coreml" else "run it on a device with that backend")
            )
        try:
            program = runtime.load_program(folder / entry.file)
            method = program.load_method("forward")
        except Exception as exc:
            text = " ".join(str(exc).split())
            if "not registered" in text or "NotFound" in text or "Backend" in text:
                raise BackendUnavailableError(
                    f"component {name!r} ({folder / entry.file}): the ExecuTorch runtime here cannot run its "
                    f"{delegate} delegate: {text[:300]}"
                ) from None
            raise ManifestError(f"component {name!r}: {folder / entry.file} could not be loaded: {text[:300]}") from None
        if len(entry.outputs) != 1:
            raise ManifestError(f"component {name!r}: expected one output, manifest lists {len(entry.outputs)}")
        return ExecuTorchComponent(name, method, entry.input_shapes(), entry.output_shapes()[0])


register_backend("executorch", ExecuTorchBackend)
