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
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
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
) -> torch.export.ExportedProgram:
    """``torch.export.export`` one component for ``target``, with an error that names it on failure."""
    prepare_component(component)
    inputs = static_example_inputs(component) if example_inputs is None else check_inputs(component, example_inputs)
    impl = focus_implementation_for(target, focus)
    try:
        with focus_implementation(component, impl), torch.no_grad():
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
        program = export_component(component, inputs, target=target, focus=focus)
        has_focus = _focus_owner(component) is not None and name == "denoiser"
        prepared[name] = PreparedComponent(
            name=name,
            component=component,
            program=program,
            example_inputs=inputs,
            target=target,
            focus_implementation=focus_implementation_for(target, focus) if has_focus else None,
            export_seconds=time.perf_counter() - start,
        )
    return prepared


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."
