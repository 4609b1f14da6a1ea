"""``python -m runtime_py make-checkpoint``: a seeded random-weight checkpoint in the official format.

So that every full-size measurement (memory, time, sizes, quantized parity) can be reproduced
without the released weights; see :mod:`runtime_py.checkpoints.synthetic` for what is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_make_checkpoint_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``make-checkpoint`` command on the toolkit's dispatcher."""
    from ..model.config import CONFIGS

    parser = subparsers.add_parser(
        "make-checkpoint",
        help="write a seeded random-weight checkpoint in the published format (SD folder + lora.pkl)",
        description=(
            "Write OUT/sd21/ (a Stable-Diffusion-layout folder in the diffusers layout: unet/, vae/, scheduler/ "
            "with their config.json and safetensors weights) and OUT/lora.pkl (non-zero UNet and VAE LoRAs, the "
            "pickled injector module, the focus LoRA), exactly as the released MagicBokeh checkpoint is laid out, "
            "with random weights drawn from --seed. The VAE's latent is scaled to unit standard deviation on "
            "generated photo tiles and each LoRA update is a small fraction of its layer's weight, so quantization "
            "sees realistic ranges. The folder is written under a temporary name and renamed when complete. "
            "Size on disk: about 5 GB for sd21 (fp32: 3.5 GB UNet with mid block and cross-attention, 0.3 GB "
            "VAE, 1 GB lora.pkl; measured 4.8 GB), written one component at a time: measured 4.0 GB peak memory "
            "and 10 minutes on a busy 2-core host (3.7 CPU-minutes); tiny: 6 MB in under a minute. Read it back "
            "with 'python -m runtime_py convert --sd21 OUT/sd21 --lora OUT/lora.pkl'."
        ),
    )
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS),
                        help="model size to write (sd21: the real release's Stable Diffusion 2.1-base sizes)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="checkpoint folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same weights "
                                                            "(default 0)")
    parser.add_argument("--unet-rank", type=int, default=4, help="rank of the UNet's PEFT LoRAs (default 4)")
    parser.add_argument("--vae-rank", type=int, default=4, help="rank of the VAE encoder's PEFT LoRA (default 4)")
    parser.set_defaults(handler=run_make_checkpoint)
    return parser


def run_make_checkpoint(args: argparse.Namespace) -> int:
    from ..cli import CLIError
    from .synthetic import write_synthetic_checkpoint

    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    for flag, rank in (("--unet-rank", args.unet_rank), ("--vae-rank", args.vae_rank)):
        if rank <= 0:
            raise CLIError(f"{flag} must be a positive integer, got {rank}")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a folder")
    start = time.perf_counter()
    written = write_synthetic_checkpoint(args.out, args.config, args.seed, unet_rank=args.unet_rank,
                                         vae_rank=args.vae_rank)
    counts = written.parameters
    model_params = counts["unet_model"] + counts["focus_lora"] + counts["vae"] + counts["injector"]
    total_bytes = sum(written.file_bytes.values())
    print(f"wrote   {written.sd_dir} (unet/, vae/, scheduler/) and {written.lora_pkl}: {total_bytes / 1e9:.3f} GB")
    print(f"params  UNet {counts['unet_model'] / 1e6:.1f}M as MagicBokeh uses it ({counts['unet_folder'] / 1e6:.1f}M "
          f"in the folder, with mid block and cross-attention), injector {counts['injector'] / 1e6:.1f}M, "
          f"VAE {counts['vae'] / 1e6:.1f}M, focus LoRA: {model_params / 1e6:.1f}M in the merged model")
    print(f"LoRAs   UNet {counts['unet_lora'] / 1e6:.3f}M (rank {args.unet_rank}), VAE {counts['vae_lora'] / 1e6:.3f}M "
          f"(rank {args.vae_rank}), focus {counts['focus_lora'] / 1e6:.3f}M (rank {written.config.focus_rank})")
    if written.latent_std:
        print(f"latent  scaling_factor x latent std {written.latent_std['before']:.3g} -> "
              f"{written.latent_std['after']:.3f} on generated tiles (latent mean rows of quant_conv x "
              f"{written.latent_std['gain']:.3g})")
    print(f"config  {written.config.name!r}, seed {written.seed} ({time.perf_counter() - start:.1f} s)")
    return 0
