"""Parity metrics against the fp32 torch reference (the one place they are defined).

PSNR is ``20 log10(peak / RMSE)`` with the peak stated by the caller: by default the definition
Apple's and Qualcomm's converters report, ``peak = max|ref|``, meaningful for latents as well as
images; image-quality figures on [0, 1] images (training, the model card) pass ``peak=1.0``.
SSIM is computed on images (Gaussian window, sigma 1.5, the usual constants) with an explicit data
range.
"""

from __future__ import annotations

import math

import numpy as np


def max_abs(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = _pair(reference, test)
    return float(np.max(np.abs(reference - test))) if reference.size else 0.0


def psnr(
    reference: np.ndarray,
    test: np.ndarray,
    *,
    peak: float | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """``20 log10(peak / RMSE)`` in dB; ``inf`` when identical (the project's one PSNR).

    ``peak``: the signal's peak value; None means ``max|reference|`` over the compared values (the
    parity convention: Apple's and Qualcomm's). Images in [0, 1] pass 1.0, 8-bit images 255.
    ``mask``: compare only where it is true (broadcast against the arrays; an (H, W) mask selects
    pixels of (H, W, C) images); NaN when it selects nothing.
    """
    reference, test = _pair(reference, test)
    if peak is not None and not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"psnr peak must be a positive number, got {peak}")
    if mask is not None:
        selected = np.asarray(mask, dtype=bool)
        if not selected.any():
            return math.nan
        reference, test = reference[selected], test[selected]
    rmse = math.sqrt(float(np.mean((reference - test) ** 2)))
    if rmse == 0.0:
        return math.inf
    signal = float(np.max(np.abs(reference))) if peak is None else float(peak)
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / rmse)


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float, channel_axis: int | None = -1) -> float:
    """Mean structural similarity (Wang et al. 2004): 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03."""
    reference, test = _pair(reference, test)
    if channel_axis is not None and reference.ndim == 3:
        ref_c = np.moveaxis(reference, channel_axis, 0)
        test_c = np.moveaxis(test, channel_axis, 0)
        return float(np.mean([_ssim_2d(r, t, data_range) for r, t in zip(ref_c, test_c)]))
    if reference.ndim != 2:
        raise ValueError(f"ssim expects an HxW or HxWxC image, got shape {reference.shape}")
    return _ssim_2d(reference, test, data_range)


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering (no padding artefacts at the borders)."""
    k = len(kernel)
    rows = sum(kernel[i] * img[i : img.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(kernel[i] * rows[:, i : rows.shape[1] - k + 1 + i] for i in range(k))


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    kernel = _gaussian_kernel()
    if min(a.shape) < len(kernel):
        raise ValueError(f"ssim needs images of at least {len(kernel)} px a side, got {a.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter(a, kernel), _filter(b, kernel)
    var_a = _filter(a * a, kernel) - mu_a**2
    var_b = _filter(b * b, kernel) - mu_b**2
    cov = _filter(a * b, kernel) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"parity needs equal shapes, got {reference.shape} and {test.shape}")
    if not (np.isfinite(test).all()):
        raise ValueError("the tested output holds NaN or inf")
    return reference, test


#: Depth metrics' threshold on the ratio max(test / ref, ref / test) (the usual delta_1).
DELTA1_THRESHOLD = 1.25


def _depth_valid(reference: np.ndarray, test: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    reference, test = _pair(reference, test)
    valid = reference > eps
    return reference[valid], test[valid]


def abs_rel(reference: np.ndarray, test: np.ndarray, eps: float = 1e-6) -> float:
    """Mean absolute relative error ``mean(|test - ref| / ref)`` over pixels where ``ref > eps`` (NaN if none).

    For depth or disparity maps; the reference is the fp32 model's output, not ground truth.
    """
    ref, tst = _depth_valid(reference, test, eps)
    return math.nan if ref.size == 0 else float(np.mean(np.abs(tst - ref) / ref))


def delta1(reference: np.ndarray, test: np.ndarray, threshold: float = DELTA1_THRESHOLD, eps: float = 1e-6) -> float:
    """Fraction of pixels (``ref > eps``) with ``max(test / ref, ref / test) < threshold``; a
    non-positive test value counts as a miss. NaN when no pixel is valid."""
    ref, tst = _depth_valid(reference, test, eps)
    if ref.size == 0:
        return math.nan
    positive = tst > 0
    ratio = np.where(positive, np.maximum(tst / np.where(positive, ref, 1.0), ref / np.where(positive, tst, 1.0)), np.inf)
    return float(np.mean(ratio < threshold))


def compare(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """PSNR and max-abs of one tensor pair (the per-component figures)."""
    return {"psnr_db": psnr(reference, test), "max_abs": max_abs(reference, test)}


# =====================================================================================================
# The parity runner: any two backends' component callables, on real inputs.
# =====================================================================================================
#
# Per component, the tested backend is fed the REFERENCE inputs of its stage (the reference's own
# encoder output for the denoiser, and so on), so each figure isolates that component's error.
# End to end, each backend renders the whole photo on its own, so errors compound as they would
# in use. Figures are pooled over every tile (one RMSE, one peak), with the worst tile reported
# beside them.

import dataclasses as _dataclasses
import time as _time
from pathlib import Path as _Path
from typing import Any as _Any, Callable as _Callable, Mapping as _Mapping, Sequence as _Sequence

PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"


@_dataclasses.dataclass(frozen=True)
class ParityThresholds:
    """Pass/fail bars; None means "report only"."""

    min_psnr_component: float | None = None
    min_psnr_end_to_end: float | None = None
    min_ssim: float | None = None
    conditioning_ratio_band: tuple[float, float] | None = (0.8, 1.25)
    """Allowed ``||tested difference|| / ||reference difference||`` of the conditioning-sensitivity
    check (applies only when that check runs). 0.8-1.25: a response within about 2 dB of the
    reference's; a collapsed conditioning (a quantized model that ignores K or the focus) falls far
    below, an overdriven one above."""

    def __post_init__(self) -> None:
        band = self.conditioning_ratio_band
        if band is not None:
            lo, hi = band
            if not (0 <= lo <= 1 <= hi and math.isfinite(hi)):
                raise ValueError(f"conditioning ratio band must be (low <= 1 <= high), got {band}")
            object.__setattr__(self, "conditioning_ratio_band", (float(lo), float(hi)))

    def to_dict(self) -> dict[str, _Any]:
        data = _dataclasses.asdict(self)
        band = self.conditioning_ratio_band
        data["conditioning_ratio_band"] = list(band) if band is not None else None
        return data


class _Pool:
    """Accumulates one tensor pair at a time into pooled PSNR / max-abs plus the worst item."""

    def __init__(self) -> None:
        self.sum_sq = 0.0
        self.count = 0
        self.peak = 0.0
        self.max_abs = 0.0
        self.items: list[dict[str, _Any]] = []

    def add(self, reference: np.ndarray, test: np.ndarray, label: str, **extra: _Any) -> dict[str, _Any]:
        ref, tst = _pair(reference, test)
        diff = ref - tst
        self.sum_sq += float(np.sum(diff * diff))
        self.count += diff.size
        self.peak = max(self.peak, float(np.max(np.abs(ref))) if ref.size else 0.0)
        item = {"item": label, **compare(ref, tst), **extra}
        self.max_abs = max(self.max_abs, item["max_abs"])
        self.items.append(item)
        return item

    def summary(self) -> dict[str, _Any]:
        rmse = math.sqrt(self.sum_sq / self.count) if self.count else 0.0
        if rmse == 0.0:
            pooled = math.inf
        elif self.peak == 0.0:
            pooled = -math.inf
        else:
            pooled = 20.0 * math.log10(self.peak / rmse)
        worst = min(self.items, key=lambda i: i["psnr_db"]) if self.items else None
        return {
            "psnr_db": pooled,
            "psnr_db_worst": worst["psnr_db"] if worst else None,
            "worst_item": worst["item"] if worst else None,
            "max_abs": self.max_abs,
            "rmse": rmse,
            "count": len(self.items),
        }


class _DepthPool(_Pool):
    """A pool that also gives AbsRel and delta_1 against the reference depth, pooled over every pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.rel_sum = 0.0
        self.hits = 0
        self.valid = 0

    def add(self, reference: np.ndarray, test: np.ndarray, label: str, **extra: _Any) -> dict[str, _Any]:
        ref, tst = _depth_valid(reference, test, 1e-6)
        if ref.size:
            self.rel_sum += abs_rel(ref, tst) * ref.size
            self.hits += int(round(delta1(ref, tst) * ref.size))
            self.valid += ref.size
        return super().add(reference, test, label, abs_rel=abs_rel(reference, test), delta1=delta1(reference, test),
                           **extra)

    def summary(self) -> dict[str, _Any]:
        out = super().summary()
        out["abs_rel"] = self.rel_sum / self.valid if self.valid else math.nan
        out["delta1"] = self.hits / self.valid if self.valid else math.nan
        return out


# -- conditioning sensitivity -------------------------------------------------------------------------
#
# Plain parity at one setting cannot tell a model that still listens to its conditioning from one
# whose response has collapsed: a quantized UNet can match the reference image while its change
# between two conditionings is a few percent of the reference's. So each backend's DIFFERENCE
# between two settings (two apertures K; two focus depths) is compared with the reference's same
# difference: PSNR of the difference images (peak: max|reference difference|) and the ratio of
# their L2 norms (tested / reference; 1 = the same strength of response).

CONDITIONING_AXES = ("aperture", "focus")
DEFAULT_CONDITIONING_APERTURES = (8, 32)


class _ResponsePool(_Pool):
    """A :class:`_Pool` of difference images that also sums both sides' squared norms."""

    def __init__(self) -> None:
        super().__init__()
        self.reference_sq = 0.0
        self.test_sq = 0.0

    def add_response(self, ref_base: np.ndarray, ref_alt: np.ndarray, test_base: np.ndarray,
                     test_alt: np.ndarray, label: str, **extra: _Any) -> dict[str, _Any]:
        ref_diff = np.asarray(ref_alt, np.float64) - np.asarray(ref_base, np.float64)
        test_diff = np.asarray(test_alt, np.float64) - np.asarray(test_base, np.float64)
        ref_sq, test_sq = float(np.sum(ref_diff**2)), float(np.sum(test_diff**2))
        self.reference_sq += ref_sq
        self.test_sq += test_sq
        return self.add(ref_diff, test_diff, label, norm_ratio=_norm_ratio(test_sq, ref_sq),
                        reference_norm=math.sqrt(ref_sq), **extra)

    def summary(self) -> dict[str, _Any]:
        return super().summary() | {
            "psnr_peak": self.peak,
            "norm_ratio": _norm_ratio(self.test_sq, self.reference_sq),
            "reference_norm": math.sqrt(self.reference_sq),
            "test_norm": math.sqrt(self.test_sq),
            "items": self.items,
        }


def _norm_ratio(test_sq: float, reference_sq: float) -> float:
    """``||test|| / ||reference||``; NaN when the reference does not respond at all (nothing to compare)."""
    if reference_sq == 0.0:
        return 1.0 if test_sq == 0.0 else math.nan
    return math.sqrt(test_sq / reference_sq)


def conditioning_settings(sample: _Any, config: _Any,
                          apertures: tuple[int, int] = DEFAULT_CONDITIONING_APERTURES) -> dict[str, dict[str, _Any]]:
    """The one extra setting per axis for ``sample`` (its own K and focus are the base setting).

    Aperture: whichever of ``apertures`` is farther from the sample's K, same focus. Focus: the
    sample's K with the focus moved to whichever of the 5th / 95th percentile of the 8-bit depth
    is farther from the base focus, so the in-focus region moves to the other end of the scene
    (percentiles rather than min / max: a few stray pixels must not set it).
    """
    from .contract import FocusValue, depth_to_u8, resolve_focus

    depth_u8 = depth_to_u8(sample.depth)
    base_focus = resolve_focus(depth_u8, sample.focus)
    alt_k = max(apertures, key=lambda k: (abs(k - sample.K), k))
    if alt_k == sample.K:
        raise ValueError(f"conditioning apertures {apertures} hold only the sample's own K = {sample.K}")
    unit = depth_u8.astype(np.float64) / 255.0
    far = max((float(np.percentile(unit, q)) for q in (5, 95)), key=lambda f: abs(f - base_focus))
    return {
        "aperture": {"K": int(alt_k), "focus": sample.focus, "base_K": sample.K, "focus_value": base_focus},
        "focus": {"K": sample.K, "focus": FocusValue(far), "base_focus_value": base_focus, "focus_value": far},
    }


def _setting_row(setting: _Mapping[str, _Any]) -> dict[str, _Any]:
    return {k: v for k, v in setting.items() if k != "focus"}


@_dataclasses.dataclass
class ParityResult:
    """Everything ``parity.json`` holds; ``passed`` is False when any threshold is missed."""

    components: dict[str, dict[str, _Any]]
    end_to_end: dict[str, _Any] | None
    thresholds: ParityThresholds
    failures: list[str]
    samples: list[dict[str, _Any]]
    meta: dict[str, _Any] = _dataclasses.field(default_factory=dict)
    conditioning: dict[str, _Any] | None = None
    """``{"denoiser": {axis: figures}, "end_to_end": {axis: figures}, "settings": {sample: ...}}``
    when the conditioning-sensitivity check ran (see :func:`run_parity`)."""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, _Any]:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "thresholds": self.thresholds.to_dict(),
            "components": self.components,
            "end_to_end": self.end_to_end,
            "samples": self.samples,
            "meta": self.meta,
            "conditioning": self.conditioning,
        }


def _check_thresholds(components: dict[str, dict[str, _Any]], e2e: dict[str, _Any] | None,
                      thresholds: ParityThresholds) -> list[str]:
    failures = []
    if thresholds.min_psnr_component is not None:
        for name, figures in components.items():
            if not figures["psnr_db"] >= thresholds.min_psnr_component:
                failures.append(f"component {name}: PSNR {figures['psnr_db']:.2f} dB < {thresholds.min_psnr_component} dB")
    if e2e is not None and thresholds.min_psnr_end_to_end is not None:
        if not e2e["psnr_db"] >= thresholds.min_psnr_end_to_end:
            failures.append(f"end to end: PSNR {e2e['psnr_db']:.2f} dB < {thresholds.min_psnr_end_to_end} dB")
    if e2e is not None and thresholds.min_ssim is not None:
        if not e2e["ssim"] >= thresholds.min_ssim:
            failures.append(f"end to end: SSIM {e2e['ssim']:.5f} < {thresholds.min_ssim}")
    return failures


def _check_conditioning(conditioning: dict[str, _Any] | None, thresholds: ParityThresholds) -> list[str]:
    if conditioning is None or thresholds.conditioning_ratio_band is None:
        return []
    lo, hi = thresholds.conditioning_ratio_band
    failures = []
    for part in ("denoiser", "end_to_end"):
        for axis, figures in (conditioning.get(part) or {}).items():
            ratio = figures["norm_ratio"]
            if math.isnan(ratio):
                failures.append(f"conditioning {part} {axis}: the reference does not respond to the change, "
                                "so the response cannot be checked")
            elif not lo <= ratio <= hi:
                failures.append(f"conditioning {part} {axis}: response norm ratio {ratio:.3f} outside [{lo}, {hi}]")
    return failures


def run_parity(
    reference_fns: _Mapping[str, _Callable[..., np.ndarray]],
    test_fns: _Mapping[str, _Callable[..., np.ndarray]],
    samples: _Sequence[_Any],
    *,
    config: _Any,
    components: _Sequence[str] | None = None,
    max_tiles_per_image: int | None = None,
    end_to_end: bool = True,
    thresholds: ParityThresholds | None = None,
    progress: bool = False,
    meta: _Mapping[str, _Any] | None = None,
    input_fns: _Mapping[str, _Callable[..., np.ndarray]] | None = None,
    conditioning: bool = False,
    conditioning_apertures: tuple[int, int] = DEFAULT_CONDITIONING_APERTURES,
) -> ParityResult:
    """Compare ``test_fns`` with ``reference_fns`` (both: name -> numpy callable) on real samples.

    ``samples`` are :class:`runtime_py.samples.RealSample` (photo, depth, focus, K). Components
    compared are those both mappings hold (or ``components``); the tile components are compared
    on the reference's stage inputs, ``depth`` on the host-resized photo; end to end renders each
    sample through each backend with the whole-image pipeline and compares the final 8-bit photos
    (PSNR with ``max|ref|`` as peak, SSIM with data range 255) and the blended output before the
    colour fix.

    ``input_fns`` (default: ``reference_fns``) is the chain whose stage outputs feed each tile
    component; when it is not the reference, the reference is run on those same inputs too. Why:
    comparing two backends on another chain's inputs (e.g. CPU QDQ vs NPU both on the fp32
    chain's latents) lets every comparison of a split report share one set of slow NPU runs.

    ``conditioning``: also check the response to the conditioning (:func:`conditioning_settings`:
    one extra aperture and one extra focus depth per sample, the sample's own setting the base).
    The denoiser is run at each extra setting on the same tiles and latents as its plain figure
    (two extra runs per tile and backend); end to end, each sample is rendered twice more per
    backend. Each backend's difference (extra setting - base) is compared with the reference's:
    PSNR of the differences (peak max|reference difference|) and their norm ratio, checked
    against ``thresholds.conditioning_ratio_band``.
    """
    from .model.config import get_config
    from .components import TILE_COMPONENTS
    from .pipeline import render_image
    from .samples import depth_inputs, tile_records

    config = get_config(config)
    thresholds = thresholds or ParityThresholds()
    if not samples:
        raise ValueError("parity needs at least one sample (a generated scene or an image with its depth)")
    shared = [n for n in reference_fns if n in test_fns]
    names = list(components) if components is not None else shared
    missing = [n for n in names if n not in reference_fns or n not in test_fns]
    if missing:
        raise ValueError(
            f"components {missing} are not in both backends (reference has {sorted(reference_fns)}, "
            f"tested has {sorted(test_fns)})"
        )
    if not names:
        raise ValueError(f"the two backends share no component (reference {sorted(reference_fns)}, tested {sorted(test_fns)})")

    say = print if progress else (lambda *a, **k: None)
    timings: dict[str, float] = {}
    pools = {name: (_DepthPool() if name == "depth" else _Pool()) for name in names}
    tile_names = [n for n in names if n in TILE_COMPONENTS]
    settings: dict[str, dict[str, dict[str, _Any]]] = {}
    alt_maps: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    denoiser_response: dict[str, _ResponsePool] = {}
    if conditioning:
        from .contract import defocus_maps, depth_to_u8, resolve_focus

        for sample in samples:
            settings[sample.name] = conditioning_settings(sample, config, conditioning_apertures)
            depth_u8 = depth_to_u8(sample.depth)
            alt_maps[sample.name] = {
                axis: defocus_maps(depth_u8, resolve_focus(depth_u8, s["focus"]), s["K"], config.defocus_in_focus_threshold)
                for axis, s in settings[sample.name].items()
            }
        if "denoiser" in tile_names:
            denoiser_response = {axis: _ResponsePool() for axis in CONDITIONING_AXES}
    if tile_names:
        start = _time.perf_counter()

        def on_tile(record: _Any) -> None:
            label = f"{record.sample}#tile{record.box.index}"
            for name in tile_names:
                out = np.asarray(test_fns[name](*record.inputs(name)), dtype=np.float32)
                ref = record.output(name) if input_fns is None else reference_fns[name](*record.inputs(name))
                pools[name].add(ref, out, label, in_focus_fraction=record.extra.get("in_focus_fraction"))
                if name == "denoiser" and denoiser_response:
                    rows, cols = record.box.slices()
                    for axis, (defocus, in_focus) in alt_maps[record.sample].items():
                        alt = (record.latent, np.ascontiguousarray(defocus[None, None, rows, cols]),
                               np.ascontiguousarray(in_focus[None, None, rows, cols]))
                        denoiser_response[axis].add_response(
                            ref, reference_fns[name](*alt), out, np.asarray(test_fns[name](*alt), dtype=np.float32),
                            label)
            say(f"  tile {label}: " + ", ".join(f"{n} {pools[n].items[-1]['psnr_db']:.1f} dB" for n in tile_names),
                flush=True)

        tile_records(reference_fns if input_fns is None else input_fns, samples, config,
                     max_tiles_per_image=max_tiles_per_image, on_tile=on_tile)
        timings["components"] = _time.perf_counter() - start
    if "depth" in names:
        for label, rgb in depth_inputs(samples, config.depth_input):
            pools["depth"].add(reference_fns["depth"](rgb), test_fns["depth"](rgb), label)

    component_figures = {name: pool.summary() | {"items": pool.items} for name, pool in pools.items()}

    e2e: dict[str, _Any] | None = None
    sample_rows: list[dict[str, _Any]] = []
    can_render = all(n in reference_fns and n in test_fns for n in TILE_COMPONENTS)
    e2e_response: dict[str, _ResponsePool] = {}
    if end_to_end and can_render:
        start = _time.perf_counter()
        final, raw = _Pool(), _Pool()
        if conditioning:
            e2e_response = {axis: _ResponsePool() for axis in CONDITIONING_AXES}
        ssims, raw_ssims = [], []
        for sample in samples:
            kwargs = dict(config=config, K=sample.K, focus=sample.focus)
            ref = render_image(sample.image_u8, sample.depth, components=reference_fns, **kwargs)
            tst = render_image(sample.image_u8, sample.depth, components=test_fns, **kwargs)
            s = ssim(ref.image.astype(np.float64), tst.image.astype(np.float64), data_range=255.0)
            s_raw = ssim(ref.raw.astype(np.float64), tst.raw.astype(np.float64), data_range=255.0)
            ssims.append(s)
            raw_ssims.append(s_raw)
            item = final.add(ref.image, tst.image, sample.name, ssim=s,
                             pixels_differing=int(np.count_nonzero(ref.image != tst.image)))
            raw.add(ref.raw, tst.raw, sample.name, ssim=s_raw)
            say(f"  end to end {sample.name}: {item['psnr_db']:.2f} dB, SSIM {s:.5f}", flush=True)
            for axis, pool in e2e_response.items():
                alt = dict(config=config, K=settings[sample.name][axis]["K"], focus=settings[sample.name][axis]["focus"])
                ref_alt = render_image(sample.image_u8, sample.depth, components=reference_fns, **alt)
                tst_alt = render_image(sample.image_u8, sample.depth, components=test_fns, **alt)
                pool.add_response(ref.image, ref_alt.image, tst.image, tst_alt.image, sample.name)
        e2e = final.summary() | {
            "ssim": float(np.mean(ssims)),
            "ssim_worst": float(np.min(ssims)),
            "items": final.items,
            "before_colour_fix": raw.summary() | {"ssim": float(np.mean(raw_ssims)), "items": raw.items},
        }
        timings["end_to_end"] = _time.perf_counter() - start
    for sample in samples:
        sample_rows.append({"name": sample.name, "source": sample.source, "height": sample.shape[0],
                            "width": sample.shape[1], "K": sample.K, "focus": type(sample.focus).__name__})
    conditioning_figures: dict[str, _Any] | None = None
    if conditioning:
        conditioning_figures = {
            "apertures": list(conditioning_apertures),
            "settings": {name: {axis: _setting_row(s) for axis, s in axes.items()} for name, axes in settings.items()},
            "denoiser": {axis: pool.summary() for axis, pool in denoiser_response.items()} or None,
            "end_to_end": {axis: pool.summary() for axis, pool in e2e_response.items()} or None,
        }
    failures = _check_thresholds(component_figures, e2e, thresholds)
    failures += _check_conditioning(conditioning_figures, thresholds)
    info = {"config": config.name, "max_tiles_per_image": max_tiles_per_image, "seconds": timings}
    info.update(dict(meta or {}))
    return ParityResult(component_figures, e2e, thresholds, failures, sample_rows, info, conditioning_figures)


def _fmt(value: _Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if abs(value) < 1e-3 and value != 0.0:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def parity_markdown(result: ParityResult, title: str = "Parity report") -> str:
    """A human-readable summary of a :class:`ParityResult` (what ``parity.md`` holds)."""
    meta = result.meta
    lines = [f"# {title}", ""]
    lines.append(f"Status: **{'PASS' if result.passed else 'FAIL'}**")
    for key in ("reference", "tested", "artifacts", "recipe", "config", "model_label"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    t = result.thresholds
    lines.append(f"- thresholds: component PSNR >= {_fmt(t.min_psnr_component)} dB, end-to-end PSNR >= "
                 f"{_fmt(t.min_psnr_end_to_end)} dB, SSIM >= {_fmt(t.min_ssim, 4)}")
    lines += ["", "PSNR = 20 log10(max|ref| / RMSE), pooled over all tiles; worst = lowest single tile.", ""]
    lines += ["## Per component (tested backend fed the reference's stage inputs)", "",
              "| component | PSNR (dB) | worst tile (dB) | max abs | tiles |", "|---|---|---|---|---|"]
    for name, f in result.components.items():
        lines.append(f"| {name} | {_fmt(f['psnr_db'])} | {_fmt(f['psnr_db_worst'])} | {_fmt(f['max_abs'], 6)} | {f['count']} |")
    lines.append("")
    if "abs_rel" in result.components.get("depth", {}):
        d = result.components["depth"]
        lines += [f"Depth against the fp32 depth: AbsRel {_fmt(d['abs_rel'], 5)}, delta_1 (< {DELTA1_THRESHOLD}) "
                  f"{_fmt(d['delta1'], 5)} (pooled over every pixel).", ""]
    if result.end_to_end is not None:
        e = result.end_to_end
        b = e["before_colour_fix"]
        lines += ["## End to end (each backend renders the whole photo)", "",
                  "| output | PSNR (dB) | worst image (dB) | SSIM | max abs (8-bit levels) |", "|---|---|---|---|---|",
                  f"| final (after colour fix) | {_fmt(e['psnr_db'])} | {_fmt(e['psnr_db_worst'])} | {_fmt(e['ssim'], 5)} | {_fmt(e['max_abs'], 0)} |",
                  f"| blended, before colour fix | {_fmt(b['psnr_db'])} | {_fmt(b['psnr_db_worst'])} | {_fmt(b['ssim'], 5)} | {_fmt(b['max_abs'], 0)} |",
                  ""]
    if result.conditioning is not None:
        lines += _conditioning_markdown(result.conditioning, t)
    lines += ["## Samples", "", "| name | source | size | K | focus |", "|---|---|---|---|---|"]
    for s in result.samples:
        lines.append(f"| {s['name']} | {s['source']} | {s['height']}x{s['width']} | {s['K']} | {s['focus']} |")
    if result.failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in result.failures]
    return "\n".join(lines) + "\n"


def _conditioning_markdown(conditioning: _Mapping[str, _Any], thresholds: ParityThresholds) -> list[str]:
    band = thresholds.conditioning_ratio_band
    lines = ["## Conditioning sensitivity (response to a change of aperture / focus)", "",
             "Each backend's difference between the sample's own setting and one extra setting per axis, "
             "compared with the reference's same difference: PSNR of the differences with peak "
             "max|reference difference| (stated per row), and the L2 norm ratio tested / reference "
             f"(allowed: {'report only' if band is None else f'{band[0]} to {band[1]}'}).", "",
             "| part | axis | PSNR of difference (dB) | peak | norm ratio | reference norm | items |",
             "|---|---|---|---|---|---|---|"]
    for part, label in (("denoiser", "denoiser x0 (same latent)"), ("end_to_end", "end to end (8-bit photo)")):
        for axis, f in (conditioning.get(part) or {}).items():
            lines.append(f"| {label} | {axis} | {_fmt(f['psnr_db'])} | {_fmt(f['psnr_peak'], 4)} | "
                         f"{_fmt(f['norm_ratio'], 3)} | {_fmt(f['reference_norm'], 4)} | {f['count']} |")
    lines += ["", "| sample | aperture: K base -> extra | focus: depth base -> extra (K fixed) |", "|---|---|---|"]
    for name, axes in conditioning.get("settings", {}).items():
        a, fo = axes["aperture"], axes["focus"]
        lines.append(f"| {name} | {a['base_K']} -> {a['K']} | {_fmt(fo['base_focus_value'], 3)} -> "
                     f"{_fmt(fo['focus_value'], 3)} |")
    return lines + [""]


def write_parity_report(result: ParityResult, folder: _Path | str, title: str = "Parity report") -> tuple[_Path, _Path]:
    """Write ``parity.json`` and ``parity.md`` into ``folder`` (each atomically)."""
    from .atomic import write_json, write_text

    folder = _Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = write_json(folder / PARITY_JSON, result.to_dict())
    md_path = write_text(folder / PARITY_MD, parity_markdown(result, title))
    return json_path, md_path


# =====================================================================================================
# Two sources of error: quantization (quantized graph on an exact CPU runtime vs the fp32 reference)
# and backend (the accelerator vs that same quantized graph on the CPU). Used by the QNN path, where
# ONNX Runtime's CPU EP runs the QDQ graph with exact integer arithmetic and the HTP runs it on the
# NPU (or Qualcomm's simulator); a bad total then points at the quantization recipe or at the
# device, never at both at once.
# =====================================================================================================

SPLIT_KEYS = ("quantization", "backend", "total")
_SPLIT_TITLES = {
    "quantization": "Quantization error: quantized graph on the CPU vs fp32 reference",
    "backend": "Backend error: accelerator vs the same quantized graph on the CPU",
    "total": "Total: accelerator vs fp32 reference",
}


def run_split_parity(
    reference_fns: _Mapping[str, _Callable[..., np.ndarray]],
    cpu_fns: _Mapping[str, _Callable[..., np.ndarray]],
    device_fns: _Mapping[str, _Callable[..., np.ndarray]],
    samples: _Sequence[_Any],
    *,
    config: _Any,
    max_tiles_per_image: int | None = None,
    end_to_end: bool = True,
    total: bool = True,
    quantization_thresholds: ParityThresholds | None = None,
    backend_thresholds: ParityThresholds | None = None,
    meta: _Mapping[str, _Any] | None = None,
    conditioning: bool = False,
) -> dict[str, ParityResult]:
    """``{"quantization": ref vs cpu, "backend": cpu vs device, "total": ref vs device}``, each a
    :class:`ParityResult` from :func:`run_parity` on the same samples.

    Every part's tile components see the fp32 reference chain's stage inputs, so with memoised
    callables the device runs each component input once for "backend" and "total" together
    (``conditioning`` included: every part uses the same extra settings).
    """
    common = dict(config=config, max_tiles_per_image=max_tiles_per_image, end_to_end=end_to_end,
                  conditioning=conditioning)
    meta = dict(meta or {})
    results = {
        "quantization": run_parity(reference_fns, cpu_fns, samples, thresholds=quantization_thresholds,
                                   meta=meta | {"reference": "fp32", "tested": "quantized on CPU"}, **common),
        "backend": run_parity(cpu_fns, device_fns, samples, thresholds=backend_thresholds, input_fns=reference_fns,
                              meta=meta | {"reference": "quantized on CPU", "tested": "accelerator",
                                           "tile_inputs": "fp32 reference chain"}, **common),
    }
    if total:
        results["total"] = run_parity(reference_fns, device_fns, samples,
                                      meta=meta | {"reference": "fp32", "tested": "accelerator"}, **common)
    return results


def split_parity_markdown(results: _Mapping[str, ParityResult], title: str = "Parity report") -> str:
    """One Markdown document: a summary table of the split, then each part's own report."""
    lines = [f"# {title}", "", "| part | component | PSNR (dB) | worst tile (dB) | max abs |", "|---|---|---|---|---|"]
    for key in SPLIT_KEYS:
        if key not in results:
            continue
        for name, f in results[key].components.items():
            lines.append(f"| {key} | {name} | {_fmt(f['psnr_db'])} | {_fmt(f['psnr_db_worst'])} | {_fmt(f['max_abs'], 6)} |")
        e = results[key].end_to_end
        if e is not None:
            lines.append(f"| {key} | end to end (8-bit photo, SSIM {_fmt(e['ssim'], 4)}) | {_fmt(e['psnr_db'])} | "
                         f"{_fmt(e['psnr_db_worst'])} | {_fmt(e['max_abs'], 0)} |")
    lines.append("")
    for key in SPLIT_KEYS:
        if key in results:
            body = parity_markdown(results[key], _SPLIT_TITLES[key])
            lines.append("#" + body)  # demote the part's title one level
    return "\n".join(lines)


def write_split_parity_report(results: _Mapping[str, ParityResult], folder: _Path | str,
                              title: str = "Parity report",
                              parts: _Mapping[str, "PartParityResult"] | None = None) -> tuple[_Path, _Path]:
    """``parity.json`` (``{"passed", "quantization", "backend", "total"}``, plus ``"parts"``: component ->
    :class:`PartParityResult` for split components) and ``parity.md``, atomically."""
    from .atomic import write_json, write_text

    folder = _Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = dict(parts or {})
    passed = all(r.passed for r in results.values()) and all(p.passed for p in parts.values())
    data: dict[str, _Any] = {"passed": passed, "split": list(results)}
    data.update({key: result.to_dict() for key, result in results.items()})
    markdown = split_parity_markdown(results, title)
    if parts:
        data["parts"] = {name: result.to_dict() for name, result in parts.items()}
        head, sep, rest = markdown.partition("\n\n#")  # the parts' tables right after the summary table
        tables = part_parity_markdown(parts)
        markdown = f"{head}\n\n{tables}\n#{rest}" if sep else f"{markdown}\n{tables}"
    json_path = write_json(folder / PARITY_JSON, data)
    md_path = write_text(folder / PARITY_MD, markdown)
    return json_path, md_path


# =====================================================================================================
# Parts of a split component (a full-size denoiser run as a chain of files): each part on its own.
# =====================================================================================================
#
# The component-level figures above already measure the chain (every part, errors compounding).
# Per part, every runner is fed the REFERENCE runner's intermediate tensors (the reference parts run
# in sequence), so each figure isolates that part's error, as a component's figure isolates the
# component's. Only one part's runners are open at a time, so the peak is about one part per runner.

PartFn = _Callable[[_Mapping[str, np.ndarray]], _Mapping[str, np.ndarray]]


@_dataclasses.dataclass
class PartParityResult:
    """Per-part figures of one split component: ``parts[i]["comparisons"][label]`` (pooled over
    every item and output tensor), ``parts[i]["seconds"][runner]`` (wall time of that runner's runs)."""

    component: str
    parts: list[dict[str, _Any]]
    failures: list[str]
    meta: dict[str, _Any] = _dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, _Any]:
        return {"component": self.component, "passed": self.passed, "failures": self.failures, "parts": self.parts,
                "meta": self.meta}


def run_part_parity(
    component: str,
    parts: _Sequence[tuple[_Sequence[str], _Sequence[str]]],
    open_part: _Callable[[int], _Mapping[str, PartFn]],
    feeds: _Sequence[_Mapping[str, np.ndarray]],
    *,
    reference: str,
    comparisons: _Mapping[str, tuple[str, str]],
    thresholds: _Mapping[str, ParityThresholds | None] | None = None,
    labels: _Sequence[str] | None = None,
    meta: _Mapping[str, _Any] | None = None,
) -> PartParityResult:
    """Compare the runners of each part of ``component`` on the reference chain's tensors.

    ``parts``: each part's (input names, output names), in order. ``open_part(i)``: runner name ->
    callable (``{name: array} -> {name: array}``) for part ``i``, opened when that part is measured
    and released after. ``feeds``: the component's inputs by name, one mapping per item (a tile).
    ``comparisons``: label -> (reference runner, tested runner), e.g. ``{"backend": ("cpu", "htp")}``;
    each is pooled over the part's output tensors and the items, and checked against
    ``thresholds[label].min_psnr_component``. Every runner's wall time per part is recorded.
    """
    if not feeds:
        raise ValueError(f"part parity of {component!r} needs at least one input")
    labels = list(labels or [f"item{i}" for i in range(len(feeds))])
    values = [dict(feed) for feed in feeds]
    rows, failures = [], []
    for index, (inputs, outputs) in enumerate(parts):
        runners = dict(open_part(index))
        missing = {reference, *(n for pair in comparisons.values() for n in pair)} - set(runners)
        if missing:
            raise ValueError(f"part {index} of {component!r} has no runner {sorted(missing)}; it has {sorted(runners)}")
        pools = {label: _Pool() for label in comparisons}
        seconds = {name: 0.0 for name in runners}
        for item, label in zip(values, labels):
            absent = [n for n in inputs if n not in item]
            if absent:
                raise ValueError(f"part {index} of {component!r} reads {absent[0]!r}, which no earlier part wrote")
            feed = {n: item[n] for n in inputs}
            outs = {}
            for name, fn in runners.items():
                start = _time.perf_counter()
                result = fn(feed)
                seconds[name] += _time.perf_counter() - start
                outs[name] = {n: np.asarray(result[n], dtype=np.float32) for n in outputs}
            for key, (ref_name, test_name) in comparisons.items():
                for tensor in outputs:
                    pools[key].add(outs[ref_name][tensor], outs[test_name][tensor], f"{label}:{tensor}")
            item.update(outs[reference])  # the next part reads the reference chain's tensors
        del runners
        figures = {key: {k: v for k, v in pool.summary().items()} for key, pool in pools.items()}
        for key, figure in figures.items():
            bar = (thresholds or {}).get(key)
            if bar is not None and bar.min_psnr_component is not None and not figure["psnr_db"] >= bar.min_psnr_component:
                failures.append(f"{component} part {index} {key}: PSNR {figure['psnr_db']:.2f} dB < "
                                f"{bar.min_psnr_component} dB")
        rows.append({"index": index, "inputs": list(inputs), "outputs": list(outputs), "items": len(values),
                     "comparisons": figures, "seconds": seconds,
                     "seconds_per_run": {k: v / len(values) for k, v in seconds.items()}})
    info = {"reference": reference, "comparisons": {k: list(v) for k, v in comparisons.items()},
            "items": labels, "fed": f"each part gets the {reference} parts' intermediate tensors"}
    info.update(dict(meta or {}))
    return PartParityResult(component, rows, failures, info)


def part_parity_markdown(results: _Mapping[str, PartParityResult]) -> str:
    """One table per split component: each part's figures and each runner's seconds per run."""
    lines = []
    for name, result in results.items():
        if not result.parts:
            continue
        keys = list(result.parts[0]["comparisons"])
        runners = list(result.parts[0]["seconds"])
        lines += [f"## Parts of {name} (each fed the {result.meta.get('reference')} parts' intermediate tensors)", "",
                  "| part | outputs | " + " | ".join(f"{k} PSNR (dB)" for k in keys) + " | "
                  + " | ".join(f"{r} s/run" for r in runners) + " |",
                  "|" + "---|" * (2 + len(keys) + len(runners))]
        for row in result.parts:
            cells = [_fmt(row["comparisons"][k]["psnr_db"]) for k in keys]
            cells += [_fmt(row["seconds_per_run"][r], 3) for r in runners]
            lines.append(f"| {row['index']} | {len(row['outputs'])} | " + " | ".join(cells) + " |")
        lines += ["", f"Items: {', '.join(result.meta.get('items', []))}."]
        if result.failures:
            lines += [""] + [f"- FAIL: {f}" for f in result.failures]
        lines.append("")
    return "\n".join(lines)
