"""Parity metrics against the fp32 torch reference (the one place they are defined).

PSNR follows the definition Apple's and Qualcomm's converters report: ``20 log10(max|ref| / RMSE)``,
so it is meaningful for latents as well as images. SSIM is computed on images (Gaussian window,
sigma 1.5, the usual constants) with an explicit data range.
"""

from __future__ import annotations

import math

import numpy as np


def max_abs(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = _pair(reference, test)
    return float(np.max(np.abs(reference - test))) if reference.size else 0.0


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """``20 log10(max|ref| / RMSE)`` in dB; ``inf`` when identical."""
    reference, test = _pair(reference, test)
    rmse = math.sqrt(float(np.mean((reference - test) ** 2)))
    peak = float(np.max(np.abs(reference)))
    if rmse == 0.0:
        return math.inf
    if peak == 0.0:
        return -math.inf
    return 20.0 * math.log10(peak / rmse)


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


def compare(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """PSNR and max-abs of one tensor pair (the per-component figures)."""
    return {"psnr_db": psnr(reference, test), "max_abs": max_abs(reference, test)}
