"""The distillation trainer: one loop for step students and architecture students.

Step distillation follows Luhman & Luhman (2021, "Knowledge distillation in iterative generative
models for improved sampling speed"): the student, started as a copy of the teacher, is trained
so that its k-step sample (k >= 1, backpropagated through all k steps) reproduces the teacher's
N-step sample of the same tile. Architecture distillation is the same loop with a smaller
student, plus latent and feature terms (see :mod:`.losses`). Both at once (a small k-step student
of an N-step teacher) is just both settings.

Engine: ``accelerate.Accelerator`` — the same code runs on one CPU (tests) and on many GPUs with
``accelerate launch`` or ``torchrun`` (DDP, mixed precision). Checkpoints are accelerate states
(student, adapters, optimizer, RNG, step) written atomically every ``save_every`` steps and
resumed automatically; losses go to ``log.jsonl``; tqdm shows progress on the main process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime_py.atomic import atomic_path, write_json, write_text
from .data import TileBatch, TileSource
from .losses import FeatureTaps, LossWeights, build_adapters, default_tap_names, feature_loss, output_losses, weighted_total
from runtime_py.model.sampling import RENOISE_MODES, decode_unclamped, draw_noises, sample_latent
from .students import architecture_of, check_compatible, save_student
from .teachers import Teacher, TeacherOutput

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
RUN_FILE = "run.json"
STUDENT_DIR = "student"
_CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")


@dataclass
class DistillConfig:
    """Everything that defines a distillation run besides the teacher, student and data."""

    output_dir: str
    max_steps: int = 200
    batch_size: int = 2
    learning_rate: float = 1e-4
    warmup_steps: int = 0  # linear learning-rate warm-up: Adam's first sign-like steps jolt a copied teacher
    freeze_vae: bool = False  # step distillation: the VAE is the teacher's, only the denoiser learns
    student_steps: int = 1
    renoise: str = "ddim"  # the student's re-noising between its k steps ("ddim" or "random")
    save_every: int = 50
    eval_every: int = 0  # 0: evaluate only before the first and after the last step
    eval_batches: int = 2
    keep_checkpoints: int = 2
    seed: int = 0
    grad_clip: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    use_feature_taps: bool = True
    mixed_precision: str = "no"
    progress: bool = True
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_steps": self.max_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "student_steps": isinstance(self.student_steps, int) and self.student_steps >= 1,
            "save_every": self.save_every >= 1,
            "eval_every": self.eval_every >= 0,
            "eval_batches": self.eval_batches >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "grad_clip": self.grad_clip >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid distillation settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.renoise not in RENOISE_MODES:
            raise ValueError(f"renoise must be one of {RENOISE_MODES}, got {self.renoise!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if isinstance(self.weights, dict):
            self.weights = LossWeights(**self.weights)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StudentStep(nn.Module):
    """Student + feature adapters: one training forward from inputs and teacher targets to losses.

    Everything trainable lives here so that accelerate wraps (DDP) and checkpoints one module.
    """

    def __init__(self, student: nn.Module, adapters: nn.ModuleDict, weights: LossWeights, student_steps: int,
                 tap_names: list[str], renoise: str = "ddim"):
        super().__init__()
        self.renoise = renoise
        self.student = student
        self.adapters = adapters
        self.weights = weights
        self.student_steps = student_steps
        self.taps = FeatureTaps(student, tap_names) if tap_names else None

    def forward(
        self,
        rgb: torch.Tensor,
        defocus: torch.Tensor,
        in_focus: torch.Tensor,
        teacher_rgb: torch.Tensor,
        teacher_x0: torch.Tensor | None = None,
        teacher_latent: torch.Tensor | None = None,
        teacher_features: dict[str, torch.Tensor] | None = None,
        noises: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        w = self.weights
        if self.taps is not None:
            self.taps.clear()
        latent = self.student.encode(rgb)
        x0 = sample_latent(self.student, latent, defocus, in_focus, self.student_steps, noises=noises,
                           renoise=self.renoise)
        decoded_teacher_x0 = None
        # Decode the teacher's latent first so that the decoder taps see the same input as the teacher's.
        if teacher_x0 is not None and (w.decoder > 0 or (w.feature > 0 and self.taps is not None)):
            decoded_teacher_x0 = decode_unclamped(self.student, teacher_x0)
        out_rgb = decode_unclamped(self.student, x0)
        parts = output_losses(
            out_rgb, teacher_rgb, x0, teacher_x0,
            latent if w.encoder > 0 else None, teacher_latent,
            decoded_teacher_x0 if w.decoder > 0 else None,
        )
        if self.taps is not None and teacher_features and w.feature > 0:
            feat = feature_loss(self.adapters, self.taps.take(), teacher_features)
            if feat is not None:
                parts["feature"] = feat
        parts["total"] = weighted_total(parts, w)
        return parts


@dataclass
class DistillResult:
    steps: int
    train_log: list[dict[str, Any]]
    eval_log: list[dict[str, Any]]
    student_path: Path | None
    stopped_early: bool = False

    def losses(self) -> list[float]:
        return [r["total"] for r in self.train_log]


class _StepCounter:
    """The step count, checkpointed by accelerate beside the model and optimizer."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _run_identity(teacher: Teacher, student: nn.Module, config: DistillConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return {
        "teacher": teacher.name,
        "student_architecture": architecture_of(student),
        "student_config": student.config.to_dict(),
        "student_steps": config.student_steps,
        "renoise": config.renoise,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "weights": config.weights.to_dict(),
        "use_feature_taps": config.use_feature_taps,
        "freeze_vae": config.freeze_vae,
    }


class DistillTrainer:
    """Trains ``student`` to reproduce ``teacher`` on tiles from ``source``."""

    def __init__(
        self,
        teacher: Teacher,
        student: nn.Module,
        source: TileSource,
        config: DistillConfig,
        eval_source: TileSource | None = None,
        accelerator: Any | None = None,
    ):
        from accelerate import Accelerator

        if teacher.config is not None:
            check_compatible(teacher.config, student.config)
        if source.tile != student.config.tile:
            raise ValueError(f"data tiles are {source.tile} px, the student's tile is {student.config.tile} px")
        self.teacher = teacher
        self.source = source
        self.eval_source = eval_source
        self.config = config
        self.output_dir = Path(config.output_dir)
        # accelerate runs several CPU processes (gloo) only when told cpu=True; with CUDA it picks NCCL itself.
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision, cpu=multi_cpu)
        self.device = self.accelerator.device
        self.teacher.to(self.device)
        self.counter = _StepCounter()
        self.identity = _run_identity(teacher, student, config)

        tap_names: list[str] = []
        adapters = nn.ModuleDict()
        if config.use_feature_taps and config.weights.feature > 0 and teacher.model is not None:
            tap_names, adapters = self._probe_features(student)
        student.train().to(self.device)
        if config.freeze_vae:
            student.vae.requires_grad_(False)
        self.step_module = StudentStep(student, adapters.to(self.device), config.weights, config.student_steps, tap_names,
                                       config.renoise)
        self.teacher_taps = FeatureTaps(teacher.model, tap_names) if tap_names else None
        optimizer = torch.optim.AdamW([p for p in self.step_module.parameters() if p.requires_grad],
                                      lr=config.learning_rate, weight_decay=0.0)
        warmup = config.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
        self.step_module, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.step_module, optimizer, scheduler)
        self.accelerator.register_for_checkpointing(self.counter)
        self._eval_targets: list[tuple[TileBatch, TeacherOutput]] | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _probe_features(self, student: nn.Module) -> tuple[list[str], nn.ModuleDict]:
        """Run teacher and student once on one tile to find taps whose spatial sizes agree."""
        teacher_model = self.teacher.model
        names = [n for n in default_tap_names(student) if n in dict(teacher_model.named_modules())]
        probe = self.source.batch(0, 1).to(self.device)
        t_taps, s_taps = FeatureTaps(teacher_model, names), FeatureTaps(student, names)
        try:
            with torch.no_grad():
                out = self.teacher(probe, torch.Generator().manual_seed(0))
                z = student.to(self.device).encode(probe.rgb)
                student.denoise(z, probe.defocus, probe.in_focus)
                decode_unclamped(student, out.x0 if out.x0 is not None else z)
            t_shapes = {n: f.shape for n, f in t_taps.take().items()}
            s_shapes = {n: f.shape for n, f in s_taps.take().items()}
        finally:
            t_taps.remove()
            s_taps.remove()
        adapters = build_adapters(s_shapes, t_shapes)
        matched = [n for n in names if n.replace(".", "__") in adapters]
        return matched, adapters

    # -- data and targets ------------------------------------------------------------------------
    def _batch_index(self, step: int) -> int:
        return step * self.accelerator.num_processes + self.accelerator.process_index

    def _generator(self, index: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.config.seed * 7_919 + index) * 4 + stream)

    def _teacher_targets(self, batch: TileBatch, index: int) -> tuple[TeacherOutput, dict[str, torch.Tensor]]:
        if self.teacher_taps is not None:
            self.teacher_taps.clear()
        out = self.teacher(batch, self._generator(index, 0))
        feats = self.teacher_taps.take() if self.teacher_taps is not None else {}
        return out, {k: v.detach() for k, v in feats.items()}

    # -- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (atomic writes: an incomplete one never has its name)."""
        if not self.checkpoint_root.is_dir():
            return []
        found = [p for p in self.checkpoint_root.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def save_checkpoint(self) -> Path:
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        final = self.checkpoint_root / f"step-{self.counter.step:08d}"
        ctx = atomic_path(final) if acc.is_main_process else None
        staging = [str(ctx.__enter__()) if ctx is not None else None]
        try:
            broadcast_object_list(staging)  # every process writes its own RNG state into the same folder
            acc.save_state(staging[0])
            acc.wait_for_everyone()
        except BaseException as exc:
            if ctx is not None:
                ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if ctx is not None:
            ctx.__exit__(None, None, None)
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path | str) -> int:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            self.accelerator.load_state(str(path))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"checkpoint {path} does not fit this student/run: {str(exc).splitlines()[0]}") from None
        return self.counter.step

    def _check_run_identity(self) -> None:
        run_file = self.output_dir / RUN_FILE
        if not run_file.is_file():
            return
        saved = json.loads(run_file.read_text()).get("identity", {})
        mine = json.loads(json.dumps(self.identity))
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff:
            raise ValueError(f"{self.output_dir} holds a different distillation run (differs in {diff}); "
                             "use another output folder or resume=False")

    # -- log -------------------------------------------------------------------------------------
    def _read_log(self) -> list[dict[str, Any]]:
        path = self.output_dir / LOG_FILE
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash: the log is rewritten from the checkpoint below
        return records

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean absolute error (on [-1, 1] tiles) between the student's k-step output and the
        teacher's on held-out batches, with fixed re-noising draws on both sides."""
        source = self.eval_source or self.source
        if self._eval_targets is None:
            # Held-out: indices far past any training index of the same source.
            offset = 0 if self.eval_source is not None else 10_000_000
            self._eval_targets = []
            for i in range(self.config.eval_batches):
                batch = source.batch(offset + i, self.config.batch_size).to(self.device)
                self._eval_targets.append((batch, self.teacher(batch, self._generator(offset + i, 2))))
        student = self.accelerator.unwrap_model(self.step_module).student
        was_training = student.training
        student.eval()
        errors = []
        try:
            for i, (batch, target) in enumerate(self._eval_targets):
                latent = student.encode(batch.rgb)
                x0 = sample_latent(student, latent, batch.defocus, batch.in_focus, self.config.student_steps,
                                   generator=self._generator(i, 3), renoise=self.config.renoise)
                out = student.decode(x0)
                errors.append((out - target.rgb).abs().mean())
        finally:
            student.train(was_training)
        err = torch.stack(errors).mean()
        err = self.accelerator.reduce(err.to(self.device), reduction="mean")
        return float(err)

    # -- training --------------------------------------------------------------------------------
    def train(self, resume: bool = True) -> DistillResult:
        """Run until ``max_steps`` (or the time limit); resumes from the newest checkpoint if any."""
        acc, cfg = self.accelerator, self.config
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        log: list[dict[str, Any]] = []
        existing = self.checkpoints()
        if existing and not resume:
            # Starting over: older checkpoints must not be mistaken for this run's by a later resume.
            if acc.is_main_process:
                for path in existing:
                    shutil.rmtree(path, ignore_errors=True)
            acc.wait_for_everyone()
            existing = []
        if resume and existing:
            self._check_run_identity()
            self.load_checkpoint(existing[-1])
            log = [r for r in self._read_log() if r.get("step", 0) <= self.counter.step]
        if acc.is_main_process:
            write_text(self.output_dir / LOG_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log))
            write_json(self.output_dir / RUN_FILE, {"identity": self.identity, "config": cfg.to_dict()})

        train_log = [r for r in log if r.get("kind") == "train"]
        eval_log = [r for r in log if r.get("kind") == "eval"]
        start = self.counter.step
        if start == 0 or not eval_log:
            eval_log.append(self._eval_record(start))
        started = time.monotonic()
        stopped_early = False
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, desc="distill", unit="step",
                   disable=not (cfg.progress and acc.is_main_process))
        self.step_module.train()
        try:
            while self.counter.step < cfg.max_steps:
                t0 = time.monotonic()
                record = self._train_step()
                self.counter.step += 1
                record.update(kind="train", step=self.counter.step, seconds=round(time.monotonic() - t0, 4))
                train_log.append(record)
                self._append_log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['total']:.4f}")
                step = self.counter.step
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    eval_log.append(self._eval_record(step))
                out_of_time = cfg.time_limit_s is not None and time.monotonic() - started > cfg.time_limit_s
                if step % cfg.save_every == 0 or step == cfg.max_steps or out_of_time:
                    self.save_checkpoint()
                if out_of_time and step < cfg.max_steps:
                    stopped_early = True
                    break
        finally:
            bar.close()
        student_path = None
        if not stopped_early:
            if not eval_log or eval_log[-1]["step"] != self.counter.step:
                eval_log.append(self._eval_record(self.counter.step))
            student_path = self.output_dir / STUDENT_DIR
            if acc.is_main_process:
                save_student(acc.unwrap_model(self.step_module).student, student_path)
            acc.wait_for_everyone()
        return DistillResult(self.counter.step, train_log, eval_log, student_path, stopped_early)

    def _eval_record(self, step: int) -> dict[str, Any]:
        record = {"kind": "eval", "step": step, "eval_l1": self.evaluate()}
        self._append_log(record)
        return record

    def _train_step(self) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.config
        index = self._batch_index(self.counter.step)
        batch = self.source.batch(index, cfg.batch_size).to(self.device)
        target, feats = self._teacher_targets(batch, index)
        student_cfg = acc.unwrap_model(self.step_module).student.config
        latent_shape = (batch.size, student_cfg.latent_channels, student_cfg.latent_tile, student_cfg.latent_tile)
        noises = draw_noises(student_cfg, latent_shape, cfg.student_steps, self._generator(index, 1))
        noises = [n.to(self.device) for n in noises]
        with acc.autocast():
            parts = self.step_module(batch.rgb, batch.defocus, batch.in_focus, target.rgb, target.x0,
                                     target.latent, feats, noises)
        loss = parts["total"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss became {float(loss)} at step {self.counter.step + 1}; "
                                     "lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(self.step_module.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        record = {name: float(value.detach()) for name, value in parts.items()}
        record["lr"] = self.scheduler.get_last_lr()[0]
        return record
