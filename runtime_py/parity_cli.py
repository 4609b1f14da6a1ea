"""``python -m runtime_py parity --artifacts DIR``: exported artifacts against the fp32 torch reference.

The reference is the model the artifacts were exported from (the built-in model by default, or
``--checkpoint`` / ``--sd21 --lora``); artifacts whose manifest names other weights or another
configuration are refused. Inputs are real: generated scenes (``--num-scenes``) and/or a folder of
photos with their depth maps (``--images``). Writes ``parity.json`` and ``parity.md`` (into the
artifacts folder unless ``--out``) and exits 1 when a threshold is missed, 2 on a usage error.
Beside the plain figures it checks the response to the conditioning (one extra aperture and one
extra focus depth per image; ``--no-conditioning`` skips it): a quantized model can match the
reference at one setting while its response to K or the focus has collapsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


EXIT_THRESHOLD_MISSED = 1
EXIT_USAGE = 2


def add_parity_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .checkpoints.weight_args import add_weight_arguments

    p = subparsers.add_parser("parity", help="compare exported artifacts with the fp32 torch reference",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="exported artifacts folder (with manifest.json)")
    p.add_argument("--backend", default=None, help="backend that runs the artifacts (default: the manifest's)")
    p.add_argument("--components", nargs="+", default=None, help="components to compare (default: all the artifacts hold)")
    w = p.add_argument_group("reference weights (default: the built-in model)")
    add_weight_arguments(w, config_help="built-in model size (default: the manifest's); for --sd21/--checkpoint "
                                         "a check that the weights have that configuration's sizes")
    s = p.add_argument_group("inputs")
    s.add_argument("--num-scenes", type=int, default=2, help="generated scenes (default 2)")
    s.add_argument("--images", type=Path, default=None,
                   help="your photos: input/ + depth/NAME.npy (+ mask/NAME.png), or NAME.png beside NAME.npy")
    s.add_argument("--max-tiles", type=int, default=None, help="tiles per image for the per-component figures (default all)")
    s.add_argument("--no-end-to-end", action="store_true", help="per-component figures only")
    t = p.add_argument_group("thresholds (missed -> exit status 1)")
    t.add_argument("--min-psnr-component", type=float, default=None, help="dB, each component")
    t.add_argument("--min-psnr-end-to-end", type=float, default=None, help="dB, the final photo")
    t.add_argument("--min-ssim", type=float, default=None, help="SSIM of the final photo")
    t.add_argument("--conditioning-band", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(0.8, 1.25),
                   help="allowed norm ratio (tested / reference) of the response to a change of aperture "
                        "or focus (default 0.8 1.25)")
    c = p.add_argument_group("conditioning sensitivity (on by default)")
    c.add_argument("--no-conditioning", action="store_true",
                   help="skip the check of the response to the conditioning (saves 2 denoiser runs per tile "
                        "and 2 renders per image on each backend)")
    c.add_argument("--conditioning-apertures", type=int, nargs=2, metavar=("K1", "K2"), default=(8, 32),
                   help="apertures of the aperture axis: the one farther from a sample's K is its extra "
                        "setting (default 8 32)")
    p.add_argument("--out", type=Path, default=None, help="folder for parity.json / parity.md (default: --artifacts)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=run_parity_command)
    return p


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_parity_command(args: argparse.Namespace) -> int:
    import torch

    from .backends import BackendUnavailableError, get_backend
    from .backends.torch_backend import TorchBackend
    from .checkpoints import weights_sha256
    from .checkpoints.weight_args import load_weights
    from .components import tile_components
    from .images import InputError
    from .manifest import ManifestError, check_matches, read_manifest
    from .parity import ParityThresholds, run_parity, write_parity_report
    from .samples import gather_samples

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_scenes < 0:
        return _usage_error("--num-scenes must be >= 0")
    try:
        thresholds = ParityThresholds(args.min_psnr_component, args.min_psnr_end_to_end, args.min_ssim,
                                      conditioning_ratio_band=tuple(args.conditioning_band))
        k1, k2 = args.conditioning_apertures
        if not (1 <= k1 <= 32 and 1 <= k2 <= 32 and k1 != k2):
            raise ValueError(f"--conditioning-apertures must be two different K in 1..32, got {k1} {k2}")
    except ValueError as exc:
        return _usage_error(str(exc))
    try:
        manifest = read_manifest(args.artifacts)
        model, label = load_weights(args, default_config=manifest.config.get("name") or None)
        names = tuple(args.components) if args.components else tuple(manifest.components)
        check_matches(manifest, config=model.config, weights_sha256=weights_sha256(model), components=names)
        backend_name = args.backend or manifest.backend
        if backend_name == "torch":
            return _usage_error("the torch backend is the reference; --artifacts are run by an exported backend")
        tested = get_backend(backend_name).load(args.artifacts, names)
        samples = gather_samples(model.config, num_scenes=args.num_scenes, images_dir=args.images)
    except (ManifestError, InputError, BackendUnavailableError, ValueError, FileNotFoundError) as exc:
        return _usage_error(str(exc))

    reference = TorchBackend().load(tile_components(model))
    # The reference for depth would need the depth weights the artifacts came from, which the
    # manifest's weights hash does not cover; depth parity is reported by the exporter instead.
    compared = [n for n in names if n in reference]
    if not compared:
        return _usage_error(f"the artifacts hold {list(names)}; parity here compares the tile components only")
    result = run_parity(
        reference, tested, samples, config=model.config, components=compared,
        max_tiles_per_image=args.max_tiles, end_to_end=not args.no_end_to_end, thresholds=thresholds,
        meta={"reference": "torch fp32", "tested": backend_name, "artifacts": str(args.artifacts),
              "recipe": manifest.recipe.get("name", manifest.precision), "model_label": label},
        conditioning=not args.no_conditioning, conditioning_apertures=tuple(args.conditioning_apertures),
    )
    json_path, md_path = write_parity_report(result, args.out or args.artifacts,
                                             title=f"{backend_name} {manifest.recipe.get('name', '')} parity".strip())
    for name, figures in result.components.items():
        print(f"{name:<10} PSNR {figures['psnr_db']:8.2f} dB   max abs {figures['max_abs']:.3g}   ({figures['count']} tiles)")
    if result.end_to_end is not None:
        e = result.end_to_end
        print(f"{'end2end':<10} PSNR {e['psnr_db']:8.2f} dB   SSIM {e['ssim']:.5f}   max abs {e['max_abs']:.0f} levels")
    for part, axes in (result.conditioning or {}).items():
        if part in ("denoiser", "end_to_end") and axes:
            for axis, f in axes.items():
                print(f"{'cond ' + part:<10} {axis:<8} response ratio {f['norm_ratio']:.3f}   "
                      f"PSNR of difference {f['psnr_db']:.2f} dB")
    print(f"wrote {json_path} and {md_path}")
    if not result.passed:
        for failure in result.failures:
            print(f"threshold missed: {failure}", file=sys.stderr)
        return EXIT_THRESHOLD_MISSED
    return 0
