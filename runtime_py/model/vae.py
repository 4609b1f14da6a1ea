"""The MagicBokeh VAE: diffusers' ``AutoencoderKL`` with SD2.1's layout.

Only the encoder carries MagicBokeh's LoRA (merged at load time); the decoder is SD2.1's own.
Deployment encodes to the latent distribution's mean (the published code samples it).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from .config import MagicBokehConfig


def vae_diffusers_config(config: MagicBokehConfig) -> dict:
    levels = len(config.vae_block_out_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_block_out_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_num_groups,
        mid_block_add_attention=config.vae_mid_block_attention,
        sample_size=config.tile,
        scaling_factor=config.latent_scale,
    )


def build_vae(config: MagicBokehConfig) -> AutoencoderKL:
    return AutoencoderKL(**vae_diffusers_config(config))


def encode_mean(vae: AutoencoderKL, rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [-1, 1] -> unscaled latent mean (no sampling)."""
    moments = vae.encoder(rgb)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    mean, _logvar = torch.chunk(moments, 2, dim=1)
    return mean


def decode(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    """Unscaled latent -> RGB (unclamped)."""
    if vae.post_quant_conv is not None:
        latent = vae.post_quant_conv(latent)
    return vae.decoder(latent)
