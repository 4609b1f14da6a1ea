"""Merge PEFT LoRA adapters into plain weights.

A deployed graph should not carry LoRA branches: for a Linear ``W x + s * B(A x)`` equals
``(W + s * B @ A) x``, and for a Conv2d whose ``lora_A`` is a conv with the base kernel, stride
and padding and whose ``lora_B`` is a 1x1 conv (PEFT's layout), ``conv(x, W) + s * conv(conv(x, A), B)``
equals ``conv(x, W + s * (B.flatten(1) @ A.flatten(1)).view_as(W))``. Merging is exact up to
float rounding; it is done in float64 and rounded once to the weight's dtype.

PEFT names tensors ``<module>.base_layer.<weight|bias>`` (the wrapped layer) and
``<module>.lora_A.<adapter>.weight`` / ``<module>.lora_B.<adapter>.weight``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .errors import CheckpointMismatchError, CorruptCheckpointError, short_repr

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")
_BASE_KEY = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>[^.]+)$")
# PEFT variants whose tensors cannot be merged as a plain low-rank update.
_UNSUPPORTED = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_dropout")


@dataclass
class LoraAdapter:
    """One adapter on one module: ``delta = scale * B @ A`` (flattened for convolutions)."""

    module: str
    adapter: str
    down: torch.Tensor  # lora_A: (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # lora_B: (out, rank) or (out, rank, 1, 1)
    keys: tuple[str, str]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class PeftStateDict:
    """A PEFT-style state dict split into adapters, base-layer replacements and everything else."""

    adapters: dict[tuple[str, str], LoraAdapter] = field(default_factory=dict)  # (module, adapter) -> pair
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # plain model name -> tensor
    base_keys: dict[str, str] = field(default_factory=dict)  # plain model name -> source key
    other: dict[str, torch.Tensor] = field(default_factory=dict)  # keys that are neither


def split_peft_state_dict(state: Mapping[str, torch.Tensor], source: str) -> PeftStateDict:
    """Parse PEFT names. ``<m>.base_layer.<p>`` becomes the model tensor ``<m>.<p>``."""
    out = PeftStateDict()
    halves: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        if not isinstance(key, str):
            raise CorruptCheckpointError(f"{source} has a non-string key {short_repr(key)}")
        if not isinstance(tensor, torch.Tensor):
            raise CorruptCheckpointError(f"{source}[{short_repr(key)}] is a {type(tensor).__name__}, expected a tensor")
        if any(f".{part}." in f".{key}." for part in _UNSUPPORTED):
            raise CheckpointMismatchError(
                f"{source}[{short_repr(key)}] is a PEFT tensor this loader cannot merge (embedding LoRA / DoRA / dropout state)"
            )
        lora = _LORA_KEY.match(key)
        if lora:
            halves.setdefault((lora["module"], lora["adapter"]), {})[lora["which"]] = (key, tensor)
            continue
        base = _BASE_KEY.match(key)
        if base:
            name = f"{base['module']}.{base['param']}"
            if name in out.base:
                raise CorruptCheckpointError(f"{source} holds {name} twice ({out.base_keys[name]!r} and {short_repr(key)})")
            out.base[name], out.base_keys[name] = tensor, key
            continue
        out.other[key] = tensor
    for (module, adapter), pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise CheckpointMismatchError(f"{source}: {module} has no {missing} for adapter {adapter!r}")
        (key_a, down), (key_b, up) = pair["A"], pair["B"]
        out.adapters[(module, adapter)] = LoraAdapter(module, adapter, down, up, (key_a, key_b))
    return out


def check_lora_shapes(weight: torch.Tensor, lora: LoraAdapter, source: str) -> None:
    """Raise a named error unless ``B @ A`` (flattened for convs) has exactly ``weight``'s shape."""
    down, up = lora.down, lora.up
    if weight.ndim == 2:
        if down.ndim != 2 or up.ndim != 2:
            raise CheckpointMismatchError(
                f"{source}: LoRA of linear layer {lora.module} has lora_A {tuple(down.shape)} / "
                f"lora_B {tuple(up.shape)}, expected 2-D matrices"
            )
    elif weight.ndim == 4:
        if down.ndim != 4 or up.ndim != 4 or tuple(up.shape[2:]) != (1, 1):
            raise CheckpointMismatchError(
                f"{source}: LoRA of conv layer {lora.module} has lora_A {tuple(down.shape)} / "
                f"lora_B {tuple(up.shape)}, expected a conv lora_A and a 1x1 conv lora_B"
            )
    else:
        raise CheckpointMismatchError(f"{source}: cannot merge a LoRA into {lora.module} (a {weight.ndim}-D weight)")
    if up.shape[1] != lora.rank or (up.shape[0], *down.shape[1:]) != tuple(weight.shape):
        raise CheckpointMismatchError(
            f"{source}: LoRA {lora.adapter!r} of {lora.module} (lora_A {tuple(down.shape)}, lora_B "
            f"{tuple(up.shape)}) does not fit the weight of shape {tuple(weight.shape)}"
        )


def lora_delta(weight: torch.Tensor, lora: LoraAdapter, scale: float, source: str) -> torch.Tensor:
    """``scale * B @ A`` in float64, shaped like ``weight``."""
    check_lora_shapes(weight, lora, source)
    return (lora.up.double().flatten(1) @ lora.down.double().flatten(1)).reshape(weight.shape) * scale


def merge_into(weight: torch.Tensor, adapters: list[LoraAdapter], scale: float, source: str) -> torch.Tensor:
    """``weight + sum(scale * B @ A)`` accumulated in float64, rounded once to ``weight.dtype``."""
    for lora in adapters:
        check_lora_shapes(weight, lora, source)
    merged = weight.double().reshape(weight.shape[0], -1)
    for lora in adapters:  # one fused multiply-add per adapter (this is most of a conversion's time)
        merged.addmm_(lora.up.double().flatten(1), lora.down.double().flatten(1), alpha=scale)
    return merged.reshape(weight.shape).to(weight.dtype)
