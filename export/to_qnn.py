"""Export MagicBokeh's tile components for Qualcomm's Hexagon NPU (QNN HTP) through ONNX Runtime.

    python export/to_qnn.py                                  # built-in default model (all four components), W8A16, SM8650
    python export/to_qnn.py --precision w8a8 --soc SM8550,SM8650,SM8750
    python export/to_qnn.py --sd21 DIR --lora lora.pkl       # the published weights
    python export/to_qnn.py --checkpoint magicbokeh.safetensors --override denoiser:/conv_out/Conv_output_0=16
    python export/to_qnn.py --hub --hub-device "Samsung Galaxy S24 (Family)"

Components: encoder, denoiser, decoder (per 512-px tile) and depth (Depth Anything V2 at the
config's static ``depth_input``; the built-in model's depth network has seeded random weights
unless --depth-checkpoint names the user's Depth Anything V2 checkpoint).

Writes OUT/<component>.fp32.onnx, OUT/<component>.<precision>.onnx (QDQ), one
OUT/<component>.<precision>.<SoC>.ctx.onnx per SoC (EPContext, precompiled for the HTP),
OUT/manifest.json, OUT/parity.json and OUT/parity.md (quantization vs backend error), and with
--hub OUT/hub.json plus OUT/hub/<device>/; prints a summary table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.qnn_lowering import QNN_RECIPES, QnnOptions, export_qnn, summary_rows  # noqa: E402
from quantize.recipes import CalibrationSpec  # noqa: E402
from runtime_py.backends.onnxruntime_backend import DEFAULT_SOC, SOCS  # noqa: E402

COMPONENTS = ("encoder", "denoiser", "decoder", "depth")
SOC_HELP = ", ".join(f"{key} = {value['name']}" for key, value in SOCS.items())


def build_parser() -> argparse.ArgumentParser:
    from runtime_py.checkpoints.weight_args import add_weight_arguments

    parser = argparse.ArgumentParser(
        prog="to_qnn.py",
        description="Export MagicBokeh's encoder, denoiser, decoder and depth model to ONNX, quantize them to QDQ for the "
                    "Hexagon NPU, check that each runs entirely on the QNN HTP with CPU fallback disabled, and "
                    "write precompiled context binaries and a parity report.",
    )
    weights = parser.add_argument_group("weights (default: the built-in default model)")
    add_weight_arguments(weights)
    weights.add_argument("--depth-checkpoint", type=Path, default=None,
                         help="Depth Anything V2 checkpoint for the depth component (default: the config's depth "
                              "size with seeded random weights, the toolkit ships no depth weights)")
    parser.add_argument("--precision", choices=QNN_RECIPES, default="w8a16",
                        help="w8a16: int8 weights, 16-bit activations (default, Qualcomm's choice for diffusion); "
                             "w8a8: 8-bit activations (the denoiser's x0 step stays 16-bit)")
    parser.add_argument("--soc", default=DEFAULT_SOC,
                        help=f"comma-separated Snapdragon SoCs to precompile for, or 'all' "
                             f"({SOC_HELP}; default {DEFAULT_SOC})")
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help=f"comma-separated components (default {','.join(COMPONENTS)})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default artifacts/qnn-<precision>)")
    parser.add_argument("--calibration-scenes", type=int, default=4, help="generated scenes for calibration (default 4)")
    parser.add_argument("--calibration-tiles", type=int, default=4,
                        help="tiles per calibration image (default 4; 0 = all)")
    parser.add_argument("--depth-calibration-images", type=int, default=16,
                        help="generated photos that calibrate the depth component (default 16: one photo is one "
                             "depth input, and fewer did not generalise to held-out photos)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of your own photos (with depth maps and masks) to calibrate on as well")
    parser.add_argument("--override", action="append", default=[], metavar="COMPONENT:TENSOR=BITS",
                        help="keep one tensor at 8 or 16 bits, e.g. denoiser:x0=16 (repeatable)")
    parser.add_argument("--no-contexts", action="store_true", help="skip the context binaries (and the HTP check)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity report")
    parser.add_argument("--parity-scenes", type=int, default=1, help="generated scenes for the parity report (default 1)")
    parser.add_argument("--parity-tiles", type=int, default=4,
                        help="at most this many tiles per scene for the per-component figures (default 4; each one "
                             "runs on the simulated HTP, which takes seconds to minutes per tile on x86)")
    parser.add_argument("--parity-scene-size", type=parse_scene_size, default=None, metavar="PX|tile",
                        help="side of the generated parity scenes in px, or 'tile' for one-tile scenes (the "
                             "cheapest end-to-end figure on the simulator; default 1.5 tiles: 4 overlapping tiles)")
    hub = parser.add_argument_group("Qualcomm AI Hub (needs an API token and network)")
    hub.add_argument("--hub", action="store_true", help="compile, profile and run on AI Hub devices; merge the results")
    hub.add_argument("--hub-device", action="append", default=None,
                     help="AI Hub device name (repeatable; default Samsung Galaxy S24 and S25)")
    hub.add_argument("--hub-token", default=None, help="API token (default: ~/.qai_hub/client.ini or QAI_HUB_API_TOKEN)")
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


def parse_overrides(values: Sequence[str]) -> dict[str, dict[str, list[dict]]]:
    """``COMPONENT:TENSOR=BITS`` strings -> ``{component: {tensor: [entry]}}`` (ValueError names a bad one)."""
    from quantize.qnn import parse_overrides as to_entries

    out: dict[str, dict[str, str]] = {}
    for value in values:
        head, sep, bits = value.rpartition("=")
        component, colon, tensor = head.partition(":")
        if not sep or not colon or not tensor or component not in COMPONENTS or bits not in ("8", "16"):
            raise ValueError(f"bad --override {value!r}: expected COMPONENT:TENSOR=8|16 with COMPONENT in {COMPONENTS}")
        out.setdefault(component, {})[tensor] = bits
    return {component: to_entries(tensors) for component, tensors in out.items()}


def load_components(args: argparse.Namespace, names: Sequence[str] = COMPONENTS):
    """(components, config dict, weights sha256, label) for the requested weights."""
    from runtime_py.checkpoints import weights_sha256
    from runtime_py.checkpoints.weight_args import load_weights
    from runtime_py.components import export_components

    model, label = load_weights(args)
    return export_components(model, names, args.depth_checkpoint), model.config.to_dict(), weights_sha256(model), label


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.components.split(",") if n.strip()]
    if not names or any(n not in COMPONENTS for n in names):
        parser.error(f"--components must name some of {','.join(COMPONENTS)}")
    socs = tuple(SOCS) if args.soc.strip().lower() == "all" else tuple(s.strip().upper() for s in args.soc.split(",") if s.strip())
    if not socs or any(s not in SOCS for s in socs):
        parser.error(f"--soc must name some of {','.join(SOCS)} or 'all'")
    if args.calibration_scenes < 1 or args.calibration_tiles < 0 or args.parity_scenes < 1 or args.parity_tiles < 1:
        parser.error("--calibration-scenes, --parity-scenes and --parity-tiles must be >= 1, --calibration-tiles >= 0")
    if args.depth_calibration_images < 1:
        parser.error("--depth-calibration-images must be >= 1")
    if args.depth_checkpoint is not None and "depth" not in names:
        parser.error("--depth-checkpoint needs the depth component in --components")
    try:
        overrides = parse_overrides(args.override)
    except ValueError as exc:
        parser.error(str(exc))
    options = QnnOptions(
        recipe=args.precision,
        socs=socs,
        calibration=CalibrationSpec(num_scenes=args.calibration_scenes,
                                    max_tiles_per_image=args.calibration_tiles or None),
        images_dir=str(args.images) if args.images else None,
        overrides=overrides,
        contexts=not args.no_contexts,
        depth_calibration_images=args.depth_calibration_images,
    )
    if args.hub:  # fail before the long export when AI Hub cannot be used
        from export.qai_hub_jobs import HubUnavailableError, connect

        try:
            connect(args.hub_token)
        except HubUnavailableError as exc:
            print(f"to_qnn: AI Hub: {exc}", file=sys.stderr)
            return 3
    out = args.out or Path("artifacts") / f"qnn-{args.precision}"
    started = time.perf_counter()
    try:
        components, config, digest, label = load_components(args, names)
        result = export_qnn(components, out, options=options, names=names, config=config, weights_sha256=digest,
                            model_label=label, parity=not args.no_parity and not args.no_contexts,
                            parity_scenes=args.parity_scenes, parity_max_tiles=args.parity_tiles,
                            parity_scene_size=config["tile"] if args.parity_scene_size == "tile" else args.parity_scene_size)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"to_qnn: error: {exc}", file=sys.stderr)
        return 2
    rows = [("component", "precision", "fp32 ONNX", "QDQ ONNX", "context binaries", "quant PSNR", "HTP PSNR")]
    rows += summary_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print("\nquant PSNR: QDQ on the CPU vs fp32 torch; HTP PSNR: HTP vs QDQ on the CPU (dB, pooled over tiles)")
    if result.parity:
        info = result.parity.get("backend", {}).get("meta", {})
        print(f"HTP parity: {info.get('htp_calls', {})} simulated HTP runs per component, "
              f"{info.get('htp_seconds', 0.0):.0f} s on the simulator (parity step {info.get('parity_seconds', 0.0):.0f} s)")
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s (peak memory {result.peak_rss_mib:.0f} MiB)")
    if args.hub:
        return run_hub_step(args, out, components, names)
    return 0


def run_hub_step(args: argparse.Namespace, out: Path, components, names: Sequence[str]) -> int:
    """--hub: real tile inputs, AI Hub jobs, merged reports; a clear error without a token."""
    from export.qai_hub_jobs import DEFAULT_DEVICES, HubUnavailableError, run_hub
    from quantize.calibration import build_calibration_set
    from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend
    from runtime_py.backends.torch_backend import wrap_component
    from runtime_py.model import MagicBokehConfig

    config = next(iter(components.values())).config
    try:
        calib = build_calibration_set(components, MagicBokehConfig.from_dict(config.to_dict()),
                                      CalibrationSpec(num_scenes=1, max_tiles_per_image=1, seed=777), components=names)
        inputs = {n: calib.inputs[n][0] for n in names}
        results = run_hub(out, tuple(args.hub_device or DEFAULT_DEVICES), inputs=inputs, components=names,
                          token=args.hub_token, cpu_fns=OnnxRuntimeBackend("qdq").load(out, tuple(names)),
                          reference_fns={n: wrap_component(components[n]) for n in names})
    except HubUnavailableError as exc:
        print(f"to_qnn: AI Hub: {exc}", file=sys.stderr)
        return 3
    for device, rows in results["devices"].items():
        for component, row in rows.items():
            print(f"{device}: {component} {row.get('latency_ms')} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
