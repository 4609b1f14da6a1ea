"""``python -m runtime_py render``: render bokeh photos from files, one photo or a data-set folder.

One photo::

    python -m runtime_py render --image IMG --out OUT.png [--depth D.npy]
        [--mask M.png | --focus-point X,Y | --focus-value F] [--K 32]

The published data layout (files matched by stem)::

    python -m runtime_py render --input-dir inputs --depth-dir depth --mask-dir mask --output-dir out

Weights: ``--sd21 DIR --lora PKL`` or ``--checkpoint FILE``; with neither, the built-in default
model (:mod:`runtime_py.default_model`). ``--backend NAME --artifacts DIR`` runs exported
artifacts instead of the torch model. Every PNG written carries the model's label in a
``magicbokeh:model`` text chunk and in a sidecar ``OUT.json`` with the run's settings and timings.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .atomic import write_bytes, write_json
from .checkpoints.weight_args import WeightArgumentError, add_weight_arguments, load_weights, uses_checkpoint
from .cli import CLIError
from .model.config import MagicBokehConfig, get_config

if TYPE_CHECKING:  # torch, numpy and PIL are imported when a photo is rendered, not for --help
    import numpy as np

    from .backends.base import ComponentFn
    from .contract import FocusSpec
    from .pipeline import RenderResult

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_K = 32
PNG_MODEL_KEY = "magicbokeh:model"
PNG_SETTINGS_KEY = "magicbokeh:settings"


def add_render_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``render`` command."""
    parser = subparsers.add_parser(
        "render",
        help="render bokeh photos (one photo, or the published folder layout)",
        description=__doc__.split("\n\n")[0],
    )
    one = parser.add_argument_group("one photo")
    one.add_argument("--image", type=Path, help="input photo (PNG or JPEG, 8-bit RGB)")
    one.add_argument("--out", type=Path, help="output PNG path; a sidecar .json is written beside it")
    one.add_argument("--depth", type=Path, help="depth map .npy, (H, W) float in [0, 1], larger = nearer")
    one.add_argument("--mask", type=Path, help="focus mask image: focus on the median depth under it")

    folder = parser.add_argument_group("data-set folders (files matched by stem)")
    folder.add_argument("--input-dir", type=Path, help="folder of NAME.png / NAME.jpg photos")
    folder.add_argument("--depth-dir", type=Path, help="folder of NAME.npy depth maps")
    folder.add_argument("--mask-dir", type=Path, help="folder of NAME.png focus masks")
    folder.add_argument("--output-dir", type=Path, help="folder for NAME.png outputs and NAME.json sidecars")

    focus = parser.add_argument_group("focus (when there is no mask)").add_mutually_exclusive_group()
    focus.add_argument("--focus-point", type=str, metavar="X,Y", help="focus at the depth of pixel (column X, row Y)")
    focus.add_argument("--focus-value", type=float, metavar="F", help="focus at depth F in [0, 1]")

    parser.add_argument("--K", type=int, default=DEFAULT_K, help=f"aperture strength, integer 1..32 (default {DEFAULT_K})")

    weights = parser.add_argument_group("weights (default: the built-in model)")
    add_weight_arguments(weights, config_help="advanced: model configuration (tile size) for the built-in model "
                                              "or the artifacts; for --sd21/--checkpoint (whose sizes are read "
                                              "from the weights) a check that they are that configuration's")

    run = parser.add_argument_group("runtime")
    run.add_argument("--backend", default="torch", help="backend that runs the model (default: torch)")
    run.add_argument("--artifacts", type=Path, help="exported artifacts folder (backends other than torch)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar over tiles")
    parser.set_defaults(handler=run_render)
    return parser


# -- jobs -------------------------------------------------------------------------------------
@dataclass
class RenderJob:
    """One photo to render, with where its depth and focus come from and where it goes."""

    name: str
    image: Path
    out: Path
    depth: Path | None
    mask: Path | None


def _check_out_path(path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise CLIError(f"output {path} must be a .png file (it carries the model label in a PNG text chunk)")
    return path


def _folder_jobs(args: argparse.Namespace) -> list[RenderJob]:
    input_dir: Path = args.input_dir
    if not input_dir.is_dir():
        raise CLIError(f"--input-dir {input_dir} is not a folder")
    for flag, folder in (("--depth-dir", args.depth_dir), ("--mask-dir", args.mask_dir)):
        if folder is not None and not folder.is_dir():
            raise CLIError(f"{flag} {folder} is not a folder")
    images: dict[str, Path] = {}
    for path in sorted(input_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise CLIError(f"two input photos share the name {path.stem!r}: {images[path.stem].name} and {path.name}")
            images[path.stem] = path
    if not images:
        raise CLIError(f"no .png / .jpg photos in {input_dir}")
    jobs, missing = [], []
    for name, image in images.items():
        depth = args.depth_dir / f"{name}.npy" if args.depth_dir is not None else None
        mask = args.mask_dir / f"{name}.png" if args.mask_dir is not None else None
        missing += [str(p) for p in (depth, mask) if p is not None and not p.is_file()]
        jobs.append(RenderJob(name, image, args.output_dir / f"{name}.png", depth, mask))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CLIError(f"{len(missing)} depth/mask file(s) missing for the input photos: {shown}")
    return jobs


def plan_jobs(args: argparse.Namespace) -> list[RenderJob]:
    """Check the flag combination and list the photos to render."""
    single = args.image is not None
    folder = args.input_dir is not None
    if single == folder:
        raise CLIError("give either --image (one photo) or --input-dir (a folder), not both or neither")
    if single:
        if args.out is None:
            raise CLIError("--image needs --out OUT.png")
        stray = [f for f, v in (("--depth-dir", args.depth_dir), ("--mask-dir", args.mask_dir),
                                ("--output-dir", args.output_dir)) if v is not None]
        if stray:
            raise CLIError(f"{', '.join(stray)} only apply with --input-dir")
        jobs = [RenderJob(args.image.stem, args.image, _check_out_path(args.out), args.depth, args.mask)]
    else:
        if args.output_dir is None:
            raise CLIError("--input-dir needs --output-dir")
        stray = [f for f, v in (("--out", args.out), ("--depth", args.depth), ("--mask", args.mask)) if v is not None]
        if stray:
            raise CLIError(f"{', '.join(stray)} only apply with --image; use --depth-dir / --mask-dir / --output-dir")
        jobs = _folder_jobs(args)
    has_mask = jobs[0].mask is not None
    has_other = args.focus_point is not None or args.focus_value is not None
    if has_mask and has_other:
        raise CLIError("choose one focus: a mask, --focus-point or --focus-value")
    if not has_mask and not has_other:
        raise CLIError("no focus given: pass --mask / --mask-dir, --focus-point X,Y or --focus-value F")
    return jobs


def _focus_for(job: RenderJob, args: argparse.Namespace) -> tuple[FocusSpec, dict[str, Any]]:
    from .contract import FocusMask, FocusPoint, FocusValue
    from .images import load_mask, parse_point, validate_focus_value

    if job.mask is not None:
        return FocusMask(load_mask(job.mask)), {"mode": "mask", "mask": str(job.mask)}
    if args.focus_point is not None:
        x, y = parse_point(args.focus_point)
        return FocusPoint(x, y), {"mode": "point", "point": [x, y]}
    value = validate_focus_value(args.focus_value, name="--focus-value")
    return FocusValue(value), {"mode": "value"}


# -- model ------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """Backend callables plus what the outputs must say about them."""

    components: Mapping[str, ComponentFn]
    config: MagicBokehConfig
    label: dict[str, Any]
    backend: str


def _torch_model(args: argparse.Namespace):
    try:
        return load_weights(args)
    except WeightArgumentError as exc:
        raise CLIError(str(exc)) from None


def _artifacts_manifest(artifacts: Path):
    """The artifacts' manifest (schema and file hashes checked), as a clear CLI error if unusable."""
    from .manifest import ManifestError, read_manifest

    try:
        return read_manifest(artifacts)
    except ManifestError as exc:
        raise CLIError(str(exc)) from None


def load_for_render(args: argparse.Namespace) -> LoadedModel:
    """The backend callables, configuration and provenance label the flags ask for."""
    from .backends import get_backend

    if args.backend == "torch":
        if args.artifacts is not None:
            raise CLIError("--artifacts is for exported backends; the torch backend runs the model in memory")
        from .components import tile_components

        model, label = _torch_model(args)
        components = get_backend("torch").load(tile_components(model))
        return LoadedModel(components, model.config, label, "torch")

    if uses_checkpoint(args):
        raise CLIError(f"--sd21/--lora/--checkpoint load torch weights; the {args.backend} backend runs exported "
                       f"--artifacts")
    if args.artifacts is None:
        raise CLIError(f"--backend {args.backend} needs --artifacts DIR (an exported model folder)")
    if not args.artifacts.is_dir():
        raise CLIError(f"--artifacts {args.artifacts} is not a folder")
    try:
        backend = get_backend(args.backend)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    manifest = _artifacts_manifest(args.artifacts)
    config = manifest.model_config
    if args.config is not None and get_config(args.config) != config:
        raise CLIError(f"--config {args.config} does not match the artifacts, which were exported from "
                       f"config {config.name!r}")
    label = manifest.model_label or {
        "kind": "unknown",
        "description": f"exported artifacts in {args.artifacts} (their manifest names no model)",
    }
    if isinstance(label, str):
        label = {"kind": "exported", "description": label}
    components = backend.load(args.artifacts)
    return LoadedModel(components, config, dict(label), args.backend)


# -- writing ----------------------------------------------------------------------------------
def png_bytes(image: np.ndarray, text: Mapping[str, str]) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG with tEXt chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _write_outputs(job: RenderJob, result: RenderResult, record: dict[str, Any], label: dict[str, Any]) -> None:
    text = {PNG_MODEL_KEY: json.dumps(label, sort_keys=True),
            PNG_SETTINGS_KEY: json.dumps({k: record[k] for k in ("K", "focus", "config", "backend")}, sort_keys=True)}
    write_bytes(job.out, png_bytes(result.image, text))
    write_json(job.out.with_suffix(".json"), record)


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``render``."""
    from .images import InputError, load_depth, load_image, parse_point, validate_aperture, validate_focus_value
    from .pipeline import render_image

    jobs = plan_jobs(args)
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.focus_value is not None:
        validate_focus_value(args.focus_value, name="--focus-value")
    if args.focus_point is not None:
        parse_point(args.focus_point)
    K = validate_aperture(args.K)
    depth_fn = None
    if any(job.depth is None for job in jobs):
        from .default_model import load_default_depth_fn

        depth_fn = load_default_depth_fn()
        if depth_fn is None:
            flag = "--depth D.npy" if args.image is not None else "--depth-dir DIR"
            raise CLIError(f"no depth map given and this build has no depth model: pass {flag}")

    start = time.perf_counter()
    loaded = load_for_render(args)
    load_seconds = time.perf_counter() - start
    print(f"model: {loaded.label.get('description', loaded.label)}")

    for job in jobs:
        image = load_image(job.image)
        depth = load_depth(job.depth, shape=image.shape[:2]) if job.depth is not None else None
        focus, focus_record = _focus_for(job, args)
        try:
            result = render_image(image, depth, components=loaded.components, config=loaded.config, K=K,
                                  focus=focus, depth_fn=depth_fn, progress=not args.no_progress)
        except InputError as exc:
            raise InputError(f"{job.image}: {exc}") from None
        focus_record["value"] = result.focus
        record = {
            "image": str(job.image),
            "output": str(job.out),
            "depth": str(job.depth) if job.depth is not None else "depth model",
            "size": [int(image.shape[0]), int(image.shape[1])],
            "K": K,
            "focus": focus_record,
            "config": loaded.config.name,
            "backend": loaded.backend,
            "tiling": result.plan.describe(),
            "padding": list(result.padding),
            "model": loaded.label,
            "seconds": {**result.seconds, "model_load": load_seconds},
        }
        _write_outputs(job, result, record, loaded.label)
        print(f"wrote {job.out} ({result.tile_count} tiles, focus {result.focus:.4f}, "
              f"{result.seconds['total']:.2f} s)")
    return 0
