"""Golden vectors for the app demos: every intermediate of one reference render, in a format any
language reads (``docs/golden_format.md``: one JSON index plus raw little-endian arrays).

The Android (Java) and iOS (Swift) pipelines test themselves against these files, so there is
one reference for both: this module only records what :func:`runtime_py.pipeline.render_image`
computes (through its ``on_tile`` hook), it never recomputes the pipeline on its own.

``python -m runtime_py golden --image I --depth D.npy (--mask M | --focus-point X,Y) --K K --out DIR``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .atomic import atomic_path, write_json

GOLDEN_SCHEMA = "magicbokeh-golden"
GOLDEN_SCHEMA_VERSION = 1
GOLDEN_INDEX = "golden.json"
ARRAYS_FOLDER = "arrays"
_DTYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float32"}

#: What the reference considers a match for the arrays an app recomputes (see the format doc).
TOLERANCES = {
    "exact": ["image_u8", "depth_u8", "depth_u8_padded", "image_u8_padded", "mask", "focus_value_bits",
              "defocus", "in_focus", "weight", "blended", "raw_u8"],
    "final_u8": {"max_abs": 1, "min_identical_fraction": 0.999},
    "colour_statistics_rel": 1e-5,
}


class GoldenError(ValueError):
    """A golden folder cannot be written or read (bad inputs, missing files, wrong schema)."""


@dataclass
class GoldenSummary:
    """What was written: the folder, its tile count and the final image (for printing and tests)."""

    folder: Path
    tiles: int
    final_u8: np.ndarray
    focus_value: float


class _ArrayWriter:
    """Writes arrays as raw little-endian C-order files and remembers their index entries."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / ARRAYS_FOLDER).mkdir(parents=True, exist_ok=True)
        self.index: dict[str, dict[str, Any]] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        dtype = _DTYPES.get(array.dtype)
        if dtype is None:
            raise GoldenError(f"golden array {name!r} has dtype {array.dtype}; the format holds uint8 and float32")
        if name in self.index:
            raise GoldenError(f"golden array {name!r} written twice")
        relative = f"{ARRAYS_FOLDER}/{name}.raw"
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        (self.folder / relative).write_bytes(data.tobytes(order="C"))
        self.index[name] = {"file": relative, "dtype": dtype, "shape": [int(s) for s in array.shape]}
        return name


def _float32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _focus_record(focus: Any) -> dict[str, Any]:
    from .pipeline import FocusMask, FocusPoint

    if isinstance(focus, FocusMask):
        return {"mode": "mask"}
    if isinstance(focus, FocusPoint):
        return {"mode": "point", "x": int(focus.x), "y": int(focus.y)}
    raise GoldenError("golden vectors take a focus mask or a focus point (what an app gives), "
                      f"not {type(focus).__name__}")


def write_golden(
    out: Path | str,
    image_u8: np.ndarray,
    depth: np.ndarray,
    *,
    focus: Any,
    K: int,
    components: Mapping[str, Any],
    config: Any,
    model: Mapping[str, Any],
) -> GoldenSummary:
    """Render one photo with the reference pipeline and write its golden folder atomically.

    ``model`` is recorded as given (``backend``, ``label``, ``artifacts``, ``manifest_sha256``).
    The folder appears complete or not at all; ``golden.json`` is its last file.
    """
    from .images import validate_depth, validate_image, validate_mask
    from .model.config import get_config
    from .pipeline import (
        FocusMask,
        _pad_to_tile,
        colour_statistics,
        defocus_maps,
        depth_to_u8,
        image_to_model_range,
        render_image,
    )
    from .tiling import blend_weights

    config = get_config(config)
    image_u8 = validate_image(image_u8)
    height, width = image_u8.shape[:2]
    depth = validate_depth(depth, (height, width))
    focus_record = _focus_record(focus)
    if isinstance(focus, FocusMask):
        validate_mask(focus.mask, (height, width), name="focus mask")

    out = Path(out)
    with atomic_path(out) as folder:
        writer = _ArrayWriter(folder)
        tiles: list[dict[str, Any]] = []
        pad_rows, pad_cols = max(0, config.tile - height), max(0, config.tile - width)
        height_p, width_p = height + pad_rows, width + pad_cols

        def record_tile(box, inputs, stages) -> None:
            prefix = f"tile{box.index:03d}_"
            names = {
                "rgb": writer.add(prefix + "rgb", inputs.rgb),
                "defocus": writer.add(prefix + "defocus", inputs.defocus),
                "in_focus": writer.add(prefix + "in_focus", inputs.in_focus),
                "latent": writer.add(prefix + "latent", stages.latent),
                "x0": writer.add(prefix + "x0", stages.x0),
                "decoded": writer.add(prefix + "decoded", stages.rgb),
                "weight": writer.add(prefix + "weight", blend_weights(box, height_p, width_p, config.stride)),
            }
            tiles.append({"index": box.index, "arrays": names})

        result = render_image(image_u8, depth, components=components, config=config, K=K, focus=focus,
                              on_tile=record_tile, keep_blended=True)
        if result.padding != (pad_rows, pad_cols):
            raise GoldenError(f"internal: the pipeline padded {result.padding}, golden expected {(pad_rows, pad_cols)}")

        depth_u8 = depth_to_u8(depth)
        depth_u8_padded = _pad_to_tile(depth_u8, pad_rows, pad_cols)
        image_u8_padded = _pad_to_tile(image_u8, pad_rows, pad_cols)
        defocus, in_focus = defocus_maps(depth_u8_padded, result.focus, K, config.defocus_in_focus_threshold)
        # The tiles' rgb inputs are slices of this; recomputing it checks the hook saw the same thing.
        rgb_full = image_to_model_range(image_u8_padded)
        first = result.plan.boxes[0]
        rows, cols = first.slices()
        recorded = np.fromfile(folder / f"{ARRAYS_FOLDER}/tile000_rgb.raw", dtype="<f4").reshape(rgb_full[:, :, rows, cols].shape)
        if not np.array_equal(recorded, rgb_full[:, :, rows, cols]):
            raise GoldenError("internal: the first tile's recorded input differs from the padded image")

        writer.add("image_u8", image_u8)
        writer.add("depth", depth.astype(np.float32))
        if isinstance(focus, FocusMask):
            writer.add("mask", (np.asarray(focus.mask) != 0).astype(np.uint8))
        writer.add("depth_u8", depth_u8)
        writer.add("depth_u8_padded", depth_u8_padded)
        writer.add("image_u8_padded", image_u8_padded)
        writer.add("defocus", defocus)
        writer.add("in_focus", in_focus)
        assert result.blended is not None
        writer.add("blended", result.blended)
        writer.add("raw_u8", result.raw)
        writer.add("final_u8", result.image)

        mean_out, std_out = colour_statistics(result.raw)
        mean_in, std_in = colour_statistics(image_u8)
        index = {
            "schema": GOLDEN_SCHEMA,
            "schema_version": GOLDEN_SCHEMA_VERSION,
            "config": {
                "name": config.name,
                "tile": config.tile,
                "stride": config.stride,
                "latent_channels": config.latent_channels,
                "latent_tile": config.latent_tile,
                "defocus_in_focus_threshold": config.defocus_in_focus_threshold,
            },
            "model": {key: model.get(key) for key in ("backend", "label", "artifacts", "manifest_sha256")},
            "input": {"height": height, "width": width, "K": int(K), "focus": focus_record},
            "focus_value": float(np.float32(result.focus)),
            "focus_value_bits": _float32_bits(result.focus),
            "padding": [pad_rows, pad_cols],
            "padded_size": [height + pad_rows, width + pad_cols],
            "plan": {
                "height": result.plan.height,
                "width": result.plan.width,
                "tile": result.plan.tile,
                "stride": result.plan.stride,
                "boxes": [{"index": b.index, "top": b.top, "left": b.left, "size": b.size, "kind": b.kind}
                          for b in result.plan.boxes],
            },
            "arrays": writer.index,
            "tiles": tiles,
            "colour_fix": {
                "mean_output": [float(v) for v in mean_out],
                "std_output": [float(v) for v in std_out],
                "mean_input": [float(v) for v in mean_in],
                "std_input": [float(v) for v in std_in],
            },
            "tolerances": TOLERANCES,
        }
        write_json(folder / GOLDEN_INDEX, index)
    return GoldenSummary(out, result.plan.count, result.image, result.focus)


# -- reading (for Python-side checks of the format) ---------------------------------------------
def read_golden(folder: Path | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The index and every array of a golden folder, checked against the schema and file sizes."""
    folder = Path(folder)
    path = folder / GOLDEN_INDEX
    if not path.is_file():
        raise GoldenError(f"{folder} has no {GOLDEN_INDEX}: not a golden folder, or one that was not finished")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path} is not valid JSON: {exc}") from None
    if index.get("schema") != GOLDEN_SCHEMA or index.get("schema_version") != GOLDEN_SCHEMA_VERSION:
        raise GoldenError(f"{path}: schema {index.get('schema')!r} v{index.get('schema_version')!r} is not "
                          f"{GOLDEN_SCHEMA!r} v{GOLDEN_SCHEMA_VERSION}")
    arrays: dict[str, np.ndarray] = {}
    for name, entry in index["arrays"].items():
        dtype = {"uint8": "<u1", "float32": "<f4"}[entry["dtype"]]
        data = np.fromfile(folder / entry["file"], dtype=dtype)
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if data.size != count:
            raise GoldenError(f"{entry['file']}: {data.size} values, the index says shape {entry['shape']}")
        arrays[name] = data.reshape(entry["shape"])
    return index, arrays


# -- command line -------------------------------------------------------------------------------
def add_golden_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``golden`` command."""
    from .checkpoints.weight_args import add_weight_arguments

    parser = subparsers.add_parser(
        "golden",
        help="write golden vectors (every pipeline intermediate) for the app demos' tests",
        description="Render one photo with the reference pipeline and write every intermediate (8-bit depth, "
                    "focus, defocus map, in-focus mask, tile plan, each tile's component inputs and outputs, "
                    "blend weights, the image before and after the colour fix) as JSON + raw little-endian "
                    "arrays; format: docs/golden_format.md.",
    )
    parser.add_argument("--image", type=Path, required=True, help="input photo (PNG or JPEG, 8-bit RGB)")
    parser.add_argument("--depth", type=Path, required=True, help="depth map .npy, (H, W) float in [0, 1], larger = nearer")
    focus = parser.add_mutually_exclusive_group(required=True)
    focus.add_argument("--mask", type=Path, help="focus mask image: focus on the median 8-bit depth under it")
    focus.add_argument("--focus-point", metavar="X,Y", help="focus at the depth of pixel (column X, row Y)")
    parser.add_argument("--K", type=int, default=32, help="aperture strength, integer 1..32 (default 32)")
    parser.add_argument("--out", type=Path, required=True, help="golden folder to write (replaced atomically)")
    weights = parser.add_argument_group("model (default: the built-in model in torch)")
    add_weight_arguments(weights, config_help="model configuration of the built-in model (default small), "
                                              "a guard for --checkpoint or --artifacts")
    weights.add_argument("--backend", default="torch", help="backend whose component outputs are recorded (default torch)")
    weights.add_argument("--artifacts", type=Path, help="exported artifacts folder (backends other than torch)")
    parser.set_defaults(handler=run_golden)
    return parser


def run_golden(args: argparse.Namespace) -> int:
    """Handler of ``golden``."""
    from .images import load_depth, load_image, load_mask, parse_point, validate_aperture
    from .manifest import MANIFEST_NAME
    from .pipeline import FocusMask, FocusPoint
    from .render_cli import load_for_render

    K = validate_aperture(args.K)
    image = load_image(args.image)
    depth = load_depth(args.depth)
    focus = FocusMask(load_mask(args.mask)) if args.mask is not None else FocusPoint(*parse_point(args.focus_point))
    loaded = load_for_render(args)
    manifest_sha = None
    if args.artifacts is not None:
        manifest_sha = hashlib.sha256((args.artifacts / MANIFEST_NAME).read_bytes()).hexdigest()
    summary = write_golden(
        args.out, image, depth, focus=focus, K=K, components=loaded.components, config=loaded.config,
        model={"backend": loaded.backend, "label": loaded.label,
               "artifacts": str(args.artifacts) if args.artifacts is not None else None,
               "manifest_sha256": manifest_sha},
    )
    print(f"wrote {summary.folder} ({summary.tiles} tiles, focus {summary.focus_value:.4f}, config {loaded.config.name})")
    return 0
