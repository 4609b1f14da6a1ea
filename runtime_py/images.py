"""Reading and checking the inputs of a render: photo, depth map, focus mask, focus point.

Every check raises :class:`InputError` (a ``ValueError``) with a message that names the file or
argument and what is wrong with it, so that a user never sees a deep torch trace for a bad input.

Decisions (the published code accepts only what its data set holds):

* Photos are 8-bit RGB. RGBA / LA / palette images have their alpha channel DROPPED (not
  composited; a phone photo has no meaningful alpha), greyscale ("L", "1") is replicated to three
  channels. 16-bit / 32-bit / float greyscale and CMYK / YCbCr / LAB files are refused: their
  mapping onto 8-bit sRGB is ambiguous. EXIF orientation is NOT applied: depth maps and masks are
  indexed in the stored pixel order, as in the published data set.
* Depth maps are float arrays in [0, 1] (larger = nearer), shape (H, W) (singleton leading or
  trailing axes are squeezed). NaN / inf and values outside [0, 1] are refused, with the range
  found. Integer depth files are refused (their scale is unknown).
* Focus masks are any image; a pixel is "in the mask" when its greyscale value is non-zero.
* Size limits (inputs may come from anywhere): images, masks and depth maps hold at most
  :data:`MAX_PIXELS` pixels, checked from the file's header before any pixel is decoded.
  Pillow's own decompression-bomb guard is set to the same limit (``Image.MAX_IMAGE_PIXELS``) and
  its warning is treated as an error. ``.npy`` files are opened memory-mapped with
  ``allow_pickle=False``, so a header that promises more data than the file holds, an object
  array or an oversized array is refused before anything is read.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

#: The most pixels an input may have: 8192 x 8192 (a 67-megapixel photo; a render of it already
#: needs several GB). A few hundred bytes of PNG can declare billions of pixels.
MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow warns above this and refuses above twice this

#: PIL modes that become RGB by dropping alpha or replicating grey.
_CONVERTIBLE_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "L", "LA", "La", "1"}


class InputError(ValueError):
    """An input image, depth map, mask or focus setting is unusable; the message says why."""


def _open_checked(path: Path, what: str) -> Image.Image:
    """Open an image lazily and refuse it if its header declares more than :data:`MAX_PIXELS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InputError(f"{what} {path}: refused, too many pixels ({exc})") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise InputError(
            f"{what} {path}: {width}x{height} pixels, more than the {MAX_PIXELS} allowed (8192x8192); "
            "a decompression bomb, or a photo to downscale first"
        )
    return img


# -- photos -----------------------------------------------------------------------------------
def load_image(path: Path | str) -> np.ndarray:
    """Read a photo as an (H, W, 3) uint8 sRGB array (see the module doc for mode handling)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with _open_checked(path, "image") as img:
            img.load()
            mode = img.mode
            if mode not in _CONVERTIBLE_MODES:
                raise InputError(
                    f"image {path}: unsupported pixel mode {mode!r}; give an 8-bit RGB, RGBA or "
                    f"greyscale image"
                )
            rgb = img.convert("RGB") if mode != "RGB" else img
            array = np.asarray(rgb, dtype=np.uint8).copy()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return validate_image(array, name=str(path))


def validate_image(image: Any, name: str = "image") -> np.ndarray:
    """Check an in-memory photo: an (H, W, 3) uint8 array with both sides >= 1."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{name}: expected uint8 pixels (0..255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (drop the alpha channel: image[..., :3])" if image.ndim == 3 and image.shape[2] == 4 else ""
        raise InputError(f"{name}: expected an (H, W, 3) RGB array, got shape {image.shape}{hint}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{name}: empty image of shape {image.shape}")
    return image


# -- depth ------------------------------------------------------------------------------------
def load_depth(path: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a depth map saved with ``numpy.save`` (float, (H, W), values in [0, 1]).

    ``shape`` (the image's (H, W)), if given, is checked against the file's header before the
    data is read. The file is opened memory-mapped (see the module doc), then copied.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"depth file not found: {path}")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"cannot read depth map {path} (expected a .npy array): {str(exc)[:200]}") from None
    if not isinstance(mapped, np.ndarray):  # an .npz archive
        if hasattr(mapped, "close"):
            mapped.close()
        raise InputError(f"depth map {path}: expected a single .npy array, got {type(mapped).__name__}")
    if mapped.size > MAX_PIXELS:
        raise InputError(f"depth map {path}: shape {mapped.shape} has {mapped.size} values, more than the {MAX_PIXELS} allowed")
    if shape is not None and mapped.size != shape[0] * shape[1]:
        raise InputError(f"{path}: depth map has shape {mapped.shape} but the image is {shape[0]}x{shape[1]} (HxW)")
    return validate_depth(np.array(mapped), shape=shape, name=str(path))


def validate_depth(depth: Any, shape: tuple[int, int] | None = None, name: str = "depth") -> np.ndarray:
    """Check a depth map: float, (H, W) matching ``shape`` if given, finite, within [0, 1].

    Returns the map squeezed to (H, W), in float32 or float64 as given (float16 becomes float32),
    so that ``uint8(depth * 255)`` is computed in the precision the caller produced it in.
    """
    if not isinstance(depth, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(depth).__name__}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise InputError(
            f"{name}: expected a float depth map in [0, 1], got dtype {depth.dtype} "
            f"(convert integer maps yourself, e.g. depth / 255 for 8-bit)"
        )
    if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[2]):
        depth = depth[0] if depth.shape[0] == 1 else depth[..., 0]
    if depth.ndim != 2:
        raise InputError(f"{name}: expected an (H, W) depth map, got shape {depth.shape}")
    if depth.dtype == np.float16:
        depth = depth.astype(np.float32)
    if shape is not None and depth.shape != tuple(shape):
        raise InputError(f"{name}: depth map is {depth.shape[0]}x{depth.shape[1]} (HxW) but the image is "
                         f"{shape[0]}x{shape[1]}")
    finite = np.isfinite(depth)
    if not finite.all():
        bad = int(depth.size - finite.sum())
        raise InputError(f"{name}: {bad} depth value(s) are NaN or infinite")
    low, high = float(depth.min()), float(depth.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"{name}: depth values must lie in [0, 1] (min-max normalised, larger = nearer); "
            f"found range [{low:.6g}, {high:.6g}]"
        )
    return depth


# -- focus mask and point ------------------------------------------------------------------------
def load_mask(path: Path | str) -> np.ndarray:
    """Read a focus mask as an (H, W) bool array: True where the greyscale value is non-zero."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mask file not found: {path}")
    try:
        with _open_checked(path, "mask") as img:
            img.load()
            grey = np.asarray(img.convert("L"))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from None
    return grey != 0


def validate_mask(mask: Any, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Check a focus mask: (H, W) matching the image, at least one non-zero pixel."""
    if not isinstance(mask, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"{name}: expected an (H, W) mask, got shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise InputError(f"{name}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but the image is "
                         f"{shape[0]}x{shape[1]}")
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise InputError(f"{name}: mask holds NaN or infinite values")
    selected = mask != 0
    if not selected.any():
        raise InputError(
            f"{name}: the focus mask is empty (no non-zero pixel), so there is nothing to focus on; "
            f"give a mask that covers the subject, a focus point or a focus value"
        )
    return selected


def validate_point(x: Any, y: Any, shape: tuple[int, int], name: str = "focus point") -> tuple[int, int]:
    """Check a focus point (column x, row y) lies inside an image of ``shape`` = (H, W)."""
    for label, value in (("x", x), ("y", y)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name}: {label} must be an integer pixel index, got {value!r}")
    height, width = shape
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(
            f"{name}: ({x}, {y}) lies outside the {width}x{height} (WxH) image; "
            f"x must be in 0..{width - 1}, y in 0..{height - 1}"
        )
    return int(x), int(y)


def parse_point(text: str) -> tuple[int, int]:
    """Parse ``"X,Y"`` (pixel column, row) as given on the command line."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise InputError(f"focus point must be 'X,Y' (two integers), got {text!r}")
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise InputError(f"focus point must be 'X,Y' (two integers), got {text!r}") from None


def validate_focus_value(value: Any, name: str = "focus value") -> float:
    """Check a focus depth given directly: a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected a number in [0, 1], got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name}: must be a depth value in [0, 1], got {value}")
    return value


def validate_aperture(K: Any) -> int:
    """Check the aperture control K: an integer in 1..32.

    K > 32 is refused: ``D = |depth - f| * K / 32`` would leave the [0, 1] range the injector
    was trained on (the demo's slider is 1..32).
    """
    if isinstance(K, bool):
        raise InputError(f"K must be an integer in 1..32, got {K!r}")
    if isinstance(K, (float, np.floating)):
        if not (math.isfinite(K) and float(K).is_integer()):
            raise InputError(f"K must be an integer in 1..32, got {K!r}")
        K = int(K)
    if not isinstance(K, (int, np.integer)):
        raise InputError(f"K must be an integer in 1..32, got {K!r}")
    if not 1 <= K <= 32:
        raise InputError(f"K must be an integer in 1..32 (aperture strength; D = |depth - f| * K / 32), got {K}")
    return int(K)
