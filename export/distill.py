"""Distil MagicBokeh into few-step and phone-sized students, and report their cost.

Examples::

    # Step distillation: a 4-step teacher into a 1-step student of the same size.
    python export/distill.py train --output outputs/distill/steps --teacher-checkpoint magicbokeh.safetensors \\
        --teacher-config small --teacher-steps 4 --student-steps 1

    # Architecture distillation: the published weights into the folded phone student.
    accelerate launch export/distill.py train --output outputs/distill/mobile --sd21 sd21-base/ --lora lora.pkl \\
        --teacher-config sd21 --student sd21-mobile --architecture folded --data scenes

    # The physically based renderer as teacher, on generated scenes.
    python export/distill.py train --output outputs/distill/renderer --teacher renderer --teacher-config small \\
        --student small-mobile --data scenes

    # Parameters and FLOPs per tile of the SD2.1-scale teacher and the students (JSON + Markdown).
    python export/distill.py --report-only --output outputs/distill/cost

Progressive distillation (Salimans & Ho 2022) is a chain of such runs: 8 -> 4 -> 2 -> 1 steps, each run's
``--teacher-checkpoint`` being the previous run's ``student/`` folder.

Multi-GPU: run the same ``train`` command under ``accelerate launch`` or ``torchrun``; each process
takes its own batches and gradients are averaged (DDP). Re-running a command with the same
``--output`` resumes from the newest checkpoint there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_OUTPUT = "outputs/distill"


def _student_spec(text: str):
    from training.distill import StudentSpec

    parts = text.split("/")
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"student spec {text!r} must be CONFIG[/ARCHITECTURE[/STEPS]]")
    config = parts[0]
    architecture = parts[1] if len(parts) > 1 else "folded"
    try:
        steps = int(parts[2].removesuffix("-step")) if len(parts) > 2 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"student spec {text!r}: steps must be an integer") from None
    if architecture not in ("magicbokeh", "folded") or steps < 1:
        raise argparse.ArgumentTypeError(f"student spec {text!r}: architecture magicbokeh|folded, steps >= 1")
    return StudentSpec(config, architecture, steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill.py",
        description="Distil MagicBokeh: an N-step teacher into a k-step student (step distillation) and/or a big "
        "model into a small phone student (architecture distillation); report params/FLOPs per tile.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--report-only", action="store_true",
                        help="only write the cost report (same as the 'cost' command with its defaults)")
    parser.add_argument("--output", default=f"{DEFAULT_OUTPUT}/cost", help="output folder for --report-only")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="run a distillation", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Train a student on a teacher's outputs. Resumes from the newest checkpoint in "
                           "--output unless --no-resume.")
    t = train.add_argument_group("teacher")
    t.add_argument("--teacher", choices=("model", "renderer"), default="model",
                   help="'model': a MagicBokeh network; 'renderer': the physically based bokeh renderer")
    t.add_argument("--teacher-checkpoint", default=None,
                   help="native MagicBokeh .safetensors file, or a student folder written by this tool")
    t.add_argument("--sd21", default=None, help="Stable Diffusion 2.1-base folder of the published weights (with --lora)")
    t.add_argument("--lora", default=None, help="the published lora.pkl (with --sd21)")
    t.add_argument("--teacher-config", default="small",
                   help="teacher configuration (tiny, small, sd21); also sets the tile size. Without any weights the "
                   "teacher is seeded random (only for trying the machinery)")
    t.add_argument("--teacher-steps", type=int, default=1, help="denoiser steps the teacher samples with (N)")
    t.add_argument("--renoise", choices=("ddim", "random"), default="ddim",
                   help="re-noising between steps: 'ddim' (deterministic, eta=0) or 'random' (MagicBokeh.sample's)")
    t.add_argument("--seed", type=int, default=0, help="seed of the data, the random teacher and the student init")

    s = train.add_argument_group("student")
    s.add_argument("--student", default="teacher",
                   help="student configuration: 'teacher' (same as the teacher: pure step distillation), "
                   "a student config (tiny-mobile, small-mobile, sd21-mobile, sd21-mobile-xs) or a model config")
    s.add_argument("--architecture", choices=("auto", "magicbokeh", "folded"), default="auto",
                   help="'magicbokeh': reference topology with injector; 'folded': injector folded into the UNet "
                   "input; auto: the teacher's own for --student teacher, else folded")
    s.add_argument("--student-steps", type=int, default=1, help="denoiser steps the student samples with (k >= 1)")
    s.add_argument("--init-from-teacher", choices=("auto", "yes", "no"), default="auto",
                   help="copy the teacher's tensors whose names and shapes match; auto: yes for a model teacher")
    s.add_argument("--freeze-vae", choices=("auto", "yes", "no"), default="auto",
                   help="train only the denoiser; auto: yes when the student is a copy of the teacher's config")

    d = train.add_argument_group("data")
    d.add_argument("--data", choices=("synthetic", "scenes"), default="synthetic",
                   help="'synthetic': smooth-noise tiles with smooth depth; 'scenes': runtime_py.scenes generator "
                   "(degraded inputs, exact depth, renderer targets)")
    d.add_argument("--scene-family", default="dead_leaves", help="scene family for --data scenes")

    o = train.add_argument_group("optimisation")
    o.add_argument("--output", required=True, help="folder for checkpoints, log.jsonl, run.json, summary.json, student/")
    o.add_argument("--steps", type=int, default=1000, help="total optimiser steps (a resumed run continues to this)")
    o.add_argument("--batch-size", type=int, default=4, help="tiles per step and process")
    o.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    o.add_argument("--warmup-steps", type=int, default=20, help="linear learning-rate warm-up steps")
    o.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    o.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="accelerate mixed precision")
    o.add_argument("--save-every", type=int, default=100, help="checkpoint every this many steps")
    o.add_argument("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep")
    o.add_argument("--eval-every", type=int, default=100, help="held-out evaluation every this many steps (0: start/end only)")
    o.add_argument("--eval-batches", type=int, default=4, help="held-out batches per evaluation")
    o.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    o.add_argument("--no-resume", action="store_true", help="start over even if --output holds checkpoints")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")

    w = train.add_argument_group("loss weights (0 switches a term off)")
    w.add_argument("--pixel-weight", type=float, default=1.0, help="L1 between decoded student and teacher tiles")
    w.add_argument("--latent-weight", type=float, default=1.0, help="relative MSE between final x0 latents")
    w.add_argument("--encoder-weight", type=float, default=1.0, help="relative MSE between encoded latents")
    w.add_argument("--decoder-weight", type=float, default=1.0, help="L1 of the student decoding the teacher's x0")
    w.add_argument("--feature-weight", type=float, default=None,
                   help="relative MSE of intermediate features (1x1 adapters); default 0.1, or 0 for a student with "
                   "the teacher's own configuration (its features should be free to change)")

    c = sub.add_parser("cost", help="params and FLOPs per tile of teacher and students",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Counted on the meta device with torch's FlopCounterMode (2 FLOPs per MAC; "
                       "matmul/conv/attention only). Writes cost_report.json and cost_report.md.")
    c.add_argument("--teacher-config", default="sd21", help="teacher configuration")
    c.add_argument("--teacher-steps", type=int, default=4, help="denoiser steps of the teacher")
    c.add_argument("--students", type=_student_spec, nargs="+", default=None,
                   help="students as CONFIG[/ARCHITECTURE[/STEPS]] (default: the SD2.1-scale set)")
    c.add_argument("--output", default=f"{DEFAULT_OUTPUT}/cost", help="output folder")
    return parser


def run_cost(args: argparse.Namespace) -> dict:
    from training.distill import DEFAULT_STUDENTS, cost_report, write_cost_report
    from training.distill.cost import report_markdown

    students = args.students if getattr(args, "students", None) else DEFAULT_STUDENTS
    report = cost_report(args.teacher_config, args.teacher_steps, students)
    json_path, md_path = write_cost_report(report, args.output)
    print(report_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return report


def run_train(args: argparse.Namespace) -> dict:
    import torch

    from runtime_py.atomic import write_json
    from training.distill import (
        DistillConfig,
        DistillTrainer,
        LossWeights,
        SceneTiles,
        SyntheticTiles,
        build_student,
        load_model_teacher,
        renderer_teacher,
        scene_generator_from_runtime,
    )
    from training.distill.students import architecture_of, get_student_config
    from runtime_py.model import get_config

    if args.teacher_steps < 1 or args.student_steps < 1:
        raise ValueError("--teacher-steps and --student-steps must be >= 1")
    teacher_cfg = get_config(args.teacher_config)
    if args.teacher == "renderer":
        if args.teacher_checkpoint or args.sd21 or args.lora:
            raise ValueError("--teacher renderer takes no model weights (--teacher-checkpoint/--sd21/--lora)")
        teacher = renderer_teacher(precomputed=args.data == "scenes")
    else:
        teacher = load_model_teacher(args.teacher_checkpoint, teacher_cfg, args.teacher_steps, args.seed,
                                     args.renoise, sd21=args.sd21, lora=args.lora)
        teacher_cfg = teacher.config
    same = args.student == "teacher"
    student_cfg = teacher_cfg if same else get_student_config(args.student)
    if args.architecture != "auto":
        architecture = args.architecture
    elif same and teacher.model is not None:
        architecture = architecture_of(teacher.model)  # a folded student can teach a fewer-step copy of itself
    else:
        architecture = "magicbokeh" if same else "folded"
    init = args.init_from_teacher == "yes" or (args.init_from_teacher == "auto" and teacher.model is not None)
    if init and teacher.model is None:
        raise ValueError("--init-from-teacher yes needs a model teacher")
    student = build_student(student_cfg, architecture, seed=args.seed, init_from=teacher.model if init else None)
    copy_of_teacher = init and student_cfg == teacher_cfg
    freeze = args.freeze_vae == "yes" or (args.freeze_vae == "auto" and copy_of_teacher)
    feature_weight = args.feature_weight if args.feature_weight is not None else (0.0 if copy_of_teacher else 0.1)
    weights = LossWeights(pixel=args.pixel_weight, latent=args.latent_weight, encoder=args.encoder_weight,
                          decoder=args.decoder_weight, feature=feature_weight)
    config = DistillConfig(
        output_dir=args.output, max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=args.warmup_steps, freeze_vae=freeze, student_steps=args.student_steps, renoise=args.renoise,
        save_every=args.save_every, eval_every=args.eval_every, eval_batches=args.eval_batches,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, grad_clip=args.grad_clip, weights=weights,
        mixed_precision=args.mixed_precision, progress=not args.no_progress, time_limit_s=args.time_limit,
    )
    if args.data == "scenes":
        source = SceneTiles(student_cfg, scene_generator_from_runtime(student_cfg, args.scene_family), seed=args.seed)
        held_out = SceneTiles(student_cfg, scene_generator_from_runtime(student_cfg, args.scene_family),
                              seed=args.seed + 1_000)
    else:
        # With --teacher renderer the renderer blurs these tiles' own (clean) images.
        source = SyntheticTiles(student_cfg, seed=args.seed)
        held_out = SyntheticTiles(student_cfg, seed=args.seed + 1_000)
    torch.manual_seed(args.seed)
    trainer = DistillTrainer(teacher, student, source, config, eval_source=held_out)
    result = trainer.train(resume=not args.no_resume)
    losses = result.losses()
    summary = {
        "teacher": teacher.name,
        "student": {"config": student_cfg.name, "architecture": architecture, "steps": args.student_steps},
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_l1": [(r["step"], r["eval_l1"]) for r in result.eval_log],
        "student_path": str(result.student_path) if result.student_path else None,
    }
    if trainer.accelerator.is_main_process:
        write_json(Path(args.output) / "summary.json", summary)
        print(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.report_only or args.command == "cost":
            if args.report_only and args.command not in (None, "cost"):
                parser.error("--report-only cannot be combined with the 'train' command")
            if args.command is None:
                args = argparse.Namespace(teacher_config="sd21", teacher_steps=4, students=None,
                                          output=args.output)
            run_cost(args)
        elif args.command == "train":
            run_train(args)
        else:
            parser.print_help()
            return 2
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        print(f"distill.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
