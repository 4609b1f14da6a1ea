"""The reference model reproduces the published MagicBokeh computation (MAGICBOKEH.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from runtime_py.components import tile_components
from runtime_py.model import build_model, get_config, make_scheduler
from runtime_py.model.focus_attention import FocusAttnProcessor, tokens_in_focus
from runtime_py.model.unet import focus_attention_layers


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0)


def _tile_inputs(config, seed=0, focus_rows=None):
    g = torch.Generator().manual_seed(seed)
    t = config.tile
    rgb = torch.rand(1, 3, t, t, generator=g) * 2 - 1
    defocus = torch.rand(1, 1, t, t, generator=g) * 0.5
    defocus[..., : (focus_rows or t // 2), :] = 0.05  # an in-focus band
    in_focus = (defocus <= config.defocus_in_focus_threshold).float()
    return rgb, defocus, in_focus


def test_topology_matches_published_changes(tiny):
    keys = tiny.state_dict().keys()
    assert tiny.unet.mid_block is None
    assert not any("attn2" in k for k in keys), "cross-attention must be gone"
    assert not any(".transformer_blocks." in k and ".norm2." in k for k in keys), "attn2's norm must be gone"
    assert len(focus_attention_layers(tiny.unet)) == 9  # 3 up blocks x 3 layers
    assert len(tiny.injector.controlnet_down_blocks) == 12
    assert not any("attn2" in k for k in tiny.injector.state_dict())


def test_attention_levels_place_attention_and_focus_layers():
    """The default model's layout (no attention at the finest level) keeps 9 focus layers and 12
    injector residuals, and its attention runs on the token grids SD2.1's runs on at 512 px."""
    from runtime_py.model.unet import down_block_types, up_block_types

    small = get_config("small")
    assert down_block_types(small) == ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    assert up_block_types(small) == ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    sd21 = get_config("sd21")
    grids = lambda cfg: [cfg.latent_tile // 2**i for i, a in enumerate(cfg.attention_levels) if a]  # noqa: E731
    assert grids(small) == [64, 32, 16] and grids(sd21) == [64, 32, 16]
    shifted = get_config("tiny").replace(attention_levels=(False, True, True, True))
    model = build_model(shifted, seed=0)
    assert len(focus_attention_layers(model.unet)) == 9
    assert len(model.injector.controlnet_down_blocks) == 12
    rgb, defocus, in_focus = _tile_inputs(shifted)
    with torch.no_grad():
        assert torch.isfinite(model(rgb, defocus, in_focus)).all()
    with pytest.raises(ValueError, match="attention_levels has 3 entries for 4 UNet levels"):
        build_model(get_config("tiny").replace(attention_levels=(True, True, False)))


@pytest.mark.parametrize("timestep", [999, 100])
def test_one_step_matches_diffusers_ddpm_step_at_the_configured_timestep(timestep):
    """x0 = (z - sqrt(1-a) eps) / sqrt(a) at the config's t is what DDPMScheduler.step computes
    (no clipping): SD2.1's t = 999 and the default model's t = 100."""
    model = build_model(get_config("tiny").replace(timestep=timestep), seed=0)
    cfg = model.config
    rgb, defocus, in_focus = _tile_inputs(cfg)
    with torch.no_grad():
        z = model.encode(rgb)
        eps = model.predict_noise(z, defocus, in_focus)
        ours = model.denoise(z, defocus, in_focus)
    sched = make_scheduler(cfg)
    a = float(sched.alphas_cumprod[timestep])
    assert math.isclose(a, {999: 0.00466009508818388, 100: 0.894223153591156}[timestep], rel_tol=1e-6)
    sched.set_timesteps(timesteps=[timestep])  # one step, from t to -1, as the published inference
    step = sched.step(eps, timestep, z, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step.pred_original_sample, ours, rtol=1e-5, atol=1e-5)
    if timestep == 999:  # the scheduler adds std 1e-10 noise there (variance clamped to 1e-20)
        torch.testing.assert_close(step.prev_sample, ours, rtol=1e-5, atol=1e-5)
    # With a zero output layer the step is a plain rescaling of the latent: the start the
    # default model's training relies on (x0 = z / sqrt(a), 1.06 z at t = 100).
    torch.nn.init.zeros_(model.unet.conv_out.weight)
    torch.nn.init.zeros_(model.unet.conv_out.bias)
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(z, defocus, in_focus), z / math.sqrt(a))


def test_tokens_in_focus_is_nearest_interpolation():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 128, 128, generator=g) > 0.5).float()
    for side in (4, 8, 16, 32):
        ref = F.interpolate(mask, size=(side, side), mode="nearest").reshape(2, -1)
        assert torch.equal(tokens_in_focus(mask, side * side), ref)
    with pytest.raises(ValueError, match="square token grid"):
        tokens_in_focus(mask, 15)


def _literal_focus_attention(proc: FocusAttnProcessor, attn, h, in_focus):
    """MAGICBOKEH.md's four steps, written out with an explicit N x N bias and softmax."""
    b, n, _ = h.shape
    heads = attn.heads

    def heads_of(x):
        return x.reshape(b, n, heads, -1).transpose(1, 2)

    q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
    scale = q.shape[-1] // heads
    scale = scale**-0.5
    h1 = torch.softmax(heads_of(q) @ heads_of(k).transpose(-1, -2) * scale, -1) @ heads_of(v)
    s = 1.0 / proc.rank
    q2 = heads_of(q + s * proc.to_q_lora[1](proc.to_q_lora[0](h)))
    k2 = heads_of(k + s * proc.to_k_lora[1](proc.to_k_lora[0](h)))
    v2 = heads_of(v + s * proc.to_v_lora[1](proc.to_v_lora[0](h)))
    side = int(math.isqrt(n))
    m = F.interpolate(in_focus, size=(side, side), mode="nearest").reshape(b, n)
    same = (m[:, :, None] == m[:, None, :]).float()
    bias = torch.where(same > 0, 0.0, -100.0)[:, None]
    h2 = torch.softmax(q2 @ k2.transpose(-1, -2) * scale + bias, -1) @ v2
    merge = lambda x: x.transpose(1, 2).reshape(b, n, -1)  # noqa: E731
    return attn.to_out[0](merge(h1)) + s * proc.to_out_lora[1](proc.to_out_lora[0](merge(h2)))


@pytest.mark.parametrize("implementation", ["bias", "split"])
def test_focus_attention_matches_literal_formula(tiny, implementation):
    name, attn = next(iter(focus_attention_layers(tiny.unet).items()))
    proc = attn.processor
    proc.implementation = implementation
    g = torch.Generator().manual_seed(2)
    dim = attn.to_q.in_features
    n = 16 * 16
    h = torch.randn(1, n, dim, generator=g)
    in_focus = torch.zeros(1, 1, 128, 128)
    in_focus[..., 40:90, 30:100] = 1
    with torch.no_grad():
        ours = attn(h, in_focus=in_focus)
        ref = _literal_focus_attention(proc, attn, h, in_focus)
    proc.implementation = "bias"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_focus_mask_changes_the_output_and_zero_lora_is_plain_attention(tiny):
    cfg = tiny.config
    rgb, defocus, in_focus = _tile_inputs(cfg)
    with torch.no_grad():
        z = tiny.encode(rgb)
        a = tiny.denoise(z, defocus, in_focus)
        b = tiny.denoise(z, defocus, torch.ones_like(in_focus))
    assert (a - b).abs().max() > 1e-3, "the in-focus mask must reach the attention"

    attn = next(iter(focus_attention_layers(tiny.unet).values()))
    proc = attn.processor
    saved = {k: v.clone() for k, v in proc.state_dict().items()}
    try:
        for p in proc.parameters():
            torch.nn.init.zeros_(p)
        h = torch.randn(1, 256, attn.to_q.in_features)
        mask = torch.zeros(1, 1, 128, 128)
        mask[..., :64, :] = 1
        with torch.no_grad():
            ours = attn(h, in_focus=mask)
            attn.set_processor(AttnProcessor2_0())
            plain = attn(h)
    finally:
        attn.set_processor(proc)
        proc.load_state_dict(saved)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


def test_bias_and_split_implementations_agree_end_to_end(tiny):
    rgb, defocus, in_focus = _tile_inputs(tiny.config, seed=3)
    with torch.no_grad():
        z = tiny.encode(rgb)
        a = tiny.denoise(z, defocus, in_focus)
        tiny.set_focus_implementation("split")
        b = tiny.denoise(z, defocus, in_focus)
        tiny.set_focus_implementation("bias")
    # Row for row the same bias is applied; only summation order could differ.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.set_focus_implementation("fast")


def test_seeded_model_is_deterministic_and_injector_reaches_the_unet():
    m1, m2 = build_model("tiny", seed=7), build_model("tiny", seed=7)
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    rgb, defocus, in_focus = _tile_inputs(m1.config)
    with torch.no_grad():
        z = m1.encode(rgb)
        a = m1.denoise(z, defocus, in_focus)
        b = m1.denoise(z, defocus * 0.5, in_focus)
    assert (a - b).abs().max() > 1e-4, "the defocus map must reach the output through the injector"


def test_components_have_static_declared_shapes(tiny):
    comps = tile_components(tiny)
    for comp in comps.values():
        inputs = comp.example_inputs()
        assert [tuple(x.shape) for x in inputs] == [s.shape for s in comp.input_specs()]
        with torch.no_grad():
            out = comp(*inputs)
        assert tuple(out.shape) == comp.output_specs()[0].shape
    rgb = comps["decoder"](torch.randn(comps["decoder"].input_specs()[0].shape) * 50)
    assert rgb.min() >= -1 and rgb.max() <= 1, "decoder output is clamped to [-1, 1]"


def test_multi_step_sampling_reduces_to_one_step(tiny):
    rgb, defocus, in_focus = _tile_inputs(tiny.config)
    with torch.no_grad():
        one = tiny.sample(rgb, defocus, in_focus, num_steps=1)
        ref = tiny(rgb, defocus, in_focus)
        four = tiny.sample(rgb, defocus, in_focus, num_steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, ref)
    assert four.shape == ref.shape and torch.isfinite(four).all()
    with pytest.raises(ValueError):
        tiny.sample(rgb, defocus, in_focus, num_steps=0)


def test_sd21_configuration_has_published_sizes():
    cfg = get_config("sd21")
    from runtime_py.model.magicbokeh import MagicBokeh

    with torch.device("meta"):
        model = MagicBokeh(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # MAGICBOKEH.md: UNet without mid block and cross-attention 724M, VAE encoder 34M, decoder 50M.
    assert abs(count(model.unet) / 1e6 - 724) < 1
    assert abs((count(model.vae.encoder) + count(model.vae.quant_conv)) / 1e6 - 34) < 1
    assert abs((count(model.vae.decoder) + count(model.vae.post_quant_conv)) / 1e6 - 50) < 1
    assert len(focus_attention_layers(model.unet)) == 9


@pytest.mark.slow
def test_sd21_runs_one_tile():
    model = build_model("sd21", seed=0)
    comps = tile_components(model)
    with torch.no_grad():
        z = comps["encoder"](*comps["encoder"].example_inputs())
        x0 = comps["denoiser"](z, *comps["denoiser"].example_inputs()[1:])
        rgb = comps["decoder"](x0)
    assert rgb.shape == (1, 3, 512, 512) and torch.isfinite(rgb).all()
