"""Named MagicBokeh configurations.

One dataclass describes every size of the model: ``sd21`` has the real Stable-Diffusion-2.1-base
shapes a user's checkpoint loads into, ``small`` keeps the published topology (four resolution
levels, attention at three, 12 injector residuals, 9 focus-attention layers, 512-px tiles) at a
size that trains from nothing and runs on a laptop CPU (with a 4x VAE and its one step at t = 50,
see its entry), and ``tiny`` shrinks the tile too so that unit tests that push whole images
through exporters stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SD_LATENT_SCALE = 0.18215
ONE_STEP_TIMESTEP = 999


@dataclass(frozen=True)
class MagicBokehConfig:
    """Shapes and constants of one MagicBokeh model (UNet, injector, VAE, focus LoRA, tiles)."""

    name: str
    # UNet and injector (the injector copies the UNet's conv_in, time embedding and down blocks).
    block_out_channels: tuple[int, ...]
    attention_heads: tuple[int, ...]
    layers_per_block: int = 2
    # Which UNet (and injector) levels carry self-attention, from the finest: SD2.1's is
    # (True, True, True, False). The up blocks mirror it; their attention is the focus attention.
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    norm_num_groups: int = 32
    cross_attention_dim_of_base: int = 1024  # only used to build, then attn2 is removed
    # Conditioning embedding applied to the defocus map before the injector.
    cond_embedding_channels: tuple[int, ...] = (16, 32, 96, 256)
    # VAE.
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    # Self-attention in the VAE's mid blocks (diffusers' ``mid_block_add_attention``). SD2.1's VAE
    # has it (over 4,096 tokens at a 512-px tile); a 4x VAE would attend over 16,384.
    vae_mid_block_attention: bool = True
    latent_channels: int = 4
    latent_scale: float = SD_LATENT_SCALE
    # Focus-aware attention LoRA.
    focus_rank: int = 4
    focus_mask_bias: float = -100.0
    defocus_in_focus_threshold: float = 0.1
    # One-step diffusion.
    timestep: int = ONE_STEP_TIMESTEP
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # Tiling of whole images (pixels).
    tile: int = 512
    stride: int = 256
    # Depth Anything V2 size used by this configuration's depth component.
    depth_size: str = "vits"
    depth_input: int = 518
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def latent_tile(self) -> int:
        return self.tile // self.vae_factor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MagicBokehConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MagicBokeh config fields: {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "MagicBokehConfig":
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, MagicBokehConfig] = {
    # Stable Diffusion 2.1-base: attention_head_dim [5, 10, 20, 20] in diffusers' config is the
    # number of heads (64 channels each).
    "sd21": MagicBokehConfig(
        name="sd21",
        block_out_channels=(320, 640, 1280, 1280),
        attention_heads=(5, 10, 20, 20),
        norm_num_groups=32,
        vae_block_out_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        vae_norm_num_groups=32,
        focus_rank=4,
        depth_size="vitl",
    ),
    # The built-in default model (v2). Four departures from SD2.1's shape make it trainable from
    # nothing on a CPU in an hour and fit for a phone (measured; see its model card): a VAE that
    # downsamples 4x with 16 latent channels and 4 GroupNorm groups (it starts as an anti-aliased
    # low-pass + bilinear upsampling, training.default_model.vae_init; SD's 8x VAE is the product
    # of weeks of GPU training) and no mid-block attention (at 4x it would attend over 16,384
    # tokens per 512-px tile, a 1 GiB score matrix; no phone NPU runs that well), the
    # UNet's attention one level coarser so that it runs on the same 64 / 32 / 16 token grids as
    # SD2.1's, and the one step taken at t = 50 instead of 999 (x0 = (z - 0.22 eps) / 0.98: the
    # UNet predicts a correction of the latent instead of reproducing it through a 15x gain).
    "small": MagicBokehConfig(
        name="small",
        block_out_channels=(32, 64, 96, 96),
        attention_heads=(1, 1, 3, 3),  # one head at the 64 x 64 grid: its scores fit the 400 MiB budget
        attention_levels=(False, True, True, True),
        norm_num_groups=8,
        cross_attention_dim_of_base=32,
        cond_embedding_channels=(16, 32, 96),
        vae_block_out_channels=(16, 32, 64),
        vae_layers_per_block=1,
        vae_norm_num_groups=4,
        vae_mid_block_attention=False,
        latent_channels=16,
        timestep=50,
        focus_rank=4,
        depth_size="test",
        depth_input=518,
    ),
    "tiny": MagicBokehConfig(
        name="tiny",
        block_out_channels=(16, 32, 32, 32),
        attention_heads=(1, 1, 2, 2),
        norm_num_groups=8,
        cross_attention_dim_of_base=16,
        cond_embedding_channels=(8, 8, 16, 16),
        vae_block_out_channels=(8, 16, 16, 16),
        vae_layers_per_block=1,
        vae_norm_num_groups=8,
        focus_rank=2,
        tile=128,
        stride=64,
        depth_size="test",
        depth_input=70,
    ),
}


def get_config(name_or_config: str | MagicBokehConfig) -> MagicBokehConfig:
    """Return a named configuration (or pass a config through)."""
    if isinstance(name_or_config, MagicBokehConfig):
        return name_or_config
    try:
        return CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(
            f"unknown MagicBokeh configuration {name_or_config!r}; choose one of {sorted(CONFIGS)}"
        ) from None
