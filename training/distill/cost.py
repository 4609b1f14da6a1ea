"""Parameters and FLOPs per tile for teachers and students, without running the big models.

Models are built with ``accelerate.init_empty_weights`` (parameters on the ``meta`` device: no
memory, no initialisation) and run on ``meta`` inputs under ``torch.utils.flop_counter.FlopCounterMode``,
which only propagates shapes, so the SD2.1-scale teacher at 512 px is counted in about a second.
FlopCounterMode counts matrix multiplications, convolutions and attention at **2 FLOPs per
multiply-accumulate** (e.g. ``mm`` of (m, k) x (k, n) counts ``2 m k n``); element-wise work
(norms, activations, additions) is not counted, so these are lower bounds dominated by what
matters on a phone's accelerator. A test checks the convention on a plain linear layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from runtime_py.atomic import write_json, write_text
from runtime_py.model import MagicBokeh, MagicBokehConfig, get_config
from .students import FoldedMagicBokeh, architecture_of, get_student_config


@dataclass
class ComponentCost:
    params: int
    flops: int


@dataclass
class ModelCost:
    """Cost of one tile through a model whose denoiser runs ``denoiser_steps`` times."""

    name: str
    role: str
    architecture: str
    config: str
    denoiser_steps: int
    encoder: ComponentCost
    denoiser: ComponentCost
    decoder: ComponentCost

    @property
    def params(self) -> int:
        return self.encoder.params + self.denoiser.params + self.decoder.params

    @property
    def flops_per_tile(self) -> int:
        return self.encoder.flops + self.denoiser_steps * self.denoiser.flops + self.decoder.flops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"] = self.params
        data["flops_per_tile"] = self.flops_per_tile
        return data


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per MAC) of everything ``fn`` runs, as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def _count_params(*modules: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def build_on_meta(config: MagicBokehConfig | str, architecture: str = "magicbokeh") -> nn.Module:
    """A model with parameters on the meta device: shapes only, free to build at any size."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        if architecture == "folded":
            return FoldedMagicBokeh(get_student_config(config)).eval()
        if architecture == "magicbokeh":
            return MagicBokeh(get_student_config(config)).eval()
    raise ValueError(f"architecture must be 'magicbokeh' or 'folded', got {architecture!r}")


def model_cost(model: nn.Module, name: str, role: str, denoiser_steps: int = 1) -> ModelCost:
    """Params and per-call FLOPs of a model's encoder, denoiser and decoder for one tile."""
    if denoiser_steps < 1:
        raise ValueError(f"denoiser_steps must be >= 1, got {denoiser_steps}")
    cfg: MagicBokehConfig = model.config
    device = next(model.parameters()).device
    t, lt = cfg.tile, cfg.latent_tile
    rgb = torch.zeros(1, 3, t, t, device=device)
    defocus = torch.zeros(1, 1, t, t, device=device)
    in_focus = torch.zeros(1, 1, t, t, device=device)
    latent = torch.zeros(1, cfg.latent_channels, lt, lt, device=device)
    vae = model.vae
    arch = architecture_of(model)
    denoiser_parts = [model.unet, model.injector] if arch == "magicbokeh" else [model.unet, model.cond_embedding]
    encoder_parts = [vae.encoder] + ([vae.quant_conv] if vae.quant_conv is not None else [])
    decoder_parts = [vae.decoder] + ([vae.post_quant_conv] if vae.post_quant_conv is not None else [])
    return ModelCost(
        name=name,
        role=role,
        architecture=arch,
        config=cfg.name,
        denoiser_steps=denoiser_steps,
        encoder=ComponentCost(_count_params(*encoder_parts), count_flops(lambda: model.encode(rgb))),
        denoiser=ComponentCost(_count_params(*denoiser_parts),
                               count_flops(lambda: model.denoise(latent, defocus, in_focus))),
        decoder=ComponentCost(_count_params(*decoder_parts), count_flops(lambda: model.decode(latent))),
    )


@dataclass(frozen=True)
class StudentSpec:
    """A student to cost: configuration, architecture and its number of denoiser steps."""

    config: str
    architecture: str = "folded"
    steps: int = 1

    @property
    def label(self) -> str:
        return f"{self.config}/{self.architecture}/{self.steps}-step"


DEFAULT_STUDENTS: tuple[StudentSpec, ...] = (
    StudentSpec("sd21", "magicbokeh", 1),
    StudentSpec("sd21", "folded", 1),
    StudentSpec("sd21-mobile", "magicbokeh", 1),
    StudentSpec("sd21-mobile", "folded", 1),
    StudentSpec("sd21-mobile-xs", "folded", 1),
)


def cost_report(
    teacher_config: str = "sd21",
    teacher_steps: int = 4,
    students: Iterable[StudentSpec] = DEFAULT_STUDENTS,
) -> dict[str, Any]:
    """Teacher and students' params and FLOPs per tile, with ratios against the teacher."""
    teacher_cfg = get_config(teacher_config)
    teacher = model_cost(build_on_meta(teacher_cfg), f"{teacher_cfg.name}/magicbokeh/{teacher_steps}-step",
                         "teacher", teacher_steps)
    rows = [teacher]
    for spec in students:
        cfg = get_student_config(spec.config)
        if cfg.tile != teacher_cfg.tile:
            raise ValueError(f"student {spec.config!r} has {cfg.tile}-px tiles, the teacher {teacher_cfg.tile}-px")
        rows.append(model_cost(build_on_meta(cfg, spec.architecture), spec.label, "student", spec.steps))
    entries = []
    for row in rows:
        data = row.to_dict()
        data["params_vs_teacher"] = row.params / teacher.params
        data["flops_vs_teacher"] = row.flops_per_tile / teacher.flops_per_tile
        entries.append(data)
    return {
        "tile": teacher_cfg.tile,
        "flop_convention": "torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-accumulate; "
                           "matmul/conv/attention only",
        "teacher": teacher_cfg.name,
        "teacher_steps": teacher_steps,
        "models": entries,
    }


def report_markdown(report: dict[str, Any]) -> str:
    t = report["tile"]
    lines = [
        f"# Distillation cost per {t}x{t} tile",
        "",
        f"Teacher: `{report['teacher']}` sampled with {report['teacher_steps']} denoiser steps. "
        f"FLOPs: {report['flop_convention']}. Per-tile FLOPs = encoder + steps x denoiser + decoder.",
        "",
        "| model | role | steps | params enc / den / dec (M) | params total (M) | GFLOP enc / den / dec | "
        "GFLOP per tile | params vs teacher | FLOPs vs teacher |",
        "|---|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for m in report["models"]:
        p = [m[c]["params"] / 1e6 for c in ("encoder", "denoiser", "decoder")]
        f = [m[c]["flops"] / 1e9 for c in ("encoder", "denoiser", "decoder")]
        lines.append(
            f"| {m['name']} | {m['role']} | {m['denoiser_steps']} | {p[0]:.4g} / {p[1]:.4g} / {p[2]:.4g} | "
            f"{m['params'] / 1e6:.4g} | {f[0]:.4g} / {f[1]:.4g} / {f[2]:.4g} | {m['flops_per_tile'] / 1e9:.4g} | "
            f"{m['params_vs_teacher']:.3f} | {m['flops_vs_teacher']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_cost_report(report: dict[str, Any], output_dir: Path | str) -> tuple[Path, Path]:
    """Write ``cost_report.json`` and ``cost_report.md`` (atomically)."""
    out = Path(output_dir)
    json_path = write_json(out / "cost_report.json", report)
    md_path = write_text(out / "cost_report.md", report_markdown(report))
    return json_path, md_path
