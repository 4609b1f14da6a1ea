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

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from runtime_py.atomic import write_json, write_text
from runtime_py.components import TILE_COMPONENTS
from runtime_py.model import MagicBokeh, MagicBokehConfig, get_config
from .students import FoldedMagicBokeh, architecture_of, get_student_config

FLOP_CONVENTION = ("torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-accumulate; "
                   "matmul, convolution and attention only (norms and activations not counted)")


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


# -- per-component compute at a tile: parameters, FLOPs, activation memory, attention sizes ------------
#
# Activation bytes are counted by watching a meta run op by op (benchmarks.compute reports them; the
# default model's card records them, so they live here, where both may import them):
#
# * ``activation_bytes_written``: bytes of every tensor an op produces (views and in-place results
#   excluded): the memory *traffic* a runtime without fusion would write;
# * ``peak_live_activation_bytes``: the largest total of produced tensors alive at one time: a lower
#   bound on the working memory a runtime needs beside the weights (a fusing runtime can do better
#   on traffic, not on this peak by much).

# Ops that return a view of their input without saying so in their schema (``_unsafe_view`` is
# ``view`` without autograd's alias tracking): counting them would count the same bytes twice.
_UNMARKED_VIEWS = frozenset({torch.ops.aten._unsafe_view.default})


class ActivationCounter(TorchDispatchMode):
    """Counts bytes of the tensors ops produce, and the peak of those alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.live = 0
        self.peak_live = 0
        self.largest = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs, _ = tree_flatten(out)
        for index, tensor in enumerate(outputs):
            if not isinstance(tensor, torch.Tensor):
                continue
            schema = returns[index] if index < len(returns) else None
            if (schema is not None and schema.alias_info is not None) or func in _UNMARKED_VIEWS:
                continue  # a view or an in-place result: no new memory
            nbytes = tensor.numel() * tensor.element_size()
            self.written += nbytes
            self.largest = max(self.largest, nbytes)
            self.live += nbytes
            self.peak_live = max(self.peak_live, self.live)
            weakref.finalize(tensor, self._release, nbytes)
        return out


def count_activations(fn: Callable[[], Any]) -> dict[str, int]:
    """Activation bytes of everything ``fn`` runs (see the comment above :class:`ActivationCounter`)."""
    counter = ActivationCounter()
    with counter, torch.no_grad():
        result = fn()
    del result
    return {"activation_bytes_written": int(counter.written), "peak_live_activation_bytes": int(counter.peak_live),
            "largest_activation_bytes": int(counter.largest)}


def _tokens(tensor: Any) -> int:
    """Sequence length of an attention input: H * W of an (B, C, H, W) map, N of an (B, N, C) sequence."""
    if not isinstance(tensor, torch.Tensor):
        return 0
    return int(tensor.shape[-2] * tensor.shape[-1]) if tensor.ndim == 4 else int(tensor.shape[1])


def count_attention_tokens(model: nn.Module, fn: Callable[[], Any]) -> int:
    """The most tokens any attention layer of ``model`` attends over (queries or keys) while ``fn`` runs.

    Measured, not derived from the configuration: a forward pre-hook on every diffusers
    ``Attention`` module (VAE mid blocks, UNet and injector transformers; the focus attention is
    a processor of those modules) reads the shape of what it is given. 0 means no attention ran.
    """
    from diffusers.models.attention_processor import Attention

    largest = 0

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        nonlocal largest
        queries = args[0] if args else kwargs.get("hidden_states")
        keys = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        n_q = _tokens(queries)
        largest = max(largest, n_q, _tokens(keys) if keys is not None else n_q)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad():
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return largest


def component_compute(config: MagicBokehConfig | str, tile: int | None = None) -> dict[str, dict[str, Any]]:
    """Params, FLOPs, activation bytes and attention tokens per tile component, at ``tile`` px
    (default: the config's). ``tile_total`` sums params, FLOPs and bytes written, and takes the
    largest peak and token count."""
    config = get_config(config)
    if tile is not None and tile != config.tile:
        config = config.replace(tile=int(tile), stride=min(config.stride, int(tile)))
    model = build_on_meta(config)
    cost = model_cost(model, config.name, "benchmark")
    t, lt = config.tile, config.latent_tile
    meta = {"device": "meta"}
    rgb = torch.zeros(1, 3, t, t, **meta)
    defocus = torch.zeros(1, 1, t, t, **meta)
    in_focus = torch.zeros(1, 1, t, t, **meta)
    latent = torch.zeros(1, config.latent_channels, lt, lt, **meta)
    runs = {
        "encoder": lambda: model.encode(rgb),
        "denoiser": lambda: model.denoise(latent, defocus, in_focus),
        "decoder": lambda: model.decode(latent),
    }
    out: dict[str, dict[str, Any]] = {}
    for name in TILE_COMPONENTS:
        part = getattr(cost, name)
        out[name] = {"params": int(part.params), "flops": int(part.flops), **count_activations(runs[name]),
                     "max_attention_tokens": count_attention_tokens(model, runs[name])}
    out["tile_total"] = {
        "params": sum(out[n]["params"] for n in TILE_COMPONENTS),
        "flops": sum(out[n]["flops"] for n in TILE_COMPONENTS),
        "activation_bytes_written": sum(out[n]["activation_bytes_written"] for n in TILE_COMPONENTS),
        "peak_live_activation_bytes": max(out[n]["peak_live_activation_bytes"] for n in TILE_COMPONENTS),
        "max_attention_tokens": max(out[n]["max_attention_tokens"] for n in TILE_COMPONENTS),
    }
    return out
