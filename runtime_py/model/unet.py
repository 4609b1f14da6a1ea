"""The MagicBokeh denoising UNet: SD2.1's UNet without mid block and without cross-attention.

Built from diffusers' ``UNet2DConditionModel`` so that an SD2.1 ``unet/`` folder's weights load by
name; ``attn2`` and its norm are removed from every transformer block and the up blocks' ``attn1``
get the focus-aware processor. The forward pass is written here (not diffusers' ``forward``)
because the model takes the injector's residuals and the tile's in-focus mask and nothing else.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .config import MagicBokehConfig
from .focus_attention import FocusAttnProcessor


def down_block_types(config: MagicBokehConfig) -> tuple[str, ...]:
    """diffusers down-block types, finest level first (SD2.1: attention at all but the coarsest)."""
    if len(config.attention_levels) != len(config.block_out_channels):
        raise ValueError(
            f"attention_levels has {len(config.attention_levels)} entries for "
            f"{len(config.block_out_channels)} UNet levels"
        )
    return tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels)


def up_block_types(config: MagicBokehConfig) -> tuple[str, ...]:
    """diffusers up-block types, coarsest level first (the down blocks mirrored)."""
    return tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels))


def unet_diffusers_config(config: MagicBokehConfig) -> dict:
    """The diffusers config that builds the UNet (mid block off; attn2 is removed afterwards)."""
    return dict(
        sample_size=config.latent_tile,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=down_block_types(config),
        up_block_types=up_block_types(config),
        mid_block_type=None,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_heads,
        cross_attention_dim=config.cross_attention_dim_of_base,
        norm_num_groups=config.norm_num_groups,
        use_linear_projection=True,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def remove_cross_attention(model: nn.Module) -> int:
    """Delete ``attn2`` and its norm from every diffusers transformer block; returns the count."""
    removed = 0
    for module in model.modules():
        if hasattr(module, "attn2") and hasattr(module, "attn1") and module.attn2 is not None:
            module.attn2 = None
            module.norm2 = None
            removed += 1
    return removed


def focus_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The up blocks' ``attn1`` modules, by name (9 for SD2.1's topology)."""
    return {
        name: module
        for name, module in unet.named_modules()
        if name.startswith("up_blocks.") and name.endswith(".attn1")
    }


def build_unet(config: MagicBokehConfig) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(**unet_diffusers_config(config))
    remove_cross_attention(unet)
    for attn in focus_attention_layers(unet).values():
        dim = attn.to_q.in_features
        attn.set_processor(FocusAttnProcessor(dim, config.focus_rank, config.focus_mask_bias))
    return unet


def time_embedding(model: nn.Module, timestep: torch.Tensor | float, reference: torch.Tensor) -> torch.Tensor:
    """Sinusoidal projection + MLP of a scalar timestep, shaped (batch, channels)."""
    t = torch.as_tensor(timestep, dtype=reference.dtype, device=reference.device).reshape(-1)
    t = t.expand(reference.shape[0])
    proj = model.time_proj(t).to(reference.dtype)
    return model.time_embedding(proj)


def unet_forward(
    unet: UNet2DConditionModel,
    latent: torch.Tensor,
    timestep: torch.Tensor | float,
    down_residuals: tuple[torch.Tensor, ...] | None,
    in_focus: torch.Tensor,
    input_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict noise.

    ``down_residuals`` are the injector's, added to the skip connections; ``input_features`` (a
    folded student's conditioning) are added to ``conv_in``'s output. Either may be None.
    """
    emb = time_embedding(unet, timestep, latent)
    hidden = unet.conv_in(latent)
    if input_features is not None:
        hidden = hidden + input_features
    skips: tuple[torch.Tensor, ...] = (hidden,)
    for block in unet.down_blocks:
        hidden, res = block(hidden, temb=emb)
        skips += res
    if down_residuals is not None:
        if len(skips) != len(down_residuals):
            raise ValueError(f"injector gave {len(down_residuals)} residuals, the UNet has {len(skips)} skips")
        skips = tuple(s + r for s, r in zip(skips, down_residuals))

    focus_kwargs = {"in_focus": in_focus}
    for block in unet.up_blocks:
        res = skips[-len(block.resnets):]
        skips = skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            hidden = block(hidden, res_hidden_states_tuple=res, temb=emb, cross_attention_kwargs=focus_kwargs)
        else:
            hidden = block(hidden, res_hidden_states_tuple=res, temb=emb)
    hidden = unet.conv_norm_out(hidden)
    hidden = unet.conv_act(hidden)
    return unet.conv_out(hidden)
