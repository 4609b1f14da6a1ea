"""N-step sampling, written once for any model with ``encode / denoise / predict_noise``.

``MagicBokeh.sample`` (the reference multi-step teacher) and the distillation students both run
:func:`sample_latent`; it keeps gradients, because a step student is trained *through* its k steps.

Two ways to re-noise between steps:

* ``"random"``: fresh Gaussian noise, exactly ``MagicBokeh.sample`` (a stochastic sampler);
* ``"ddim"``: DDIM with eta = 0 (Song et al. 2021): re-noise with the model's own last noise
  prediction. The sample is then a deterministic function of the tile, which is what sampler
  distillation (Luhman & Luhman 2021) needs: a k-step student can match it exactly instead of
  only regressing to the mean of a random target.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .config import MagicBokehConfig
from .magicbokeh import make_scheduler
from .vae import decode as vae_decode


RENOISE_MODES = ("random", "ddim")


def sampling_timesteps(config: MagicBokehConfig, num_steps: int) -> list[int]:
    """Timesteps the sampler runs the denoiser at: ``[999, ...]`` with ``num_steps`` entries.

    The first step is the one-step timestep, later steps
    re-noise to evenly spaced (rounded) timesteps between it and 0.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    later = torch.linspace(config.timestep, 0, num_steps + 1)[1:-1].round().long().tolist()
    return [int(config.timestep)] + [int(t) for t in later]


def draw_noises(
    config: MagicBokehConfig,
    shape: Sequence[int],
    num_steps: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """The re-noising draws of an N-step sample (N - 1 tensors), in the order the sampler uses them."""
    sampling_timesteps(config, num_steps)  # validates num_steps
    return [torch.randn(tuple(shape), generator=generator, dtype=dtype) for _ in range(num_steps - 1)]


def sample_latent(
    model: nn.Module,
    latent: torch.Tensor,
    defocus: torch.Tensor,
    in_focus: torch.Tensor,
    num_steps: int = 1,
    noises: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    renoise: str = "random",
) -> torch.Tensor:
    """N-step x0 prediction from an encoded tile, with gradients.

    With ``renoise="random"``, ``noises`` (N - 1 tensors) fixes the re-noising draws; otherwise
    they are drawn from ``generator``, one tensor per later step, in order. With
    ``renoise="ddim"`` neither is used.
    """
    if renoise not in RENOISE_MODES:
        raise ValueError(f"renoise must be one of {RENOISE_MODES}, got {renoise!r}")
    config: MagicBokehConfig = model.config
    steps = sampling_timesteps(config, num_steps)
    if noises is not None and len(noises) != num_steps - 1:
        raise ValueError(f"a {num_steps}-step sample needs {num_steps - 1} noise tensors, got {len(noises)}")
    sched = make_scheduler(config)
    x0 = model.denoise(latent, defocus, in_focus)
    # The noise prediction behind x0 at the first step (denoise returns x0 only).
    a0 = float(sched.alphas_cumprod[steps[0]])
    eps = (latent - math.sqrt(a0) * x0) / math.sqrt(1.0 - a0)
    for i, t in enumerate(steps[1:]):
        if renoise == "ddim":
            noise = eps
        elif noises is not None:
            noise = noises[i].to(device=x0.device, dtype=x0.dtype)
        else:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        if noise.shape != x0.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} does not match the latent {tuple(x0.shape)}")
        a = float(sched.alphas_cumprod[t])
        z_t = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise
        eps = model.predict_noise(z_t, defocus, in_focus, timestep=float(t))
        x0 = (z_t - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
    return x0


def decode_unclamped(model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Decode without the final clamp, so a training loss still has a gradient outside [-1, 1]."""
    return vae_decode(model.vae, x0 / model.config.latent_scale)
