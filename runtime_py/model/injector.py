"""The injector: a ControlNet built from the MagicBokeh UNet, fed by the defocus map.

It copies the UNet's ``conv_in``, time embedding and down blocks (no mid block, no
cross-attention) and adds one zero-convolution per skip connection (12 for SD2.1). The
conditioning embedding (diffusers' ``ControlNetConditioningEmbedding``) lives here for weight
loading but is applied by the caller, outside ``forward``, as in the published model. Attribute
names follow diffusers' ``ControlNetModel`` so that the published pickle's tensors map by name.
"""

from __future__ import annotations

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import get_down_block
from torch import nn

from .config import MagicBokehConfig
from .unet import down_block_types, remove_cross_attention, time_embedding


class Injector(nn.Module):
    def __init__(self, config: MagicBokehConfig):
        super().__init__()
        channels = config.block_out_channels
        time_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=channels[0],
            conditioning_channels=3,
            block_out_channels=config.cond_embedding_channels,
        )
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([self._zero_conv(channels[0])])
        out_ch = channels[0]
        for i, block_type in enumerate(down_block_types(config)):
            in_ch, out_ch = out_ch, channels[i]
            is_last = i == len(channels) - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=config.layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=time_dim,
                    add_downsample=not is_last,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=config.norm_num_groups,
                    cross_attention_dim=config.cross_attention_dim_of_base,
                    num_attention_heads=config.attention_heads[i],
                    attention_head_dim=out_ch // config.attention_heads[i],
                    downsample_padding=1,
                    use_linear_projection=True,
                )
            )
            for _ in range(config.layers_per_block + (0 if is_last else 1)):
                self.controlnet_down_blocks.append(self._zero_conv(out_ch))
        remove_cross_attention(self)

    @staticmethod
    def _zero_conv(channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    def embed_condition(self, defocus: torch.Tensor) -> torch.Tensor:
        """Defocus map (B, 1, T, T) in [0, K/32] -> conditioning features (B, C0, T/f, T/f)."""
        cond = (2.0 * defocus - 1.0).expand(-1, 3, -1, -1)
        return self.controlnet_cond_embedding(cond)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor | float, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb = time_embedding(self, timestep, latent)
        hidden = self.conv_in(latent) + cond
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, res = block(hidden, temb=emb)
            skips += res
        return tuple(zero(s) for zero, s in zip(self.controlnet_down_blocks, skips, strict=True))
