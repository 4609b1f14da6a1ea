"""Streaming min/max calibration for ONNX Runtime's QDQ quantizer, in one model's worth of memory.

``onnxruntime.quantization.quantize_static`` calibrates by loading the model into Python with shape
inference, writing an augmented copy (a ReduceMin/ReduceMax per tensor), running it in a session
and only then quantizing a further in-memory copy: at SD2.1 size (866 M parameters in fp32, 3.5 GB)
those copies coexist and the process reached 20.3 GB. Here calibration is its own phase:

1. the graph is read WITHOUT its external weights, shape-inferred, and augmented with the same
   ReduceMin/ReduceMax outputs onnxruntime adds (the same tensors: float inputs/outputs of the nodes
   whose op types are quantized, initializers excluded);
2. the augmented graph is saved in the model's folder under a hidden temporary name, pointing at
   the original weight files (no copy of the weights; an embedded-weight model is written out
   once as external data in a temporary folder), and run in ONE
   session with graph optimisations off (as onnxruntime's calibrator runs it);
3. each sample updates a running per-tensor (min, max) (NaNs ignored, as ``np.nanmin``); nothing
   per sample is kept;
4. the session is closed, and the ranges go to ``quantize_static`` through its calibration cache
   (``calibration_cache_path``: a JSON ``TensorsData`` that makes it skip its own calibrator).

min and max are exact and order-independent, so the ranges equal onnxruntime's MinMax ranges
bit for bit (same graph, same kernels, optimisations off in both) and the QDQ models are the same.
Only plain MinMax is streamed: a moving average or percentile/entropy histograms are not offered.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

__all__ = [
    "StreamingCalibrationError",
    "StreamingRanges",
    "default_op_types",
    "quantize_static_streaming",
    "stream_minmax_ranges",
    "tensors_to_calibrate",
]

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
_MIN_SUFFIX, _MAX_SUFFIX = "_ReduceMin", "_ReduceMax"  # onnxruntime's output names, kept for clarity in errors
# calibration options quantize_static accepts that a running min/max cannot honour
_UNSUPPORTED_OPTIONS = ("CalibTensorRangeSymmetric", "CalibMovingAverage", "CalibPercentile", "SmoothQuant")


class StreamingCalibrationError(RuntimeError):
    """The model or the options cannot be calibrated this way; the message says why."""


@dataclass
class StreamingRanges:
    """Per-tensor (min, max) over every calibration sample."""

    ranges: dict[str, tuple[float, float]]
    samples: int
    seconds: float

    def to_tensors_data(self):
        """onnxruntime's ``TensorsData`` (MinMax), with the 1-element float32 arrays its calibrator makes."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        return TensorsData(
            CalibrationMethod.MinMax,
            {name: (np.array([lo], dtype=np.float32), np.array([hi], dtype=np.float32))
             for name, (lo, hi) in self.ranges.items()},
        )

    def save_cache(self, path: Path | str) -> Path:
        """Write onnxruntime's calibration cache (what ``quantize_static(calibration_cache_path=...)`` reads)."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self.to_tensors_data(), path)  # writes a temporary file and renames it
        return Path(path)


def default_op_types() -> list[str]:
    """The op types ``quantize_static`` quantizes (and calibrates) when none are given."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def tensors_to_calibrate(model: onnx.ModelProto, op_types: Iterable[str] | None) -> list[str]:
    """Float, non-initializer inputs and outputs of the nodes of ``op_types`` (all when empty/None),
    in graph order; ``model`` must carry shape-inferred ``value_info`` (onnxruntime's selection)."""
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    initializers = {init.name for init in model.graph.initializer}
    wanted = set(op_types or ())
    selected: dict[str, None] = {}
    for node in model.graph.node:
        if wanted and node.op_type not in wanted:
            continue
        for name in list(node.input) + list(node.output):
            info = infos.get(name)
            if (info is not None and info.type.HasField("tensor_type")
                    and info.type.tensor_type.elem_type in _FLOAT_TYPES and name not in initializers):
                selected[name] = None
    return list(selected)


def _external_locations(model: onnx.ModelProto) -> set[str]:
    locations = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return locations


def _augment(model: onnx.ModelProto, tensors: Sequence[str]) -> list[tuple[str, str, str]]:
    """Add ``ReduceMin``/``ReduceMax`` (keepdims, all axes) of each tensor as graph outputs, placed
    right after the tensor is produced; returns (tensor, min output, max output)."""
    from onnx import helper

    producers: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for out in node.output:
            producers[out] = index
    inserts: dict[int, list[onnx.NodeProto]] = {}
    outputs = []
    existing = {o.name for o in model.graph.output}
    for tensor in tensors:
        names = (f"{tensor}{_MIN_SUFFIX}", f"{tensor}{_MAX_SUFFIX}")
        if any(n in existing for n in names):
            raise StreamingCalibrationError(f"the graph already has an output named {names[0]!r} or {names[1]!r}")
        nodes = [helper.make_node(op, [tensor], [out], name=out, keepdims=1)
                 for op, out in zip(("ReduceMin", "ReduceMax"), names)]
        inserts.setdefault(producers.get(tensor, -1), []).extend(nodes)
        outputs.append((tensor, *names))
        model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    # Rebuild the node list with the reductions after their producers (graph inputs: at the front).
    old_nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(inserts.get(-1, []))
    for index, node in enumerate(old_nodes):
        model.graph.node.append(node)
        model.graph.node.extend(inserts.get(index, []))
    return outputs


@contextlib.contextmanager
def _augmented_model(model_path: Path, op_types: Iterable[str] | None) -> Iterator[tuple[Path, list[tuple[str, str, str]]]]:
    """The augmented graph (removed afterwards) and its (tensor, min output, max output) triples."""
    model_path = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="streaming-calibration.") as tmp:
        tmp_dir = Path(tmp)
        inferred = tmp_dir / "inferred.onnx"
        # Shape inference reads only the graph; the weights stay where they are.
        onnx.shape_inference.infer_shapes_path(str(model_path), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
        inferred.unlink()
        tensors = tensors_to_calibrate(model, op_types)
        if not tensors:
            raise StreamingCalibrationError(f"{model_path}: no float tensor of the quantized op types to calibrate")
        # Onnxruntime's calibrator casts float16 through the reductions' own type; this graph is float32.
        infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
        if any(infos[t].type.tensor_type.elem_type != onnx.TensorProto.FLOAT for t in tensors):
            raise StreamingCalibrationError(f"{model_path}: streaming calibration handles float32 graphs only")
        outputs = _augment(model, tensors)
        if _external_locations(model):
            # onnxruntime reads external weights only from the model's own folder (links are
            # resolved and refused): the small augmented graph goes there, under a hidden name.
            fd, name = tempfile.mkstemp(prefix=f".{model_path.stem}.calibration.", suffix=".onnx", dir=model_path.parent)
            os.close(fd)
            augmented = Path(name)
            try:
                onnx.save(model, str(augmented))
                del model
                gc.collect()
                yield augmented, outputs
            finally:
                augmented.unlink(missing_ok=True)
        else:
            # Embedded weights (a model under 2 GB) are written out once, as external data.
            augmented = tmp_dir / "augmented.onnx"
            onnx.save(model, str(augmented), save_as_external_data=True, all_tensors_to_one_file=True,
                      location="augmented.weights", size_threshold=1024)
            del model
            gc.collect()
            yield augmented, outputs


def _as_feeds(samples: Any) -> Iterator[Mapping[str, np.ndarray]]:
    """Iterate a CalibrationDataReader (``get_next`` until None) or an iterable of feed dicts."""
    if hasattr(samples, "get_next"):
        while (feed := samples.get_next()) is not None:
            yield feed
    else:
        yield from samples


def stream_minmax_ranges(
    model_path: Path | str,
    samples: Any,
    *,
    op_types: Iterable[str] | None = None,
    providers: Sequence[str] | None = None,
) -> StreamingRanges:
    """Running per-tensor (min, max) of ``model_path``'s activations over ``samples``.

    ``samples``: feed dicts (input name -> array), as an iterable or a ``CalibrationDataReader``.
    ``op_types``: the op types that will be quantized (``None``: what ``quantize_static`` quantizes
    by default). Peak memory: one session of the model plus one sample's activations.
    """
    import onnxruntime as ort

    if op_types is None:
        op_types = default_op_types()
    start = time.perf_counter()
    with _augmented_model(Path(model_path), op_types) as (augmented, outputs):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime calibrates
        session = ort.InferenceSession(str(augmented), options, providers=list(providers or ["CPUExecutionProvider"]))
        fetch = [name for _, lo, hi in outputs for name in (lo, hi)]
        lows = np.full(len(outputs), np.nan, dtype=np.float32)
        highs = np.full(len(outputs), np.nan, dtype=np.float32)
        count = 0
        for feed in _as_feeds(samples):
            values = session.run(fetch, dict(feed))
            lows = np.fmin(lows, np.array([float(v.reshape(-1)[0]) for v in values[0::2]], dtype=np.float32))
            highs = np.fmax(highs, np.array([float(v.reshape(-1)[0]) for v in values[1::2]], dtype=np.float32))
            count += 1
        del session
        gc.collect()
    if count == 0:
        raise StreamingCalibrationError(f"{model_path}: no calibration samples were given")
    ranges = {tensor: (float(lo), float(hi)) for (tensor, _, _), lo, hi in zip(outputs, lows, highs)}
    return StreamingRanges(ranges, count, time.perf_counter() - start)


def quantize_static_streaming(model_path: Path | str, out_path: Path | str, config: Any, samples: Any,
                              ranges: StreamingRanges | None = None) -> StreamingRanges:
    """``onnxruntime.quantization.quantize(model_path, out_path, config)`` for a ``StaticQuantConfig``
    (MinMax), with the ranges streamed here instead of by onnxruntime's calibrator.

    ``ranges``: use these instead of calibrating (``samples`` is then not read). A part of a split
    graph (:mod:`export.qnn_split`) keeps the whole graph's tensor names, so the whole graph's
    ranges quantize each part as the whole would be quantized, with one part in memory at a time.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    if config.calibrate_method != CalibrationMethod.MinMax:
        raise StreamingCalibrationError(f"streaming calibration is MinMax only, not {config.calibrate_method}")
    options = dict(config.extra_options or {})
    unsupported = [k for k in _UNSUPPORTED_OPTIONS if options.get(k)]
    if unsupported:
        raise StreamingCalibrationError(f"streaming MinMax calibration cannot honour {unsupported}")
    if ranges is None:
        ranges = stream_minmax_ranges(model_path, samples, op_types=config.op_types_to_quantize or None,
                                      providers=config.calibration_providers)
    with tempfile.TemporaryDirectory(prefix="streaming-calibration.") as tmp:
        cache = ranges.save_cache(Path(tmp) / "ranges.json")
        options.pop("CalibStridedMinMax", None)  # only read while calibrating, which the cache skips
        quantize_static(
            str(model_path),
            str(out_path),
            None,
            calibration_cache_path=str(cache),
            calibrate_method=config.calibrate_method,
            quant_format=config.quant_format,
            activation_type=config.activation_type,
            weight_type=config.weight_type,
            op_types_to_quantize=config.op_types_to_quantize,
            nodes_to_quantize=config.nodes_to_quantize,
            nodes_to_exclude=config.nodes_to_exclude,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            use_external_data_format=config.use_external_data_format,
            calibration_providers=config.calibration_providers,
            extra_options=options,
        )
    return ranges
