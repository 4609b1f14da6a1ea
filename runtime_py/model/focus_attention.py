"""Focus-aware masked self-attention for the UNet's up blocks.

MagicBokeh replaces the processor of every ``attn1`` in the up blocks: beside the ordinary
self-attention ``h1`` a second branch ``h2`` runs with a focus LoRA on q/k/v and an additive mask
that keeps in-focus and out-of-focus tokens from attending to each other (bias ``-100`` between
groups). The output is ``to_out(h1) + s * lora_out(h2)``.

Two numerically equivalent realisations are provided:

* ``"bias"``: the literal published form, an N x N bias built inside the graph from the mask.
* ``"split"``: two key-masked attentions (in-focus queries over in-focus keys, the rest over the
  rest), selected per query by the mask. Row for row it applies exactly the same bias, so it is
  not an approximation; it never materialises an N x N tensor, which helps mobile backends.

Neither needs the N x N mask as an input: the graph derives it from the tile's in-focus mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FOCUS_IMPLEMENTATIONS = ("bias", "split")


def _lora_pair(dim: int, rank: int) -> nn.Sequential:
    """Down (dim -> rank) then up (rank -> dim), bias-free: state-dict names ``.0`` / ``.1``."""
    return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))


def tokens_in_focus(in_focus: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Nearest-resize a (B, 1, T, T) in-focus mask to a square token grid, flattened to (B, N).

    For an integer reduction factor f, nearest interpolation picks pixel ``i * f``: a strided slice
    is exactly ``F.interpolate(mode="nearest")`` and exports as a static slice on every backend.
    """
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"focus attention needs a square token grid, got {num_tokens} tokens")
    tile = in_focus.shape[-1]
    if in_focus.shape[-2] != tile or tile % side:
        raise ValueError(
            f"in-focus mask of shape {tuple(in_focus.shape)} cannot be nearest-resized to a "
            f"{side}x{side} token grid by an integer factor"
        )
    factor = tile // side
    return in_focus[:, 0, ::factor, ::factor].reshape(in_focus.shape[0], num_tokens)


class FocusAttnProcessor(nn.Module):
    """Processor for an up-block ``attn1`` carrying the focus LoRA (alpha 1, scale 1 / rank)."""

    def __init__(self, dim: int, rank: int, mask_bias: float = -100.0, implementation: str = "bias"):
        super().__init__()
        self.rank = rank
        self.scale = 1.0 / rank
        self.mask_bias = float(mask_bias)
        self.implementation = implementation
        self.to_q_lora = _lora_pair(dim, rank)
        self.to_k_lora = _lora_pair(dim, rank)
        self.to_v_lora = _lora_pair(dim, rank)
        self.to_out_lora = _lora_pair(dim, rank)

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in FOCUS_IMPLEMENTATIONS:
            raise ValueError(f"focus attention implementation must be one of {FOCUS_IMPLEMENTATIONS}")
        self._implementation = value

    # diffusers' Attention inspects the processor's __call__ signature to decide which
    # cross_attention_kwargs to forward; nn.Module.__call__ hides it, so spell it out here.
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
        if hidden_states.ndim != 3:
            raise ValueError("focus attention expects (batch, tokens, channels) hidden states")
        batch, num_tokens, _ = hidden_states.shape
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, num_tokens, heads, -1).transpose(1, 2)

        def merge_heads(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch, num_tokens, -1)

        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        h1 = merge_heads(F.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v)))

        s = self.scale
        q2 = split_heads(q + s * self.to_q_lora(hidden_states))
        k2 = split_heads(k + s * self.to_k_lora(hidden_states))
        v2 = split_heads(v + s * self.to_v_lora(hidden_states))
        m = tokens_in_focus(in_focus, num_tokens).to(hidden_states.dtype)  # (B, N), 1 = in focus
        if self._implementation == "bias":
            # |m_q - m_k| is 1 exactly where one of the pair is in focus (m is 0 / 1): two N x N
            # temporaries instead of five, the same values bit for bit.
            different = (m[:, None, :, None] - m[:, None, None, :]).abs()
            h2 = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=different * self.mask_bias)
        else:
            m_k = m[:, None, None, :]
            to_in = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=(1.0 - m_k) * self.mask_bias)
            to_out = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=m_k * self.mask_bias)
            m_q = m[:, None, :, None]
            h2 = m_q * to_in + (1.0 - m_q) * to_out
        h2 = merge_heads(h2)

        out = attn.to_out[0](h1)
        out = attn.to_out[1](out)
        return out + s * self.to_out_lora(h2)
