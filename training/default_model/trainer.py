"""The default-model training loop: MagicBokeh's own topology, taught by the bokeh renderer.

Two phases, both on the pipeline's exact tile inputs:

1. ``autoencoder``: the VAE alone learns to reconstruct clean, degraded and teacher images (the
   published model starts from SD2.1's VAE; ours starts from nothing, so it first needs a latent
   space worth denoising in).
2. ``end_to_end``: the whole one-step model, ``x -> encode -> injector + UNet (focus-aware
   attention) -> one DDPM step at the configuration's timestep -> decode``, is compared with
   the teacher in pixels (L1 + SSIM + gradient terms) and, in latent space, ``x0`` with the
   encoding of the teacher (the one-step update scales the UNet's errors by
   ``sqrt(1-a) / sqrt(a)``, 15x at SD2.1's t = 999; the latent term gives it a direct signal).

The loop runs under ``accelerate`` (model, optimiser and data loader go through
``Accelerator.prepare``), so the same code trains on a GPU or several; here it runs on CPU. It
writes a resumable checkpoint (safetensors + JSON, no pickle) and stops by itself at a
wall-clock limit.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from runtime_py.atomic import atomic_path, write_json
from runtime_py.model import MagicBokeh, MagicBokehConfig, build_model, get_config
from .data import SceneTileDataset, load_scene_pool
from .losses import bokeh_loss
from .vae_init import VaeInitError, init_vae_as_autoencoder

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


class TrainingError(ValueError):
    """A training configuration or checkpoint that cannot be used."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the checkpoint and the card)."""

    pool_files: list[str]
    run_dir: str
    model_config: str = "small"
    # Changes to the named configuration (e.g. {"latent_channels": 16}) for recipe sweeps.
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_seed: int = 0
    data_seed: int = 0
    crop: int = 128
    batch_size: int = 8
    autoencoder_steps: int = 500
    total_steps: int = 4000
    lr: float = 2e-4
    vae_lr_scale: float = 0.5
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 1e-4
    latent_weight: float = 0.25
    latent_scale_weight: float = 1.0  # keeps E[z^2] near 1: without it the latent term shrinks the latents
    ssim_weight: float = 0.2
    gradient_weight: float = 0.5
    grad_clip: float = 1.0
    # bfloat16 autocast for the forward passes (weights and optimiser stay float32): 1.3-1.7x
    # faster on CPUs with AMX / AVX512-BF16 and on GPUs; held-out figures are computed in float32.
    # The default model was trained in float32: the analytic VAE start carries its colours as
    # small variations on SiLU inputs near 8, which bfloat16's 8-bit mantissa rounds to 0.06.
    bf16: bool = True
    # Start the UNet's conv_out at zero so that the first one-step output is x0 = z / sqrt(a):
    # the model begins as its own autoencoder and learns corrections (fresh runs only). Meant for
    # small timesteps (sqrt(a) = 0.98 at t = 50); at t = 999 it would start from x0 = 15 z.
    zero_unet_output: bool = True
    # "analytic": the VAE starts as block means + bilinear upsampling (training.default_model.vae_init),
    # readouts fit on pool images; "random": diffusers' initialisation (fresh runs only).
    vae_init: str = "analytic"
    max_minutes: float = 48.0
    # "steps": phases and learning-rate decay follow autoencoder_steps / total_steps (exactly
    # reproducible). "time": they follow the wall clock (autoencoder_fraction of max_minutes,
    # then cosine decay to the limit), which uses a budget fully on a machine whose speed is
    # unknown in advance; total_steps is then only a cap, and the steps at which the phases
    # changed are recorded.
    schedule: str = "steps"
    autoencoder_fraction: float = 0.15
    checkpoint_every: int = 200
    log_every: int = 20
    num_workers: int = 1
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.total_steps < 1 or not 0 <= self.autoencoder_steps < self.total_steps:
            raise TrainingError("need total_steps >= 1 and 0 <= autoencoder_steps < total_steps")
        if self.batch_size < 1 or self.crop < 64 or self.crop % 64:
            raise TrainingError("batch_size must be >= 1 and crop a multiple of 64")
        if not self.pool_files:
            raise TrainingError("no scene pool files given")
        if self.max_minutes <= 0:
            raise TrainingError("max_minutes must be positive")
        if self.vae_init not in ("analytic", "random"):
            raise TrainingError(f"vae_init must be 'analytic' or 'random', got {self.vae_init!r}")
        if self.schedule not in ("steps", "time"):
            raise TrainingError(f"schedule must be 'steps' or 'time', got {self.schedule!r}")
        if not 0.0 <= self.autoencoder_fraction < 1.0:
            raise TrainingError("autoencoder_fraction must be in [0, 1)")


def model_config_of(config: TrainConfig) -> MagicBokehConfig:
    """The MagicBokeh configuration a run trains: the named one with the run's overrides."""
    base = get_config(config.model_config)
    if not config.model_overrides:
        return base
    try:
        return base.replace(**config.model_overrides)
    except TypeError as exc:
        raise TrainingError(f"bad model override {config.model_overrides}: {exc}") from None


def describe_machine() -> str:
    """Where training runs, for the checkpoint and the model card (GPU name or CPU)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU (CUDA), {platform.machine()} {platform.system()} host"
    return f"{platform.machine()} {platform.system()} CPU"


@dataclass
class TrainResult:
    model: MagicBokeh
    steps_done: int
    stopped_by: str  # "steps" or "wall_clock"
    train_seconds: float
    history: list[dict[str, float]]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Step schedule: warm-up per phase, constant through the autoencoder phase, cosine after."""
    if step < config.autoencoder_steps:
        return min(1.0, (step + 1) / config.warmup_steps)
    s = step - config.autoencoder_steps
    n = config.total_steps - config.autoencoder_steps
    return _warm_cosine(s, s / max(1, n), config)


def _warm_cosine(steps_in_phase: int, progress: float, config: TrainConfig) -> float:
    warm = min(1.0, (steps_in_phase + 1) / config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warm * (config.final_lr_fraction + (1.0 - config.final_lr_fraction) * cosine)


def _param_groups(model: MagicBokeh, config: TrainConfig) -> list[dict[str, Any]]:
    vae = [p for p in model.vae.parameters()]
    vae_ids = {id(p) for p in vae}
    rest = [p for p in model.parameters() if id(p) not in vae_ids]
    return [
        {"params": vae, "lr": config.lr * config.vae_lr_scale, "base_lr": config.lr * config.vae_lr_scale},
        {"params": rest, "lr": config.lr, "base_lr": config.lr},
    ]


# -- checkpoints (safetensors + JSON; the optimiser state is flattened into named tensors) ----------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = float(value)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": list(g["params"])} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        for key, value in entry.items():
            state.setdefault(int(index), {})[key] = torch.tensor(value)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, model: MagicBokeh, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Write model + optimiser tensors and the JSON state, each atomically (weights first)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    with atomic_path(run_dir / CHECKPOINT_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(run_dir / CHECKPOINT_STATE, meta | {"optimizer": opt_meta})


def pack_checkpoint(run_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a run's checkpoint without the optimiser, weights in ``dtype``: small enough to move
    between machines (a run trained on a GPU host, finished here); :func:`load_checkpoint` reads it."""
    weights, state_path = Path(run_dir) / CHECKPOINT_WEIGHTS, Path(run_dir) / CHECKPOINT_STATE
    if not weights.is_file() or not state_path.is_file():
        raise TrainingError(f"no complete checkpoint in {run_dir}")
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(weights)).items() if k.startswith("model.")}
    meta = json.loads(state_path.read_text())
    meta.pop("optimizer", None)
    meta["packed_dtype"] = str(dtype).replace("torch.", "")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / CHECKPOINT_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(out_dir / CHECKPOINT_STATE, meta)
    return out_dir


def load_checkpoint(run_dir: Path, model: MagicBokeh, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its JSON state."""
    weights, state_path = run_dir / CHECKPOINT_WEIGHTS, run_dir / CHECKPOINT_STATE
    if not weights.is_file() or not state_path.is_file():
        raise TrainingError(f"no complete checkpoint in {run_dir}")
    try:
        tensors = load_file(str(weights))
        meta = json.loads(state_path.read_text())
    except Exception as exc:  # a truncated or foreign file
        raise TrainingError(f"checkpoint in {run_dir} cannot be read: {exc}") from exc
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise TrainingError(f"checkpoint in {run_dir} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None:
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    return meta


def load_trained_model(run_dir: Path | str) -> tuple[MagicBokeh, dict[str, Any]]:
    """A run's model (its configuration with the run's overrides, weights from its checkpoint) and state."""
    run_dir = Path(run_dir)
    state_path = run_dir / CHECKPOINT_STATE
    if not state_path.is_file():
        raise TrainingError(f"no complete checkpoint in {run_dir}")
    try:
        saved = json.loads(state_path.read_text())["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"checkpoint in {run_dir} cannot be read: {exc}") from exc
    config = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    model = build_model(model_config_of(config), seed=0)
    return model, load_checkpoint(run_dir, model)


# -- the loop --------------------------------------------------------------------------------------


def _autoencoder_loss(model: MagicBokeh, batch: dict[str, torch.Tensor], config: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    # Each sample reconstructs one of its clean, degraded or teacher images (chosen by position
    # and step, so every kind is seen equally often).
    choices = torch.stack([batch["clean"], batch["x"], batch["teacher"]])  # (3, B, C, H, W)
    index = torch.arange(batch["x"].shape[0], device=batch["x"].device)
    images = choices[(index + step) % 3, index]
    latent = model.encode(images)
    recon = model.decode(latent)
    terms = bokeh_loss(recon, images, config.ssim_weight, config.gradient_weight)
    terms["latent_scale"] = (latent.pow(2).mean() - 1.0).pow(2)
    terms["total"] = terms["total"] + config.latent_scale_weight * terms["latent_scale"]
    return terms


def _end_to_end_loss(model: MagicBokeh, batch: dict[str, torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    latent = model.encode(batch["x"])
    x0 = model.denoise(latent, batch["defocus"], batch["in_focus"])
    output = model.decode(x0)
    terms = bokeh_loss(output, batch["teacher"], config.ssim_weight, config.gradient_weight)
    with torch.no_grad():
        target_latent = model.encode(batch["teacher"])
    terms["latent"] = (x0 - target_latent).abs().mean()
    terms["latent_scale"] = (latent.pow(2).mean() - 1.0).pow(2)
    terms["total"] = terms["total"] + config.latent_weight * terms["latent"] + config.latent_scale_weight * terms["latent_scale"]
    return terms


def _readout_images(pool: dict, scenes: int = 8) -> torch.Tensor:
    """Degraded inputs and teachers of the first pool scenes, (2N, 3, S, S) in [-1, 1]: what the
    analytic VAE's readouts are fit on (the images the model reads and writes)."""
    degraded = torch.from_numpy(pool["degraded"][:scenes])
    teachers = torch.from_numpy(pool["teachers"][:scenes, 0])
    images = torch.cat([degraded, teachers]).permute(0, 3, 1, 2).float()
    return images / 127.5 - 1.0


class _IndexRange(torch.utils.data.Sampler[int]):
    """Sample indices ``start .. stop - 1`` in order (samples are random per index; resumable)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def train(config: TrainConfig, resume: bool = True, log: Any = print) -> TrainResult:
    """Train (or resume) a run; stops at ``total_steps`` or at the wall-clock limit."""
    from accelerate import Accelerator

    config.validate()
    torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    pool = load_scene_pool(config.pool_files)
    model = build_model(model_config_of(config), seed=config.init_seed).train()
    resuming = resume and (run_dir / CHECKPOINT_STATE).is_file()
    if not resuming:  # a resumed run's weights come from its checkpoint
        if config.zero_unet_output:
            torch.nn.init.zeros_(model.unet.conv_out.weight)
            torch.nn.init.zeros_(model.unet.conv_out.bias)
        if config.vae_init == "analytic":
            try:
                init_vae_as_autoencoder(model.vae, model.config.latent_scale, _readout_images(pool))
            except VaeInitError as exc:
                raise TrainingError(f"--vae-init analytic does not fit this configuration: {exc}; "
                                    "use --vae-init random") from None
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    start_step, history, elapsed_before = 0, [], 0.0
    if resuming:
        meta = load_checkpoint(run_dir, model, optimizer)
        if meta.get("config", {}).get("total_steps") != config.total_steps:
            log(f"note: resuming a run planned for {meta['config'].get('total_steps')} steps with total_steps={config.total_steps}")
        start_step, history, elapsed_before = meta["step"], meta.get("history", []), meta.get("train_seconds", 0.0)
        log(f"resumed from step {start_step}")

    dataset = SceneTileDataset(pool, config.crop, length=config.total_steps * config.batch_size, seed=config.data_seed,
                               in_focus_threshold=model.config.defocus_in_focus_threshold)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=_IndexRange(start_step * config.batch_size, config.total_steps * config.batch_size),
        num_workers=config.num_workers,
        drop_last=True,
        persistent_workers=False,
    )
    accelerator = Accelerator()
    machine = describe_machine()
    log(f"training on {machine}")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    core: MagicBokeh = accelerator.unwrap_model(model)

    started = time.time()
    deadline = started + config.max_minutes * 60.0  # per invocation: a resumed run gets a new budget
    step, stopped_by = start_step, "steps"
    window: dict[str, float] = {}
    window_start, window_steps = time.time(), 0

    def checkpoint() -> None:
        if accelerator.is_main_process:
            meta = {"step": step, "config": asdict(config), "history": history,
                    "train_seconds": elapsed_before + time.time() - started, "machine": machine}
            save_checkpoint(run_dir, core, getattr(optimizer, "optimizer", optimizer), meta)

    ae_end_step: int | None = history[-1].get("autoencoder_end_step") if history else None
    if config.schedule == "time" and ae_end_step is not None and ae_end_step >= step:
        ae_end_step = None  # the last record was still in the autoencoder phase
    budget = config.max_minutes * 60.0
    for batch in loader:
        if step >= config.total_steps:
            break
        now = time.time()
        if now >= deadline:
            stopped_by = "wall_clock"
            break
        if config.schedule == "steps":
            in_autoencoder = step < config.autoencoder_steps
            factor = lr_factor(step, config)
        else:
            elapsed = elapsed_before + now - started
            in_autoencoder = ae_end_step is None and elapsed < config.autoencoder_fraction * budget
            if in_autoencoder:
                factor = min(1.0, (step + 1) / config.warmup_steps)
            else:
                if ae_end_step is None:
                    ae_end_step = step
                    log(json.dumps({"autoencoder_end_step": step}))
                ae_time = config.autoencoder_fraction * budget
                factor = _warm_cosine(step - ae_end_step, (elapsed - ae_time) / max(1.0, budget - ae_time), config)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            if in_autoencoder:
                terms = _autoencoder_loss(core, batch, config, step)
            else:
                terms = _end_to_end_loss(core, batch, config)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(terms["total"])
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        for key, value in terms.items():
            window[key] = window.get(key, 0.0) + float(value.detach())
        window_steps += 1
        if step % config.log_every == 0 or step == config.total_steps:
            record = {k: v / window_steps for k, v in window.items()}
            record |= {"step": step, "phase": "autoencoder" if in_autoencoder else "end_to_end",
                       "autoencoder_end_step": ae_end_step if config.schedule == "time" else config.autoencoder_steps,
                       "lr": optimizer.param_groups[1]["lr"], "sec_per_step": (time.time() - window_start) / window_steps,
                       "elapsed_min": (elapsed_before + time.time() - started) / 60.0}
            history.append(record)
            log(json.dumps(record))
            window, window_start, window_steps = {}, time.time(), 0
        if step % config.checkpoint_every == 0:
            checkpoint()
    checkpoint()
    core.eval()
    return TrainResult(model=core, steps_done=step, stopped_by=stopped_by,
                       train_seconds=elapsed_before + time.time() - started, history=history)
