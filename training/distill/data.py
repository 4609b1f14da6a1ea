"""Distillation data: tiles with the pipeline's exact inputs (rgb, defocus, in_focus).

The teacher supplies the targets, so any image-like tiles work. Sources are *indexed*: batch
``i`` is a pure function of (seed, i), so a resumed or multi-process run sees exactly the data
it would have seen (process ``r`` of ``w`` takes batches ``step * w + r``) without saving any
data-loader state. Two sources: :class:`SyntheticTiles` (smooth multi-octave noise images with
smooth depth, always available) and :class:`SceneTiles` (the scene generator of
``runtime_py.scenes``, whose samples also carry the physically based renderer's target).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from runtime_py.contract import defocus_inputs, defocus_map, in_focus_mask
from runtime_py.model import MagicBokehConfig


@dataclass
class TileBatch:
    """One batch of tiles as the denoiser sees them, plus what a renderer teacher may need.

    ``rgb`` (B, 3, T, T) in [-1, 1]; ``defocus`` (B, 1, T, T) = |depth - focus| * K / 32 and
    ``in_focus`` (B, 1, T, T) in {0, 1}, both from :mod:`runtime_py.contract`; ``target`` (B, 3, T, T) in [-1, 1] when the data already
    holds a teacher render; ``clean`` / ``depth`` / ``focus`` / ``aperture`` for renderer teachers.
    """

    rgb: torch.Tensor
    defocus: torch.Tensor
    in_focus: torch.Tensor
    target: torch.Tensor | None = None
    clean: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    focus: torch.Tensor | None = None
    aperture: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "TileBatch":
        return TileBatch(**{f.name: (None if (v := getattr(self, f.name)) is None else v.to(device))
                            for f in dataclasses.fields(self)})

    @property
    def size(self) -> int:
        return int(self.rgb.shape[0])


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample focus or aperture -> (B, 1, 1, 1), to broadcast against (B, 1, T, T) maps."""
    return values.reshape(-1, 1, 1, 1)


class TileSource(ABC):
    """Deterministic, indexed batches of tiles."""

    tile: int

    @abstractmethod
    def batch(self, index: int, batch_size: int) -> TileBatch:
        """Batch number ``index`` (any non-negative integer); the same index gives the same batch."""


def smooth_noise(
    shape: tuple[int, ...], size: int, generator: torch.Generator, octaves: int = 5, falloff: float = 0.6
) -> torch.Tensor:
    """Multi-octave value noise in about [0, 1]: coarse shapes plus finer detail, like photos' 1/f spectra."""
    out = torch.zeros(*shape, size, size)
    total = 0.0
    for o in range(octaves):
        cells = 2 ** (o + 1)
        grid = torch.rand(*shape, cells + 1, cells + 1, generator=generator)
        flat = grid.reshape(-1, 1, cells + 1, cells + 1)
        up = F.interpolate(flat, size=(size, size), mode="bicubic", align_corners=True)
        amp = falloff**o
        out += amp * up.reshape(*shape, size, size)
        total += amp
    return (out / total).clamp(0.0, 1.0)


class SyntheticTiles(TileSource):
    """Smooth-noise RGB tiles with a smooth depth map, a random focus depth and aperture K."""

    def __init__(self, config: MagicBokehConfig, seed: int = 0, max_aperture: int = 32, period: int | None = None):
        """``period``: repeat the same ``period`` batches (a fixed pool, e.g. to compare losses on
        identical batches early and late in a short run); None: every index is a new batch."""
        if not 1 <= max_aperture <= 32:
            raise ValueError(f"max_aperture must be in 1..32, got {max_aperture}")
        if period is not None and period < 1:
            raise ValueError(f"period must be >= 1 or None, got {period}")
        self.period = period
        self.config = config
        self.tile = config.tile
        self.seed = int(seed)
        self.max_aperture = int(max_aperture)

    def batch(self, index: int, batch_size: int) -> TileBatch:
        if index < 0 or batch_size < 1:
            raise ValueError(f"need index >= 0 and batch_size >= 1, got {index}, {batch_size}")
        if self.period is not None:
            index %= self.period
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        t = self.tile
        rgb = smooth_noise((batch_size, 3), t, g) * 2.0 - 1.0
        depth = smooth_noise((batch_size, 1), t, g, octaves=3, falloff=0.4)
        # Focus on a depth that really occurs in the tile so that both masks are populated.
        pick = torch.randint(0, t * t, (batch_size,), generator=g)
        focus = depth.reshape(batch_size, -1).gather(1, pick[:, None])[:, 0]
        aperture = torch.randint(1, self.max_aperture + 1, (batch_size,), generator=g).to(torch.float32)
        defocus, in_focus = defocus_inputs(depth, _per_sample(focus), _per_sample(aperture),
                                           self.config.defocus_in_focus_threshold)
        return TileBatch(rgb=rgb, defocus=defocus, in_focus=in_focus, clean=(rgb + 1) / 2, depth=depth,
                         focus=focus, aperture=aperture)


class SceneTiles(TileSource):
    """Tiles from a scene generator: ``make_scene(seed) -> mapping`` with the pipeline's fields.

    The mapping (or object with attributes) must hold ``degraded`` (model input), ``depth`` in
    [0, 1] (larger = nearer), ``focus`` and ``aperture`` (or a ready ``defocus`` map) and, when
    present, ``teacher`` (the renderer's output) and ``clean``. Images may be numpy HWC/CHW in
    [0, 1] or torch tensors; they are centre-cropped or must already be the tile size.
    :func:`scene_generator_from_runtime` binds this to ``runtime_py.scenes`` when it is present.
    """

    def __init__(self, config: MagicBokehConfig, make_scene: Callable[[int], Any], seed: int = 0):
        self.config = config
        self.tile = config.tile
        self.make_scene = make_scene
        self.seed = int(seed)

    def _image(self, value: Any, channels: int, what: str) -> torch.Tensor:
        x = torch.as_tensor(value).to(torch.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(2, 0, 1)  # HWC -> CHW
        if x.ndim != 3 or x.shape[0] != channels:
            raise ValueError(f"scene field {what!r} must be a {channels}-channel image, got shape {tuple(x.shape)}")
        if x.max() > 1.5:  # 8-bit
            x = x / 255.0
        h, w = x.shape[-2:]
        t = self.tile
        if h < t or w < t:
            raise ValueError(f"scene field {what!r} is {h}x{w}, smaller than the {t}-px tile")
        top, left = (h - t) // 2, (w - t) // 2
        return x[:, top:top + t, left:left + t]

    @staticmethod
    def _field(scene: Any, *names: str) -> Any:
        for name in names:
            if isinstance(scene, dict) and name in scene:
                return scene[name]
            if not isinstance(scene, dict) and hasattr(scene, name):
                return getattr(scene, name)
        return None

    def batch(self, index: int, batch_size: int) -> TileBatch:
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("rgb", "defocus", "target", "clean", "depth", "focus", "aperture")}
        for j in range(batch_size):
            scene = self.make_scene(self.seed * 1_000_003 + index * batch_size + j)
            degraded = self._field(scene, "degraded", "input", "rgb")
            depth = self._field(scene, "depth")
            if degraded is None or depth is None:
                raise ValueError("a scene needs 'degraded' and 'depth' fields")
            rows["rgb"].append(self._image(degraded, 3, "degraded") * 2 - 1)
            d = self._image(depth, 1, "depth")
            rows["depth"].append(d)
            focus = self._field(scene, "focus", "focus_value")
            aperture = self._field(scene, "aperture", "aperture_k", "K")
            defocus = self._field(scene, "defocus")
            if defocus is not None:
                rows["defocus"].append(self._image(defocus, 1, "defocus"))
            elif focus is not None and aperture is not None:
                rows["defocus"].append(defocus_map(d, float(focus), float(aperture)))
            else:
                raise ValueError("a scene needs a 'defocus' map or 'focus' and 'aperture' values")
            if focus is not None:
                rows["focus"].append(torch.tensor(float(focus)))
            if aperture is not None:
                rows["aperture"].append(torch.tensor(float(aperture)))
            teacher = self._field(scene, "teacher", "target", "render")
            if teacher is not None:
                rows["target"].append(self._image(teacher, 3, "teacher") * 2 - 1)
            clean = self._field(scene, "clean")
            if clean is not None:
                rows["clean"].append(self._image(clean, 3, "clean"))

        def stack(name: str) -> torch.Tensor | None:
            values = rows[name]
            return torch.stack(values) if len(values) == batch_size else None

        defocus = stack("defocus")
        in_focus = in_focus_mask(defocus, self.config.defocus_in_focus_threshold)
        return TileBatch(rgb=stack("rgb"), defocus=defocus, in_focus=in_focus, target=stack("target"),
                         clean=stack("clean"), depth=stack("depth"), focus=stack("focus"), aperture=stack("aperture"))


def scene_generator_from_runtime(config: MagicBokehConfig, family: str = "dead_leaves") -> Callable[[int], Any]:
    """``seed -> scene`` from ``runtime_py.scenes.generate_scene`` at the tile size.

    Each scene carries the physically based renderer's output as ``teacher``, so
    ``RendererTeacher()`` (no render function) teaches from it without rendering again.
    """
    from runtime_py.scenes import generate_scene

    return lambda seed: generate_scene(seed, size=config.tile, family=family)
