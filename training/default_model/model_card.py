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
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from runtime_py.atomic import atomic_path, write_json, write_text
from runtime_py.components import TILE_COMPONENTS
from runtime_py.model import MagicBokeh, get_config
from .evaluate import (
    ATTENTION_TOKEN_LIMIT,
    COMPONENT_MEMORY_LIMIT_MIB,
    FINE_TEXTURE_TARGET_DB,
    HELD_OUT_FIRST_SEED,
    HELD_OUT_SETS,
    QUANTIZATION_FIRST_SEED,
    UNSEEN_FAMILY_FIRST_SEED,
    W8A8_TARGET_DB,
    compute_record,
    evaluate_held_out_set,
    evaluate_model,
    held_out_tiles,
    latent_lowpass,
)
from .trainer import load_trained_model

#: Simulates W8A8 for ``finish``: (model, calibration tiles, evaluation tiles) -> figures. The
#: export layer supplies it (``export.quant_simulation.simulate_w8a8``: training may not import the
#: quantizers), so that the card's 8-bit figures come from the int8 recipe's own code.
W8A8Simulator = Callable[[MagicBokeh, list, list], dict]

WEIGHTS_FILE = "magicbokeh_small.safetensors"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
FIGURE_HELD_OUT = "held_out_scenes.png"
FIGURE_UNSEEN = "unseen_photos.png"
FIGURE_FINE_TEXTURE = "fine_texture.png"
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024
NOT_MEASURED = "not measured"
TRAINING_SCALE_SIZE = 192  # the training pool's scene size: separates tile-size effects from the rest

# An approximate outline of the sitter in matplotlib's sample photo grace_hopper.jpg (512 x 600,
# a public-domain U.S. Navy portrait), drawn by eye: hat, face, shoulders. Depth is then two
# planes (person near, flag and sky far); an outline this coarse is a stand-in for a depth model.
PORTRAIT_OUTLINE = [
    (175, 45), (240, 25), (300, 25), (350, 50), (372, 110), (372, 190), (375, 215), (362, 262),
    (345, 300), (330, 322), (420, 370), (480, 400), (505, 450), (511, 599), (0, 599), (10, 480),
    (40, 420), (100, 372), (195, 322), (178, 292), (160, 245), (150, 190), (155, 110),
]


def attention_grids(config: Any) -> list[str]:
    """Per UNet level with self-attention at the config's tile: "G x G grid, H head(s)"."""
    out = []
    for level, (has, heads) in enumerate(zip(config.attention_levels, config.attention_heads)):
        if has:
            grid = config.latent_tile // 2**level
            out.append(f"{grid} x {grid} grid, {heads} head{'s' if heads != 1 else ''}")
    return out


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


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if value == math.inf:
        return "identical"
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _lookup(data: Any, path: Sequence[str]) -> Any:
    """``data[path[0]][path[1]]...``, or None where any step is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def merge_metrics(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Deep merge of metrics documents; where two hold a value, the earlier one wins."""
    merged: dict[str, Any] = {}
    for doc in reversed(documents):
        merged = _merge_into(merged, doc)
    return merged


def _merge_into(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge_into(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _wins(summary: Any) -> str | None:
    if not isinstance(summary, dict) or "model_beats_gaussian_psnr" not in summary:
        return None
    return f"{summary['model_beats_gaussian_psnr']} of {summary['scenes']}"


def comparison_rows(current: dict[str, Any], previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The before/after table: per figure, the previous model's value (None: not measured) and this one's.

    Figures: parameters, FLOPs and peak activation memory per tile, the largest attention, per
    held-out set the PSNR against the teacher, the scenes where the model beats the blur and the
    in-focus figures, and the simulated 8-bit PSNR per component. Values are only read, never
    derived from other figures, so a figure the previous run did not measure stays None.
    """
    mib, giga = 1.0 / 2**20, 1e-9
    specs: list[tuple[str, Any, float]] = [
        ("parameters", ("architecture", "parameters"), 1.0),
        ("GFLOP per tile", ("compute", "tile_flops"), giga),
    ]
    specs += [(f"peak live activations, {c}, MiB", ("compute", "components", c, "peak_live_activation_bytes"), mib)
              for c in TILE_COMPONENTS]
    specs.append(("largest attention, tokens", ("compute", "max_attention_tokens"), 1.0))
    sets = list(current.get("evaluation", {})) + [n for n in previous.get("evaluation", {}) if n not in current.get("evaluation", {})]
    for name in sets:
        base = ("evaluation", name)
        specs += [
            (f"{name}: PSNR vs teacher, dB", base + ("model", "psnr"), 1.0),
            (f"{name}: scenes where the model beats the blur", _wins, base),
            (f"{name}: in-focus PSNR vs teacher, dB", base + ("model", "psnr_in_focus"), 1.0),
            (f"{name}: in-focus PSNR vs input, dB", base + ("model", "psnr_in_focus_vs_input"), 1.0),
            (f"{name}: in-focus PSNR vs latent-low-passed input, dB", base + ("model", "psnr_in_focus_vs_lowpass"), 1.0),
            (f"{name}: in-focus sharpness vs input", base + ("model", "sharpness_in_focus_vs_input"), 1.0),
            (f"{name}: in-focus moire indicator", base + ("model", "moire_in_focus"), 1.0),
        ]
    specs += [(f"simulated W8A8 {c}: PSNR vs fp32, dB", ("quantization_simulation", "components", c, "psnr_db"), 1.0)
              for c in TILE_COMPONENTS]
    specs.append(("simulated W8A8 chain: PSNR vs fp32, dB", ("quantization_simulation", "chain", "psnr_db"), 1.0))
    rows = []
    for label, path_or_fn, scale_or_path in specs:
        values = []
        for doc in (previous, current):
            if callable(path_or_fn):
                values.append(path_or_fn(_lookup(doc, scale_or_path)))
            else:
                value = _lookup(doc, path_or_fn)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    values.append(None)
                else:  # counts stay integers, measured quantities floats
                    values.append(value if isinstance(value, int) and scale_or_path == 1.0 else float(value) * scale_or_path)
        if values != [None, None]:
            rows.append({"figure": label, "previous": values[0], "current": values[1]})
    return rows


def _cmp_cell(value: Any) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, str):
        return value
    return f"{value:,}" if isinstance(value, int) else _fmt(value, 3 if abs(value) < 10 else 2)


def _in_focus_section(ev: dict[str, Any]) -> str:
    rows = []
    for name, summary in ev.items():
        if "psnr_in_focus_vs_lowpass" not in summary.get("model", {}):
            continue
        for cand, label in (("model", "default model"), ("gaussian_blur", "Gaussian blur of the background"), ("input", "unchanged input")):
            m = summary[cand]
            rows.append(f"| {name} | {label} | {_fmt(m['psnr_in_focus_vs_input'])} | {_fmt(m['psnr_in_focus_vs_lowpass'])} | "
                        f"{_fmt(m['sharpness_in_focus_vs_input'], 3)} | {_fmt(m['moire_in_focus'], 3)} |")
    lines = []
    fine = next((s for s in ev.values() if s.get("family") == "fine_texture"), None)
    if fine is not None:
        value = fine["model"]["psnr_in_focus_vs_lowpass"]
        met = math.isfinite(value) and value >= FINE_TEXTURE_TARGET_DB
        lines.append(f"- fine_texture: in focus the output is {_fmt(value)} dB from the latent-low-passed input "
                     f"(issue 17's bar: at least {FINE_TEXTURE_TARGET_DB:.0f} dB): "
                     f"{'met' if met else 'NOT met'}; moire indicator {_fmt(fine['model']['moire_in_focus'], 3)} "
                     f"(Gaussian blur of the background: {_fmt(fine['gaussian_blur']['moire_in_focus'], 3)}).")
    for name, summary in ev.items():
        if summary.get("family") in ("dead_leaves", "street") and "psnr_in_focus_vs_input" in summary["model"]:
            lines.append(f"- {name}: in focus the output is {_fmt(summary['model']['psnr_in_focus_vs_input'])} dB from the input.")
    header = ("| scenes | candidate | PSNR vs input | PSNR vs latent-low-passed input | sharpness vs input | moire indicator |\n"
              "|---|---|---|---|---|---|")
    return header + "\n" + "\n".join(rows) + ("\n\n" + "\n".join(lines) if lines else "")


def _w8a8_section(q: dict[str, Any]) -> str:
    if "components" not in q:
        return f"Not measured ({q.get('reason', 'no simulation was run')})."
    rows = [f"| {name} | {_fmt(f['psnr_db'])} | {_fmt(f['max_abs'], 4)} | {'yes' if f['psnr_db'] >= W8A8_TARGET_DB else 'NO'} |"
            for name, f in q["components"].items()]
    rows.append(f"| chain (all three quantized) | {_fmt(q['chain']['psnr_db'])} | {_fmt(q['chain']['max_abs'], 4)} | - |")
    return (f"Each component exported as for the `{q['target']}` target and quantized by the int8 recipe's own code "
            f"(`quantize.xnnpack.quantize_program`: PT2E with the XNNPACKQuantizer, 8-bit per-channel symmetric weights, "
            f"8-bit per-tensor affine activations), activation ranges calibrated on {q['calibration_tiles']} held-out "
            f"{q['tile']}-px tile(s) (seeds from {QUANTIZATION_FIRST_SEED}), measured on {q['evaluation_tiles']} other "
            f"tile(s); the converted graph runs in PyTorch, so its output differs from fp32 by the 8-bit rounding alone. "
            f"Each component gets the fp32 chain's inputs; PSNR peak = max|fp32 output|.\n\n"
            f"| component | PSNR vs fp32, dB | max abs error | >= {W8A8_TARGET_DB:.0f} dB (issue 17) |\n|---|---|---|---|\n"
            + "\n".join(rows))


def _compute_section(c: dict[str, Any]) -> str:
    rows = [f"| {name} | {f['params']:,} | {f['flops'] / 1e9:.2f} | {f['peak_live_activation_bytes'] / 2**20:.1f} | "
            f"{f['weight_bytes_fp32'] / 2**20:.1f} | {f['memory_mib']:.1f} | {'yes' if f['within_memory_limit'] else 'NO'} | "
            f"{f['max_attention_tokens']:,} |" for name, f in c["components"].items()]
    tokens = c["max_attention_tokens"]
    return (f"Counted on the model's {c['tile']}-px tile by `training.distill.cost.component_compute` (the benchmarks' "
            f"counter; {c['flop_convention']}). Memory = {c['memory_definition']}.\n\n"
            f"| component | parameters | GFLOP per tile | peak live activations, MiB | fp32 weights, MiB | memory, MiB | "
            f"<= {c['memory_limit_mib']:.0f} MiB | largest attention, tokens |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + f"\n\n- No attention over more than {c['attention_token_limit']:,} tokens: "
              f"{'yes' if c['attention_within_limit'] else 'NO'} (the largest attends over {tokens:,} tokens at this tile).\n"
              f"- Every component within {c['memory_limit_mib']:.0f} MiB: {'yes' if c['all_within_memory_limit'] else 'NO'}.")


def _comparison_section(metrics: dict[str, Any]) -> str:
    comp = metrics.get("comparison")
    if not comp:
        return ""
    rows = "\n".join(f"| {r['figure']} | {_cmp_cell(r['previous'])} | {_cmp_cell(r['current'])} |" for r in comp["rows"])
    sources = ", ".join(f"`{name}`" for name in comp["sources"])
    return (f"\n## Before / after\nThe previous model's figures are read from {sources} (generated "
            f"{comp.get('previous_generated', NOT_MEASURED)}); a figure that file does not hold is shown as "
            f"\"{NOT_MEASURED}\".\n\n| figure | previous model | this model |\n|---|---|---|\n{rows}\n")


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
    fine_figure = (f"\n![fine texture]({FIGURE_FINE_TEXTURE})\n\nA {metrics['fine_texture_figure']['crop']}-px in-focus crop of a "
                   f"fine_texture scene, enlarged {metrics['fine_texture_figure']['zoom']}x without smoothing. Columns: input, input "
                   f"low-passed at the latent grid, default model output.\n" if metrics.get("fine_texture_figure") else "")
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
- Departures from SD2.1's shape (the published model has a 8x / 4-channel VAE with self-attention
  in its mid blocks, attention at the three finest UNet levels and its step at t = 999): SD2.1's
  VAE and UNet come out of large-scale pretraining. Trained from random weights on this CPU, a VAE
  reaches about 18 dB on the degraded inputs in the minutes it gets (measured), far below the
  input's own fidelity, and at t = 999 the one-step update multiplies the UNet's errors by
  sqrt(1 - alpha) / sqrt(alpha) = 15. So the VAE downsamples {a['vae_factor']}x and starts as an analytic
  autoencoder written into its own layers (`training.default_model.vae_init`): the encoder's
  `conv_in` low-passes each colour with the 3 x 3 tent (1, 2, 1) / 4 and every downsampler
  becomes a 2 x 2 mean (a latent pixel is a block mean of the tent-filtered image: the tent keeps
  a 3-px stripe pattern from coming back as a false pattern at the latent grid: 6 % of it passes,
  against 25 % through plain block means), every upsampler becomes bilinear 2x upsampling, and the
  readouts after the final GroupNorm + SiLU use that each colour travels with its negation:
  `SiLU(y) - SiLU(-y) = y`, so the activations stay centred on zero (where 8-bit activation
  quantization reads them) instead of being shifted into SiLU's near-linear range. The VAE
  {'has self-attention in its mid blocks' if a.get('vae_mid_block_attention', True) else 'has no mid-block attention'}
  (at a {a['vae_factor']}x VAE it would attend over every latent pixel of the tile), the UNet's attention
  sits one level coarser so that it runs on the same token grids as SD2.1's at a 512-px tile
  ({'; '.join(a.get('attention_grids', [])) or 'grids not recorded'}), and at t = {a['timestep']} the update is
  `x0 = (z - {a['sqrt_one_minus_alpha']:.3f} eps) / {a['sqrt_alpha']:.3f}`: the UNet learns a correction of the latent.
  Components, exporters, quantizers and the focus attention are the same code as for SD2.1.
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

## In focus: does the model hand the input back?
Over the in-focus mask, each candidate against the *input* (not the teacher): PSNR against the
input; PSNR against the input low-passed at the latent grid (Pillow Lanczos downscale by the VAE
factor {a['vae_factor']} and back: the best a VAE that cannot carry texture above its latent Nyquist
frequency can return); gradient energy relative to the input's; and the moire indicator
`mean |L(out) - L(in)|^2 / mean |in - L(in)|^2` with `L` that low-pass: the share of the input's
fine texture that comes back as a false low-frequency pattern (0 when the texture is kept or
blurred away, about 1 when all of it is folded into moire; any other low-frequency error counts
too, so it is an upper bound). Family `fine_texture` (evaluation only, never trained on): a large
in-focus panel covered with 2.2-4 px stripes at random orientations (one patch at 3 px), 6-9 px
text and woven band-pass noise, in front of a far backdrop, degraded without zoom (optics blur
of at most 0.2 px, light noise, JPEG quality 85-95), so that the fine texture reaches the model.

{_in_focus_section(ev)}
{fine_figure}
## Simulated 8-bit (W8A8) per component
{_w8a8_section(metrics.get('quantization_simulation', {}))}

## Compute per tile
{_compute_section(metrics['compute']) if 'compute' in metrics else NOT_MEASURED}
{_comparison_section(metrics)}
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
  synthetic scenes only. Its VAE starts as an anti-aliased low-pass (tent + block means) with
  bilinear upsampling and had minutes to learn more: it cannot restore fine texture the way SD2.1's
  VAE can, so in-focus texture finer than its latent grid comes out softer than the input (see the
  verdict and the in-focus section) while the gain is in the out-of-focus regions.
- Evaluated against a synthetic teacher on synthetic scenes; it has never seen a real photograph.
- Generated by `python -m export.train_default finish` on {metrics['generated_utc']} from `{METRICS_FILE}`.
"""
    return write_text(weights_dir / CARD_FILE, text)


def measure_model(
    model: MagicBokeh,
    *,
    num_scenes: int = 12,
    eval_size: int = 512,
    fine_texture_scenes: int | None = None,
    families: Sequence[str] = ("dead_leaves", "street", "fine_texture"),
    training_scale: bool = True,
    w8a8: W8A8Simulator | None = None,
    w8a8_calibration_tiles: int = 2,
    w8a8_evaluation_tiles: int = 2,
    keep: int = 0,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Everything the card measures on a model: held-out sets, compute, simulated W8A8.

    Returns (``{"evaluation", "compute", "quantization_simulation"}``, kept scene results per family).
    Scenes per set: ``num_scenes`` dead_leaves (and the same seeds at the training pool's scene size
    when ``training_scale``), half as many street scenes, ``fine_texture_scenes`` (default: half as
    many) fine_texture scenes. W8A8 is simulated only when ``w8a8`` is given (the export layer's
    :func:`export.quant_simulation.simulate_w8a8`), on held-out tiles of their own seed range.
    """
    counts = {"dead_leaves": num_scenes, "street": max(1, num_scenes // 2),
              "fine_texture": fine_texture_scenes if fine_texture_scenes is not None else max(1, num_scenes // 2)}
    evaluation: dict[str, Any] = {}
    kept: dict[str, list[Any]] = {}
    for family in families:
        name, summary, kept[family] = evaluate_held_out_set(model, family, counts[family], eval_size, keep=keep)
        evaluation[name] = summary
        if family == "dead_leaves" and training_scale:
            small, _ = evaluate_model(model, list(range(HELD_OUT_FIRST_SEED, HELD_OUT_FIRST_SEED + num_scenes)),
                                      TRAINING_SCALE_SIZE, "dead_leaves")
            evaluation[f"dead_leaves (held out, {TRAINING_SCALE_SIZE} px scenes)"] = small
    if w8a8 is None:
        quant: dict[str, Any] = {"status": NOT_MEASURED, "reason": "no W8A8 simulator was given"}
    else:
        calibration = held_out_tiles(model, w8a8_calibration_tiles, QUANTIZATION_FIRST_SEED)
        measured_on = held_out_tiles(model, w8a8_evaluation_tiles, QUANTIZATION_FIRST_SEED + w8a8_calibration_tiles)
        quant = w8a8(model, calibration, measured_on)
    return {"evaluation": evaluation, "compute": compute_record(model.config), "quantization_simulation": quant}, kept


def fine_texture_figure(result: Any, factor: int, crop: int = 96, zoom: int = 3) -> tuple[Image.Image, dict[str, Any]]:
    """An in-focus crop of a fine_texture scene, enlarged ``zoom`` x with nearest neighbours (no
    smoothing that would hide moire): input, latent-low-passed input, model output."""
    mask = result.in_focus
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    cy = (rows[0] + rows[-1]) // 2 if rows.size else mask.shape[0] // 2
    cx = (cols[0] + cols[-1]) // 2 if cols.size else mask.shape[1] // 2
    y0 = int(np.clip(cy - crop // 2, 0, mask.shape[0] - crop))
    x0 = int(np.clip(cx - crop // 2, 0, mask.shape[1] - crop))
    window = (slice(y0, y0 + crop), slice(x0, x0 + crop))
    given = result.scene.degraded
    enlarge = lambda img: np.repeat(np.repeat(img[window], zoom, axis=0), zoom, axis=1)  # noqa: E731
    cells = [(enlarge(given), "input"), (enlarge(latent_lowpass(given, factor)), f"input low-passed ({factor}x grid)"),
             (enlarge(result.output), "default model")]
    return _grid([cells], crop * zoom), {"crop": crop, "zoom": zoom, "seed": result.scene.seed, "box": [y0, x0]}


def finish_default_model(run_dir: Path, weights_dir: Path, num_scenes: int = 12, eval_size: int = 512,
                         figure_scenes: int = 3, fine_texture_scenes: int | None = None,
                         w8a8: W8A8Simulator | None = None, w8a8_calibration_tiles: int = 2,
                         w8a8_evaluation_tiles: int = 2, previous_metrics: Sequence[Path] = ()) -> dict[str, Any]:
    """Checkpoint -> fp16 native weights -> evaluation of those weights -> figures -> card.

    ``previous_metrics``: metrics files of the model this one replaces (the first file wins where
    two hold a figure); the card then shows a before/after table (see :func:`comparison_rows`).
    """
    import json

    from runtime_py.checkpoints import load_native, save_native
    from runtime_py.checkpoints.native import read_native_metadata

    previous_docs = []
    for path in previous_metrics:
        try:
            previous_docs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"previous metrics {path} cannot be read: {exc}") from None
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

    measured, kept_by_family = measure_model(
        shipped, num_scenes=num_scenes, eval_size=eval_size, fine_texture_scenes=fine_texture_scenes, w8a8=w8a8,
        w8a8_calibration_tiles=w8a8_calibration_tiles, w8a8_evaluation_tiles=w8a8_evaluation_tiles, keep=figure_scenes)
    evaluation = measured["evaluation"]
    kept = kept_by_family["dead_leaves"]
    fine_figure_meta = None
    if kept_by_family.get("fine_texture"):
        image, fine_figure_meta = fine_texture_figure(kept_by_family["fine_texture"][0], shipped.config.vae_factor)
        _save_png(image, weights_dir / FIGURE_FINE_TEXTURE)

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
            "attention_grids": attention_grids(shipped.config),
            "vae_mid_block_attention": bool(getattr(shipped.config, "vae_mid_block_attention", True)),
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
        "compute": measured["compute"],
        "quantization_simulation": measured["quantization_simulation"],
        "fine_texture_figure": fine_figure_meta,
        "unseen": {"K": K, "street_size": street_size, "street_seed": UNSEEN_FAMILY_FIRST_SEED + 999,
                   "portrait": portrait is not None},
    }
    if previous_docs:
        previous = merge_metrics(previous_docs)
        metrics["comparison"] = {"sources": [Path(p).name for p in previous_metrics],
                                 "previous_generated": previous.get("generated_utc", NOT_MEASURED),
                                 "rows": comparison_rows(metrics, previous)}
    write_json(weights_dir / METRICS_FILE, metrics)
    write_model_card(weights_dir, metrics)
    return metrics
