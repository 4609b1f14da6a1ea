"""The MagicBokeh model: VAE + injector + UNet with focus-aware attention + one DDPM step.

This is the one definition of the model in the toolkit. Deployable graphs
(``runtime_py.components``), checkpoint loaders, exporters and distillation all use it.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler
from torch import nn

from .config import MagicBokehConfig, get_config
from .focus_attention import FOCUS_IMPLEMENTATIONS, FocusAttnProcessor
from .injector import Injector
from .unet import build_unet, focus_attention_layers, unet_forward
from .vae import build_vae, decode, encode_mean


def make_scheduler(config: MagicBokehConfig) -> DDPMScheduler:
    """SD2.1-base's scheduler: scaled-linear betas, epsilon prediction, no clipping of x0."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def alpha_cumprod(config: MagicBokehConfig, timestep: int | None = None) -> float:
    """``alphas_cumprod[t]`` as diffusers computes it (float32)."""
    t = config.timestep if timestep is None else timestep
    with torch.device("cpu"):  # also when a model is being built on the meta device
        return float(make_scheduler(config).alphas_cumprod[t])


class OneStepTileModel:
    """encode / denoise / decode of one tile, shared by MagicBokeh and its distilled students.

    A subclass provides ``config``, ``vae``, ``unet``, the ``sqrt_alpha`` / ``sqrt_one_minus_alpha``
    buffers and ``predict_noise``; everything downstream (components, exporters, pipeline) relies
    only on these methods.
    """

    config: MagicBokehConfig

    # -- focus attention -------------------------------------------------------------------
    def focus_processors(self) -> dict[str, FocusAttnProcessor]:
        return {name: attn.processor for name, attn in focus_attention_layers(self.unet).items()}

    def set_focus_implementation(self, implementation: str) -> None:
        """Choose ``"bias"`` (literal N x N mask) or ``"split"`` (two key-masked attentions)."""
        if implementation not in FOCUS_IMPLEMENTATIONS:
            raise ValueError(f"focus implementation must be one of {FOCUS_IMPLEMENTATIONS}")
        for proc in self.focus_processors().values():
            proc.implementation = implementation

    def _register_one_step_constants(self) -> None:
        a = alpha_cumprod(self.config)
        self.register_buffer("sqrt_alpha", torch.tensor(math.sqrt(a)), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha", torch.tensor(math.sqrt(1.0 - a)), persistent=False)

    # -- the three stages ---------------------------------------------------------------------
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, T, T) in [-1, 1] -> scaled latent mean (B, C, T/f, T/f), f the VAE factor."""
        return encode_mean(self.vae, rgb) * self.config.latent_scale

    def predict_noise(
        self, latent: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor, timestep: float | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def denoise(self, latent: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor) -> torch.Tensor:
        """One DDPM step from ``config.timestep`` (999 for SD2.1) to the clean latent:
        ``x0 = (z - sqrt(1-a) eps) / sqrt(a)``."""
        eps = self.predict_noise(latent, defocus, in_focus)
        return (latent - self.sqrt_one_minus_alpha * eps) / self.sqrt_alpha

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> RGB in [-1, 1] (clamped)."""
        return decode(self.vae, latent / self.config.latent_scale).clamp(-1.0, 1.0)

    def forward(self, rgb: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor) -> torch.Tensor:
        return self.decode(self.denoise(self.encode(rgb), defocus, in_focus))


class MagicBokeh(OneStepTileModel, nn.Module):
    """One 512-px tile: ``rgb, defocus, in_focus -> rgb``, split into encode / denoise / decode."""

    def __init__(self, config: MagicBokehConfig | str = "small"):
        super().__init__()
        self.config = get_config(config)
        self.vae = build_vae(self.config)
        self.unet = build_unet(self.config)
        self.injector = Injector(self.config)
        self._register_one_step_constants()

    def predict_noise(
        self, latent: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor, timestep: float | None = None
    ) -> torch.Tensor:
        t = self.config.timestep if timestep is None else timestep
        cond = self.injector.embed_condition(defocus)
        residuals = self.injector(latent, t, cond)
        return unet_forward(self.unet, latent, t, residuals, in_focus)

    # -- multi-step sampling (a teacher for step distillation) ------------------------------
    @torch.no_grad()
    def sample(
        self,
        rgb: torch.Tensor,
        defocus: torch.Tensor,
        in_focus: torch.Tensor,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """N-step sampling: predict x0 at ``config.timestep``, then re-noise to lower timesteps and denoise.

        With ``num_steps=1`` this is exactly :meth:`forward`. The injector and UNet take the
        timestep, so later steps see the timestep they are run at.
        """
        from .sampling import sample_latent

        return self.decode(sample_latent(self, self.encode(rgb), defocus, in_focus, num_steps, generator=generator))


def build_model(config: MagicBokehConfig | str = "small", seed: int | None = 0) -> MagicBokeh:
    """A MagicBokeh model with seeded random weights (every LoRA and zero-conv non-zero).

    Random init leaves the injector's zero convolutions and the conditioning embedding's last
    conv at zero; they are re-drawn here so that the injector really reaches the UNet.
    """
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = MagicBokeh(config)
        for conv in list(model.injector.controlnet_down_blocks) + [model.injector.controlnet_cond_embedding.conv_out]:
            nn.init.normal_(conv.weight, std=0.02)
            nn.init.normal_(conv.bias, std=0.02)
        for proc in model.focus_processors().values():
            for pair in (proc.to_q_lora, proc.to_k_lora, proc.to_v_lora, proc.to_out_lora):
                nn.init.normal_(pair[0].weight, std=0.2)
                nn.init.normal_(pair[1].weight, std=0.2)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return model.eval()
