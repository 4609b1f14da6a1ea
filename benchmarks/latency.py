"""Host latency per component and per whole image, per backend and precision.

Each backend run happens in its own process (``benchmarks.memory.run_isolated``): load the
artifacts, run every tile component on real tile inputs (cut from a generated photo) with
``warmup`` untimed calls then ``repeats`` timed ones (``time.perf_counter``), and report the median
and p90. The torch eager fp32 run is the baseline; it also saves its outputs, and every other run
compares its own outputs with them (per component on the baseline's inputs, and the whole tile
chain encoder -> denoiser -> decoder on its own outputs), so parity comes from the same inputs.

The saved outputs carry a stamp of this run's tile-inputs file (its sha256 and modification time;
the benchmark writes that file afresh at the start of every run). A reference left in the same
folder by an earlier run carries another stamp and is never used: the parity figures then say why
they are missing instead of comparing with stale data.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from export.targets import TILE as TILE_COMPONENTS  # the registry's tuple: no torch import, so --help stays instant


@dataclass(frozen=True)
class BackendRun:
    """One (backend, precision) pair the benchmark times."""

    label: str
    backend: str  # runtime_py backend registry name
    artifact: str | None  # export target whose folder it loads (None: the in-memory torch model)
    precision: str
    simulated: bool = False
    phone_target: bool = False  # an artifact a phone runs (candidate for the recommendation)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BASELINE = "torch-eager-fp32"
BACKEND_RUNS: tuple[BackendRun, ...] = (
    BackendRun(BASELINE, "torch", None, "fp32", description="torch eager fp32 (the baseline)"),
    BackendRun("executorch-xnnpack-fp32", "executorch", "executorch-xnnpack-fp32", "fp32", phone_target=True,
               description="ExecuTorch XNNPACK delegate, fp32"),
    BackendRun("executorch-xnnpack-int8", "executorch", "executorch-xnnpack-int8", "w8a8", phone_target=True,
               description="ExecuTorch XNNPACK delegate, PT2E int8"),
    BackendRun("onnxruntime-cpu-fp32", "onnxruntime-fp32", "qnn-w8a16", "fp32",
               description="ONNX Runtime CPU EP, fp32 ONNX"),
    BackendRun("onnxruntime-cpu-qdq-w8a16", "onnxruntime", "qnn-w8a16", "w8a16",
               description="ONNX Runtime CPU EP, QDQ W8A16 (the graph the NPU runs)"),
    BackendRun("qnn-htp-simulated-w8a16", "qnn-htp", "qnn-w8a16", "w8a16", simulated=True, phone_target=True,
               description="QNN HTP through onnxruntime-qnn on x86: Qualcomm's SIMULATOR. Its time says "
                           "nothing about a phone; its numerics are the HTP's"),
)


def get_backend_run(label: str) -> BackendRun:
    for run in BACKEND_RUNS:
        if run.label == label:
            return run
    raise ValueError(f"unknown backend run {label!r}; choose one of {[r.label for r in BACKEND_RUNS]}")


@dataclass
class LatencyStats:
    """Timed calls of one callable: every sample kept, median and p90 (linear interpolation)."""

    warmup: int
    repeats: int
    samples_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return float(np.median(self.samples_s))

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.samples_s, 90))

    def to_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "repeats": self.repeats, "median_s": self.median_s, "p90_s": self.p90_s,
                "mean_s": float(np.mean(self.samples_s)), "min_s": float(np.min(self.samples_s)),
                "samples_s": list(self.samples_s)}


def time_callable(fn: Callable[..., Any], args: Sequence[Any], warmup: int, repeats: int) -> tuple[LatencyStats, Any]:
    """``warmup`` untimed calls, then ``repeats`` timed calls; returns the stats and the last output."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    out = None
    for _ in range(warmup):
        out = fn(*args)
    stats = LatencyStats(warmup, repeats)
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        stats.samples_s.append(time.perf_counter() - start)
    return stats, out


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical outputs (PSNR inf) are reported as None with a flag."""
    return value if math.isfinite(value) else None


def _compare(reference: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    from runtime_py.parity import max_abs, psnr

    value = psnr(reference, test)
    return {"psnr_db": _finite(value), "identical": value == math.inf, "max_abs": max_abs(reference, test)}


REFERENCE_TILES = "tiles.npz"
#: Key of the inputs stamp inside the baseline's saved arrays.
STAMP_KEY = "inputs_stamp"


def inputs_stamp(inputs_path: Path | str) -> str:
    """Identity of one run's tile-inputs file: sha256 of its bytes and its modification time (ns).

    Equal inputs written by two runs still differ in time, so a baseline reference is only ever
    matched with the run that wrote the inputs it was computed from.
    """
    path = Path(inputs_path)
    return f"{hashlib.sha256(path.read_bytes()).hexdigest()}@{path.stat().st_mtime_ns}"


def _whole_reference_path(reference_dir: Path, size: int) -> Path:
    return reference_dir / f"whole_{size}.npz"


def _save_reference(path: Path, stamp: str, arrays: dict[str, np.ndarray]) -> None:
    from runtime_py.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare path
            np.savez(handle, **arrays, **{STAMP_KEY: np.array(stamp)})


def read_reference(path: Path | str, stamp: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The baseline's saved arrays if THIS run's baseline wrote them, else (None, why not)."""
    path = Path(path)
    if not path.is_file():
        return None, f"no baseline reference {path}: the baseline did not finish in this run"
    with np.load(path, allow_pickle=False) as data:
        saved = str(data[STAMP_KEY]) if STAMP_KEY in data.files else None
        if saved != stamp:
            return None, (f"baseline reference {path} was written by another run (inputs stamp {saved} != this "
                          f"run's {stamp}); not used: the baseline did not finish in this run")
        return {k: data[k] for k in data.files if k != STAMP_KEY}, None


def _unavailable(reason: str, **extra: Any) -> dict[str, Any]:
    """A parity entry with no figure, saying why (the report shows '-')."""
    return {"psnr_db": None, "identical": False, "max_abs": None, **extra, "unavailable": reason}


def set_threads(threads: int | None) -> None:
    """Intra-op threads for torch in this process (None: the library default, all cores)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def set_executorch_threads(threads: int | None) -> int | None:
    """Size ExecuTorch's XNNPACK thread pool; returns its thread count (None: no ExecuTorch runtime).

    The pool ignores ``torch.set_num_threads`` and defaults to every core, so without this an
    ExecuTorch run would use more threads than the 1-thread torch baseline it is compared with.
    """
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    if threads and hasattr(portable_lib, "_unsafe_reset_threadpool"):
        portable_lib._unsafe_reset_threadpool(int(threads))
    getter = getattr(portable_lib, "_threadpool_get_thread_count", None)
    return int(getter()) if getter else None


def load_backend(run: BackendRun, config_name: str, artifacts: str | None,
                 threads: int | None = None) -> dict[str, Callable[..., np.ndarray]]:
    """The component callables of one backend run (the torch model is rebuilt from its seed).

    ``threads`` sets torch's, ONNX Runtime's and ExecuTorch's XNNPACK CPU threads; the HTP simulator
    keeps its own default.
    """
    from runtime_py.backends import get_backend

    if run.backend == "torch":
        from runtime_py.backends.torch_backend import TorchBackend
        from runtime_py.components import tile_components

        from .artifacts import benchmark_model

        model, _label = benchmark_model(config_name)
        return dict(TorchBackend().load(tile_components(model)))
    if artifacts is None:
        raise ValueError(f"backend run {run.label!r} needs an artifacts folder")
    if run.backend in ("onnxruntime", "onnxruntime-fp32"):
        from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend

        model = "fp32" if run.backend == "onnxruntime-fp32" else "qdq"
        return dict(OnnxRuntimeBackend(model, threads=threads).load(artifacts, TILE_COMPONENTS))
    backend = get_backend(run.backend)
    if run.backend == "executorch":
        set_executorch_threads(threads)
        return dict(backend.load(artifacts))
    return dict(backend.load(artifacts, TILE_COMPONENTS))


def tile_inputs(config_name: str, num_tiles: int, seed: int = 2024) -> dict[str, np.ndarray]:
    """Real tile inputs: tiles of a generated photo (1.5 tiles square), as the pipeline cuts them."""
    from runtime_py.model import get_config
    from runtime_py.samples import sample_maps, scene_samples, select_tiles
    from runtime_py.tiling import plan_tiles

    config = get_config(config_name)
    sample = scene_samples(1, (config.tile * 3) // 2, seed=seed)[0]
    rgb, defocus, in_focus = sample_maps(sample, config)
    boxes = select_tiles(plan_tiles(*sample.shape, config.tile, config.stride).boxes, num_tiles)
    stack = {"rgb": [], "defocus": [], "in_focus": []}
    for box in boxes:
        rows, cols = box.slices()
        stack["rgb"].append(rgb[0, :, rows, cols])
        stack["defocus"].append(defocus[None, rows, cols])
        stack["in_focus"].append(in_focus[None, rows, cols])
    return {k: np.ascontiguousarray(np.stack(v), dtype=np.float32) for k, v in stack.items()}


def whole_image_sample(size: int, seed: int = 77):
    """The generated photo every backend renders for the whole-image figures."""
    from runtime_py.samples import scene_samples

    return scene_samples(1, size, seed=seed)[0]


def measure_backend(
    label: str,
    config_name: str,
    artifacts: str | None,
    inputs_path: str,
    reference_dir: str,
    warmup: int = 1,
    repeats: int = 5,
    whole_image_size: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Child-process entry: load, time every component, compare with the baseline, optionally render.

    The baseline (``torch-eager-fp32``) first deletes any earlier reference in ``reference_dir``,
    then writes ``tiles.npz`` (its stage outputs) and ``whole_<size>.npz``, stamped with
    :func:`inputs_stamp` of ``inputs_path``; the others use them only if the stamp matches.
    """
    from .memory import peak_rss_bytes

    run = get_backend_run(label)
    is_baseline = run.label == BASELINE
    set_threads(threads)
    reference_folder = Path(reference_dir)
    reference_path = reference_folder / REFERENCE_TILES
    stamp = inputs_stamp(inputs_path)
    if is_baseline:  # a baseline that fails below must not leave an earlier run's outputs behind
        for stale in [reference_path, *reference_folder.glob("whole_*.np[yz]")]:
            stale.unlink(missing_ok=True)
    start = time.perf_counter()
    fns = load_backend(run, config_name, artifacts, threads)
    load_seconds = time.perf_counter() - start
    data = dict(np.load(inputs_path))
    count = data["rgb"].shape[0]
    tiles = [(data["rgb"][i:i + 1], data["defocus"][i:i + 1], data["in_focus"][i:i + 1]) for i in range(count)]

    # The tile chain on this backend's own outputs (first calls double as warm-up for the loads).
    own = {"latent": [], "x0": [], "out": []}
    for rgb, defocus, in_focus in tiles:
        latent = fns["encoder"](rgb)
        x0 = fns["denoiser"](latent, defocus, in_focus)
        own["latent"].append(latent)
        own["x0"].append(x0)
        own["out"].append(fns["decoder"](x0))
    own_arrays = {k: np.concatenate(v) for k, v in own.items()}
    if is_baseline:
        _save_reference(reference_path, stamp, own_arrays)
        reference, missing = None, None
    else:
        reference, missing = read_reference(reference_path, stamp)
    source = reference if reference is not None else own_arrays

    def args_for(name: str, i: int) -> tuple[np.ndarray, ...]:
        rgb, defocus, in_focus = tiles[i]
        if name == "encoder":
            return (rgb,)
        if name == "denoiser":
            return (source["latent"][i:i + 1], defocus, in_focus)
        return (source["x0"][i:i + 1],)

    outputs_key = {"encoder": "latent", "denoiser": "x0", "decoder": "out"}
    components: dict[str, Any] = {}
    for name in TILE_COMPONENTS:
        stats, first = time_callable(fns[name], args_for(name, 0), warmup, repeats)
        row = {"latency": stats.to_dict()}
        if reference is not None:
            outs = np.concatenate([first] + [fns[name](*args_for(name, i)) for i in range(1, count)])
            row["parity_vs_baseline"] = _compare(reference[outputs_key[name]], outs)
        elif missing is not None:
            row["parity_vs_baseline"] = _unavailable(missing)
        components[name] = row
    result: dict[str, Any] = {
        "label": run.label,
        "run": run.to_dict(),
        "load_seconds": load_seconds,
        "threads": threads,
        "executorch_threads": set_executorch_threads(None) if run.backend == "executorch" else None,
        "tiles_compared": count,
        "components": components,
        "tile_median_s": sum(components[n]["latency"]["median_s"] for n in TILE_COMPONENTS),
    }
    if reference is not None:
        result["tile_chain_parity_vs_baseline"] = _compare(reference["out"], own_arrays["out"])
    elif missing is not None:
        result["tile_chain_parity_vs_baseline"] = _unavailable(missing)
    if whole_image_size:
        result["whole_image"] = _render_whole(fns, config_name, whole_image_size, reference_folder, is_baseline, stamp)
    result["peak_rss_bytes_at_end"] = peak_rss_bytes()
    return result


def _render_whole(fns: dict[str, Callable], config_name: str, size: int, reference_dir: Path, is_baseline: bool,
                  stamp: str) -> dict[str, Any]:
    from runtime_py.model import get_config
    from runtime_py.parity import psnr, ssim
    from runtime_py.pipeline import render_image

    sample = whole_image_sample(size)
    start = time.perf_counter()
    result = render_image(sample.image_u8, sample.depth, components=fns, config=get_config(config_name),
                          K=sample.K, focus=sample.focus)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"height": size, "width": size, "tiles": result.tile_count, "seconds": seconds,
                           "method": "measured: one render_image call"}
    path = _whole_reference_path(reference_dir, size)
    if is_baseline:
        _save_reference(path, stamp, {"raw": result.raw})
        return row
    saved, missing = read_reference(path, stamp)
    if saved is None:
        row["parity_vs_baseline"] = _unavailable(missing, ssim=None)
        return row
    ref = saved["raw"].astype(np.float32)
    value = psnr(ref, result.raw.astype(np.float32))
    row["parity_vs_baseline"] = {"psnr_db": _finite(value), "identical": value == math.inf,
                                 "ssim": ssim(ref, result.raw.astype(np.float32), data_range=255.0)}
    return row
