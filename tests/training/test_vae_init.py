"""The analytic VAE start (training.default_model.vae_init) is the autoencoder it claims to be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime_py.model import get_config
from runtime_py.model.vae import build_vae, decode, encode_mean
from runtime_py.scenes import generate_scene
from training.default_model.vae_init import LATENT_GAIN, VaeInitError, init_vae_as_autoencoder

# tiny's UNet and tile with a 4x VAE laid out like the default model's (4 GroupNorm groups).
CONFIG = get_config("tiny").replace(vae_block_out_channels=(16, 16, 16), vae_norm_num_groups=4, latent_channels=4)


def _degraded(seeds, size: int) -> torch.Tensor:
    images = np.stack([generate_scene(s, size, "dead_leaves").degraded for s in seeds])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() * 2 - 1


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:  # images in [-1, 1]
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))


def test_analytic_vae_is_low_passed_block_means_and_bilinear_upsampling_on_unseen_images():
    torch.manual_seed(0)
    vae = build_vae(CONFIG)
    init_vae_as_autoencoder(vae, CONFIG.latent_scale, _degraded(range(8), 128))
    x = _degraded([100, 101], 128)  # not among the readout-fitting images
    with torch.no_grad():
        z = encode_mean(vae, x) * CONFIG.latent_scale
        out = decode(vae, z / CONFIG.latent_scale)
    tent = torch.tensor([0.25, 0.5, 0.25])
    low_passed = F.conv2d(x, torch.outer(tent, tent).expand(3, 1, 3, 3), padding=1, groups=3)
    means = F.avg_pool2d(low_passed, 4)
    # Encoder: latent channels 0-2 are the 4 x 4 block means of the tent-filtered image times the
    # gain (GroupNorm's per-image standard deviation is what is left), the rest start at zero.
    assert (z[:, :3] - LATENT_GAIN * means).abs().max() < 0.05
    assert z[:, 3:].abs().max() == 0
    # Decoder: bilinear upsampling of those means (the gap to F.interpolate is mostly the zero
    # padding at the border), so the whole autoencoder reconstructs the smooth, degraded inputs
    # nearly as well as the exact filter + pool + bilinear chain.
    reference = F.interpolate(means, scale_factor=4, mode="bilinear", align_corners=False)
    assert _psnr(out, reference) > 30.0
    assert _psnr(out, x) > _psnr(reference, x) - 3.0
    assert _psnr(out, x) > 25.0
    # Per-channel symmetric int8 weights (what W8 deployments store) leave it intact: every
    # readout is two weights of equal size per output channel, which int8 represents exactly.
    with torch.no_grad():
        for conv in vae.modules():
            if isinstance(conv, torch.nn.Conv2d):
                step = conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
                conv.weight.copy_((conv.weight / step).round().clamp(-127, 127) * step)
        quantized = decode(vae, encode_mean(vae, x))
    assert _psnr(quantized, out) > 40.0


def test_layouts_without_room_for_the_anchors_and_bad_images_are_clear_errors():
    tiny = get_config("tiny")  # its finest VAE level has 8 channels: no room for channels 8 and 9
    with pytest.raises(VaeInitError, match="needs more than 9 channels"):
        init_vae_as_autoencoder(build_vae(tiny), tiny.latent_scale, _degraded([0], 64))
    crowded = CONFIG.replace(vae_norm_num_groups=8)  # groups of 2 channels: no room for two anchors
    with pytest.raises(VaeInitError, match="no room for two anchor channels"):
        init_vae_as_autoencoder(build_vae(crowded), crowded.latent_scale, _degraded([0], 64))
    with pytest.raises(VaeInitError, match="multiples of 4"):
        init_vae_as_autoencoder(build_vae(CONFIG), CONFIG.latent_scale, torch.zeros(1, 3, 30, 30))


def _analytic_vae() -> torch.nn.Module:
    torch.manual_seed(0)
    vae = build_vae(CONFIG)
    return init_vae_as_autoencoder(vae, CONFIG.latent_scale, _degraded(range(8), 128))


def test_analytic_vae_does_not_alias_fine_stripes():
    """3-px stripes are above the 4x latent grid's Nyquist period (8 px): they must come back
    blurred away, not as a false coarser pattern. A plain 4 x 4 block mean passes 25 % of their
    amplitude (|cos(pi f) cos(2 pi f)| at f = 1/3), the tent-filtered one 6 %; 10 % leaves room
    for the bilinear decoder and the border."""
    vae = _analytic_vae()
    size, period = 128, 3
    stripes = 0.6 * torch.sin(2 * math.pi * torch.arange(size) / period)
    x = stripes.expand(1, 3, size, size).contiguous()
    with torch.no_grad():
        out = decode(vae, encode_mean(vae, x))
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert out[inner].std() < 0.10 * x[inner].std()


def test_analytic_vae_activations_are_centred():
    """What conv_out reads (SiLU of the normalised features) sits around zero, not on an offset that
    8-bit activation quantization would spend its range on: the colours pass SiLU as
    SiLU(y) - SiLU(-y) = y."""
    vae = _analytic_vae()
    x = _degraded([100], 128)
    seen: dict[str, torch.Tensor] = {}
    hooks = [vae.encoder.conv_act.register_forward_hook(lambda _m, _i, o: seen.__setitem__("encoder", o)),
             vae.decoder.conv_act.register_forward_hook(lambda _m, _i, o: seen.__setitem__("decoder", o))]
    try:
        with torch.no_grad():
            decode(vae, encode_mean(vae, x))
    finally:
        for hook in hooks:
            hook.remove()
    for name, features in seen.items():
        # SiLU's outputs lie in [-0.28, inf); normalised features of unit scale stay within a few units.
        assert features.abs().max() < 4.0, name
        assert features.mean().abs() < 1.0, name
