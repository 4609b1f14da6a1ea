"""A physically based, layered bokeh renderer: the toolkit's teacher and classical baseline.

The scene is cut into layers of equal blur radius, ``r = |depth - focus| * K * px_per_unit``
(depth in [0, 1], larger = nearer, ``K`` the MagicBokeh aperture control). Within one layer the
radius is constant, so scattering every pixel's light into a disk of that radius *is* a
convolution with a disk kernel; the layers are then composited back to front with the
premultiplied "over" operator, which is what makes a sharp near object occlude the blurred
background (and a blurred near object spill over a sharp background). Light is blurred in a
linearised, highlight-boosted space and compressed afterwards, so that bright points turn into
bright discs ("bokeh balls") instead of dim grey smudges.

Scale: ``px_per_unit`` (default :data:`DEFAULT_PX_PER_UNIT` = 1.0) is the disk radius in pixels
per unit of ``|depth - focus| * K``, so K reads directly as "blur radius in pixels at a full unit
of depth difference" (the convention of classical renderers such as BokehMe's). The largest
defocus the model is fed (``K = 32``, ``|depth - focus| = 1``, a defocus-map value ``D = 1``) is
a 32-px radius, a strong blur on a 512-px tile. The radius depends on the defocus map
``D = |depth - focus| * K / 32`` only (``r = 32 * px_per_unit * D``), never on the image size,
so a network trained on crops sees the same blur for the same ``D`` on any tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .contract import IN_FOCUS_THRESHOLD, defocus_inputs

DEFAULT_PX_PER_UNIT = 1.0
"""Disk radius in pixels per unit of ``|depth - focus| * K`` (32 px at K = 32, full defocus)."""


class BokehInputError(ValueError):
    """The renderer was given an image, depth map or parameter it cannot use."""


@dataclass(frozen=True)
class BokehSettings:
    """How the renderer turns defocus into blur and treats highlights.

    ``radius_step``: layers are bins of this many pixels of signed radius; a pixel whose radius
    rounds to zero is in focus and is left untouched. ``gamma``: blur happens on ``v ** gamma``
    (roughly linear light). ``highlight_gain`` / ``highlight_threshold``: values above the
    threshold are boosted by up to ``1 + gain`` before blurring, so a saturated point stays
    bright when spread over a disk; after blurring the exact inverse curve is applied (values
    beyond the boosted maximum saturate to 1).
    """

    px_per_unit: float = DEFAULT_PX_PER_UNIT
    radius_step: float = 1.0
    gamma: float = 2.2
    highlight_gain: float = 3.0
    highlight_threshold: float = 0.9

    def __post_init__(self) -> None:
        if not (self.px_per_unit > 0 and math.isfinite(self.px_per_unit)):
            raise BokehInputError(f"px_per_unit must be a positive number, got {self.px_per_unit}")
        if not (self.radius_step > 0 and math.isfinite(self.radius_step)):
            raise BokehInputError(f"radius_step must be a positive number, got {self.radius_step}")
        if not self.gamma > 0:
            raise BokehInputError(f"gamma must be positive, got {self.gamma}")
        if self.highlight_gain < 0:
            raise BokehInputError(f"highlight_gain must be >= 0, got {self.highlight_gain}")
        if not 0.0 <= self.highlight_threshold < 1.0:
            raise BokehInputError(f"highlight_threshold must be in [0, 1), got {self.highlight_threshold}")


# -- small public helpers ------------------------------------------------------------------------


def signed_blur_radius(depth: np.ndarray, focus: float, aperture_k: float, px_per_unit: float = DEFAULT_PX_PER_UNIT) -> np.ndarray:
    """Signed disk radius in pixels: negative behind the focal plane, positive in front of it."""
    depth = np.asarray(depth, dtype=np.float32)
    return ((depth - np.float32(focus)) * np.float32(aperture_k) * np.float32(px_per_unit)).astype(np.float32)


def disk_kernel(radius: float) -> np.ndarray:
    """An anti-aliased disk of the given radius (pixels), normalised to sum 1.

    Each tap's weight is the (linearly approximated) fraction of the pixel inside the circle,
    so radii between integers change the kernel smoothly. ``radius < 0.5`` is the identity.
    """
    if not (radius >= 0 and math.isfinite(radius)):
        raise BokehInputError(f"disk radius must be a finite number >= 0, got {radius}")
    if radius < 0.5:
        return np.ones((1, 1), dtype=np.float32)
    half = int(math.ceil(radius + 0.5))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    weight = np.clip(radius + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    return (weight / weight.sum()).astype(np.float32)


def _boost_curve(values: torch.Tensor, settings: BokehSettings) -> torch.Tensor:
    """Monotone map [0, 1] -> [0, 1 + gain]: linearise, then lift the highlights."""
    lin = values.clamp(0.0, 1.0) ** settings.gamma
    t = settings.highlight_threshold
    ramp = ((values - t) / (1.0 - t)).clamp(0.0, 1.0)
    smooth = ramp * ramp * (3.0 - 2.0 * ramp)
    return lin * (1.0 + settings.highlight_gain * smooth)


def _compress_curve(values: torch.Tensor, settings: BokehSettings, samples: int = 8193) -> torch.Tensor:
    """Inverse of :func:`_boost_curve` by piecewise-linear interpolation of a dense table.

    Values beyond the curve's maximum (many overlapping highlights) saturate to 1.
    """
    grid = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    table = _boost_curve(grid, settings)
    flat = values.to(torch.float64).reshape(-1).clamp(min=0.0)
    idx = torch.searchsorted(table, flat).clamp(1, samples - 1)
    lo, hi = table[idx - 1], table[idx]
    frac = ((flat - lo) / (hi - lo).clamp(min=1e-12)).clamp(0.0, 1.0)
    out = grid[idx - 1] + frac * (grid[idx] - grid[idx - 1])
    out = torch.where(flat >= table[-1], torch.ones_like(out), out)
    return out.reshape(values.shape).to(values.dtype)


def _fast_fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is fastest on such sizes)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _convolve_same(planes: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve (C, H, W) planes with a square kernel by FFT, zero padding, same size out.

    Zero padding (not reflection) is what a scatter does: light leaving the frame is lost and
    nothing enters from outside; the alpha plane carries the same loss, so dividing colour by
    alpha at the end renormalises border pixels.
    """
    k = kernel.shape[0]
    if k == 1:
        return planes * float(kernel[0, 0])
    half = k // 2
    _, h, w = planes.shape
    fh, fw = _fast_fft_size(h + k - 1), _fast_fft_size(w + k - 1)
    kern = torch.from_numpy(kernel).to(planes.dtype)
    spec = torch.fft.rfft2(planes, s=(fh, fw)) * torch.fft.rfft2(kern, s=(fh, fw))
    full = torch.fft.irfft2(spec, s=(fh, fw))
    return full[:, half : half + h, half : half + w]


def _support_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows/columns holding the mask's pixels, grown by ``margin`` and clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(h, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(w, cols[-1] + margin + 1)),
    )


# -- the renderer ------------------------------------------------------------------------------


def _validate(image: np.ndarray, depth: np.ndarray, focus: float, aperture_k: float) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    depth = np.asarray(depth)
    if image.ndim != 3 or image.shape[2] != 3:
        raise BokehInputError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if depth.shape != image.shape[:2]:
        raise BokehInputError(f"depth must be (H, W) = {image.shape[:2]}, got shape {depth.shape}")
    if not np.issubdtype(image.dtype, np.floating) or not np.issubdtype(depth.dtype, np.floating):
        raise BokehInputError("image and depth must be float arrays (image in [0, 1], depth in [0, 1])")
    if not (np.isfinite(image).all() and np.isfinite(depth).all()):
        raise BokehInputError("image and depth must be finite (no NaN or inf)")
    if image.min() < -1e-6 or image.max() > 1 + 1e-6:
        raise BokehInputError(f"image values must be in [0, 1], got [{image.min():.4g}, {image.max():.4g}]")
    if depth.min() < -1e-6 or depth.max() > 1 + 1e-6:
        raise BokehInputError(f"depth values must be in [0, 1] (larger = nearer), got [{depth.min():.4g}, {depth.max():.4g}]")
    if not (0.0 <= float(focus) <= 1.0):
        raise BokehInputError(f"focus must be a depth in [0, 1], got {focus}")
    if not (float(aperture_k) >= 0 and math.isfinite(float(aperture_k))):
        raise BokehInputError(f"aperture K must be a finite number >= 0, got {aperture_k}")
    return image.astype(np.float32), depth.astype(np.float32)


def render_bokeh(
    image: np.ndarray,
    depth: np.ndarray,
    focus: float,
    aperture_k: float,
    settings: BokehSettings | None = None,
) -> np.ndarray:
    """Render defocus blur: (H, W, 3) RGB in [0, 1] + depth (H, W) in [0, 1] -> (H, W, 3) in [0, 1].

    ``focus`` is the depth that stays sharp; ``aperture_k`` is MagicBokeh's K (1..32 in the
    demo; larger: stronger blur and a thinner in-focus band).
    """
    settings = settings or BokehSettings()
    image, depth = _validate(image, depth, focus, aperture_k)
    radius = signed_blur_radius(depth, focus, aperture_k, settings.px_per_unit)
    bins = np.rint(radius / settings.radius_step).astype(np.int64)
    if not bins.any():
        return image.copy()  # everything within half a radius step of the focal plane

    with torch.no_grad():
        img = torch.from_numpy(image).permute(2, 0, 1)
        light = _boost_curve(img, settings)
        h, w = depth.shape
        colour = torch.zeros((3, h, w), dtype=torch.float32)
        alpha = torch.zeros((1, h, w), dtype=torch.float32)
        # Back to front: most negative signed radius = farthest behind the focal plane.
        for b in np.unique(bins):
            member = bins == b
            kernel = disk_kernel(abs(float(b)) * settings.radius_step)
            # A layer's light only reaches its own bounding box grown by the kernel's half
            # width, so the convolution and the compositing are done on that box alone.
            ys, xs = _support_box(member, kernel.shape[0] // 2)
            layer_alpha = torch.from_numpy(member[ys, xs]).to(torch.float32)[None]
            planes = torch.cat([light[:, ys, xs] * layer_alpha, layer_alpha], dim=0)
            blurred = _convolve_same(planes, kernel)
            layer_colour, layer_cover = blurred[:3], blurred[3:].clamp(0.0, 1.0)
            colour[:, ys, xs] = layer_colour + (1.0 - layer_cover) * colour[:, ys, xs]
            alpha[:, ys, xs] = layer_cover + (1.0 - layer_cover) * alpha[:, ys, xs]
        # Renormalise by the accumulated coverage: pixels whose background light was hidden
        # behind a nearer layer (disocclusions) are filled with the light that did reach them.
        colour = colour / alpha.clamp(min=1e-6)
        out = _compress_curve(colour.clamp(min=0.0), settings)
    return out.permute(1, 2, 0).numpy().astype(np.float32).clip(0.0, 1.0)


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian (radius 3 sigma); sigma <= 0 gives the identity."""
    if sigma <= 0:
        return np.ones(1, dtype=np.float32)
    half = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image with reflected borders."""
    kernel = gaussian_kernel_1d(sigma)
    if kernel.size == 1:
        return np.asarray(image, dtype=np.float32).copy()
    half = kernel.size // 2
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    c = t.shape[1]
    pad_mode = "reflect" if min(t.shape[-2:]) > half else "replicate"
    k = torch.from_numpy(kernel)
    t = torch.nn.functional.pad(t, (half, half, 0, 0), mode=pad_mode)
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    t = torch.nn.functional.pad(t, (0, 0, half, half), mode=pad_mode)
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return t[0].permute(1, 2, 0).numpy()


def gaussian_background_blur(
    image: np.ndarray,
    depth: np.ndarray,
    focus: float,
    aperture_k: float,
    settings: BokehSettings | None = None,
    in_focus_threshold: float = IN_FOCUS_THRESHOLD,
) -> np.ndarray:
    """The naive baseline: one Gaussian blur pasted behind the in-focus region.

    The in-focus region is MagicBokeh's (``D <= 0.1``, :mod:`runtime_py.contract`); the Gaussian's
    sigma is half the median disk radius of the out-of-focus pixels (a disk of radius r has a
    standard deviation of r/2), so the baseline blurs as much as the renderer does on average,
    without depth layering, occlusion or highlights.
    """
    settings = settings or BokehSettings()
    image, depth = _validate(image, depth, focus, aperture_k)
    _, in_focus = defocus_inputs(depth, focus, aperture_k, in_focus_threshold)
    sharp = in_focus.astype(bool)
    if sharp.all():
        return image.copy()
    radius = np.abs(signed_blur_radius(depth, focus, aperture_k, settings.px_per_unit))
    sigma = 0.5 * float(np.median(radius[~sharp]))
    blurred = gaussian_blur(image, sigma)
    return np.where(sharp[..., None], image, blurred).astype(np.float32)
