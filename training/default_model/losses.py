"""Losses for training against the bokeh teacher, and the SSIM / sharpness figures of the model card
(PSNR is :func:`runtime_py.parity.psnr`, peak 1.0).

SSIM follows Wang et al. (2004): 11-tap Gaussian window, sigma 1.5, C1 = (0.01 L)^2,
C2 = (0.03 L)^2 with data range L = 1, computed per channel on images in [0, 1] and averaged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _gaussian_taps(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM of two (B, C, H, W) images (valid region, no padding), shape (B, C, H-10, W-10)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"SSIM needs two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    channels = a.shape[1]
    taps = _gaussian_taps(dtype=a.dtype).to(a.device)
    rows = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous()
    cols = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:  # the 2-D Gaussian window is separable
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) images."""
    return ssim_map(a, b, data_range).mean()


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between finite-difference gradients: punishes both lost detail and invented edges."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def bokeh_loss(output: torch.Tensor, teacher: torch.Tensor, ssim_weight: float = 0.2, gradient_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """L1 + SSIM + gradient terms on images in [-1, 1]; returns the terms and their ``total``.

    Computed in float32 even inside a bfloat16 autocast region (SSIM's local variances need it).
    """
    with torch.autocast(output.device.type, enabled=False):
        return _bokeh_loss_fp32(output.float(), teacher.float(), ssim_weight, gradient_weight)


def _bokeh_loss_fp32(output: torch.Tensor, teacher: torch.Tensor, ssim_weight: float, gradient_weight: float) -> dict[str, torch.Tensor]:
    out01, ref01 = (output + 1.0) * 0.5, (teacher + 1.0) * 0.5
    terms = {
        "l1": (output - teacher).abs().mean(),
        "ssim": 1.0 - ssim(out01, ref01),
        "grad": gradient_l1(output, teacher),
    }
    terms["total"] = terms["l1"] + ssim_weight * terms["ssim"] + gradient_weight * terms["grad"]
    return terms


# -- figures (numpy, images (H, W, 3) in [0, 1]) -------------------------------------------------


def ssim_np(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of (H, W, 3) images in [0, 1]; with a mask, over the windows centred in it."""
    ta = torch.from_numpy(np.asarray(a, np.float64)).permute(2, 0, 1)[None]
    tb = torch.from_numpy(np.asarray(b, np.float64)).permute(2, 0, 1)[None]
    smap = ssim_map(ta, tb)[0].mean(0).numpy()
    if mask is None:
        return float(smap.mean())
    m = np.asarray(mask, bool)[5:-5, 5:-5]
    return float(smap[m].mean()) if m.any() else float("nan")


def gradient_energy(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute finite-difference gradient (a sharpness measure), optionally over a mask."""
    img = np.asarray(image, np.float64).mean(axis=2)
    g = np.zeros_like(img)
    g[:, :-1] += np.abs(np.diff(img, axis=1))
    g[:-1, :] += np.abs(np.diff(img, axis=0))
    if mask is not None:
        m = np.asarray(mask, bool)
        return float(g[m].mean()) if m.any() else float("nan")
    return float(g.mean())
