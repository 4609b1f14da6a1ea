"""Tiling plans: the published plan (tiles of the model's size, stride half a tile) against cheaper ones.

Every plan is rendered with the torch fp32 model on the same generated photo through the one
pipeline (``runtime_py.pipeline.render_image`` with the plan's tile and stride) and compared with
the published plan's output (PSNR / SSIM of the blended 8-bit image before the colour fix), so the
price of each plan in quality sits next to its saving in tiles and FLOPs. Tiles that two plans
share (same position and size) are computed once: a tile's output depends only on its pixels.

Host time per plan = tiles x the median measured time of one tile at that tile size (encoder +
denoiser + decoder, torch eager), stated as derived in the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from runtime_py.model import MagicBokehConfig, get_config

MODEL_MULTIPLE = 64  # VAE /8 then three UNet down-samplings: tile sides must be multiples of 64


@dataclass(frozen=True)
class PlanSpec:
    tile: int
    stride: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"tile": self.tile, "stride": self.stride, "label": self.label}


def _round(value: float) -> int:
    return max(MODEL_MULTIPLE, int(round(value / MODEL_MULTIPLE)) * MODEL_MULTIPLE)


def candidate_plans(config: MagicBokehConfig | str, quick: bool = False) -> list[PlanSpec]:
    """The published plan first, then less overlap and other tile sizes (relative to the config's tile)."""
    config = get_config(config)
    t = config.tile
    geometry = [(t, config.stride), (t, _round(3 * t / 4)), (t, t)]  # less overlap
    if not quick:
        geometry += [(2 * t, t), (_round(3 * t / 2), _round(3 * t / 4)), (2 * t, 2 * t)]  # other tile sizes
    unique: dict[tuple[int, int], PlanSpec] = {}
    for index, (tile, stride) in enumerate(geometry):
        label = "published" if index == 0 else f"{tile}-px tiles, {(tile - stride) / tile:.0%} overlap"
        unique.setdefault((tile, stride), PlanSpec(tile, stride, label))
    return list(unique.values())


def evaluate_plans(config_name: str, image_size: int, plans: list[dict[str, Any]], seed: int = 77,
                   threads: int | None = None) -> dict[str, Any]:
    """Child-process entry: render the photo with each plan (torch fp32), compare with the first plan."""
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.components import tile_components
    from runtime_py.parity import psnr, ssim
    from runtime_py.pipeline import render_image

    from .artifacts import benchmark_model
    from .latency import set_threads, whole_image_sample

    set_threads(threads)
    model, _ = benchmark_model(config_name)
    base = model.config
    torch_fns = TorchBackend().load(tile_components(model))
    sample = whole_image_sample(image_size, seed)
    cache: dict[tuple, np.ndarray] = {}
    tile_seconds: dict[int, list[float]] = {}

    def cached(name: str) -> Callable[..., np.ndarray]:
        fn = torch_fns[name]

        def run(*arrays: np.ndarray) -> np.ndarray:  # no .component attribute: any tile size is accepted
            return fn(*arrays)

        return run

    enc, den, dec = cached("encoder"), cached("denoiser"), cached("decoder")

    rows = []
    reference = None
    for spec in plans:
        tile, stride = int(spec["tile"]), int(spec["stride"])
        config = base.replace(tile=tile, stride=stride)
        if image_size < tile:
            rows.append(spec | {"status": "skipped", "reason": f"image {image_size} px is smaller than the tile"})
            continue

        def encoder(rgb: np.ndarray) -> np.ndarray:
            key = ("tile", rgb.shape, hash(rgb.tobytes()))
            if key not in cache:
                start = time.perf_counter()
                latent = enc(rgb)
                cache[key] = latent
                cache[("pending", key)] = time.perf_counter() - start
            encoder.last = key  # type: ignore[attr-defined]
            return cache[key]

        def denoiser(latent: np.ndarray, defocus: np.ndarray, in_focus: np.ndarray) -> np.ndarray:
            key = ("den", encoder.last, hash(defocus.tobytes()))  # type: ignore[attr-defined]
            if key not in cache:
                start = time.perf_counter()
                cache[key] = den(latent, defocus, in_focus)
                pending_key = ("pending", encoder.last)  # type: ignore[attr-defined]
                cache[pending_key] = cache.get(pending_key, 0.0) + time.perf_counter() - start
            denoiser.last = key  # type: ignore[attr-defined]
            return cache[key]

        def decoder(x0: np.ndarray) -> np.ndarray:
            key = ("dec", denoiser.last)  # type: ignore[attr-defined]
            if key not in cache:
                start = time.perf_counter()
                cache[key] = dec(x0)
                pending = cache.pop(("pending", encoder.last), 0.0) + time.perf_counter() - start  # type: ignore[attr-defined]
                tile_seconds.setdefault(tile, []).append(pending)
            return cache[key]

        start = time.perf_counter()
        result = render_image(sample.image_u8, sample.depth, components={"encoder": encoder, "denoiser": denoiser,
                                                                         "decoder": decoder},
                              config=config, K=sample.K, focus=sample.focus)
        row = spec | {"status": "ok", "tiles": result.tile_count, "render_seconds_with_cache": time.perf_counter() - start}
        raw = result.raw.astype(np.float32)
        if reference is None:
            reference = raw
            row["parity_vs_published"] = {"psnr_db": None, "identical": True, "ssim": 1.0}
        else:
            value = psnr(reference, raw)
            row["parity_vs_published"] = {"psnr_db": value if math.isfinite(value) else None,
                                          "identical": value == math.inf,
                                          "ssim": ssim(reference, raw, data_range=255.0)}
        rows.append(row)
    per_tile = {str(t): {"median_s": float(np.median(v)), "tiles_timed": len(v)} for t, v in tile_seconds.items()}
    for row in rows:
        if row.get("status") == "ok":
            timing = per_tile.get(str(row["tile"]))
            if timing:
                row["host_seconds_derived"] = row["tiles"] * timing["median_s"]
    return {"image": {"height": image_size, "width": image_size, "seed": seed}, "plans": rows,
            "tile_seconds": per_tile,
            "host_time_method": "tiles x median measured time of one tile at that size (torch eager fp32)"}
