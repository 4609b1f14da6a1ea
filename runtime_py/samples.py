"""Real inputs for parity checks and quantization calibration.

"Real" means what a component sees in use: tiles cut by the pipeline's own tiling from
real-looking photos with their depth maps and focus masks, with the defocus map and in-focus mask
computed by the pipeline's own arithmetic, and each stage's input taken from the fp32 reference
run of the stages before it. Random noise would exercise value ranges (and, for the focus
attention, mask patterns) that never occur, which both flatters and misleads parity figures and
sets wrong int8 ranges.

Sources: the scene generator (photos with exact depth and a subject mask; the degraded image is
used, as a user's zoomed photo would be), and/or a folder of the user's own images with their
depth maps and masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .backends.base import ComponentFn
from .images import InputError, load_depth, load_image, load_mask
from .model.config import MagicBokehConfig, get_config
from .contract import FocusMask, FocusPoint, FocusSpec, defocus_maps, depth_to_u8, resolve_focus
from .pipeline import image_to_model_range, run_tile_stages
from .tiling import TileBox, plan_tiles

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_K = 24


@dataclass(frozen=True)
class RealSample:
    """One photo with its depth map, focus, and aperture K: everything the pipeline needs."""

    name: str
    image_u8: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float in [0, 1], larger = nearer
    focus: FocusSpec
    K: int
    source: str = "scene"

    @property
    def shape(self) -> tuple[int, int]:
        return self.image_u8.shape[:2]


def scene_samples(
    num_scenes: int,
    size: int,
    *,
    seed: int = 1234,
    families: Sequence[str] | None = None,
    K: int | None = None,
) -> list[RealSample]:
    """``num_scenes`` generated photos of ``size`` px square (degraded input, exact depth, subject mask).

    Families alternate so every kind of scene is represented (by default every family but the
    evaluation-only ones, which no calibration may see); K is the scene's own aperture unless given.
    """
    from .scenes import EVALUATION_ONLY_FAMILIES, SCENE_FAMILIES, generate_scene

    if num_scenes < 0:
        raise ValueError(f"num_scenes must be >= 0, got {num_scenes}")
    families = tuple(families or (f for f in SCENE_FAMILIES if f not in EVALUATION_ONLY_FAMILIES))
    samples = []
    for i in range(num_scenes):
        family = families[i % len(families)]
        scene = generate_scene(seed + i, size=size, family=family)
        image = np.clip(np.round(scene.degraded * 255.0), 0, 255).astype(np.uint8)
        k = K if K is not None else int(min(32, max(1, round(scene.aperture_k))))
        focus: FocusSpec = FocusMask(scene.mask.astype(bool)) if scene.mask.any() else FocusPoint(size // 2, size // 2)
        samples.append(RealSample(f"scene-{family}-{seed + i}", image, scene.depth.astype(np.float32), focus, k, "scene"))
    return samples


def _find_companion(folder: Path, stem: str, subdirs: Sequence[str], suffixes: Sequence[str]) -> Path | None:
    for sub in subdirs:
        for suffix in suffixes:
            candidate = folder / sub / f"{stem}{suffix}" if sub else folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def folder_samples(folder: Path | str, *, K: int = DEFAULT_K, max_images: int | None = None) -> list[RealSample]:
    """A user's photos with their depth maps and (optional) focus masks.

    Layouts: the official one (``input/`` or ``inputs/``, ``depth/NAME.npy``, ``mask/NAME.png``),
    or flat (``NAME.png`` beside ``NAME.npy`` and optionally ``NAME_mask.png``). A photo without a
    mask is focused at its centre pixel. A photo without a depth map is an error: parity and
    calibration must use the depth the pipeline would really get.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"images folder {folder} does not exist")
    image_dir = next((folder / d for d in ("input", "inputs") if (folder / d).is_dir()), folder)
    images = sorted(
        p for p in image_dir.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask")
    )
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    if max_images is not None:
        images = images[:max_images]
    samples = []
    for path in images:
        depth_path = _find_companion(folder, path.stem, ("depth", ""), (".npy",))
        if depth_path is None:
            raise InputError(f"image {path.name}: no depth map (expected depth/{path.stem}.npy or {path.stem}.npy in {folder})")
        image = load_image(path)
        depth = load_depth(depth_path)
        if depth.shape != image.shape[:2]:
            raise InputError(f"image {path.name} is {image.shape[:2]} but its depth map {depth_path.name} is {depth.shape}")
        mask_path = _find_companion(folder, path.stem, ("mask",), (".png", ".jpg")) or _find_companion(
            folder, f"{path.stem}_mask", ("",), (".png",)
        )
        h, w = image.shape[:2]
        focus: FocusSpec = FocusMask(load_mask(mask_path)) if mask_path is not None else FocusPoint(w // 2, h // 2)
        samples.append(RealSample(path.stem, image, depth.astype(np.float32), focus, int(K), "folder"))
    return samples


def gather_samples(
    config: MagicBokehConfig | str,
    *,
    num_scenes: int = 2,
    images_dir: Path | str | None = None,
    seed: int = 1234,
    scene_size: int | None = None,
    K: int | None = None,
) -> list[RealSample]:
    """Scenes (``num_scenes`` of them, 1.5 tiles square by default: 4 overlapping tiles) plus a user folder."""
    config = get_config(config)
    size = scene_size or (config.tile * 3) // 2
    samples = scene_samples(num_scenes, size, seed=seed, K=K) if num_scenes else []
    if images_dir is not None:
        samples += folder_samples(images_dir, K=K or DEFAULT_K)
    if not samples:
        raise ValueError("no samples: ask for at least one scene or give an images folder")
    return samples


# -- per-tile reference records ----------------------------------------------------------------------


@dataclass
class TileRecord:
    """One tile's inputs and the fp32 reference's output of every stage."""

    sample: str
    box: TileBox
    rgb: np.ndarray  # (1, 3, T, T) in [-1, 1]
    defocus: np.ndarray  # (1, 1, T, T)
    in_focus: np.ndarray  # (1, 1, T, T)
    latent: np.ndarray  # encoder output
    x0: np.ndarray  # denoiser output
    out: np.ndarray  # decoder output
    extra: dict[str, object] = field(default_factory=dict)

    def inputs(self, component: str) -> tuple[np.ndarray, ...]:
        """The inputs ``component`` gets in the reference pipeline for this tile."""
        if component == "encoder":
            return (self.rgb,)
        if component == "denoiser":
            return (self.latent, self.defocus, self.in_focus)
        if component == "decoder":
            return (self.x0,)
        raise KeyError(f"tile records hold the tile components only, not {component!r}")

    def output(self, component: str) -> np.ndarray:
        return {"encoder": self.latent, "denoiser": self.x0, "decoder": self.out}[component]


def select_tiles(boxes: Sequence[TileBox], max_tiles: int | None) -> list[TileBox]:
    """Up to ``max_tiles`` boxes spread evenly over the run order (so edge/corner tiles are included)."""
    if max_tiles is None or max_tiles >= len(boxes):
        return list(boxes)
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    picks = sorted({int(round(i)) for i in np.linspace(0, len(boxes) - 1, max_tiles)})
    return [boxes[i] for i in picks]


def sample_maps(sample: RealSample, config: MagicBokehConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (1,3,H,W), defocus (H,W), in_focus (H,W)) exactly as ``render_image`` computes them."""
    h, w = sample.shape
    if h < config.tile or w < config.tile:
        raise InputError(
            f"sample {sample.name!r} is {h}x{w}; parity/calibration tiles need each side >= {config.tile}"
        )
    depth_u8 = depth_to_u8(sample.depth)
    focus = resolve_focus(depth_u8, sample.focus)
    defocus, in_focus = defocus_maps(depth_u8, focus, sample.K, config.defocus_in_focus_threshold)
    return image_to_model_range(sample.image_u8), defocus, in_focus


def tile_records(
    reference_fns: Mapping[str, ComponentFn],
    samples: Sequence[RealSample],
    config: MagicBokehConfig | str,
    *,
    max_tiles_per_image: int | None = None,
    on_tile: Callable[[TileRecord], None] | None = None,
) -> list[TileRecord]:
    """Run the reference over the (selected) tiles of every sample, keeping each stage's output."""
    config = get_config(config)
    records = []
    for sample in samples:
        rgb, defocus, in_focus = sample_maps(sample, config)
        plan = plan_tiles(sample.shape[0], sample.shape[1], config.tile, config.stride)
        for box in select_tiles(plan.boxes, max_tiles_per_image):
            rows, cols = box.slices()
            tile_rgb = np.ascontiguousarray(rgb[:, :, rows, cols])
            tile_d = np.ascontiguousarray(defocus[None, None, rows, cols])
            tile_m = np.ascontiguousarray(in_focus[None, None, rows, cols])
            stages = run_tile_stages(reference_fns, tile_rgb, tile_d, tile_m)
            record = TileRecord(sample.name, box, tile_rgb, tile_d, tile_m, stages.latent, stages.x0, stages.rgb,
                                {"in_focus_fraction": float(tile_m.mean())})
            records.append(record)
            if on_tile is not None:
                on_tile(record)
    return records


def depth_inputs(samples: Sequence[RealSample], size: int) -> list[tuple[str, np.ndarray]]:
    """The depth component's input for each sample, as the host code prepares it (resize to S x S)."""
    from .model.depth import estimate_depth_static

    captured: list[tuple[str, np.ndarray]] = []
    for sample in samples:
        def capture(rgb: np.ndarray, _name: str = sample.name) -> np.ndarray:
            captured.append((_name, np.array(rgb, dtype=np.float32, copy=True)))
            return np.ones((1, 1, size, size), dtype=np.float32) * np.linspace(0, 1, size, dtype=np.float32)

        estimate_depth_static(capture, sample.image_u8, size)
    return captured
