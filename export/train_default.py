"""Train, evaluate and package the toolkit's built-in default MagicBokeh model.

Three steps, each resumable and each writing only its own outputs:

``python -m export.train_default train --run-dir outputs/default_run``
    builds the scene pool if it is missing (cached under ``--pool-dir``), then trains the
    ``small`` MagicBokeh on it (accelerate-compatible loop, checkpoint every few hundred steps,
    stops at ``--max-minutes`` of wall clock).
``python -m export.train_default finish --run-dir outputs/default_run [--previous-metrics OLD.json]``
    evaluates the checkpoint on held-out generated scenes (dead leaves, street, fine texture), counts
    its compute, simulates its W8A8 components, saves the fp16 weights into
    ``runtime_py/default_weights/``, and writes the metrics JSON, the figures and MODEL_CARD.md
    (generated from the JSON: no figure in the card is typed by hand).
``python -m export.train_default evaluate --weights FILE --family fine_texture --w8a8 --out F.json``
    measures a run or a weights file the same way without packaging anything.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DEFAULT_POOL_DIR = "outputs/default_model/pool"
DEFAULT_RUN_DIR = "outputs/default_model/run"
DEFAULT_POOL_SCENES = 1600
DEFAULT_POOL_SIZE = 192
DEFAULT_SHARD_SCENES = 800
HELD_OUT_FAMILIES = ("dead_leaves", "street", "fine_texture")  # training.default_model.evaluate.HELD_OUT_SETS's keys


def pool_specs(scenes: int, size: int, shard_scenes: int) -> list:
    """The training pool as shards of consecutive seeds from 0 (held-out seeds start at 1 000 000)."""
    from training.default_model.data import PoolSpec
    from training.default_model.evaluate import HELD_OUT_FIRST_SEED

    if scenes < 1 or shard_scenes < 1 or scenes > HELD_OUT_FIRST_SEED:
        raise SystemExit(f"--pool-scenes must be in 1..{HELD_OUT_FIRST_SEED} and --pool-shard-scenes >= 1")
    return [PoolSpec(first, min(shard_scenes, scenes - first), size) for first in range(0, scenes, shard_scenes)]


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (VALUE as JSON where it parses: numbers, lists) for MagicBokehConfig fields."""
    import dataclasses

    from runtime_py.model.config import MagicBokehConfig

    known = {f.name for f in dataclasses.fields(MagicBokehConfig)} - {"name"}
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set needs KEY=VALUE with KEY one of {sorted(known)}, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from training.default_model.trainer import TrainConfig, train

    from training.default_model.data import build_scene_pool_shards

    torch.set_num_threads(args.threads)
    specs = pool_specs(args.pool_scenes, args.pool_size, args.pool_shard_scenes)
    pool_files = build_scene_pool_shards(specs, Path(args.pool_dir), workers=args.pool_workers)
    config = TrainConfig(
        pool_files=[str(p) for p in pool_files],
        run_dir=args.run_dir,
        model_config=args.config,
        model_overrides=parse_overrides(args.set),
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
        checkpoint_every=args.checkpoint_every,
        bf16=not args.fp32,
        vae_init=args.vae_init,
        extra={"command": "python -m export.train_default " + " ".join(shlex.quote(a) for a in sys.argv[1:])},
    )
    result = train(config, resume=not args.restart)
    print(json.dumps({"steps_done": result.steps_done, "stopped_by": result.stopped_by,
                      "train_minutes": result.train_seconds / 60.0}), flush=True)
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    from training.default_model.data import build_scene_pool_shards

    specs = pool_specs(args.pool_scenes, args.pool_size, args.pool_shard_scenes)
    for path in build_scene_pool_shards(specs, Path(args.pool_dir), workers=args.pool_workers):
        print(path, flush=True)
    return 0


def _load_for_evaluation(args: argparse.Namespace) -> tuple:
    """(model, provenance) from ``--weights`` (a native weights file) or ``--run-dir`` (a run's checkpoint)."""
    if args.weights:
        from runtime_py.checkpoints import load_native
        from runtime_py.checkpoints.native import read_native_metadata

        path = Path(args.weights)
        if not path.is_file():
            raise SystemExit(f"train_default evaluate: error: weights file {path} does not exist")
        return load_native(path).eval(), {"weights": str(path), "weights_sha256": read_native_metadata(path).get("weights_sha256")}
    from training.default_model.trainer import load_trained_model

    model, state = load_trained_model(args.run_dir)
    return model.eval(), {"run_dir": args.run_dir, "step": state["step"], "machine": state.get("machine")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    import torch

    from runtime_py.atomic import write_json
    from training.default_model.model_card import measure_model

    torch.set_num_threads(args.threads)
    model, source = _load_for_evaluation(args)
    simulator = None
    if args.w8a8:
        from export.quant_simulation import simulate_w8a8 as simulator
    measured, _ = measure_model(model, num_scenes=args.scenes, eval_size=args.size, fine_texture_scenes=args.fine_texture_scenes,
                                families=args.family or ["dead_leaves"], training_scale=False, w8a8=simulator,
                                w8a8_calibration_tiles=args.w8a8_calibration_tiles,
                                w8a8_evaluation_tiles=args.w8a8_evaluation_tiles)
    for name, summary in measured["evaluation"].items():
        brief = {k: v for k, v in summary.items() if k != "per_scene"}
        print(json.dumps({"set": name, **brief, **source}), flush=True)
    print(json.dumps({"compute": measured["compute"]}), flush=True)
    if args.w8a8:
        print(json.dumps({"quantization_simulation": {k: v for k, v in measured["quantization_simulation"].items() if k != "recipe"}}), flush=True)
    if args.out:
        document = {"generated_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "source": source,
                    "architecture": {"parameters": sum(p.numel() for p in model.parameters())}, **measured}
        if not args.w8a8:
            document.pop("quantization_simulation")
        print(write_json(Path(args.out), document), flush=True)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from training.default_model.trainer import pack_checkpoint

    print(pack_checkpoint(Path(args.run_dir), Path(args.out)), flush=True)
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    from training.default_model.model_card import finish_default_model

    for path in args.previous_metrics:
        if not Path(path).is_file():
            raise SystemExit(f"train_default finish: error: --previous-metrics {path} does not exist")
    simulator = None
    if not args.no_w8a8:
        from export.quant_simulation import simulate_w8a8 as simulator
    try:
        finish_default_model(Path(args.run_dir), Path(args.weights_dir), num_scenes=args.eval_scenes, eval_size=args.eval_size,
                             fine_texture_scenes=args.fine_texture_scenes, w8a8=simulator,
                             w8a8_calibration_tiles=args.w8a8_calibration_tiles, w8a8_evaluation_tiles=args.w8a8_evaluation_tiles,
                             previous_metrics=[Path(p) for p in args.previous_metrics])
    except ValueError as exc:
        raise SystemExit(f"train_default finish: error: {exc}") from None
    return 0


def _add_measure_flags(q: argparse.ArgumentParser, w8a8_default_on: bool) -> None:
    q.add_argument("--fine-texture-scenes", type=int, default=None,
                   help="held-out fine_texture scenes (evaluation-only family; default: half the dead-leaves count)")
    if w8a8_default_on:
        q.add_argument("--no-w8a8", action="store_true", help="skip the simulated W8A8 figures (recorded as not measured)")
    else:
        q.add_argument("--w8a8", action="store_true", help="also simulate W8A8 per component (PT2E XNNPACK int8 recipe) against fp32")
    q.add_argument("--w8a8-calibration-tiles", type=int, default=2,
                   help="held-out tiles whose activation ranges calibrate the simulated 8-bit model")
    q.add_argument("--w8a8-evaluation-tiles", type=int, default=2,
                   help="other held-out tiles on which the simulated 8-bit outputs are compared with fp32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.train_default", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="build the scene pool if needed and train (resumes a run)")
    p = sub.add_parser("pool", help="only build the scene pool's missing shards")
    t.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="checkpoints and the loss log go here (a run resumes from it)")
    for q in (t, p):
        q.add_argument("--pool-dir", default=DEFAULT_POOL_DIR, help="cached scene pool shards (built when missing)")
        q.add_argument("--pool-scenes", type=int, default=DEFAULT_POOL_SCENES, help="training scenes (seeds 0..N-1)")
        q.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="side of each generated training scene, px")
        q.add_argument("--pool-shard-scenes", type=int, default=DEFAULT_SHARD_SCENES, help="scenes per pool shard file")
        q.add_argument("--pool-workers", type=int, default=1, help="processes that build missing shards in parallel")
    p.set_defaults(func=cmd_pool)
    t.add_argument("--config", default="small", help="MagicBokeh configuration to train")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the configuration (repeatable), e.g. latent_channels=16")
    t.add_argument("--crop", type=int, default=128, help="training crop side, px (multiple of 64, <= --pool-size)")
    t.add_argument("--batch-size", type=int, default=4, help="crops per optimiser step")
    t.add_argument("--autoencoder-steps", type=int, default=300, help="VAE-only steps (--schedule steps)")
    t.add_argument("--total-steps", type=int, default=1600, help="all steps (--schedule steps); a cap with --schedule time")
    t.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate")
    t.add_argument("--vae-lr-scale", type=float, default=1.0, help="the VAE's learning rate relative to --lr")
    t.add_argument("--max-minutes", type=float, default=48.0, help="wall-clock limit of this invocation")
    t.add_argument("--schedule", choices=("steps", "time"), default="steps",
                   help="'time': phases and LR decay follow the wall clock (uses --max-minutes fully)")
    t.add_argument("--autoencoder-fraction", type=float, default=0.2, help="share of the time spent on the VAE alone (--schedule time)")
    t.add_argument("--num-workers", type=int, default=0, help="data-loader processes")
    t.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    t.add_argument("--vae-init", choices=("analytic", "random"), default="analytic",
                   help="'analytic': the VAE starts as block means + bilinear upsampling (needs 4 GroupNorm groups "
                        "or fewer per 16 channels); 'random': diffusers' initialisation")
    t.add_argument("--fp32", action="store_true", help="train in float32 (default: bfloat16 autocast, float32 weights); the default model's recipe, "
                        "as the analytic VAE start needs float32 activations")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="print held-out figures (model / input / Gaussian blur vs teacher, in-focus "
                                        "fidelity, compute; optionally simulated W8A8) of a run or a weights file as JSON")
    e.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="the run whose checkpoint is evaluated (unless --weights)")
    e.add_argument("--weights", default=None, help="evaluate this native weights file instead of a run (e.g. the shipped "
                                                   "runtime_py/default_weights/magicbokeh_small.safetensors)")
    e.add_argument("--family", action="append", choices=sorted(HELD_OUT_FAMILIES), default=None,
                   help="held-out set(s) to measure (repeatable; default: dead_leaves)")
    e.add_argument("--scenes", type=int, default=8, help="held-out dead-leaves scenes (street: half as many)")
    e.add_argument("--size", type=int, default=512, help="scene side, px (the model's tile)")
    e.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    e.add_argument("--out", default=None, help="also write the figures as a metrics-shaped JSON file (usable as finish "
                                               "--previous-metrics)")
    _add_measure_flags(e, w8a8_default_on=False)
    e.set_defaults(func=cmd_evaluate)
    k = sub.add_parser("pack", help="copy a run's checkpoint without optimiser state, in float16 (to move it between machines)")
    k.add_argument("--run-dir", default=DEFAULT_RUN_DIR)
    k.add_argument("--out", required=True, help="folder for the packed checkpoint (finish reads it as --run-dir)")
    k.set_defaults(func=cmd_pack)
    f = sub.add_parser("finish", help="evaluate, save fp16 weights, write metrics, figures and MODEL_CARD.md")
    f.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="the run whose checkpoint is packaged")
    f.add_argument("--weights-dir", default="runtime_py/default_weights", help="where weights, metrics, figures and card go")
    f.add_argument("--eval-scenes", type=int, default=12, help="held-out dead-leaves scenes (street: half as many)")
    f.add_argument("--eval-size", type=int, default=512, help="scene side, px (the model's tile)")
    f.add_argument("--previous-metrics", action="append", default=[], metavar="FILE",
                   help="metrics.json of the model this one replaces (repeatable; the first file wins where two hold a "
                        "figure): the card gets a before/after table, figures the files lack shown as not measured")
    _add_measure_flags(f, w8a8_default_on=True)
    f.set_defaults(func=cmd_finish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the trainer's imports: --help stays instant
    from training.default_model.data import TrainingDataError
    from training.default_model.trainer import TrainingError

    try:
        return args.func(args)
    except (TrainingError, TrainingDataError) as exc:
        print(f"train_default {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
