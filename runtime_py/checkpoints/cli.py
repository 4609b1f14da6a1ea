"""``python -m runtime_py convert``: published weights (SD-layout folder + lora.pkl) -> one native file.

Converting once means every later step (render, export, quantize) reads a pickle-free
``.safetensors`` with the LoRAs already merged and the configuration embedded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``convert`` command on the toolkit's dispatcher."""
    from ..model.config import CONFIGS

    parser = subparsers.add_parser(
        "convert",
        help="merge the published MagicBokeh weights into one native .safetensors checkpoint",
        description=(
            "Read a Stable-Diffusion-layout folder (diffusers: SD2.1-base for the real release) and the "
            "authors' lora.pkl without executing anything from the pickle, merge every LoRA, and write one "
            ".safetensors file with the model config embedded. The shapes come from the folder's "
            "unet/config.json and vae/config.json and from lora.pkl, as diffusers' from_pretrained reads them."
        ),
    )
    parser.add_argument("--sd21", required=True, type=Path, metavar="DIR",
                        help="Stable Diffusion folder in the diffusers layout (unet/, vae/, ...; their "
                             "config.json files give the model's shapes)")
    parser.add_argument("--lora", required=True, type=Path, metavar="PKL", help="the published lora.pkl")
    parser.add_argument("--config", default=None, choices=sorted(CONFIGS),
                        help="refuse the weights unless they have exactly this configuration's sizes (sd21: the "
                             "real release); default: take the sizes from the folder")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors", help="native checkpoint to write")
    parser.add_argument("--allow-extra-injector-keys", action="store_true",
                        help="ignore injector tensors the model has no place for (reported) instead of failing")
    parser.set_defaults(handler=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    from ..cli import CLIError
    from .errors import CheckpointError
    from .native import read_native_metadata, save_native
    from .official import load_official_with_report

    if args.out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {args.out}")
    start = time.perf_counter()
    try:
        model, report = load_official_with_report(
            args.sd21, args.lora, args.config, allow_extra_injector_keys=args.allow_extra_injector_keys
        )
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    save_native(model, args.out)
    digest = read_native_metadata(args.out)["weights_sha256"]  # hashed once, while saving
    params = sum(p.numel() for p in model.parameters())
    print(f"read    {report.unet_file}, {report.vae_file}, {report.lora_file}")
    print(f"dropped {len(report.dropped_unet_keys)} base UNet tensors (mid block, cross-attention)")
    print(f"merged  {report.merged_modules.get('unet', 0)} UNet and {report.merged_modules.get('vae', 0)} VAE LoRA layers "
          f"(ranks {report.unet_rank} / {report.vae_rank}); focus LoRA rank {report.focus_rank}")
    if report.ignored_injector_keys:
        print(f"ignored {len(report.ignored_injector_keys)} injector tensors (--allow-extra-injector-keys)")
    print(f"wrote   {args.out}: config {model.config.name!r}, {params / 1e6:.1f}M parameters, "
          f"weights sha256 {digest} ({time.perf_counter() - start:.1f} s)")
    return 0
