"""Start a from-scratch VAE as a working autoencoder instead of from random weights.

A diffusers ``AutoencoderKL`` trained from random weights needs on the order of 10^5 crops before it
reconstructs even the smooth, degraded inputs as faithfully as a one-step model needs (measured:
about 150 s of an H200, hours of this project's CPU). The structure of the VAE already contains a
good autoencoder, though, and it can be written down directly:

* the encoder's ``conv_in`` low-passes each colour with the 3 x 3 tent (1, 2, 1) / 4, and every
  encoder downsampler (pad (0, 1, 0, 1), 3 x 3 conv, stride 2) becomes a 2 x 2 mean, so a latent
  pixel is a 4 x 4 block mean of the tent-filtered image, centred where the block's centre is.
  The tent is what keeps the start free of aliasing: a plain 4 x 4 block mean passes 25 % of a
  3-px stripe pattern as a false pattern at the latent grid (its response |cos(pi f) cos(2 pi f)|
  at f = 1/3), the tent-filtered one 6 % (|cos(pi f)|^3 |cos(2 pi f)|), at the price of a
  slightly softer pass band (0.87 instead of 0.91 at a 16-px period);
* every decoder upsampler (nearest 2x, then 3 x 3 conv) becomes bilinear 2x upsampling: after a
  nearest upsample, the taps (1/4, 1/2, 1/4) in each direction give exactly the bilinear weights
  (3/4, 1/4) at both output phases;
* every resnet and attention block starts as the identity (its last conv / output projection at
  zero, its 1 x 1 shortcut copying the colour channels), as zero-initialised residual branches do;
* before each ``conv_out`` diffusers normalises with GroupNorm, per image, then SiLU. Each colour
  travels with its negation, so every group's mean is exactly zero, and two constant anchor
  channels (+A, -A) per group make its standard deviation almost independent of the image
  (A^2 against the colour's mean square). Since sigmoid(y) + sigmoid(-y) = 1, SiLU(y) - SiLU(-y)
  = y exactly: each output of ``conv_out`` reads a colour channel minus its negation (centre taps,
  slope and offset fit by least squares on sample images). Nothing is shifted: the activations
  stay centred on zero, where 8-bit activation quantization reads them (the first default model
  shifted them by +8 into SiLU's near-linear range, and 8-bit activations lost the colours under
  that offset), and each readout is two weights of equal size, which per-channel 8-bit weight
  quantization represents exactly.

Tent + block means + bilinear upsampling reconstructed three held-out degraded 192-px scenes at
26.7 to 32.3 dB PSNR for a 4x VAE when this was written (digital-zoom inputs are smooth; the
test asserts > 25 dB); training then starts from there, with every
parameter free. The colours sit at channels 0, 4, 8 of every feature map and their negations at
1, 5, 9 (latent channels 0, 1, 2 hold the colours, scaled so that E[z^2] is near the range the
trainer keeps it at), so that, with 4 GroupNorm groups, each colour has a group of its own at a
16-channel level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

COLOUR_CHANNELS = (0, 4, 8)
NEGATED_CHANNELS = (1, 5, 9)
CARRIED = COLOUR_CHANNELS + NEGATED_CHANNELS
ANCHOR = 4.0
LATENT_GAIN = 6.0  # colour latents z = 6 * block mean: E[z^2] about 0.75 over 16 channels


class VaeInitError(ValueError):
    """A VAE layout the analytic start cannot be written into."""


def _zero(module: nn.Module | None) -> None:
    if module is None:
        return
    for p in module.parameters():
        nn.init.zeros_(p)


def _copy_colours(conv: nn.Conv2d, src: tuple[int, ...], dst: tuple[int, ...], kernel: torch.Tensor | None = None,
                  gain: float = 1.0, signs: tuple[float, ...] | None = None) -> None:
    """conv <- zero, except output ``dst[i]`` reading ``signs[i] * gain *`` input ``src[i]`` through
    ``kernel`` (centre tap by default)."""
    signs = signs or (1.0,) * len(dst)
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        k = conv.weight.shape[-1]
        for s, d, sign in zip(src, dst, signs):
            if kernel is None:
                conv.weight[d, s, k // 2, k // 2] = gain * sign
            else:
                conv.weight[d, s] = kernel * gain * sign


def _identity_resnet(resnet: nn.Module) -> None:
    _zero(resnet.conv2)
    if resnet.conv_shortcut is not None:
        _copy_colours(resnet.conv_shortcut, CARRIED, CARRIED)


def _identity_mid_block(block: nn.Module) -> None:
    for resnet in block.resnets:
        _identity_resnet(resnet)
    for attention in block.attentions:
        if attention is not None:
            _zero(attention.to_out[0])


def _anchor_groups(channels: int, groups: int) -> tuple[list[int], list[int]]:
    """(+A channels, -A channels): two free channels in every group that carries a colour, whose
    negation must share its group (so that the group's mean stays zero)."""
    per_group = channels // groups
    plus, minus = [], []
    for colour, negated in zip(COLOUR_CHANNELS, NEGATED_CHANNELS):
        g = colour // per_group
        if negated // per_group != g:
            raise VaeInitError(f"GroupNorm groups of {per_group} channels split colour channel {colour} from its negation")
        if any(c // per_group == g for c in plus):
            continue  # this group already has its anchors
        free = [c for c in range(g * per_group, (g + 1) * per_group) if c not in CARRIED]
        if len(free) < 2:
            raise VaeInitError(f"GroupNorm group {g} ({per_group} channels) has no room for two anchor channels")
        plus.append(free[0])
        minus.append(free[1])
    return plus, minus


def _set_anchors(resnet: nn.Module, norm: nn.GroupNorm) -> None:
    """Add +A / -A through ``resnet.conv2``'s bias; ``norm`` passes its normalised input on unchanged."""
    plus, minus = _anchor_groups(norm.num_channels, norm.num_groups)
    with torch.no_grad():
        resnet.conv2.bias[plus] = ANCHOR
        resnet.conv2.bias[minus] = -ANCHOR
        norm.weight.fill_(1.0)
        norm.bias.zero_()


def _fit_readout(features: torch.Tensor, target: torch.Tensor, conv: nn.Conv2d, outputs: list[int]) -> None:
    """Output ``outputs[j]`` of ``conv`` <- slope * (colour ``j`` - its negation) + offset, least squares.

    ``features`` are SiLU's outputs, so the difference is exactly the normalised colour.
    """
    k = conv.weight.shape[-1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for j, out in enumerate(outputs):
            colour, negated = COLOUR_CHANNELS[j], NEGATED_CHANNELS[j]
            x = (features[:, colour] - features[:, negated]).reshape(-1).double()
            y = target[:, j].reshape(-1).double()
            design = torch.stack([x, torch.ones_like(x)], dim=1)
            slope, offset = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
            conv.weight[out, colour, k // 2, k // 2] = float(slope)
            conv.weight[out, negated, k // 2, k // 2] = -float(slope)
            conv.bias[out] = float(offset)


def init_vae_as_autoencoder(vae: AutoencoderKL, latent_scale: float, images: torch.Tensor) -> AutoencoderKL:
    """Write the analytic autoencoder into ``vae`` (in place) and fit its two readouts on ``images``.

    ``images``: (N, 3, H, W) in [-1, 1], H and W multiples of the VAE factor (a few crops suffice).
    """
    enc, dec = vae.encoder, vae.decoder
    levels = len(enc.down_blocks)
    factor = 2 ** (levels - 1)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise VaeInitError(f"need (N, 3, H, W) images with H, W multiples of {factor}, got {tuple(images.shape)}")
    if min(enc.conv_in.out_channels, dec.conv_out.in_channels) <= max(CARRIED):
        raise VaeInitError(f"the VAE's narrowest level needs more than {max(CARRIED)} channels")
    latent_channels = dec.conv_in.in_channels
    if latent_channels < 3:
        raise VaeInitError("the analytic start needs at least 3 latent channels")
    box = torch.zeros(3, 3)
    box[:2, :2] = 0.25  # 2 x 2 mean under diffusers' (0, 1, 0, 1) padding
    tent = torch.tensor([0.25, 0.5, 0.25])
    tent2d = torch.outer(tent, tent)  # the tent low-pass, and bilinear 2x after a nearest upsample
    latent_colours = (0, 1, 2)

    # Encoder: colours -> tent low-pass -> block means, identities elsewhere, anchors before
    # conv_norm_out.
    signs = (1.0,) * 3 + (-1.0,) * 3
    _copy_colours(enc.conv_in, (0, 1, 2) * 2, CARRIED, kernel=tent2d, signs=signs)
    for block in enc.down_blocks:
        for resnet in block.resnets:
            _identity_resnet(resnet)
        for down in block.downsamplers or []:
            _copy_colours(down.conv, CARRIED, CARRIED, kernel=box)
    _identity_mid_block(enc.mid_block)
    _set_anchors(enc.mid_block.resnets[-1], enc.conv_norm_out)
    if vae.quant_conv is not None:
        with torch.no_grad():
            vae.quant_conv.weight.copy_(torch.eye(vae.quant_conv.out_channels)[:, :, None, None])
            vae.quant_conv.bias.zero_()

    # Decoder: colour latents -> block means, bilinear 2x per level, anchors before conv_norm_out.
    if vae.post_quant_conv is not None:
        with torch.no_grad():
            vae.post_quant_conv.weight.copy_(torch.eye(latent_channels)[:, :, None, None])
            vae.post_quant_conv.bias.zero_()
    _copy_colours(dec.conv_in, latent_colours * 2, CARRIED, gain=latent_scale / LATENT_GAIN, signs=signs)
    _identity_mid_block(dec.mid_block)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            _identity_resnet(resnet)
        for up in block.upsamplers or []:
            _copy_colours(up.conv, CARRIED, CARRIED, kernel=tent2d)
    _set_anchors(dec.up_blocks[-1].resnets[-1], dec.conv_norm_out)

    # Readouts, fit on the images (float32 forward passes, float64 least squares).
    with torch.no_grad():
        captured: dict[str, torch.Tensor] = {}
        hook = enc.conv_act.register_forward_hook(lambda _m, _i, out: captured.__setitem__("enc", out))
        try:
            enc(images)
        finally:
            hook.remove()
        low_passed = F.conv2d(images, tent2d.expand(3, 1, 3, 3), padding=1, groups=3)
        means = F.avg_pool2d(low_passed, factor) * (LATENT_GAIN / latent_scale)
        _zero(enc.conv_out)
        _fit_readout(captured["enc"], means, enc.conv_out, list(latent_colours))
        latent = vae.quant_conv(enc(images)) if vae.quant_conv is not None else enc(images)
        mean, _ = torch.chunk(latent, 2, dim=1)
        hook = dec.conv_act.register_forward_hook(lambda _m, _i, out: captured.__setitem__("dec", out))
        try:
            vae.decoder(vae.post_quant_conv(mean) if vae.post_quant_conv is not None else mean)
        finally:
            hook.remove()
        _fit_readout(captured["dec"], images, dec.conv_out, [0, 1, 2])
    return vae
