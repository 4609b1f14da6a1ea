"""Export MagicBokeh to ExecuTorch: ``python export/to_executorch.py [options]``.

With no arguments it exports the built-in default model's tile components with the XNNPACK fp32
and int8 recipes into ``artifacts/executorch-<recipe>/``, and writes a parity report (per
component and end to end, on generated scenes) into each folder. The library is
``export/executorch_lowering.py``; this file only turns flags into calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_RECIPES = ("xnnpack-fp32", "xnnpack-int8")
DEFAULT_COMPONENTS = ("encoder", "denoiser", "decoder")
DEFAULT_MIN_PSNR = {"xnnpack-fp32": 60.0}


def build_parser() -> argparse.ArgumentParser:
    from export.executorch_lowering import LOWERING_RECIPES
    from runtime_py.checkpoints.weight_args import add_weight_arguments

    p = argparse.ArgumentParser(prog="python export/to_executorch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("artifacts"),
                   help="parent folder; each recipe goes to OUT/executorch-<recipe> (default: artifacts)")
    p.add_argument("--recipe", action="append", choices=sorted(LOWERING_RECIPES), dest="recipes",
                   help=f"repeatable (default: {' '.join(DEFAULT_RECIPES)})")
    p.add_argument("--components", nargs="+", default=list(DEFAULT_COMPONENTS),
                   choices=["encoder", "denoiser", "decoder", "depth"], help="components to lower")
    w = p.add_argument_group("weights (default: the built-in model)")
    add_weight_arguments(w)
    w.add_argument("--depth-checkpoint", type=Path, help="Depth Anything V2 weights for the depth component")
    p.add_argument("--focus", choices=["bias", "split"], default=None,
                   help="focus-attention realisation (default: chosen per target in export/prepare.py)")
    p.add_argument("--no-rewrites", action="store_true", help="export group/layer norm and attention untouched")
    c = p.add_argument_group("int8 calibration (real tiles)")
    c.add_argument("--calibration-scenes", type=int, default=4, help="generated scenes (default 4)")
    c.add_argument("--calibration-tiles", type=int, default=4, help="tiles per image (default 4)")
    c.add_argument("--calibration-images", type=Path, help="folder of your own photos + depth (+ masks)")
    r = p.add_argument_group("parity report")
    r.add_argument("--no-parity", action="store_true", help="skip the parity report")
    r.add_argument("--parity-scenes", type=int, default=2, help="generated scenes for parity (default 2)")
    r.add_argument("--parity-tiles", type=int, default=None, help="tiles per image for per-component parity (default all)")
    r.add_argument("--parity-images", type=Path, help="folder of your own photos + depth (+ masks) for parity")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def load_torch_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The fp32 model and its provenance label, from the flags (the built-in model by default)."""
    from runtime_py.checkpoints.weight_args import WeightArgumentError, load_weights

    try:
        return load_weights(args)
    except WeightArgumentError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from export.executorch_lowering import QnnSdkMissingError, export_executorch, get_lowering_recipe
    from export.prepare import ExportError
    from quantize.calibration import build_calibration_set
    from quantize.recipes import CalibrationSpec
    from runtime_py.backends import get_backend
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.checkpoints import weights_sha256
    from runtime_py.components import export_components
    from runtime_py.parity import ParityThresholds, run_parity, write_parity_report
    from runtime_py.samples import gather_samples

    recipes = [get_lowering_recipe(r) for r in (args.recipes or DEFAULT_RECIPES)]
    model, label = load_torch_model(args)
    config = model.config
    components = export_components(model, args.components, args.depth_checkpoint)
    digest = weights_sha256(model)
    print(f"model: {config.name} ({label.get('description', label.get('kind'))}), weights sha256 {digest[:12]}...")
    rows = []
    calibration = None
    status = 0
    for recipe in recipes:
        folder = args.out / f"executorch-{recipe.name}"
        print(f"[{recipe.name}] -> {folder}", flush=True)
        extra: dict[str, Any] = {"rewrites": "off" if args.no_rewrites else "per target"}
        if recipe.quantized and calibration is None:
            start = time.perf_counter()
            spec = CalibrationSpec(num_scenes=args.calibration_scenes, max_tiles_per_image=args.calibration_tiles)
            calibration = build_calibration_set(components, config, spec, components=args.components,
                                                images_dir=args.calibration_images)
            print(f"  calibration: {calibration.describe()['batches']} batches in {time.perf_counter() - start:.1f} s")
        if recipe.quantized:
            extra["calibration"] = calibration.describe()
        try:
            report = export_executorch(
                components, folder, recipe=recipe, config=config, weights_sha256=digest, model_label=label,
                calibration=calibration.as_torch() if recipe.quantized else None, names=args.components,
                focus=args.focus, extra=extra, progress=True,
                rewrites=() if args.no_rewrites else None,
            )
        except QnnSdkMissingError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            status = status or 3
            continue
        except ExportError as exc:
            print(f"  error: {exc}", file=sys.stderr)
            return 1
        print(f"  done in {report.seconds:.1f} s, peak RSS {report.peak_rss_mb:.0f} MB")
        parity_line = {}
        if not args.no_parity:
            try:
                tested = get_backend("executorch").load(folder, config=config, weights_sha256=digest)
            except Exception as exc:  # e.g. Core ML artifacts on Linux: report, do not fail the export
                print(f"  parity skipped: {exc}")
            else:
                samples = gather_samples(config, num_scenes=args.parity_scenes, images_dir=args.parity_images)
                reference = TorchBackend().load(components)  # the whole chain: stage inputs come from it
                thresholds = ParityThresholds(min_psnr_component=DEFAULT_MIN_PSNR.get(recipe.name),
                                              min_psnr_end_to_end=DEFAULT_MIN_PSNR.get(recipe.name))
                result = run_parity(reference, tested, samples, config=config, max_tiles_per_image=args.parity_tiles,
                                    thresholds=thresholds, meta={"reference": "torch fp32", "tested": f"executorch {recipe.name}",
                                                                 "artifacts": str(folder), "model_label": label})
                write_parity_report(result, folder, title=f"ExecuTorch {recipe.name} parity")
                parity_line = {n: round(f["psnr_db"], 2) for n, f in result.components.items()}
                if result.end_to_end:
                    parity_line["end_to_end"] = round(result.end_to_end["psnr_db"], 2)
                    parity_line["ssim"] = round(result.end_to_end["ssim"], 5)
                print(f"  parity (dB): {json.dumps(parity_line)}" + ("" if result.passed else f"  FAILED: {result.failures}"))
                if not result.passed:
                    status = 1
        for row in report.rows():
            row["psnr_db"] = parity_line.get(row["component"])
            rows.append(row)
    if rows:
        print("\ncomponent  recipe         MB       s      delegated/non  PSNR dB")
        for r in rows:
            print(f"{r['component']:<10} {r['recipe']:<13} {r['bytes'] / 1e6:7.2f} {r['seconds']:7.1f}  "
                  f"{r['delegated_nodes']}/{r['non_delegated_nodes']:<8} {r['psnr_db']}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
