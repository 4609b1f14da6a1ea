"""Train, evaluate and package the toolkit's built-in default MagicBokeh model.

Three steps, each resumable and each writing only its own outputs:

``python -m export.train_default train --run-dir outputs/default_run``
    builds the scene pool if it is missing (cached under ``--pool-dir``), then trains the
    ``small`` MagicBokeh on it (accelerate-compatible loop, checkpoint every few hundred steps,
    stops at ``--max-minutes`` of wall clock).
``python -m export.train_default finish --run-dir outputs/default_run``
    evaluates the checkpoint on held-out generated scenes, saves the fp16 weights into
    ``runtime_py/default_weights/``, and writes the metrics JSON, the figures and MODEL_CARD.md
    (generated from the JSON: no figure in the card is typed by hand).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DEFAULT_POOL_DIR = "outputs/default_model/pool"
DEFAULT_RUN_DIR = "outputs/default_model/run"
TRAIN_POOL_SHARDS = ((0, 800), (800, 800))
POOL_SIZE = 192


def _pool_paths(pool_dir: Path) -> list[Path]:
    from runtime_py.training.data import PoolSpec

    return [pool_dir / PoolSpec(first, count, POOL_SIZE).file_name() for first, count in TRAIN_POOL_SHARDS]


def ensure_pool(pool_dir: Path) -> list[Path]:
    """Build the training scene pool's missing shards (seeds 0..1599, 192 px, dead leaves)."""
    from runtime_py.training.data import PoolSpec, build_scene_pool

    paths = []
    for first, count in TRAIN_POOL_SHARDS:
        spec = PoolSpec(first, count, POOL_SIZE)
        path = pool_dir / spec.file_name()
        if not path.is_file():
            print(f"building scene pool shard {path} ...", flush=True)
            build_scene_pool(spec, path)
        paths.append(path)
    return paths


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from runtime_py.training.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    pool_files = ensure_pool(Path(args.pool_dir))
    config = TrainConfig(
        pool_files=[str(p) for p in pool_files],
        run_dir=args.run_dir,
        model_config=args.config,
        crop=args.crop,
        batch_size=args.batch_size,
        autoencoder_steps=args.autoencoder_steps,
        total_steps=args.total_steps,
        lr=args.lr,
        vae_lr_scale=args.vae_lr_scale,
        max_minutes=args.max_minutes,
        schedule=args.schedule,
        autoencoder_fraction=args.autoencoder_fraction,
        num_workers=args.num_workers,
        threads=args.threads,
        extra={"command": "python -m export.train_default " + " ".join(shlex.quote(a) for a in sys.argv[1:])},
    )
    result = train(config, resume=not args.restart)
    print(json.dumps({"steps_done": result.steps_done, "stopped_by": result.stopped_by,
                      "train_minutes": result.train_seconds / 60.0}), flush=True)
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    from runtime_py.training.model_card import finish_default_model

    finish_default_model(Path(args.run_dir), Path(args.weights_dir), num_scenes=args.eval_scenes, eval_size=args.eval_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.train_default", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="build the scene pool if needed and train (resumes a run)")
    t.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    t.add_argument("--pool-dir", default=DEFAULT_POOL_DIR)
    t.add_argument("--config", default="small")
    t.add_argument("--crop", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--autoencoder-steps", type=int, default=300)
    t.add_argument("--total-steps", type=int, default=1600)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--vae-lr-scale", type=float, default=1.0)
    t.add_argument("--max-minutes", type=float, default=48.0, help="wall-clock limit of this invocation")
    t.add_argument("--schedule", choices=("steps", "time"), default="steps",
                   help="'time': phases and LR decay follow the wall clock (uses --max-minutes fully)")
    t.add_argument("--autoencoder-fraction", type=float, default=0.2)
    t.add_argument("--num-workers", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.set_defaults(func=cmd_train)
    f = sub.add_parser("finish", help="evaluate, save fp16 weights, write metrics, figures and MODEL_CARD.md")
    f.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    f.add_argument("--weights-dir", default="runtime_py/default_weights")
    f.add_argument("--eval-scenes", type=int, default=12)
    f.add_argument("--eval-size", type=int, default=512)
    f.set_defaults(func=cmd_finish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
