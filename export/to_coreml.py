"""Export MagicBokeh to Core ML (.mlpackage) and check the packages by executing them.

    python export/to_coreml.py                        # built-in default model, fp16, iOS 17
    python export/to_coreml.py --recipe w8            # 8-bit weights
    python export/to_coreml.py --sd21 DIR --lora lora.pkl --depth-checkpoint DAdepth.pth
    python export/to_coreml.py --checkpoint magicbokeh.safetensors --recipe mixed

Writes OUT/<component>.mlpackage (or OUT/<component>.chunks/ when its weights exceed the chunk
size), OUT/manifest.json, OUT/parity.json and OUT/parity.md (default OUT: artifacts/coreml-<recipe>)
and prints a summary table. Parity executes the packages (MLModel.predict on macOS, the numpy Core
ML interpreter elsewhere). The flags are the ones every exporter shares (``export/cli.py``) plus
the Core ML lowering's; the library is ``export/coreml_lowering.py`` run by ``export.flow``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.cli import export_parser, run_export  # noqa: E402
from export.coreml_settings import COMPUTE_UNITS, DEPLOYMENT_TARGETS, PALETTE_BITS  # noqa: E402

FAMILY = "coreml"


def build_parser() -> argparse.ArgumentParser:
    parser = export_parser(FAMILY, __doc__)
    low = parser.add_argument_group("Core ML lowering")
    low.add_argument("--deployment-target", choices=DEPLOYMENT_TARGETS, default=None,
                     help="minimum OS the packages load on (default: the target's, iOS17)")
    low.add_argument("--compute-units", choices=sorted(COMPUTE_UNITS), default=None,
                     help="compute units the app should load the models with, recorded in the manifest "
                          "(default: the target's, all: Neural Engine, GPU and CPU)")
    low.add_argument("--chunk-mb", type=float, default=None,
                     help="split a component whose fp16 weights exceed this many MiB into chunks run in sequence "
                          "(default 1024)")
    low.add_argument("--no-ane-layout", action="store_true",
                     help="keep diffusers' attention instead of the Neural-Engine layout (per-head einsum, "
                          "(B, C, 1, S) tensors, 1x1-conv projections)")
    low.add_argument("--mixed-average-bits", type=float, default=None,
                     help="for --recipe mixed: the element-weighted average bits budget, between the fewest and "
                          "most bits of --mixed-bits (default 5)")
    low.add_argument("--mixed-bits", nargs="+", type=int, default=None, metavar="BITS",
                     help=f"for --recipe mixed: space-separated palettization bits a layer may get, from "
                          f"{' '.join(map(str, PALETTE_BITS))} (default 4 6 8; 3 bits needs iOS18's LUT op)")
    low.add_argument("--compile", action="store_true",
                     help="macOS only: also compile each package to .mlmodelc so the app skips the first-load compile")
    return parser


def lowering_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Core ML lowering's options from the flags (ValueError names a bad value)."""
    options: dict[str, Any] = {}
    if args.deployment_target:
        options["deployment_target"] = args.deployment_target
    if args.compute_units:
        options["compute_units"] = args.compute_units
    if args.chunk_mb is not None:
        if args.chunk_mb <= 0:
            raise ValueError("--chunk-mb must be positive")
        options["chunk_bytes"] = int(args.chunk_mb * 2**20)
    if args.no_ane_layout:
        options["ane_layout"] = False
    if args.compile:
        options["compile_mlmodelc"] = True
    if args.mixed_bits is not None:
        if any(b not in PALETTE_BITS for b in args.mixed_bits):
            raise ValueError(f"--mixed-bits must come from {' '.join(map(str, PALETTE_BITS))}, got {args.mixed_bits}")
        options["mixed_choices"] = tuple(sorted(set(args.mixed_bits)))
    if args.mixed_average_bits is not None:
        options["mixed_average_bits"] = args.mixed_average_bits
    choices = options.get("mixed_choices", (4, 6, 8))
    if not min(choices) <= options.get("mixed_average_bits", 5.0) <= max(choices):
        raise ValueError(f"--mixed-average-bits must lie in [{min(choices)}, {max(choices)}] (the --mixed-bits range)")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    return run_export(FAMILY, build_parser(), argv, lowering_options)[0]


if __name__ == "__main__":
    sys.exit(main())
