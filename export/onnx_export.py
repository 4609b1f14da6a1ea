"""Component -> ONNX with static shapes (opset 21+), the first step of the QNN path.

Opset 21 or newer because 16-bit ``QuantizeLinear``/``DequantizeLinear`` are native from opset 21
on: a W8A16 QDQ graph then needs no ``com.microsoft`` operators, and graphs exported at an older
opset and upgraded by the quantizer failed to finalize on the HTP (QNN_COMMON_ERROR_MEM_ALLOC).
The TorchScript-based exporter is used (``dynamo=False``): the dynamo exporter needs
``onnxscript``, which the toolkit does not depend on, and the TorchScript one writes GroupNorm as
InstanceNormalization, a form the HTP runs.

A protobuf file cannot exceed 2 GiB, so larger graphs (the SD2.1-scale denoiser: ~3.5 GB of fp32
weights) are written with their tensors in one external ``<file>.data`` beside the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from runtime_py.components import Component

from .prepare import (
    ExportError,
    focus_implementation,
    focus_implementation_for,
    prepare_component,
    static_example_inputs,
)

MIN_OPSET = 21
DEFAULT_OPSET = 21
#: Above this many bytes a model is saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2_000_000_000


@dataclass
class OnnxExport:
    """One exported component file and how it was made."""

    component: str
    path: Path
    opset: int
    focus_implementation: str | None
    external_data: bool
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        data = dict(vars(self))
        data["path"] = str(self.path)
        return data


def model_bytes(path: Path | str) -> int:
    """Size of an ONNX model on disk including its external data file, if any."""
    path = Path(path)
    total = path.stat().st_size
    data = external_data_path(path)
    if data.exists():
        total += data.stat().st_size
    return total


def external_data_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_onnx(model: onnx.ModelProto, path: Path | str, external_data: bool | None = None) -> Path:
    """Save atomically; with ``external_data`` (default: only when > 2 GB) tensors go to ``<path>.data``.

    Both files are written in a temporary folder beside ``path`` and renamed into place, data file
    first, so that a crash never leaves a model that points at missing or partial tensors.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_path = external_data_path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_model = tmp / path.name
        if external_data:
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_path.name, size_threshold=1024)
            os.replace(tmp / data_path.name, data_path)
        else:
            onnx.save_model(model, str(tmp_model))
            if data_path.exists():
                data_path.unlink()
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) for t in model.graph.initializer)


def export_onnx(
    component: Component,
    path: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    target: str = "qnn",
    focus: str | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> OnnxExport:
    """Export one component with static shapes; input/output names are the component's own."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: 16-bit QDQ needs opset >= {MIN_OPSET}")
    prepare_component(component)
    inputs = static_example_inputs(component) if example_inputs is None else tuple(example_inputs)
    impl = focus_implementation_for(target, focus) if component.name == "denoiser" else None
    input_names = [s.name for s in component.input_specs()]
    output_names = [s.name for s in component.output_specs()]
    if set(input_names) & set(output_names):
        raise ExportError(f"component {component.name!r}: an input and an output share a name: {input_names} / {output_names}")
    path = Path(path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with focus_implementation(component, impl), torch.no_grad():
                torch.onnx.export(
                    component, inputs, str(raw), dynamo=False, opset_version=opset,
                    input_names=input_names, output_names=output_names, do_constant_folding=True,
                )
        except Exception as exc:  # the exporter raises many types; all become one message naming the component
            raise ExportError(
                f"ONNX export failed for component {component.name!r} (opset {opset}): {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
        model = onnx.load(str(raw))  # pulls in external data if the exporter had to write any
    save_onnx(model, path)
    return OnnxExport(
        component=component.name,
        path=path,
        opset=opset,
        focus_implementation=impl,
        external_data=external_data_path(path).exists(),
        bytes=model_bytes(path),
        seconds=time.perf_counter() - start,
    )
