"""Training data: a cached pool of generated scenes, and tile inputs exactly as the pipeline makes them.

Generating a scene (textures, text, degradation) and rendering its teacher cost far more than a
training step on two CPU cores can wait for, so a pool of scenes is generated once into ``.npz``
files, each scene with its teachers for a few apertures K (one weak, one strong); every training
sample then takes a pool scene and one of its apertures, with a random crop and flip.
The network's inputs are built the way the pipeline builds a tile's: ``x`` the degraded image in
[-1, 1], the defocus map and in-focus mask from :mod:`runtime_py.contract` (``D = |depth - focus|
* K / 32``, ``in_focus = D <= threshold``, the model configuration's threshold). One difference
from inference, kept on purpose: the depth is the scene's exact float depth, not its 8-bit
truncation (the teacher is rendered from the exact depth too).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime_py.atomic import atomic_path
from runtime_py.bokeh_renderer import render_bokeh
from runtime_py.contract import IN_FOCUS_THRESHOLD, defocus_inputs
from runtime_py.scenes import EVALUATION_ONLY_FAMILIES, generate_scene


class TrainingDataError(ValueError):
    """A scene pool or dataset request that cannot be served."""


@dataclass(frozen=True)
class PoolSpec:
    """Which scenes a pool holds: ``count`` seeds from ``first_seed``, ``size`` px, one family."""

    first_seed: int
    count: int
    size: int
    family: str = "dead_leaves"
    apertures: tuple[tuple[int, int], ...] = ((4, 16), (17, 32))

    def file_name(self) -> str:
        return f"scenes_{self.family}_{self.size}px_{self.first_seed}_{self.count}.npz"


def build_scene_pool(spec: PoolSpec, path: Path | str, log_every: int = 100) -> Path:
    """Generate the pool's scenes and their teachers and store them in one ``.npz``.

    For each range in ``spec.apertures`` one integer K is drawn (from the scene's seed) and the
    teacher rendered. Images are stored as 8-bit (they are images), depth as float32 (exact).
    """
    path = Path(path)
    if spec.count < 1 or spec.size < 32:
        raise TrainingDataError(f"a scene pool needs count >= 1 and size >= 32, got {spec}")
    if spec.family in EVALUATION_ONLY_FAMILIES:
        raise TrainingDataError(f"scene family {spec.family!r} is for evaluation only; no training pool may hold it")
    n, s = spec.count, spec.size
    clean = np.zeros((n, s, s, 3), np.uint8)
    degraded = np.zeros((n, s, s, 3), np.uint8)
    depth = np.zeros((n, s, s), np.float32)
    mask = np.zeros((n, s, s), np.uint8)
    focus = np.zeros(n, np.float32)
    n_k = len(spec.apertures)
    teachers = np.zeros((n, n_k, s, s, 3), np.uint8)
    k_values = np.zeros((n, n_k), np.float32)
    start = time.time()
    for i in range(n):
        scene = generate_scene(spec.first_seed + i, s, spec.family, aperture_k=0.0)
        clean[i] = np.round(scene.clean * 255.0).astype(np.uint8)
        degraded[i] = np.round(scene.degraded * 255.0).astype(np.uint8)
        depth[i] = scene.depth
        mask[i] = scene.mask.astype(np.uint8)
        focus[i] = scene.focus
        rng = np.random.default_rng([spec.first_seed + i, 7919])
        for a, (k_lo, k_hi) in enumerate(spec.apertures):
            k_values[i, a] = float(rng.integers(k_lo, k_hi + 1))
            teachers[i, a] = np.round(render_bokeh(scene.clean, scene.depth, scene.focus, float(k_values[i, a])) * 255.0)
        if log_every and (i + 1) % log_every == 0:
            print(f"scene pool: {i + 1}/{n} scenes, {time.time() - start:.0f} s", flush=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, clean=clean, degraded=degraded, depth=depth, mask=mask, focus=focus,
                     teachers=teachers, k_values=k_values,
                     spec=np.frombuffer(json.dumps(asdict(spec)).encode(), np.uint8))
    return path


def _build_one(job: tuple[PoolSpec, str]) -> str:
    spec, path = job
    torch.set_num_threads(1)  # one process per shard: threads would only oversubscribe the cores
    return str(build_scene_pool(spec, path, log_every=0))


def build_scene_pool_shards(specs: list[PoolSpec], pool_dir: Path | str, workers: int = 1) -> list[Path]:
    """Build the shards that are missing (one process per shard, ``workers`` at a time)."""
    pool_dir = Path(pool_dir)
    pool_dir.mkdir(parents=True, exist_ok=True)
    paths = [pool_dir / spec.file_name() for spec in specs]
    jobs = [(spec, str(path)) for spec, path in zip(specs, paths) if not path.is_file()]
    if jobs:
        print(f"building {len(jobs)} scene pool shard(s) in {pool_dir} with {min(workers, len(jobs))} process(es) ...", flush=True)
        start = time.time()
        if workers > 1 and len(jobs) > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for done in pool.imap_unordered(_build_one, jobs):
                    print(f"  {Path(done).name} ({time.time() - start:.0f} s)", flush=True)
        else:
            for job in jobs:
                print(f"  {Path(_build_one(job)).name} ({time.time() - start:.0f} s)", flush=True)
    return paths


POOL_KEYS = ("clean", "degraded", "depth", "mask", "focus", "teachers", "k_values")


def load_scene_pool(paths: Path | str | list[Path | str]) -> dict[str, np.ndarray]:
    """Load one pool file, or several (shards) concatenated."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    parts: list[dict[str, np.ndarray]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise TrainingDataError(f"scene pool {path} does not exist; build it with build_scene_pool")
        with np.load(path) as data:
            missing = [k for k in POOL_KEYS if k not in data]
            if missing:
                raise TrainingDataError(f"scene pool {path} lacks {missing}; rebuild it")
            parts.append({k: data[k] for k in POOL_KEYS})
    if not parts:
        raise TrainingDataError("no scene pool files given")
    return {k: np.concatenate([p[k] for p in parts]) for k in POOL_KEYS}


def tile_inputs(
    degraded: np.ndarray,
    depth: np.ndarray,
    focus: float,
    aperture_k: float,
    in_focus_threshold: float = IN_FOCUS_THRESHOLD,
) -> dict[str, torch.Tensor]:
    """The model's tile inputs for (H, W, 3) [0, 1] image + depth: x, defocus, in_focus (batch 1)."""
    defocus, in_focus = defocus_inputs(torch.from_numpy(np.ascontiguousarray(depth, np.float32))[None, None],
                                       focus, aperture_k, in_focus_threshold)
    x = torch.from_numpy(np.ascontiguousarray(degraded, np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
    return {"x": x, "defocus": defocus, "in_focus": in_focus}


class SceneTileDataset(Dataset):
    """Samples (x, defocus, in_focus, teacher, clean) crops from a scene pool.

    Sample ``i`` is fully determined by ``(seed, i)``: scene ``i % len(pool)``, crop position,
    flips and K come from a generator seeded with both, so runs are reproducible whatever the
    worker count. ``length`` sets how many samples one pass holds (scenes are reused with new
    crops and apertures). ``in_focus_threshold`` is the model configuration's.
    """

    def __init__(self, pool: dict[str, np.ndarray], crop: int, length: int, seed: int = 0,
                 in_focus_threshold: float = IN_FOCUS_THRESHOLD):
        size = pool["clean"].shape[1]
        if crop > size or crop % 64:
            raise TrainingDataError(f"crop must be a multiple of 64 and <= the pool's {size} px, got {crop}")
        self.pool = pool
        self.crop = crop
        self.length = length
        self.seed = seed
        self.in_focus_threshold = in_focus_threshold

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        n, n_k = self.pool["k_values"].shape
        j = int(index) % n
        a = int(rng.integers(0, n_k))
        k = float(self.pool["k_values"][j, a])
        focus = float(self.pool["focus"][j])
        size = self.pool["clean"].shape[1]
        y0, x0 = (int(v) for v in rng.integers(0, size - self.crop + 1, size=2))
        window = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        # The teacher was rendered on the whole scene, so blur near a crop edge saw the light
        # beyond it.
        arrays = [
            self.pool["clean"][j][window].astype(np.float32) / 255.0,
            self.pool["degraded"][j][window].astype(np.float32) / 255.0,
            self.pool["depth"][j][window],
            self.pool["teachers"][j, a][window].astype(np.float32) / 255.0,
        ]
        if rng.random() < 0.5:
            arrays = [arr[:, ::-1] for arr in arrays]
        clean_c, degraded_c, depth_c, teacher_c = arrays
        inputs = tile_inputs(degraded_c, np.ascontiguousarray(depth_c), focus, k, self.in_focus_threshold)
        as_tensor = lambda arr: torch.from_numpy(np.ascontiguousarray(arr, np.float32)).permute(2, 0, 1) * 2.0 - 1.0  # noqa: E731
        return {
            "x": inputs["x"][0],
            "defocus": inputs["defocus"][0],
            "in_focus": inputs["in_focus"][0],
            "teacher": as_tensor(teacher_c),
            "clean": as_tensor(clean_c),
        }
