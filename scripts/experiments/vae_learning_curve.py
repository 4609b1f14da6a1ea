"""How fast a from-scratch MagicBokeh VAE learns to reconstruct: a learning curve on one GPU.

The default model's quality is capped by its VAE (trained from nothing, unlike the published
model's SD2.1 VAE). This measures reconstruction PSNR of held-out degraded and clean scenes
against optimiser steps and seconds for a given configuration, so that the compute a VAE needs
to clear a quality bar can be read off instead of guessed. Data stay on the device (crops are
cut there) so the GPU, not the data loader, sets the pace.

    python scripts/experiments/vae_learning_curve.py --pool-dir DIR --seconds 200 --set latent_channels=16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool-dir", type=Path, required=True, help="folder of scene pool shards (*.npz)")
    p.add_argument("--config", default="small", help="MagicBokeh configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="configuration override (repeatable)")
    p.add_argument("--seconds", type=float, default=200.0, help="training wall-clock budget")
    p.add_argument("--batch-size", type=int, default=32, help="crops per step")
    p.add_argument("--crop", type=int, default=128, help="crop side, px")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--eval-every", type=float, default=20.0, help="seconds between held-out evaluations")
    p.add_argument("--eval-scenes", type=int, default=16, help="held-out scenes (256 px)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the curve")
    args = p.parse_args(argv)  # before the heavy imports: --help stays instant

    import numpy as np
    import torch

    from export.train_default import parse_overrides
    from runtime_py.model import build_model, get_config
    from runtime_py.scenes import generate_scene
    from training.default_model.data import load_scene_pool
    from training.default_model.evaluate import HELD_OUT_FIRST_SEED
    from training.default_model.losses import ssim

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    overrides = parse_overrides(args.set)
    config = get_config(args.config).replace(**overrides)
    model = build_model(config, seed=0).to(device).train()
    pool = load_scene_pool(sorted(args.pool_dir.glob("*.npz")))
    images = torch.from_numpy(np.concatenate([pool["clean"], pool["degraded"], pool["teachers"].reshape(-1, *pool["clean"].shape[1:])]))
    images = images.to(device).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, S, S) on the device
    size = images.shape[-1]
    held = [generate_scene(HELD_OUT_FIRST_SEED + i, 256, "dead_leaves") for i in range(args.eval_scenes)]
    to_t = lambda arr: torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float().to(device) * 2 - 1  # noqa: E731
    held_deg, held_clean = to_t([s.degraded for s in held]), to_t([s.clean for s in held])
    opt = torch.optim.AdamW(model.vae.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def evaluate() -> dict[str, float]:
        model.eval()
        out = {}
        with torch.no_grad():
            for name, x in (("degraded", held_deg), ("clean", held_clean)):
                r = model.decode(model.encode(x))
                mse = ((r - x) / 2).pow(2).mean().item()
                out[f"psnr_{name}"] = 10 * math.log10(1 / max(mse, 1e-12))
                out[f"ssim_{name}"] = float(ssim((r + 1) / 2, (x + 1) / 2))
        model.train()
        return out

    # The clock counts training only (held-out evaluations are excluded).
    curve, step, elapsed, next_eval = [], 0, 0.0, 0.0
    while True:
        if elapsed >= next_eval or elapsed >= args.seconds:
            point = {"step": step, "seconds": round(elapsed, 1), **evaluate()}
            curve.append(point)
            print(json.dumps(point), flush=True)
            next_eval += args.eval_every
            if elapsed >= args.seconds:
                break
        warm = min(1.0, (step + 1) / 200)
        progress = min(1.0, elapsed / args.seconds)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        tick = time.time()
        idx = torch.randint(0, images.shape[0], (args.batch_size,), device=device, generator=gen)
        y0, x0 = (int(v) for v in torch.randint(0, size - args.crop + 1, (2,), generator=gen, device=device))
        x = images[idx, :, y0:y0 + args.crop, x0:x0 + args.crop].float() / 127.5 - 1
        recon = model.decode(model.encode(x))
        loss = (recon - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.vae.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.time() - tick
        step += 1
    result = {"config": config.to_dict(), "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr, "curve": curve}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
