"""Export MagicBokeh for Qualcomm's Hexagon NPU (QNN HTP) through ONNX Runtime.

    python export/to_qnn.py                                  # built-in model (all four components), W8A16, SM8650
    python export/to_qnn.py --recipe w8a8 --soc SM8550 SM8650 SM8750
    python export/to_qnn.py --sd21 DIR --lora lora.pkl       # the published weights
    python export/to_qnn.py --sd21 DIR --lora lora.pkl --max-part-mb 400 --soc all   # full size, in parts
    python export/to_qnn.py --checkpoint magicbokeh.safetensors --override denoiser:/conv_out/Conv_output_0=16
    python export/to_qnn.py --hub --hub-device "Samsung Galaxy S24 (Family)"

Components: encoder, denoiser, decoder (per 512-px tile) and depth (Depth Anything V2 at the
config's static ``depth_input``; the built-in model's depth network has seeded random weights
unless --depth-checkpoint names the user's Depth Anything V2 checkpoint).

Writes OUT/<component>.fp32.onnx, OUT/<component>.<precision>.onnx (QDQ), one
OUT/<component>.<precision>.<SoC>.ctx.onnx per SoC (EPContext, precompiled for the HTP),
OUT/manifest.json, OUT/parity.json and OUT/parity.md (quantization vs backend error; default OUT:
artifacts/qnn-<recipe>); a component split into parts (its estimated context binary over
--max-part-mb) has OUT/<component>.<precision>.part<i>.* files instead, each part measured on its
own in parity.md, and with --hub OUT/hub.json plus OUT/hub/<device>/; prints a summary
table. The flags are the ones every exporter shares (``export/cli.py``) plus the QNN lowering's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.cli import export_parser, run_export  # noqa: E402
from export.targets import ALL_COMPONENTS  # noqa: E402
from runtime_py.backends.onnxruntime_backend import DEFAULT_SOC, SOCS  # noqa: E402

FAMILY = "qnn"
SOC_HELP = ", ".join(f"{key} = {value['name']}" for key, value in SOCS.items())


def build_parser() -> argparse.ArgumentParser:
    parser = export_parser(FAMILY, __doc__)
    low = parser.add_argument_group("QNN lowering")
    low.add_argument("--soc", nargs="+", default=None, metavar="SOC",
                     help=f"space-separated Snapdragon SoCs to precompile for, or 'all' ({SOC_HELP}; default {DEFAULT_SOC})")
    low.add_argument("--override", action="append", default=[], metavar="COMPONENT:TENSOR=BITS",
                     help="keep one tensor at 8 or 16 bits, e.g. denoiser:x0=16 (repeatable)")
    low.add_argument("--no-contexts", action="store_true",
                     help="skip the context binaries, and with them the verify step (it runs the HTP)")
    low.add_argument("--max-part-mb", type=float, default=None, metavar="MIB",
                     help="split a component whose estimated context binary is larger than this into parts run in "
                          "sequence, each quantized and compiled on its own and listed in the manifest (default: the "
                          "recipe's, 400; 0 = never split)")
    low.add_argument("--calibration", choices=("streaming", "onnxruntime"), default=None,
                     help="how activation ranges are calibrated: 'streaming' (default: one session, running min/max, "
                          "fits any model size) or 'onnxruntime' (its own MinMax calibrator, the same ranges, holding "
                          "every intermediate; unsplit components only)")
    hub = parser.add_argument_group("Qualcomm AI Hub (needs an API token and network)")
    hub.add_argument("--hub", action="store_true", help="compile, profile and run on AI Hub devices; merge the results")
    hub.add_argument("--hub-device", action="append", default=None,
                     help="AI Hub device name (repeatable; default Samsung Galaxy S24 and S25)")
    hub.add_argument("--hub-token", default=None, help="API token (default: ~/.qai_hub/client.ini or QAI_HUB_API_TOKEN)")
    return parser


def parse_overrides(values: Sequence[str]) -> dict[str, dict[str, list[dict]]]:
    """``COMPONENT:TENSOR=BITS`` strings -> ``{component: {tensor: [entry]}}`` (ValueError names a bad one)."""
    from quantize.qnn import parse_overrides as to_entries

    out: dict[str, dict[str, str]] = {}
    for value in values:
        head, sep, bits = value.rpartition("=")
        component, colon, tensor = head.partition(":")
        if not sep or not colon or not tensor or component not in ALL_COMPONENTS or bits not in ("8", "16"):
            raise ValueError(f"bad --override {value!r}: expected COMPONENT:TENSOR=8|16 with COMPONENT in {ALL_COMPONENTS}")
        out.setdefault(component, {})[tensor] = bits
    return {component: to_entries(tensors) for component, tensors in out.items()}


def lowering_options(args: argparse.Namespace) -> dict[str, Any]:
    """The QNN lowering's options from the flags (ValueError names a bad value)."""
    options: dict[str, Any] = {}
    if args.soc:
        socs = tuple(SOCS) if [s.lower() for s in args.soc] == ["all"] else tuple(s.upper() for s in args.soc)
        if any(s not in SOCS for s in socs):
            raise ValueError(f"--soc must name some of {' '.join(SOCS)} or 'all', got {' '.join(args.soc)}")
        options["socs"] = socs
    if args.override:
        options["overrides"] = parse_overrides(args.override)
    if args.no_contexts:
        options["contexts"] = False
    if args.max_part_mb is not None:
        if args.max_part_mb < 0:
            raise ValueError(f"--max-part-mb must be >= 0 (0 = never split), got {args.max_part_mb:g}")
        options["max_part_mb"] = args.max_part_mb or None
    if args.calibration is not None:
        options["calibration"] = args.calibration
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.hub:  # fail before the long export when AI Hub cannot be used
        from export.qai_hub_jobs import HubUnavailableError, connect

        try:
            connect(args.hub_token)
        except HubUnavailableError as exc:
            print(f"to_qnn: AI Hub: {exc}", file=sys.stderr)
            return 3
    status, result, args = run_export(FAMILY, parser, argv, lowering_options,
                                      extra_skip=lambda a: ("verify",) if a.no_contexts else ())
    if status in (0, 1) and args.hub:
        return run_hub_step(args, result) or status
    return status


def run_hub_step(args: argparse.Namespace, result: Any) -> int:
    """--hub: real tile inputs, AI Hub jobs, merged reports; a clear error without a token."""
    from export.qai_hub_jobs import DEFAULT_DEVICES, HubUnavailableError, run_hub
    from quantize.calibration import build_calibration_set
    from quantize.recipes import CalibrationSpec
    from runtime_py.backends.onnxruntime_backend import OnnxRuntimeBackend
    from runtime_py.backends.torch_backend import wrap_component
    from runtime_py.checkpoints.weight_args import load_weights
    from runtime_py.components import export_components

    names = list(result.components)
    model, _label = load_weights(args)
    components = export_components(model, names, args.depth_checkpoint)
    try:
        calib = build_calibration_set(components, model.config,
                                      CalibrationSpec(num_scenes=1, max_tiles_per_image=1, seed=777, depth_images=1),
                                      components=names)
        inputs = {n: calib.inputs[n][0] for n in names}
        results = run_hub(result.folder, tuple(args.hub_device or DEFAULT_DEVICES), inputs=inputs, components=names,
                          token=args.hub_token, cpu_fns=OnnxRuntimeBackend("qdq").load(result.folder, tuple(names)),
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
