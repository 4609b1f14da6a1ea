"""Graph preparation shared by every exporter (ExecuTorch, Core ML, ONNX/QNN).

Every exporter starts from the same place: a deployable :class:`~runtime_py.components.Component`
in eval mode, without gradients, with the focus-attention realisation chosen for the target, its
static example inputs, and a ``torch.export`` program. Doing this once here means that a target
never exports a graph that differs from what the others export for a reason nobody chose, and that
an export failure always names the component (a bare torch.export trace names none).

The focus-attention choice is per target because the two realisations are numerically the same
(see ``runtime_py.model.focus_attention``) but cost differently on each runtime: ``"bias"`` builds
an N x N additive mask inside the graph (one attention, large intermediate: 4096 x 4096 per head at
the SD2.1 top level), ``"split"`` runs two key-masked attentions selected per query (twice the
attention arithmetic, no N x N tensor besides the scores themselves). Accelerators with tight
on-chip memory (ANE, Hexagon) prefer ``"split"``; XNNPACK on a phone CPU computes the scores anyway
and runs one attention faster than two, so it gets ``"bias"``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from runtime_py.components import Component
from runtime_py.model.focus_attention import FOCUS_IMPLEMENTATIONS

#: The export targets the toolkit knows, with the focus-attention realisation each one gets.
DEFAULT_FOCUS_IMPLEMENTATION: dict[str, str] = {
    "xnnpack": "bias",
    "xnnpack-int8": "bias",
    "coreml": "split",
    "qnn": "split",
    "onnx": "split",
    "torch": "bias",
}


#: Export-time rewrites per target (see :func:`export_rewrites`): XNNPACK has no group/layer-norm or
#: fused attention kernel, so those ops would fall back to ExecuTorch's portable CPU kernels and cut
#: the graph into dozens of small delegated pieces (slow on the phone and slow to lower). Core ML and
#: QNN have native kernels for all three and get the ops untouched.
DEFAULT_REWRITES: dict[str, tuple[str, ...]] = {
    "xnnpack": ("group_norm", "layer_norm", "attention"),
    "xnnpack-int8": ("attention",),  # norms stay whole: unannotated, they run in fp32 between int8 ops
}
REWRITES = ("group_norm", "layer_norm", "attention")


class ExportError(RuntimeError):
    """A component could not be exported/lowered; the message names the component and the stage."""


def focus_implementation_for(target: str, override: str | None = None) -> str:
    """The focus-attention realisation to export for ``target`` (``override`` wins when given)."""
    if override is not None:
        if override not in FOCUS_IMPLEMENTATIONS:
            raise ValueError(f"focus implementation must be one of {FOCUS_IMPLEMENTATIONS}, got {override!r}")
        return override
    try:
        return DEFAULT_FOCUS_IMPLEMENTATION[target]
    except KeyError:
        raise ValueError(
            f"unknown export target {target!r}; known targets: {sorted(DEFAULT_FOCUS_IMPLEMENTATION)}"
        ) from None


def _focus_owner(component: nn.Module) -> nn.Module | None:
    """The module whose ``set_focus_implementation`` governs this component (None: no focus attention)."""
    model = getattr(component, "model", None)
    if model is not None and hasattr(model, "set_focus_implementation"):
        return model
    if hasattr(component, "set_focus_implementation"):
        return component
    return None


def current_focus_implementation(component: nn.Module) -> str | None:
    owner = _focus_owner(component)
    if owner is None:
        return None
    impls = {proc.implementation for proc in owner.focus_processors().values()}
    return impls.pop() if len(impls) == 1 else None


@contextlib.contextmanager
def focus_implementation(component: nn.Module, implementation: str | None) -> Iterator[None]:
    """Temporarily set the focus-attention realisation of the model behind ``component``.

    Temporary because the tile components share one model object with the torch reference: the
    exported graph is captured inside the block, and the reference keeps what it had afterwards.
    """
    owner = _focus_owner(component)
    if owner is None or implementation is None:
        yield
        return
    previous = {name: proc.implementation for name, proc in owner.focus_processors().items()}
    owner.set_focus_implementation(implementation)
    try:
        yield
    finally:
        for name, proc in owner.focus_processors().items():
            proc.implementation = previous[name]


# -- export-time rewrites ---------------------------------------------------------------------------
#
# Each one is the same arithmetic as the torch op it replaces, written with ops the target's
# delegate has: means over the two innermost axes of a 4-D view (XNNPACK's global average pooling),
# rsqrt, mul/add with broadcasting, batched matmul and a last-axis softmax. They are applied only
# while torch.export traces (the reference model is untouched) and parity is measured on the result.


MEAN_ROW = 1024
"""Longest run a rewritten mean sums in one pass (see :func:`_group_mean`)."""


def _group_mean(grouped: torch.Tensor) -> torch.Tensor:
    """Mean of (B, G, C/G, L) over its last two axes, in two passes: rows of at most ``MEAN_ROW``
    elements, then the row means. A one-pass global average pool over a whole group (a million
    elements for a 512-px tile) accumulates float32 rounding to about 1e-3 of the result in
    XNNPACK, which the VAE decoder's last GroupNorm turns into a 60 dB output error; two passes of
    at most ~1000 terms keep it near float32 precision. Both passes are 4-D means over the two
    innermost axes, the form XNNPACK delegates."""
    batch, groups, per_group, length = grouped.shape
    row = length
    while row > MEAN_ROW and row % 2 == 0:
        row //= 2
    rows = grouped.reshape(batch * groups * per_group, length // row, row, 1)
    row_means = rows.mean(dim=(2, 3), keepdim=True)
    return row_means.reshape(batch, groups, -1, 1).mean(dim=(2, 3), keepdim=True)


def _group_norm_4d(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    batch, channels = x.shape[0], x.shape[1]
    grouped = x.reshape(batch, num_groups, channels // num_groups, -1)
    mean = _group_mean(grouped)
    centred = grouped - mean
    var = _group_mean(centred * centred)
    y = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    affine_shape = (1, channels) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    return y


def _layer_norm_4d(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    inner = 1
    for size in normalized_shape:
        inner *= int(size)
    rows = x.reshape(1, -1, inner, 1)
    mean = rows.mean(dim=(2, 3), keepdim=True)
    centred = rows - mean
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    y = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _attention_bmm(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> torch.Tensor:
    if dropout_p != 0.0 or is_causal or enable_gqa or query.ndim != 4:
        raise ExportError("the attention rewrite handles 4-D, non-causal attention without dropout only")
    batch, heads, tokens, dim = query.shape
    keys = key.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    q = (query * scale).reshape(batch * heads, tokens, dim)
    k = key.reshape(batch * heads, keys, dim).transpose(1, 2)
    scores = torch.bmm(q, k)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            raise ExportError("the attention rewrite takes additive float masks only")
        scores = (scores.reshape(batch, heads, tokens, keys) + attn_mask).reshape(batch * heads, tokens, keys)
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, value.reshape(batch * heads, keys, value.shape[-1]))
    return out.reshape(batch, heads, tokens, value.shape[-1])


_REWRITE_FUNCTIONS = {
    "group_norm": ("group_norm", _group_norm_4d),
    "layer_norm": ("layer_norm", _layer_norm_4d),
    "attention": ("scaled_dot_product_attention", _attention_bmm),
}


def rewrites_for(target: str, override: Sequence[str] | None = None) -> tuple[str, ...]:
    """The export-time rewrites a target gets (``override`` wins; () turns them off)."""
    chosen = tuple(override) if override is not None else DEFAULT_REWRITES.get(target, ())
    unknown = [r for r in chosen if r not in REWRITES]
    if unknown:
        raise ValueError(f"unknown export rewrites {unknown}; known: {list(REWRITES)}")
    return chosen


@contextlib.contextmanager
def export_rewrites(names: Sequence[str]) -> Iterator[None]:
    """Temporarily route ``torch.nn.functional`` ops through their delegate-friendly forms.

    ``nn.GroupNorm``/``nn.LayerNorm`` and diffusers' attention processors look these functions
    up on ``torch.nn.functional`` at call time, so the trace records the rewritten arithmetic.
    """
    saved = {}
    try:
        for name in names:
            attr, fn = _REWRITE_FUNCTIONS[name]
            saved[attr] = getattr(F, attr)
            setattr(F, attr, fn)
        yield
    finally:
        for attr, fn in saved.items():
            setattr(F, attr, fn)


def prepare_component(component: Component) -> Component:
    """Eval mode and no gradients: dropout off, no autograd state in the exported graph."""
    if not isinstance(component, nn.Module):
        raise TypeError(f"expected a Component (nn.Module), got {type(component).__name__}")
    component.eval()
    for param in component.parameters():
        param.requires_grad_(False)
    return component


def static_example_inputs(component: Component, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs with exactly the declared static shapes (every exporter traces these)."""
    inputs = component.example_inputs(seed)
    specs = component.input_specs()
    for spec, tensor in zip(specs, inputs):
        if tuple(tensor.shape) != tuple(spec.shape):
            raise ExportError(
                f"component {component.name!r}: example input {spec.name!r} has shape {tuple(tensor.shape)}, "
                f"declared {tuple(spec.shape)}"
            )
    return tuple(t.to(torch.float32) for t in inputs)


def check_inputs(component: Component, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Refuse inputs that do not match the component's declared specs, naming the offending one."""
    specs = component.input_specs()
    if len(inputs) != len(specs):
        raise ExportError(
            f"component {component.name!r} takes {len(specs)} inputs ({[s.name for s in specs]}), got {len(inputs)}"
        )
    out = []
    for spec, tensor in zip(specs, inputs):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor)
        if tuple(tensor.shape) != tuple(spec.shape):
            raise ExportError(
                f"component {component.name!r}: input {spec.name!r} has shape {tuple(tensor.shape)}, declared {tuple(spec.shape)}"
            )
        out.append(tensor.to(torch.float32))
    return tuple(out)


def export_component(
    component: Component,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    target: str = "xnnpack",
    focus: str | None = None,
    rewrites: Sequence[str] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` one component for ``target``, with an error that names it on failure."""
    prepare_component(component)
    inputs = static_example_inputs(component) if example_inputs is None else check_inputs(component, example_inputs)
    impl = focus_implementation_for(target, focus)
    chosen = rewrites_for(target, rewrites)
    try:
        with focus_implementation(component, impl), export_rewrites(chosen), torch.no_grad():
            return torch.export.export(component, inputs, strict=False)
    except Exception as exc:  # torch.export raises many types; all become one clear message
        raise ExportError(
            f"torch.export failed for component {component.name!r} (target {target}, focus attention {impl!r}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


@dataclass
class PreparedComponent:
    """One component ready for a backend's lowering: its program and what was chosen for it."""

    name: str
    component: Component
    program: torch.export.ExportedProgram
    example_inputs: tuple[torch.Tensor, ...]
    target: str
    focus_implementation: str | None
    export_seconds: float
    notes: dict[str, object] = field(default_factory=dict)


def prepare_for_export(
    components: Mapping[str, Component],
    *,
    target: str,
    focus: str | None = None,
    names: Sequence[str] | None = None,
    rewrites: Sequence[str] | None = None,
) -> dict[str, PreparedComponent]:
    """Export the named components (all when None) for ``target``; fail fast on the first that cannot."""
    names = list(components) if names is None else list(names)
    unknown = [n for n in names if n not in components]
    if unknown:
        raise ValueError(f"unknown components {unknown}; available: {sorted(components)}")
    prepared: dict[str, PreparedComponent] = {}
    for name in names:
        component = components[name]
        start = time.perf_counter()
        inputs = static_example_inputs(prepare_component(component))
        program = export_component(component, inputs, target=target, focus=focus, rewrites=rewrites)
        has_focus = _focus_owner(component) is not None and name == "denoiser"
        prepared[name] = PreparedComponent(
            name=name,
            component=component,
            program=program,
            example_inputs=inputs,
            target=target,
            focus_implementation=focus_implementation_for(target, focus) if has_focus else None,
            export_seconds=time.perf_counter() - start,
            notes={"rewrites": list(rewrites_for(target, rewrites))},
        )
    return prepared


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."
