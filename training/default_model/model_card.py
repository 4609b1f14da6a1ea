"""Package a trained default model: fp16 weights, measured figures, pictures, MODEL_CARD.md.

Every number in the card comes from ``metrics.json``, which this module writes from measurements
(evaluation on held-out generated scenes, the training checkpoint's own record); the card is
generated from that JSON, never typed.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from runtime_py.atomic import atomic_path, write_json, write_text
from runtime_py.model import MagicBokeh, get_config
from .evaluate import HELD_OUT_FIRST_SEED, evaluate_model
from .trainer import load_trained_model

WEIGHTS_FILE = "magicbokeh_small.safetensors"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
FIGURE_HELD_OUT = "held_out_scenes.png"
FIGURE_UNSEEN = "unseen_photos.png"
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024
UNSEEN_FAMILY_FIRST_SEED = 2_000_000
TRAINING_SCALE_SIZE = 192  # the training pool's scene size: separates tile-size effects from the rest

# An approximate outline of the sitter in matplotlib's sample photo grace_hopper.jpg (512 x 600,
# a public-domain U.S. Navy portrait), drawn by eye: hat, face, shoulders. Depth is then two
# planes (person near, flag and sky far); an outline this coarse is a stand-in for a depth model.
PORTRAIT_OUTLINE = [
    (175, 45), (240, 25), (300, 25), (350, 50), (372, 110), (372, 190), (375, 215), (362, 262),
    (345, 300), (330, 322), (420, 370), (480, 400), (505, 450), (511, 599), (0, 599), (10, 480),
    (40, 420), (100, 372), (195, 322), (178, 292), (160, 245), (150, 190), (155, 110),
]


def _label(image: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=14)
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil).astype(np.float32) / 255.0


def _cell(image: np.ndarray, side: int) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    w, h = pil.size
    pil = pil.resize((side, round(h * side / w)), Image.Resampling.LANCZOS)
    return np.asarray(pil).astype(np.float32) / 255.0


def _grid(rows: list[list[tuple[np.ndarray, str]]], side: int) -> Image.Image:
    lines = []
    for row in rows:
        cells = [_label(_cell(img, side), text) for img, text in row]
        height = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, height - c.shape[0]), (0, 2), (0, 0)), constant_values=1.0) for c in cells]
        lines.append(np.pad(np.concatenate(cells, axis=1), ((0, 2), (0, 0), (0, 0)), constant_values=1.0))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=1.0) for line in lines]
    return Image.fromarray((np.concatenate(lines, axis=0) * 255 + 0.5).astype(np.uint8))


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)


def portrait_photo() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The sample portrait shipped with matplotlib, an outline mask and a two-plane depth map."""
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            image = np.asarray(Image.open(handle).convert("RGB"))
    except (OSError, ValueError, ImportError):
        return None
    h, w = image.shape[:2]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(PORTRAIT_OUTLINE, fill=255)
    mask = (np.asarray(canvas) > 127).astype(np.float32)
    depth = np.where(mask > 0, 0.75, 0.15).astype(np.float32)
    return image, depth, mask


def render_with_pipeline(model: MagicBokeh, image_u8: np.ndarray, depth: np.ndarray, mask: np.ndarray, K: int) -> np.ndarray:
    """Render a whole photo through the toolkit's reference pipeline (tiling, colour fix)."""
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.components import tile_components
    from runtime_py.pipeline import FocusMask, render_image

    components = TorchBackend().load(tile_components(model))
    result = render_image(image_u8, depth, components=components, config=model.config, K=K, focus=FocusMask(mask))
    return result.image


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_model_card(weights_dir: Path, metrics: dict[str, Any]) -> Path:
    """MODEL_CARD.md from metrics.json's content."""
    t = metrics["training"]
    a = metrics["architecture"]
    ev = metrics["evaluation"]
    rows = []
    for name, summary in ev.items():
        for cand, label in (("model", "default model"), ("input", "unchanged input"), ("gaussian_blur", "Gaussian blur of the background")):
            m = summary[cand]
            rows.append(f"| {name} ({summary['scenes']} scenes, {summary['size']} px) | {label} | {_fmt(m['psnr'])} | "
                        f"{_fmt(m['ssim'], 3)} | {_fmt(m['psnr_in_focus'])} | {_fmt(m['psnr_out_of_focus'])} | "
                        f"{_fmt(m['sharpness_in_focus'], 3)} |")
    beats = "\n".join(
        f"- {name}: the model's PSNR beats the unchanged input on {s['model_beats_input_psnr']} of {s['scenes']} scenes "
        f"and the Gaussian blur on {s['model_beats_gaussian_psnr']} of {s['scenes']}."
        for name, s in ev.items()
    )
    phases = t.get("autoencoder_end_step")
    verdict_lines = []
    for name, summary in ev.items():
        m, i, g = summary["model"], summary["input"], summary["gaussian_blur"]
        closer = m["psnr"] > i["psnr"] and m["psnr"] > g["psnr"]
        in_focus = "above" if m["psnr_in_focus"] > i["psnr_in_focus"] else "below"
        softer = m["sharpness_in_focus"] < i["sharpness_in_focus"]
        verdict_lines.append(
            f"- {name}: on average the model is {'closer' if closer else 'NOT closer'} to the teacher than both the unchanged input "
            f"and the Gaussian blur (PSNR {_fmt(m['psnr'])} dB vs {_fmt(i['psnr'])} and {_fmt(g['psnr'])} dB; scene by scene "
            f"it beats the input on {summary['model_beats_input_psnr']} and the blur on {summary['model_beats_gaussian_psnr']} "
            f"of {summary['scenes']}). In focus its PSNR is {in_focus} the input's ({_fmt(m['psnr_in_focus'])} vs "
            f"{_fmt(i['psnr_in_focus'])} dB) and its sharpness is {_fmt(m['sharpness_in_focus'], 2)} of the teacher's against "
            f"the input's {_fmt(i['sharpness_in_focus'], 2)}{': the subject comes out softer than it went in' if softer else ''}."
        )
    verdict = "\n".join(verdict_lines)
    text = f"""# MagicBokeh default model (`small`)

The model every CLI of this toolkit uses when no checkpoint is given. It is a small network with
the published MagicBokeh topology, trained on this project's machine, on the CPU, from generated
scenes taught by the toolkit's physically based bokeh renderer (`runtime_py.bokeh_renderer`).
It is a working demonstration of the whole pipeline, not a substitute for the published SD2.1
weights: a user who has those loads them instead.

## Architecture
- Configuration `small` (`runtime_py.model.CONFIGS["small"]`): VAE (diffusers `AutoencoderKL`,
  blocks {a['vae_block_out_channels']}, downsampling {a['vae_factor']}x to {a['latent_channels']} latent channels), injector (ControlNet copy of the UNet's
  down half fed by the defocus map's conditioning embedding), UNet without mid block and
  cross-attention (blocks {a['block_out_channels']}, self-attention at levels {a['attention_levels']}) whose up blocks' self-attention is the
  focus-aware masked attention (focus LoRA rank {a['focus_rank']}), one DDPM step at t = {a['timestep']}.
- Departures from SD2.1's shape (the published model has a 8x / 4-channel VAE, attention at the
  three finest UNet levels and its step at t = 999): SD2.1's VAE and UNet come out of large-scale
  pretraining. Trained from random weights on this CPU, a VAE reaches about 18 dB on the degraded
  inputs in the minutes it gets (measured), far below the input's own fidelity, and at t = 999 the
  one-step update multiplies the UNet's errors by sqrt(1 - alpha) / sqrt(alpha) = 15. So the VAE
  downsamples 4x and starts as 4 x 4 block means + bilinear upsampling written into its own
  layers (`training.default_model.vae_init`; about 34 dB on the degraded inputs before any training),
  the attention sits one level coarser so that it runs on the same token grids as SD2.1's at a
  512-px tile, and at t = {a['timestep']} the update is `x0 = (z - {a['sqrt_one_minus_alpha']:.3f} eps) / {a['sqrt_alpha']:.3f}`: the
  UNet learns a correction of the latent. Components, exporters, quantizers and the focus
  attention are the same code as for SD2.1.
- Parameters: {a['parameters']:,} ({a['parameters_by_part']}).
- Weights: `{WEIGHTS_FILE}`, the toolkit's native safetensors format, stored in float16
  ({metrics['weights']['bytes'] / 1e6:.1f} MB; the loader casts to float32), sha256 of the tensors
  `{metrics['weights']['weights_sha256'][:16]}...`.
- Tile: {a['tile']} px (stride {a['stride']}), inputs exactly as the pipeline builds them
  (`x` in [-1, 1], defocus `D = |depth - f| * K / 32`, in-focus mask `D <= 0.1`).

## Data
- Scenes from `runtime_py.scenes.generate_scene` (family `dead_leaves`): far backdrop or slanted
  ground plane; 8 to 30 occluding "dead leaves" (discs, ellipses, rectangles, power-law sizes,
  flat / 1/f-noise / stripes / checks / gradient textures); thin lines; text (Pillow's font);
  small specular highlights; a subject near the centre (often carrying text) whose depth is the
  focus and whose visible pixels are the focus mask. Exact per-pixel depth.
- Input: the clean scene degraded like a digital zoom (blur, 2-4x downscale, shot + read noise,
  JPEG quality 35-90, bicubic upscale back).
- Target (teacher): `render_bokeh(clean, depth, f, K)`: layered, occlusion-aware scatter of a disk
  of radius `|depth - f| * K` px, highlights boosted before and compressed after blurring.
- Training pool: {', '.join(f'`{name}`' for name in t['pool_files'])} (scene seeds and size in the
  names), two apertures per scene
  (K in 4-16 and 17-32), random {t['crop']} px crops and flips. Held-out evaluation: seeds from
  {HELD_OUT_FIRST_SEED} (same family) and from {UNSEEN_FAMILY_FIRST_SEED} (family `street`: a figure on a
  ground plane before lit buildings, never seen in training), K drawn from 4-32 per scene.

## Training
- Command (reproduces the run; `--schedule time` follows the wall clock, so on a faster or
  slower machine the number of steps differs):

      {t['command']}
      python -m export.train_default finish --run-dir {t.get('run_dir', 'outputs/default_model/run')}

- Phases: VAE as an autoencoder (clean / degraded / teacher images) for {phases} steps, then the
  whole model end to end: L1 + {t['ssim_weight']} (1 - SSIM) + {t['gradient_weight']} gradient L1 against the teacher in
  pixels, plus {t['latent_weight']} L1 between the one-step `x0` and the encoding of the teacher.
  AdamW, learning rate {t['lr']}, batch {t['batch_size']}, warm-up then cosine decay, gradient clipping {t['grad_clip']};
  {'bfloat16 autocast (float32 weights and losses)' if t.get('bf16') else 'float32'}; the VAE starts {'as the analytic autoencoder' if t.get('vae_init') == 'analytic' else 'from random weights'} and the UNet's `conv_out` at zero, so training starts from `x0 = z / sqrt(alpha)`.
- Steps: {t['steps']} ({t['stopped_by']}); training time {t['train_minutes']:.1f} min on
  {t['machine']} ({t['threads']} torch threads, shared with other jobs), under `accelerate`.
- Final training loss (mean of the last logged window): {_fmt(t['final_loss'], 4)}.

## Measured quality (held-out generated scenes, against the teacher)
Model run on whole {metrics['architecture']['tile']} px tiles on the degraded input (no colour fix). "In focus" is
the model's in-focus mask `D <= 0.1`; sharpness is the mean gradient magnitude over the in-focus
region relative to the teacher's (1 = as sharp as the teacher).

| scenes | candidate | PSNR dB | SSIM | PSNR in focus | PSNR out of focus | in-focus sharpness |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{beats}

![held-out scenes]({FIGURE_HELD_OUT})

Columns: degraded input, depth (white = near), default model output, teacher.

## Photos the model never saw
Rendered through the full toolkit pipeline (`runtime_py.pipeline.render_image`: tiling, blending,
colour fix) with a depth map and a focus mask: a scene of the `street` family at
{metrics['unseen']['street_size']} px (several tiles) and matplotlib's sample portrait (`grace_hopper.jpg`)
with a hand-drawn outline as mask and a two-plane depth map (person near, background far), K =
{metrics['unseen']['K']}.

![unseen photos]({FIGURE_UNSEEN})

Columns: input, depth, focus mask, output.

## Verdict (computed from the figures above)
{verdict}

## Limits
- Trained for {t['train_minutes']:.0f} minutes on {t['machine']}, from scratch (no pretrained VAE or UNet), on
  synthetic scenes only. Its VAE starts as block means + bilinear upsampling and had minutes to
  learn more: it cannot restore fine texture the way SD2.1's VAE can, so in-focus regions come out
  a little softer than the input (see the verdict) while the gain is in the out-of-focus regions.
- Evaluated against a synthetic teacher on synthetic scenes; it has never seen a real photograph.
- Generated by `python -m export.train_default finish` on {metrics['generated_utc']} from `{METRICS_FILE}`.
"""
    return write_text(weights_dir / CARD_FILE, text)


def finish_default_model(run_dir: Path, weights_dir: Path, num_scenes: int = 12, eval_size: int = 512,
                         figure_scenes: int = 3) -> dict[str, Any]:
    """Checkpoint -> fp16 native weights -> evaluation of those weights -> figures -> card."""
    from runtime_py.checkpoints import load_native, save_native
    from runtime_py.checkpoints.native import read_native_metadata

    # One thread: on a shared 2-core machine a second thread mostly waits for the first.
    torch.set_num_threads(1)
    model, meta = load_trained_model(run_dir)
    if model.config != get_config("small"):
        raise ValueError(f"the run in {run_dir} trained a configuration that differs from CONFIGS['small'] "
                         f"(overrides {meta['config'].get('model_overrides')}); make it the `small` configuration first")
    model.eval()
    weights_dir.mkdir(parents=True, exist_ok=True)
    weights_path = save_native(model, weights_dir / WEIGHTS_FILE, dtype=torch.float16)
    size = weights_path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{weights_path} is {size} bytes, over the {MAX_WEIGHTS_BYTES}-byte limit")
    shipped = load_native(weights_path).eval()  # evaluate exactly what ships (fp16-rounded)

    evaluation: dict[str, Any] = {}
    held, kept = evaluate_model(shipped, list(range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + num_scenes)),
                                eval_size, "dead_leaves", keep=figure_scenes)
    evaluation["dead_leaves (held out)"] = held
    small, _ = evaluate_model(shipped, list(range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + num_scenes)),
                              TRAINING_SCALE_SIZE, "dead_leaves")
    evaluation[f"dead_leaves (held out, {TRAINING_SCALE_SIZE} px scenes)"] = small
    street, _ = evaluate_model(shipped, list(range(UNSEEN_FAMILY_FIRST_SEED, UNSEEN_FAMILY_FIRST_SEED + max(1, num_scenes // 2))),
                               eval_size, "street")
    evaluation["street (unseen family)"] = street

    rows = [[(r.scene.degraded, f"input K={r.scene.aperture_k:.0f}"), (r.scene.depth, "depth"),
             (r.output, "default model"), (r.scene.teacher, "teacher")] for r in kept]
    _save_png(_grid(rows, 256), weights_dir / FIGURE_HELD_OUT)

    from runtime_py.scenes import generate_scene

    K = 24
    street_size = 768
    scene = generate_scene(UNSEEN_FAMILY_FIRST_SEED + 999, street_size, "street", aperture_k=K)
    street_u8 = (scene.clean * 255 + 0.5).astype(np.uint8)
    street_out = render_with_pipeline(shipped, street_u8, scene.depth, scene.mask, K)
    unseen_rows = [[(scene.clean, "input (street scene)"), (scene.depth, "depth"), (scene.mask, "focus mask"),
                    (street_out.astype(np.float32) / 255.0, "default model")]]
    portrait = portrait_photo()
    if portrait is not None:
        photo, depth, mask = portrait
        photo_out = render_with_pipeline(shipped, photo, depth, mask, K)
        unseen_rows.append([(photo.astype(np.float32) / 255.0, "input (photo)"), (depth, "depth (two planes)"),
                            (mask, "focus mask (outline)"), (photo_out.astype(np.float32) / 255.0, "default model")])
    _save_png(_grid(unseen_rows, 256), weights_dir / FIGURE_UNSEEN)

    cfg = meta["config"]
    history = meta.get("history", [])
    last = history[-1] if history else {}
    ae_end = next((h.get("autoencoder_end_step") for h in reversed(history) if h.get("autoencoder_end_step") is not None), None)
    parts = {"vae": shipped.vae, "unet": shipped.unet, "injector": shipped.injector}
    metrics = {
        "generated_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "architecture": {
            "config": shipped.config.name,
            "parameters": sum(p.numel() for p in shipped.parameters()),
            "parameters_by_part": ", ".join(f"{k} {sum(p.numel() for p in m.parameters()):,}" for k, m in parts.items()),
            "vae_block_out_channels": list(shipped.config.vae_block_out_channels),
            "block_out_channels": list(shipped.config.block_out_channels),
            "focus_rank": shipped.config.focus_rank,
            "vae_factor": shipped.config.vae_factor,
            "latent_channels": shipped.config.latent_channels,
            "attention_levels": [i for i, a in enumerate(shipped.config.attention_levels) if a],
            "timestep": shipped.config.timestep,
            "sqrt_alpha": float(shipped.sqrt_alpha),
            "sqrt_one_minus_alpha": float(shipped.sqrt_one_minus_alpha),
            "tile": shipped.config.tile,
            "stride": shipped.config.stride,
        },
        "weights": {"file": WEIGHTS_FILE, "bytes": size, "dtype": "float16", "weights_sha256": read_native_metadata(weights_path)["weights_sha256"]},
        "training": {
            "command": cfg.get("extra", {}).get("command", "python -m export.train_default train"),
            "run_dir": cfg["run_dir"],
            "steps": meta["step"],
            "stopped_by": "wall clock limit" if meta["step"] < cfg["total_steps"] else "step count",
            "autoencoder_end_step": ae_end,
            "train_minutes": meta.get("train_seconds", float("nan")) / 60.0,
            "final_loss": last.get("total", float("nan")),
            "machine": meta.get("machine") or f"{platform.machine()} {platform.system()} CPU",
            "threads": cfg["threads"],
            "crop": cfg["crop"],
            "batch_size": cfg["batch_size"],
            "lr": cfg["lr"],
            "ssim_weight": cfg["ssim_weight"],
            "gradient_weight": cfg["gradient_weight"],
            "latent_weight": cfg["latent_weight"],
            "grad_clip": cfg["grad_clip"],
            "bf16": cfg.get("bf16", False),
            "vae_init": cfg.get("vae_init", "random"),
            "pool_files": [Path(p).name for p in cfg["pool_files"]],
            "loss_history": [{k: h[k] for k in ("step", "phase", "total", "l1") if k in h} for h in history],
        },
        "evaluation": evaluation,
        "unseen": {"K": K, "street_size": street_size, "street_seed": UNSEEN_FAMILY_FIRST_SEED + 999,
                   "portrait": portrait is not None},
    }
    write_json(weights_dir / METRICS_FILE, metrics)
    write_model_card(weights_dir, metrics)
    return metrics
