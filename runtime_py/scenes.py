"""Synthetic scenes with exact depth, degraded like a digital zoom, and their bokeh teacher.

No photo data set can be downloaded here, and real photos have no exact depth anyway, so the
default model is taught on generated scenes. A scene is a stack of opaque flat objects, each at
one depth (larger = nearer), painted far to near ("dead leaves": occlusion, power-law object
sizes and 1/f textures give natural-image statistics), plus what makes bokeh and restoration
hard: text, thin lines, small specular highlights, optionally a slanted ground plane. One object
is the subject: its depth is the focus and its visible pixels are the focus mask. The input the
model sees is the clean scene degraded like a phone's digital zoom (blur, downscale, sensor noise,
JPEG, bicubic upscale back); the target is :func:`runtime_py.bokeh_renderer.render_bokeh` of the
clean scene. Everything is drawn from one seed, so a seed names a scene exactly.

Three families: ``"dead_leaves"`` (training), ``"street"`` (a standing figure on a ground plane
in front of buildings with lit windows, used as a held-out family the model never trained on) and
``"fine_texture"`` (evaluation only, see :data:`EVALUATION_ONLY_FAMILIES`: a large in-focus panel
covered with 2-4 px stripes, small text and woven band-pass noise, lightly degraded without any
zoom so that the fine texture reaches the model; it tests whether a model keeps that texture,
blurs it, or folds it into moire at its latent grid).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .bokeh_renderer import BokehSettings, render_bokeh

SCENE_FAMILIES = ("dead_leaves", "street", "fine_texture")
EVALUATION_ONLY_FAMILIES = ("fine_texture",)
"""Families no training pool or calibration set may draw from: they exist to measure a model."""
_TEXT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:-"


class SceneError(ValueError):
    """A scene or degradation was requested with parameters it cannot honour."""


@dataclass(frozen=True)
class DegradationSettings:
    """Ranges of the digital-zoom degradation (each drawn uniformly per scene)."""

    zoom: tuple[float, float] = (2.0, 4.0)
    pre_blur_sigma: tuple[float, float] = (0.2, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 0.03)
    jpeg_quality: tuple[int, int] = (35, 90)


FINE_TEXTURE_DEGRADATION = DegradationSettings(zoom=(1.0, 1.0), pre_blur_sigma=(0.0, 0.4),
                                               noise_sigma=(0.0, 0.01), jpeg_quality=(85, 95))
"""The ``fine_texture`` family's degradation: no zoom (the 2-4 px texture must survive into the
input), optics blur of at most 0.2 px sigma, light sensor noise and high-quality JPEG."""


@dataclass(frozen=True)
class Scene:
    """One generated scene; images (H, W, 3) float32 in [0, 1], maps (H, W) float32."""

    seed: int
    family: str
    clean: np.ndarray
    degraded: np.ndarray
    depth: np.ndarray  # [0, 1], larger = nearer, exact
    mask: np.ndarray  # {0, 1}: visible pixels of the subject
    focus: float  # the subject's depth
    aperture_k: float
    teacher: np.ndarray  # render_bokeh(clean, depth, focus, aperture_k)


# -- textures --------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    # Saturation and value spread like everyday surfaces: mostly muted, sometimes vivid.
    hue = rng.random()
    sat = rng.beta(1.5, 2.0)
    val = rng.uniform(0.15, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def pink_noise(rng: np.random.Generator, shape: tuple[int, int], exponent: float) -> np.ndarray:
    """Noise whose amplitude spectrum falls as 1/f**exponent (natural images: about 1), in [0, 1]."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    amplitude = radius ** (-exponent)
    amplitude[0, 0] = 0.0
    phase = rng.uniform(0.0, 2.0 * np.pi, size=amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(h, w))
    lo, hi = np.percentile(field, [1.0, 99.0])
    return np.clip((field - lo) / max(hi - lo, 1e-8), 0.0, 1.0).astype(np.float32)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) texture: flat, 1/f noise, stripes, checks or a gradient between two colours."""
    h, w = shape
    a, b = _random_colour(rng), _random_colour(rng)
    kind = rng.choice(["flat", "noise", "noise", "stripes", "checks", "gradient"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        t = np.zeros((h, w), np.float32)
    elif kind == "noise":
        t = pink_noise(rng, shape, rng.uniform(0.8, 1.6))
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 24.0)
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        t = (0.5 + 0.5 * np.sin(2 * np.pi * phase / period)).astype(np.float32)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == "checks":
        cell = rng.integers(3, 20)
        t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w)
        t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6)).astype(np.float32)
    tex = a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]
    grain = rng.uniform(0.0, 0.04)
    tex = tex + grain * (rng.standard_normal((h, w, 1)).astype(np.float32))
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


# -- shapes ---------------------------------------------------------------------------------------


def _power_law(rng: np.random.Generator, lo: float, hi: float, exponent: float = 3.0) -> float:
    """A size drawn from p(r) ~ r**-exponent on [lo, hi] (dead-leaves' scale invariance at 3)."""
    u = rng.random()
    e = 1.0 - exponent
    return float((lo**e + u * (hi**e - lo**e)) ** (1.0 / e))


def _shape_mask(rng: np.random.Generator, shape: tuple[int, int], radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    h, w = shape
    cy, cx = centre if centre is not None else (rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    kind = rng.choice(["disc", "ellipse", "rectangle", "rectangle"])
    if kind == "disc":
        return dx * dx + dy * dy <= radius * radius
    angle = rng.uniform(0, np.pi)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    aspect = rng.uniform(0.3, 1.0)
    if kind == "ellipse":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_mask(rng: np.random.Generator, shape: tuple[int, int], region: np.ndarray | None = None) -> np.ndarray:
    """A few lines of random text (Pillow's default font), optionally inside a region's box."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if region is not None and region.any():
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    else:
        y0, y1, x0, x1 = 0, h - 1, 0, w - 1
    size = int(rng.integers(9, 26))
    for _ in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(list(_TEXT_ALPHABET), size=int(rng.integers(4, 14))))
        x = rng.uniform(x0, max(x0 + 1, x1 - size * 2))
        y = rng.uniform(y0, max(y0 + 1, y1 - size))
        draw.text((float(x), float(y)), text, fill=255, font=_font(size))
    mask = np.asarray(canvas) > 127
    return mask & region if region is not None else mask


def _lines_mask(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Thin straight lines (1-3 px wide): wires, twigs, hair-like structure."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        draw.line(pts, fill=255, width=int(rng.integers(1, 4)))
    return np.asarray(canvas) > 127


def _dots(rng: np.random.Generator, shape: tuple[int, int], count: int) -> list[np.ndarray]:
    """Small bright discs (1-3 px radius): specular highlights and distant lights."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        r = rng.uniform(0.8, 3.0)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return out


# -- scene families ------------------------------------------------------------------------------


class _Canvas:
    """Painter's-algorithm canvas: paint far to near; the last paint at a pixel is what is seen."""

    def __init__(self, shape: tuple[int, int]):
        h, w = shape
        self.shape = shape
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.depth = np.zeros((h, w), np.float32)
        self.owner = np.full((h, w), -1, np.int32)
        self._next_id = 0

    def paint(self, mask: np.ndarray, colour: np.ndarray, depth: np.ndarray | float) -> int:
        ident = self._next_id
        self._next_id += 1
        self.rgb[mask] = colour[mask] if colour.ndim == 3 else colour
        self.depth[mask] = depth[mask] if np.ndim(depth) == 2 else depth
        self.owner[mask] = ident
        return ident


def _background(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Far backdrop, or a slanted ground plane (depth grows toward the bottom) under a sky."""
    h, w = canvas.shape
    full = np.ones((h, w), bool)
    if rng.random() < 0.45:
        horizon = rng.uniform(0.2, 0.6) * h
        yy = np.mgrid[0:h, 0:w][0].astype(np.float32)
        near = rng.uniform(0.45, 0.85)
        ground_depth = np.clip((yy - horizon) / max(h - horizon, 1.0), 0.0, 1.0) * near
        canvas.paint(full, _texture(rng, (h, w)), 0.0)
        canvas.paint(yy >= horizon, _texture(rng, (h, w)), ground_depth.astype(np.float32))
    else:
        canvas.paint(full, _texture(rng, (h, w)), float(rng.uniform(0.0, 0.15)))


def _finish(rng: np.random.Generator, canvas: _Canvas, subject_id: int, subject_depth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mask = (canvas.owner == subject_id).astype(np.float32)
    return canvas.rgb.clip(0, 1), canvas.depth.clip(0, 1), mask, float(subject_depth)


def _dead_leaves(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    shape = (size, size)
    canvas = _Canvas(shape)
    _background(rng, canvas)
    subject_depth = float(rng.uniform(0.3, 0.95))
    items: list[tuple[float, str]] = []
    for _ in range(int(rng.integers(8, 30))):
        items.append((float(rng.uniform(0.05, 1.0)), "leaf"))
    for _ in range(int(rng.integers(0, 3))):
        items.append((float(rng.uniform(0.05, 1.0)), "lines"))
    for _ in range(int(rng.integers(0, 2))):
        items.append((float(rng.uniform(0.05, 1.0)), "text"))
    items.append((float(rng.uniform(0.0, 0.5)), "dots"))
    items.append((subject_depth, "subject"))
    subject_id = -1
    for depth, kind in sorted(items, key=lambda item: item[0]):
        if kind == "leaf":
            mask = _shape_mask(rng, shape, _power_law(rng, 0.02 * size, 0.45 * size))
            canvas.paint(mask, _texture(rng, shape), depth)
        elif kind == "lines":
            canvas.paint(_lines_mask(rng, shape, int(rng.integers(1, 6))), _random_colour(rng), depth)
        elif kind == "text":
            canvas.paint(_text_mask(rng, shape), _random_colour(rng), depth)
        elif kind == "dots":
            for dot in _dots(rng, shape, int(rng.integers(0, 12))):
                canvas.paint(dot, np.full(3, rng.uniform(0.92, 1.0), np.float32), depth)
        else:
            centre = (rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size)
            mask = _shape_mask(rng, shape, rng.uniform(0.12, 0.3) * size, centre)
            subject_id = canvas.paint(mask, _texture(rng, shape), depth)
            # Detail on the subject itself: the in-focus region the model must restore.
            if rng.random() < 0.7:
                ink = _text_mask(rng, shape, mask)
                colour = _random_colour(rng)
                canvas.rgb[ink] = colour
    return _finish(rng, canvas, subject_id, subject_depth)


def _street(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A figure on a ground plane before buildings with lit windows (a family never trained on)."""
    shape = (size, size)
    h, w = shape
    canvas = _Canvas(shape)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.clip(np.stack([0.35 + 0.3 * yy / h, 0.45 + 0.25 * yy / h, 0.7 + 0.1 * yy / h], -1), 0, 1).astype(np.float32)
    canvas.paint(np.ones(shape, bool), sky, 0.0)
    horizon = rng.uniform(0.55, 0.7) * h
    x = -rng.uniform(0, 0.1) * w
    while x < w:  # buildings: rectangles with a grid of windows, some lit
        bw = rng.uniform(0.12, 0.3) * w
        top = rng.uniform(0.05, 0.45) * h
        depth = float(rng.uniform(0.05, 0.3))
        body = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon)
        canvas.paint(body, _texture(rng, shape) * 0.6, depth)
        step = rng.uniform(0.025, 0.05) * w
        lit = np.zeros(shape, bool)
        for wy in np.arange(top + step * 0.5, horizon - step, step):
            for wx in np.arange(x + step * 0.5, x + bw - step * 0.5, step):
                if rng.random() < 0.35:
                    lit |= (np.abs(yy - wy - step * 0.2) < step * 0.2) & (np.abs(xx - wx - step * 0.2) < step * 0.2)
        canvas.paint(lit, np.array([1.0, 0.93, 0.7], np.float32), depth)
        x += bw + rng.uniform(0.0, 0.05) * w
    near = rng.uniform(0.7, 1.0)
    ground = (np.clip((yy - horizon) / max(h - horizon, 1.0), 0, 1) * near + 0.3 * (1 - near)).astype(np.float32)
    canvas.paint(yy >= horizon, _texture(rng, shape) * 0.8, ground)
    for _ in range(int(rng.integers(1, 4))):  # poles with wires
        px = rng.uniform(0, w)
        depth = float(rng.uniform(0.2, 0.5))
        canvas.paint((np.abs(xx - px) < rng.uniform(1.0, 3.0)) & (yy < horizon + 0.1 * h), np.full(3, 0.1, np.float32), depth)
    # The figure: head, torso and legs at one depth, standing where the ground is at that depth.
    subject_depth = float(rng.uniform(0.45, 0.85))
    feet = horizon + (subject_depth - 0.3 * (1 - near)) / near * (h - horizon)
    feet = float(np.clip(feet, horizon + 0.05 * h, h - 1))
    height = rng.uniform(0.45, 0.7) * h
    cx = rng.uniform(0.35, 0.65) * w
    head_r = height * 0.09
    head_cy = feet - height + head_r
    head = (yy - head_cy) ** 2 + (xx - cx) ** 2 <= head_r**2
    torso = (np.abs(xx - cx) <= height * 0.14) & (yy > head_cy + head_r * 0.9) & (yy <= feet - height * 0.42)
    legs = (np.abs(np.abs(xx - cx) - height * 0.06) <= height * 0.045) & (yy > feet - height * 0.45) & (yy <= feet)
    skin = np.array([0.85, 0.65, 0.5], np.float32) * rng.uniform(0.5, 1.1)
    body_tex = _texture(rng, shape)
    figure = np.zeros((h, w, 3), np.float32)
    figure[:] = body_tex
    figure[head] = np.clip(skin, 0, 1)
    subject_id = canvas.paint(head | torso | legs, figure, subject_depth)
    canvas.rgb[_text_mask(rng, shape, torso) & (canvas.owner == subject_id)] = _random_colour(rng)
    for _ in range(int(rng.integers(0, 3))):  # something nearer, partly occluding
        mask = _shape_mask(rng, shape, _power_law(rng, 0.03 * size, 0.15 * size))
        canvas.paint(mask, _texture(rng, shape), float(rng.uniform(subject_depth + 0.05, 1.0)))
    return _finish(rng, canvas, subject_id, subject_depth)


# -- fine texture (evaluation only) -------------------------------------------------------------

FINE_STRIPE_PERIODS = (2.2, 4.0)
"""Stripe periods of the fine_texture family, px: above the 2-px Nyquist limit of the pixel grid
(sinusoids sampled at pixel centres carry no aliasing of their own) and below the latent grid's
Nyquist period of any VAE that downsamples 4x or more."""
FINE_STRIPE_REFERENCE_PERIOD = 3.0
"""Every fine_texture subject carries one stripe patch at this period (the issue's 3-px case)."""


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours whose luminance differs by at least 0.3: a texture that is plainly visible."""
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    while True:
        a, b = _random_colour(rng), _random_colour(rng)
        if abs(float(luma @ (a - b))) >= 0.3:
            return a, b


def _fine_stripes(rng: np.random.Generator, shape: tuple[int, int], period: float) -> np.ndarray:
    """Sinusoidal stripes of ``period`` px at a random orientation, in [0, 1]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0.0, np.pi)
    phase = xx * math.cos(angle) + yy * math.sin(angle)
    return (0.5 + 0.5 * np.sin(2.0 * np.pi * phase / period + rng.uniform(0, 2 * np.pi))).astype(np.float32)


def _fabric(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Woven-looking band-pass noise: white noise kept at periods of 2.2-4 px, mostly along two
    perpendicular directions (warp and weft), in [0, 1]."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    band = (radius >= 1.0 / FINE_STRIPE_PERIODS[1]) & (radius <= 1.0 / FINE_STRIPE_PERIODS[0])
    angle = rng.uniform(0.0, np.pi / 2)
    direction = np.arctan2(fy, fx)
    weave = np.abs(np.cos(2.0 * (direction - angle))) ** 4  # energy near two perpendicular axes
    spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) * band * (0.15 + weave)
    field = np.fft.irfft2(spectrum, s=(h, w))
    lo, hi = np.percentile(field, [1.0, 99.0])
    return np.clip((field - lo) / max(hi - lo, 1e-8), 0.0, 1.0).astype(np.float32)


def _small_text(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Lines of small text (6-9 px font) filling the area: strokes 1 px wide, 2-4 px apart."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    size = int(rng.integers(6, 10))
    font = _font(size)
    for y in np.arange(0.0, h, size + 2.0):
        text = "".join(rng.choice(list(_TEXT_ALPHABET), size=max(4, int(w / (size * 0.5)))))
        draw.text((float(rng.uniform(-size, 0)), float(y)), text, fill=255, font=font)
    return np.asarray(canvas).astype(np.float32) / 255.0


def _fine_texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A large in-focus panel (60-85 % of the frame) tiled with fine textures before a far backdrop.

    The panel is cut into a 2 x 2 or 3 x 3 grid of patches; each patch carries one texture: sinusoidal
    stripes (period 2.2-4 px, random orientation; the first patch always at 3 px), small text, or
    woven band-pass noise, each between two contrasting colours. The backdrop is an ordinary
    textured far plane (it gets the bokeh).
    """
    shape = (size, size)
    h, w = shape
    canvas = _Canvas(shape)
    canvas.paint(np.ones(shape, bool), _texture(rng, shape), float(rng.uniform(0.0, 0.1)))
    for dot in _dots(rng, shape, int(rng.integers(0, 10))):
        canvas.paint(dot, np.full(3, rng.uniform(0.92, 1.0), np.float32), float(rng.uniform(0.0, 0.1)))
    side = math.sqrt(rng.uniform(0.6, 0.85))
    aspect = rng.uniform(0.85, 1.15)
    ph, pw = min(h - 2, side * h * aspect), min(w - 2, side * w / aspect)
    y0, x0 = rng.uniform(1, h - ph - 1), rng.uniform(1, w - pw - 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    panel = (yy >= y0) & (yy < y0 + ph) & (xx >= x0) & (xx < x0 + pw)
    cells = int(rng.choice([2, 3]))
    surface = np.zeros((h, w, 3), np.float32)
    row = np.clip(((yy - y0) / ph * cells).astype(np.int32), 0, cells - 1)
    col = np.clip(((xx - x0) / pw * cells).astype(np.int32), 0, cells - 1)
    for index in range(cells * cells):
        if index == 0:
            t = _fine_stripes(rng, shape, FINE_STRIPE_REFERENCE_PERIOD)
        else:
            kind = rng.choice(["stripes", "stripes", "text", "fabric"])
            if kind == "stripes":
                t = _fine_stripes(rng, shape, float(rng.uniform(*FINE_STRIPE_PERIODS)))
            elif kind == "text":
                t = _small_text(rng, shape)
            else:
                t = _fabric(rng, shape)
        a, b = _contrasting_colours(rng)
        patch = (row * cells + col) == index
        surface[patch] = (a[None, :] * (1.0 - t[..., None]) + b[None, :] * t[..., None])[patch]
    subject_depth = float(rng.uniform(0.6, 0.95))
    subject_id = canvas.paint(panel, surface, subject_depth)
    return _finish(rng, canvas, subject_id, subject_depth)


# -- degradation --------------------------------------------------------------------------------


def degrade_digital_zoom(image: np.ndarray, rng: np.random.Generator, settings: DegradationSettings | None = None) -> np.ndarray:
    """Simulate a cropped, zoomed phone photo: optics blur, subsample, noise, JPEG, bicubic upscale."""
    from .bokeh_renderer import gaussian_blur

    settings = settings or DegradationSettings()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise SceneError(f"degradation needs an (H, W, 3) image, got shape {image.shape}")
    h, w = image.shape[:2]
    zoom = rng.uniform(*settings.zoom)
    small = (max(8, round(w / zoom)), max(8, round(h / zoom)))
    blurred = gaussian_blur(image, rng.uniform(*settings.pre_blur_sigma) * zoom / 2.0)
    pil = Image.fromarray((blurred.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)).resize(small, Image.Resampling.BICUBIC)
    arr = np.asarray(pil).astype(np.float32) / 255.0
    sigma = rng.uniform(*settings.noise_sigma)
    # Sensor noise: shot noise grows with signal, read noise does not.
    arr = arr + rng.standard_normal(arr.shape).astype(np.float32) * sigma * np.sqrt(0.3 + 0.7 * arr)
    pil = Image.fromarray((arr.clip(0, 1) * 255.0 + 0.5).astype(np.uint8))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1)))
    buffer.seek(0)
    pil = Image.open(buffer).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    return (np.asarray(pil).astype(np.float32) / 255.0).clip(0, 1)


# -- public entry point ----------------------------------------------------------------------------


def generate_scene(
    seed: int,
    size: int = 256,
    family: str = "dead_leaves",
    aperture_k: float | None = None,
    degradation: DegradationSettings | None = None,
    bokeh: BokehSettings | None = None,
) -> Scene:
    """Generate one scene (clean, degraded, exact depth, subject mask, focus, K, teacher).

    ``aperture_k`` None draws K uniformly from the integers 4..32 (the published control's useful
    range); the draw comes from the scene's own seed, so the result is deterministic.
    ``degradation`` None uses the family's own: :data:`FINE_TEXTURE_DEGRADATION` for
    ``fine_texture``, :class:`DegradationSettings`' defaults (a 2-4x digital zoom) otherwise.
    """
    if family not in SCENE_FAMILIES:
        raise SceneError(f"unknown scene family {family!r}; choose one of {SCENE_FAMILIES}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise SceneError(f"scene size must be an integer >= 32 pixels, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SceneError(f"scene seed must be a non-negative integer, got {seed!r}")
    if aperture_k is not None and not (float(aperture_k) >= 0 and math.isfinite(float(aperture_k))):
        raise SceneError(f"aperture K must be a finite number >= 0, got {aperture_k}")
    rng = np.random.default_rng([int(seed), SCENE_FAMILIES.index(family)])
    build = {"dead_leaves": _dead_leaves, "street": _street, "fine_texture": _fine_texture}[family]
    clean, depth, mask, focus = build(rng, int(size))
    k = float(rng.integers(4, 33)) if aperture_k is None else float(aperture_k)
    if degradation is None and family == "fine_texture":
        degradation = FINE_TEXTURE_DEGRADATION
    degraded = degrade_digital_zoom(clean, rng, degradation)
    teacher = render_bokeh(clean, depth, focus, k, bokeh)
    return Scene(
        seed=int(seed),
        family=family,
        clean=clean,
        degraded=degraded,
        depth=depth,
        mask=mask,
        focus=focus,
        aperture_k=k,
        teacher=teacher,
    )
