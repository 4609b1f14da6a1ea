"""Export MagicBokeh components to Core ML (.mlpackage) and check them by executing the packages.

    python export/to_coreml.py                       # built-in default model, fp16, iOS 17
    python export/to_coreml.py --precision w8        # 8-bit weights
    python export/to_coreml.py --sd21 DIR --lora lora.pkl --depth-checkpoint DAdepth.pth
    python export/to_coreml.py --checkpoint magicbokeh.safetensors --precision mixed

Writes OUT/<component>.mlpackage (or OUT/<component>.chunks/ when its weights exceed the chunk
size), OUT/manifest.json, OUT/parity.json and OUT/parity.md, and prints a summary table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.coreml_lowering import (  # noqa: E402
    COMPUTE_UNITS,
    DEFAULT_CHUNK_BYTES,
    DEPLOYMENT_TARGETS,
    PRECISIONS,
    CoreMLOptions,
    export_coreml,
    summary_rows,
)
from quantize.coreml import PALETTE_BITS  # noqa: E402

COMPONENTS = ("encoder", "denoiser", "decoder", "depth")


def build_parser() -> argparse.ArgumentParser:
    from runtime_py.checkpoints.weight_args import add_weight_arguments

    parser = argparse.ArgumentParser(
        prog="to_coreml.py",
        description="Convert MagicBokeh's components (encoder, denoiser, decoder, depth) to Core ML ML programs, "
                    "compress them, and report parity measured by executing the written packages "
                    "(MLModel.predict on macOS, the numpy Core ML interpreter elsewhere).",
    )
    weights = parser.add_argument_group("weights (default: the built-in default model)")
    add_weight_arguments(weights)
    weights.add_argument("--depth-checkpoint", type=Path,
                         help="Depth Anything V2 state dict (original layout, e.g. DAdepth.pth); default: a seeded "
                              "depth network of the configuration's depth size")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="fp16: fp16 weights and compute (default); w8: 8-bit linear weights; w6/w4: k-means "
                             "palettized weights; mixed: per-layer 4/6/8-bit palettization chosen by measured "
                             "sensitivity (torch, real tiles) within --mixed-average-bits; fp32: converter debugging only")
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help=f"comma-separated components to export (default: {','.join(COMPONENTS)})")
    parser.add_argument("--deployment-target", choices=DEPLOYMENT_TARGETS, default="iOS17",
                        help="minimum OS the packages load on (default iOS17)")
    parser.add_argument("--compute-units", choices=sorted(COMPUTE_UNITS), default="all",
                        help="compute units the app should load the models with, recorded in the manifest "
                             "(default all: Neural Engine, GPU and CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default artifacts/coreml-<precision>); replaced atomically")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / 2**20,
                        help="split a component whose fp16 weights exceed this many MiB into chunks run in sequence "
                             "(default 1024)")
    parser.add_argument("--no-ane-layout", action="store_true",
                        help="keep diffusers' attention instead of the Neural-Engine layout (per-head einsum, "
                             "(B, C, 1, S) tensors, 1x1-conv projections)")
    parser.add_argument("--mixed-average-bits", type=float, default=5.0,
                        help="for --precision mixed: the element-weighted average bits budget, between the "
                             "fewest and most bits of --mixed-bits (default 5)")
    parser.add_argument("--mixed-bits", default="4,6,8",
                        help="for --precision mixed: comma-separated palettization bits a layer may get, from "
                             f"{','.join(map(str, PALETTE_BITS))} (default 4,6,8; 3 bits needs iOS18's LUT op)")
    parser.add_argument("--sensitivity-samples", type=int, default=1,
                        help="for --precision mixed: real tiles per component the per-layer sensitivity is "
                             "measured on (default 1; each costs one torch run per layer)")
    parser.add_argument("--compile", action="store_true",
                        help="macOS only: also compile each package to .mlmodelc so the app skips the first-load compile")
    parser.add_argument("--no-parity", action="store_true", help="skip executing the packages for the parity report")
    parser.add_argument("--num-scenes", type=int, default=1,
                        help="generated scenes (1.5 tiles square) whose tiles feed the parity check (default 1)")
    parser.add_argument("--parity-tiles", type=int, default=2,
                        help="at most this many tiles per scene for the per-component figures (default 2; the "
                             "end-to-end figure always renders whole scenes)")
    return parser


def load_components(args: argparse.Namespace, names: Sequence[str]):
    """(components, config, weights sha256, label) for the requested weights."""
    from runtime_py.checkpoints import weights_sha256
    from runtime_py.checkpoints.weight_args import load_weights
    from runtime_py.components import export_components

    model, label = load_weights(args)
    return export_components(model, names, args.depth_checkpoint), model.config, weights_sha256(model), label


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.components.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        parser.error(f"unknown components {unknown}; choose from {','.join(COMPONENTS)}")
    if args.chunk_mb <= 0:
        parser.error("--chunk-mb must be positive")
    try:
        mixed_bits = tuple(sorted({int(b) for b in args.mixed_bits.split(",") if b.strip()}))
    except ValueError:
        parser.error(f"--mixed-bits must be comma-separated integers, got {args.mixed_bits!r}")
    if not mixed_bits or any(b not in PALETTE_BITS for b in mixed_bits):
        parser.error(f"--mixed-bits must come from {','.join(map(str, PALETTE_BITS))}, got {args.mixed_bits!r}")
    if not mixed_bits[0] <= args.mixed_average_bits <= mixed_bits[-1]:
        parser.error(f"--mixed-average-bits must lie in [{mixed_bits[0]}, {mixed_bits[-1]}] (the --mixed-bits range)")
    if args.sensitivity_samples < 1:
        parser.error("--sensitivity-samples must be >= 1")
    if args.num_scenes < 1:
        parser.error("--num-scenes must be >= 1")
    if args.parity_tiles < 1:
        parser.error("--parity-tiles must be >= 1")
    options = CoreMLOptions(
        precision=args.precision,
        deployment_target=args.deployment_target,
        compute_units=args.compute_units,
        ane_layout=not args.no_ane_layout,
        chunk_bytes=int(args.chunk_mb * 2**20),
        compile_mlmodelc=args.compile,
        mixed_average_bits=args.mixed_average_bits,
        mixed_choices=mixed_bits,
        sensitivity_samples=args.sensitivity_samples,
    )
    out = args.out or Path("artifacts") / f"coreml-{args.precision}"
    started = time.perf_counter()
    try:
        components, config, digest, label = load_components(args, names)
        result = export_coreml(components, out, options=options, names=names, config=config,
                               weights_sha256=digest, model_label=label, parity=not args.no_parity,
                               num_scenes=args.num_scenes, max_tiles_per_image=args.parity_tiles)
    except (ValueError, RuntimeError, FileNotFoundError, NotImplementedError) as exc:
        print(f"to_coreml: error: {exc}", file=sys.stderr)
        return 2
    rows = [("component", "precision", "size", "PSNR")] + summary_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    parity = result.parity
    if parity is not None and parity.end_to_end:
        print(f"end to end (whole photo through the packages): PSNR {parity.end_to_end['psnr_db']:.2f} dB, "
              f"SSIM {parity.end_to_end['ssim']:.5f}")
    print(f"\nwrote {out} in {time.perf_counter() - started:.1f} s (peak memory {result.peak_rss_mib:.0f} MiB)")
    if parity is not None and not parity.passed:
        print(f"to_coreml: parity below the {args.precision} bar: {'; '.join(parity.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
