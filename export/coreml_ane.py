"""Neural-Engine-friendly attention for the Core ML export: a temporary module swap.

Apple's guidance for transformers on the Neural Engine (the "split einsum" layout of their Stable
Diffusion port) is: keep activations channels-first as (B, C, 1, S), do projections as 1x1
convolutions, and compute attention one head at a time with einsums, so that no (B, heads, S, d)
transposes and no batched 4-D matmuls reach the ANE compiler. This module provides attention
processors with exactly that structure for diffusers' ``Attention`` (VAE mid-block and UNet/injector
self-attention) and for MagicBokeh's focus-aware attention, and :func:`ane_attention`, a context
manager that swaps them in for the duration of an export and restores the original processors
afterwards, so the reference model is never changed.

The focus branch uses the key-masked ("split") realisation: two softmaxes whose additive bias is a
(B, S_k, 1, 1) per-key vector, selected per query by the in-focus mask; the N x N bias is never
built and never an input. The rewritten graph is checked against the reference by parity.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from runtime_py.model.focus_attention import FocusAttnProcessor, tokens_in_focus


def _conv1x1(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``nn.Linear`` applied to channels-first (B, C, 1, S) activations as a 1x1 convolution."""
    weight = linear.weight
    return F.conv2d(x, weight.reshape(weight.shape[0], weight.shape[1], 1, 1), linear.bias)


def _lora1x1(pair: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return _conv1x1(pair[1], _conv1x1(pair[0], x))


def split_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, one head at a time, all tensors (B, C, 1, S).

    ``key_bias`` is (B, S_k, 1, 1): an additive bias per key, broadcast over queries.
    The score tensor of a head is (B, S_k, 1, S_q), softmax over the key axis (dim 1).
    """
    channels = q.shape[1]
    if channels % heads:
        raise ValueError(f"{channels} channels do not split into {heads} heads")
    d = channels // heads
    scale = d**-0.5
    outs = []
    for h in range(heads):
        if heads == 1:  # a full-range slice exports as an alias, which coremltools refuses
            qh, kh, vh = q * scale, k, v
        else:
            qh = q[:, h * d : (h + 1) * d] * scale
            kh = k[:, h * d : (h + 1) * d]
            vh = v[:, h * d : (h + 1) * d]
        scores = torch.einsum("bchq,bchk->bkhq", qh, kh)
        if key_bias is not None:
            scores = scores + key_bias
        weights = scores.softmax(dim=1)
        outs.append(torch.einsum("bkhq,bchk->bchq", weights, vh))
    return outs[0] if heads == 1 else torch.cat(outs, dim=1)


def _check_plain(attn: nn.Module, encoder_hidden_states: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    if encoder_hidden_states is not None or attention_mask is not None:
        raise ValueError("the ANE attention rewrite covers self-attention without masks only")
    for name in ("spatial_norm", "norm_q", "norm_k"):
        if getattr(attn, name, None) is not None:
            raise ValueError(f"the ANE attention rewrite does not cover attention with {name}")


class ANESelfAttnProcessor(nn.Module):
    """diffusers ``AttnProcessor2_0`` semantics (self-attention) in the (B, C, 1, S) layout."""

    def __call__(  # type: ignore[override]
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None):
        _check_plain(attn, encoder_hidden_states, attention_mask)
        residual = hidden_states
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, C, 1, HW): no transpose needed
            b, c, h, w = hidden_states.shape
            x = hidden_states.reshape(b, c, 1, h * w)
        else:  # (B, S, C) -> (B, C, 1, S)
            b, s, c = hidden_states.shape
            x = hidden_states.transpose(1, 2).unsqueeze(2)
        if attn.group_norm is not None:
            x = attn.group_norm(x)
        q, k, v = _conv1x1(attn.to_q, x), _conv1x1(attn.to_k, x), _conv1x1(attn.to_v, x)
        out = split_head_attention(q, k, v, attn.heads)
        out = _conv1x1(attn.to_out[0], out)
        out = attn.to_out[1](out)
        if hidden_states.ndim == 4:
            out = out.reshape(b, -1, h, w)
        else:
            out = out.squeeze(2).transpose(1, 2)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class ANEFocusAttnProcessor(nn.Module):
    """MagicBokeh's focus-aware attention (same maths as ``FocusAttnProcessor``) in the ANE layout."""

    def __init__(self, original: FocusAttnProcessor):
        super().__init__()
        self.original = original  # holds the focus LoRA weights; nothing is copied

    def __call__(  # type: ignore[override]
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        in_focus: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, in_focus=in_focus)

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, in_focus: torch.Tensor | None = None) -> torch.Tensor:
        if in_focus is None:
            raise ValueError("focus attention needs the tile's in-focus mask (in_focus=...)")
        proc = self.original
        b, s, c = hidden_states.shape
        x = hidden_states.transpose(1, 2).unsqueeze(2)  # (B, C, 1, S)
        q, k, v = _conv1x1(attn.to_q, x), _conv1x1(attn.to_k, x), _conv1x1(attn.to_v, x)
        h1 = split_head_attention(q, k, v, attn.heads)

        scale = proc.scale
        q2 = q + scale * _lora1x1(proc.to_q_lora, x)
        k2 = k + scale * _lora1x1(proc.to_k_lora, x)
        v2 = v + scale * _lora1x1(proc.to_v_lora, x)
        m = tokens_in_focus(in_focus, s).to(hidden_states.dtype)  # (B, S), 1 = in focus
        m_key = m[:, :, None, None]  # (B, S_k, 1, 1)
        to_in = split_head_attention(q2, k2, v2, attn.heads, key_bias=(1.0 - m_key) * proc.mask_bias)
        to_out = split_head_attention(q2, k2, v2, attn.heads, key_bias=m_key * proc.mask_bias)
        m_query = m[:, None, None, :]  # (B, 1, 1, S_q)
        h2 = m_query * to_in + (1.0 - m_query) * to_out

        out = attn.to_out[1](_conv1x1(attn.to_out[0], h1))
        out = out + scale * _lora1x1(proc.to_out_lora, h2)
        return out.squeeze(2).transpose(1, 2)


def _attention_modules(root: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [m for m in root.modules() if isinstance(m, Attention)]


@contextlib.contextmanager
def ane_attention(root: nn.Module) -> Iterator[int]:
    """Swap every attention processor under ``root`` for its ANE form; restore on exit.

    Yields the number of processors swapped. Attention that the rewrite does not cover (cross
    attention, masks, q/k norms) raises at trace time with a message saying so.
    """
    swapped: list[tuple[nn.Module, object]] = []
    try:
        for attn in _attention_modules(root):
            original = attn.processor
            if isinstance(original, (ANESelfAttnProcessor, ANEFocusAttnProcessor)):
                continue
            replacement = ANEFocusAttnProcessor(original) if isinstance(original, FocusAttnProcessor) else ANESelfAttnProcessor()
            attn.set_processor(replacement)
            swapped.append((attn, original))
        yield len(swapped)
    finally:
        for attn, original in reversed(swapped):
            attn.set_processor(original)
