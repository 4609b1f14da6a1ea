"""The one parser and main loop every ``export/to_*.py`` CLI shares.

Every exporter speaks the same dialect: ``--recipe`` picks one of its family's targets in the
registry (``export/targets.py``), ``--out DIR`` is the artifacts folder itself (``manifest.json``
directly inside; default ``artifacts/<target>``), ``--components`` is space separated, the weight
flags are ``runtime_py.checkpoints.weight_args``'s, and the calibration, parity and step flags are
the same everywhere. A family adds only its own lowering flags. Building the parser imports no
heavy library, so ``--help`` is instant; the flow and the lowering load them when they run.

The known-harmless lines third-party libraries print on import and during lowering (torchao's CUDA
kernels, coremltools' Linux notices, torch's pytree deprecation) are hidden at their source by
``runtime_py.third_party_logs`` before any of them is imported, and coremltools' progress bars are
off when stderr is not a terminal (a log file); ``--verbose`` shows them all again.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from export.targets import ALL_COMPONENTS, FAMILIES, STEPS, Target, family_targets, target_for
from runtime_py.third_party_logs import (
    hide_known_harmless_messages,
    quiet_progress_bars_off_terminal,
    show_hidden_messages,
)

EXIT_PARITY_BELOW_BARS = 1
"""An exporter's exit status when it wrote the artifacts but their parity is below a bar."""

hide_known_harmless_messages()  # before the flow imports torch, executorch or coremltools

DEFAULT_ARTIFACTS = Path("artifacts")

#: The recipe each family's CLI builds when ``--recipe`` is not given.
DEFAULT_RECIPES = {"executorch": "xnnpack-fp32", "coreml": "fp16", "qnn": "w8a16"}


def export_parser(family: str, doc: str) -> argparse.ArgumentParser:
    """The shared flags of a family's exporter; the caller adds its lowering flags to the result.

    ``doc`` is the CLI's docstring: its first paragraph describes, the rest is the epilog.
    """
    from runtime_py.checkpoints.weight_args import add_weight_arguments

    targets = family_targets(family)
    default = DEFAULT_RECIPES[family]
    description, _, epilog = doc.partition("\n\n")
    parser = argparse.ArgumentParser(prog=f"python {FAMILIES[family]['cli']}", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes = "; ".join(f"{name}: {t.recipe.lowering.description} (target {t.name})" for name, t in targets.items())
    parser.add_argument("--recipe", choices=list(targets), default=default,
                        help=f"what to build (default {default}): {recipes}")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the artifacts folder itself, manifest.json directly inside, replaced atomically "
                             f"(default {DEFAULT_ARTIFACTS}/<target>, e.g. {DEFAULT_ARTIFACTS}/{targets[default].name})")
    parser.add_argument("--components", nargs="+", choices=ALL_COMPONENTS, default=None, metavar="NAME",
                        help=f"space-separated components from {' '.join(ALL_COMPONENTS)} "
                             f"(default: the target's, {' '.join(targets[default].components)} for {default})")
    parser.add_argument("--skip", nargs="+", choices=STEPS, default=[], metavar="STEP",
                        help=f"steps to leave out, from {' -> '.join(STEPS)}: e.g. '--skip verify' exports without "
                             "the parity report; '--skip lower package' verifies an existing --out folder")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the known-harmless third-party messages hidden by default "
                             "(runtime_py/third_party_logs.py lists them) and coremltools' progress bars in a log")
    weights = parser.add_argument_group("weights (default: the built-in default model)")
    add_weight_arguments(weights)
    weights.add_argument("--depth-checkpoint", type=Path, default=None,
                         help="Depth Anything V2 weights (original layout, e.g. DAdepth.pth) for the depth component; "
                              "default: a seeded depth network of the configuration's depth size")
    cal = parser.add_argument_group("quantize step: calibration on real inputs (quantized recipes only)")
    cal.add_argument("--calibration-scenes", type=int, default=None,
                     help="generated scenes whose tiles calibrate (default: the recipe's, 4)")
    cal.add_argument("--calibration-tiles", type=int, default=None,
                     help="tiles per calibration image, 0 = all (default: the recipe's, 4)")
    cal.add_argument("--calibration-images", type=Path, default=None,
                     help="folder of your own photos with depth maps (and masks) to calibrate on as well")
    cal.add_argument("--depth-calibration-images", type=int, default=None,
                     help="generated photos that calibrate the depth component (default: the recipe's, 16: one photo "
                          "is one depth input, and fewer did not generalise to held-out photos)")
    par = parser.add_argument_group("verify step: parity against the fp32 torch reference, artifacts executed")
    par.add_argument("--parity-scenes", type=int, default=None,
                     help="generated scenes for parity (default: the target's)")
    par.add_argument("--parity-tiles", type=int, default=None,
                     help="at most this many tiles per scene for the per-component figures (default: the target's; "
                          "the end-to-end figure always renders whole scenes)")
    par.add_argument("--parity-scene-size", type=parse_scene_size, default=None, metavar="PX|tile",
                     help="side of the generated parity scenes in px, or 'tile' for one-tile scenes "
                          "(default 1.5 tiles: 4 overlapping tiles)")
    par.add_argument("--parity-images", type=Path, default=None,
                     help="folder of your own photos with depth maps (and masks) for parity")
    return parser


def parse_scene_size(value: str) -> int | str:
    """``--parity-scene-size``: a positive pixel count or the word ``tile``."""
    if value.strip().lower() == "tile":
        return "tile"
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'tile', got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"the parity scene size must be >= 1 px, got {size}")
    return size


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, target: Target,
                       options: dict[str, Any]) -> Any:
    """The flow's ``ExportSettings`` from the shared flags (``parser.error`` on a bad value)."""
    from export.flow import ExportSettings

    for flag in ("calibration_scenes", "depth_calibration_images", "parity_scenes", "parity_tiles", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.calibration_tiles is not None and args.calibration_tiles < 0:
        parser.error(f"--calibration-tiles must be >= 0 (0 = all), got {args.calibration_tiles}")
    names = tuple(dict.fromkeys(args.components or target.components))
    if args.depth_checkpoint is not None and "depth" not in names:
        parser.error("--depth-checkpoint needs the depth component in --components")
    calibration = target.recipe.quantization.calibration
    if calibration is not None:
        changes = {"num_scenes": args.calibration_scenes, "depth_images": args.depth_calibration_images,
                   "images_dir": str(args.calibration_images) if args.calibration_images else None}
        calibration = replace(calibration, **{k: v for k, v in changes.items() if v is not None})
        if args.calibration_tiles is not None:
            calibration = replace(calibration, max_tiles_per_image=args.calibration_tiles or None)
    verify = target.verify
    changes = {"num_scenes": args.parity_scenes, "max_tiles_per_image": args.parity_tiles,
               "scene_size": args.parity_scene_size,
               "images_dir": str(args.parity_images) if args.parity_images else None}
    verify = replace(verify, **{k: v for k, v in changes.items() if v is not None})
    return ExportSettings(components=names, calibration=calibration, verify=verify, options=options,
                          depth_checkpoint=args.depth_checkpoint)


def run_export(
    family: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {},
    extra_skip: Callable[[argparse.Namespace], Sequence[str]] = lambda args: (),
) -> tuple[int, Any, argparse.Namespace]:
    """Parse, export through ``export.flow.export_target``, print the summary; (exit status, result, args).

    Exit status: 0 done (parity within the target's bars or not measured), 1 parity below a bar,
    2 an error (one line on stderr), 3 this machine cannot build or run the target (one line).
    """
    args = parser.parse_args(argv)
    if args.verbose:
        show_hidden_messages()
    else:
        quiet_progress_bars_off_terminal()
    target = target_for(family, args.recipe)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    settings = settings_from_args(parser, args, target, options)
    out = args.out or DEFAULT_ARTIFACTS / target.artifacts
    prog = Path(FAMILIES[family]["cli"]).stem
    from export.flow import export_target, resolve_steps
    from runtime_py.backends import BackendUnavailableError
    from runtime_py.checkpoints.weight_args import WeightArgumentError, load_weights

    try:
        resolve_steps(target, skip=[*args.skip, *extra_skip(args)])
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        model, label = load_weights(args)
        print(f"{target.name}: model {model.config.name} ({label.get('description', label.get('kind'))}) -> {out}",
              flush=True)
        result = export_target(target, model, out, skip=[*args.skip, *extra_skip(args)], settings=settings,
                               model_label=label, log=lambda m: print(m, flush=True))
    except WeightArgumentError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2, None, args
    except BackendUnavailableError as exc:
        print(f"{prog}: {target.name} cannot be built on this machine: {_one_line(exc)}", file=sys.stderr)
        return 3, None, args
    except (ValueError, RuntimeError, FileNotFoundError, NotImplementedError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2, None, args
    print_summary(result)
    print(f"\nwrote {out} in {time.perf_counter() - started:.1f} s (peak memory {result.peak_rss_mib:.0f} MiB)")
    if result.passed is False:
        print(f"{prog}: parity below the {target.name} bars (export/numerics/{target.family}.json): "
              f"{'; '.join(result.verify.failures)}", file=sys.stderr)
        return EXIT_PARITY_BELOW_BARS, result, args
    return 0, result, args


def print_summary(result: Any) -> None:
    """The steps and one row per component (size, seconds, PSNR), then the end-to-end figure."""
    print("\nsteps: " + ", ".join(f"{r.name} {r.status}" + (f" {r.seconds:.1f} s" if r.status == "done" else "")
                                  + (f" ({r.detail})" if r.detail and r.status != "done" else "")
                                  for r in result.steps.values()))
    rows = result.summary_rows()
    if rows:
        header = list(rows[0])
        table = [header] + [["-" if row[k] is None else str(row[k]) for k in header] for row in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        print()
        for index, row in enumerate(table):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
            if index == 0:
                print("  ".join("-" * w for w in widths))
    verify = result.verify
    if verify is not None and verify.end_to_end:
        print(f"end to end (whole photo, executed by {verify.executed_by}): PSNR {verify.end_to_end['psnr_db']:.2f} dB, "
              f"SSIM {verify.end_to_end['ssim']:.5f}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
