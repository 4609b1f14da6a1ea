"""Any SD-layout folder: the shapes come from its config.json files and lora.pkl, not from a name.

The folder under test (``ODD_SD_LAYOUT``) has widths, layers per block and head counts that no
named configuration has, so it loads only if the loader reads them from the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runtime_py.checkpoints import CheckpointMismatchError, load_model, load_official_with_report, weights_sha256
from runtime_py.checkpoints.sd_layout import (
    DERIVED_CONFIG_NAME,
    FieldValue,
    config_from_sd_folder,
    read_sd_folder_fields,
)
from runtime_py.cli import main as cli_main
from runtime_py.model import MagicBokeh
from runtime_py.model.config import CONFIGS, MagicBokehConfig
from runtime_py.render_cli import PNG_MODEL_KEY
from tests.fixtures.official_checkpoint import ODD_SD_LAYOUT, edit_config_json, tile_inputs, write_official_checkpoint

# As in test_official.py: merged weights differ from the unmerged PEFT reference by float32
# rounding (~1e-7 relative per layer); 2e-5 on the tile's RGB output keeps a wide margin, while
# skipping any LoRA or misreading any size changes it by orders of magnitude more.
RGB_ATOL = 2e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: one torch thread avoids oversubscription stalls (tiny tensors gain nothing).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    checkpoint = write_official_checkpoint(tmp_path_factory.mktemp("odd"), ODD_SD_LAYOUT, seed=0)
    model, report = load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl)
    return checkpoint, model, report


def _hand_built_config(sd_dir: Path, cond_channels: tuple[int, ...], focus_rank: int) -> MagicBokehConfig:
    """Read the folder's files the way a person would with diffusers' docs open."""
    unet = json.loads((sd_dir / "unet" / "config.json").read_text())
    vae = json.loads((sd_dir / "vae" / "config.json").read_text())
    scheduler = json.loads((sd_dir / "scheduler" / "scheduler_config.json").read_text())
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    tile = unet["sample_size"] * vae_factor
    return CONFIGS["sd21"].replace(  # what the files do not say is the real release's
        name=DERIVED_CONFIG_NAME,
        block_out_channels=tuple(unet["block_out_channels"]),
        attention_heads=tuple(unet["attention_head_dim"]),  # head counts, diffusers' naming quirk
        layers_per_block=unet["layers_per_block"],
        attention_levels=tuple(t == "CrossAttnDownBlock2D" for t in unet["down_block_types"]),
        norm_num_groups=unet["norm_num_groups"],
        cross_attention_dim_of_base=unet["cross_attention_dim"],
        cond_embedding_channels=cond_channels,
        vae_block_out_channels=tuple(vae["block_out_channels"]),
        vae_layers_per_block=vae["layers_per_block"],
        vae_norm_num_groups=vae["norm_num_groups"],
        vae_mid_block_attention=vae.get("mid_block_add_attention", True),
        latent_channels=vae["latent_channels"],
        latent_scale=vae["scaling_factor"],
        focus_rank=focus_rank,
        num_train_timesteps=scheduler["num_train_timesteps"],
        beta_start=scheduler["beta_start"],
        beta_end=scheduler["beta_end"],
        tile=tile,
        stride=tile // 2,
    )


def test_odd_sizes_are_read_from_the_folder(odd) -> None:
    checkpoint, model, report = odd
    # No named configuration shares the sizes this test is about.
    for named in CONFIGS.values():
        assert named.block_out_channels != ODD_SD_LAYOUT.block_out_channels
        assert named.layers_per_block != ODD_SD_LAYOUT.layers_per_block
        assert named.attention_heads != ODD_SD_LAYOUT.attention_heads
    cond = checkpoint.contents["controlnet"]["controlnet_cond_embedding.conv_in.weight"]
    expected = _hand_built_config(checkpoint.sd21_dir, (cond.shape[0], 12, 20), checkpoint.contents["state_dict_attn"])
    assert model.config == expected
    for name in ("block_out_channels", "attention_heads", "layers_per_block", "cond_embedding_channels",
                 "vae_block_out_channels", "latent_channels", "latent_scale", "focus_rank", "tile"):
        assert getattr(model.config, name) == getattr(ODD_SD_LAYOUT, name), name
    # The folder's UNet has a mid block and cross-attention, as SD's does: dropped, not refused.
    assert json.loads((checkpoint.sd21_dir / "unet" / "config.json").read_text())["mid_block_type"]
    assert any(k.startswith("mid_block.") for k in report.dropped_unet_keys)
    assert report.consumed == checkpoint.lora_keys


def test_loaded_model_runs_and_equals_the_hand_built_one(odd) -> None:
    checkpoint, model, _ = odd
    hand = MagicBokeh(_hand_built_config(checkpoint.sd21_dir, model.config.cond_embedding_channels,
                                         model.config.focus_rank)).eval()
    # Same tensor names and shapes; assign=True shares the very storages, because CPU kernels may
    # round differently for differently aligned copies of equal weights (measured: 6e-8 in a Linear).
    hand.load_state_dict(model.state_dict(), strict=True, assign=True)
    rgb, defocus, in_focus = tile_inputs(model.config, seed=1)
    with torch.no_grad():
        out = model(rgb, defocus, in_focus)
        assert out.shape == rgb.shape and torch.isfinite(out).all()
        assert torch.equal(out, hand(rgb, defocus, in_focus))  # same architecture: bit for bit
        # ... and it is the published computation (unmerged PEFT layers, the fixture's reference).
        assert (out - checkpoint.reference(rgb, defocus, in_focus)).abs().max() < RGB_ATOL

        # The quirk matters: reading attention_head_dim as head WIDTHS gives other heads, with the
        # very same tensors, and a different output.
        widths = model.config.block_out_channels
        as_widths = tuple(w // h for w, h in zip(widths, model.config.attention_heads))
        misread = MagicBokeh(hand.config.replace(attention_heads=as_widths)).eval()
        misread.load_state_dict(model.state_dict(), strict=True, assign=True)
        assert (misread(rgb, defocus, in_focus) - out).abs().max() > 50 * RGB_ATOL  # not rounding


def test_a_named_config_is_a_check(odd) -> None:
    checkpoint, _, _ = odd
    with pytest.raises(CheckpointMismatchError, match=r"not the 'sd21' configuration: block_out_channels is "
                                                      r"\(24, 48, 72\) \(unet/config\.json block_out_channels\), "
                                                      r"'sd21' has \(320, 640, 1280, 1280\)"):
        load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl, "sd21")
    # A config object is checked the same way, and exactly the one differing field is named.
    model, _ = load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl, ODD_SD_LAYOUT)
    assert model.config == ODD_SD_LAYOUT
    with pytest.raises(CheckpointMismatchError, match=r"'odd-sd-layout' configuration: vae_layers_per_block is 1 "
                                                      r"\(vae/config\.json layers_per_block\), 'odd-sd-layout' has 2 "
                                                      r"\(leave"):
        load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl,
                                  ODD_SD_LAYOUT.replace(vae_layers_per_block=2))


# -- the real release's files, without weights --------------------------------------------------
# stabilityai/stable-diffusion-2-1-base as published (diffusers 0.10-era files: fewer keys than a
# current save_pretrained writes; the rest take diffusers' defaults).
SD21_BASE_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": True,
}
SD21_BASE_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}
SD21_INJECTOR = FieldValue((16, 32, 96, 256), "lora.pkl controlnet")


def _config_files(folder: Path, unet: dict, vae: dict, scheduler: dict | None) -> Path:
    for part, name, data in (("unet", "config.json", unet), ("vae", "config.json", vae),
                             ("scheduler", "scheduler_config.json", scheduler)):
        if data is not None:
            (folder / part).mkdir(parents=True, exist_ok=True)
            (folder / part / name).write_text(json.dumps(data))
    return folder


def test_the_real_release_files_are_sd21(tmp_path: Path) -> None:
    folder = _config_files(tmp_path, SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_SCHEDULER)
    assert config_from_sd_folder(folder, SD21_INJECTOR, focus_rank=4) == CONFIGS["sd21"]
    assert config_from_sd_folder(folder, SD21_INJECTOR, focus_rank=4, expected="sd21") == CONFIGS["sd21"]
    # Without scheduler/ the schedule is Stable Diffusion's; a single head count applies to every block.
    shutil.rmtree(folder / "scheduler")
    edit_config_json(folder, "unet", attention_head_dim=8)
    derived = config_from_sd_folder(folder, SD21_INJECTOR, focus_rank=4)
    assert derived.name == DERIVED_CONFIG_NAME and derived.attention_heads == (8, 8, 8, 8)
    assert derived.replace(name="sd21", attention_heads=(5, 10, 20, 20)) == CONFIGS["sd21"]
    with pytest.raises(CheckpointMismatchError, match=r"attention_heads is \(8, 8, 8, 8\) \(unet/config\.json "
                                                      r"attention_head_dim\), 'sd21' has \(5, 10, 20, 20\) \(leave"):
        config_from_sd_folder(folder, SD21_INJECTOR, focus_rank=4, expected="sd21")


@pytest.mark.parametrize(
    "part, changes, message",
    [
        ("unet", {"only_cross_attention": True}, r"unet/config\.json: only_cross_attention is True; .*self-attention"),
        ("unet", {"use_linear_projection": False}, r"use_linear_projection is False; MagicBokeh builds True"),
        ("unet", {"use_linear_projection": ...}, r"use_linear_projection is not set \(diffusers' default False\)"),
        ("unet", {"class_embed_type": "timestep"}, r"class_embed_type is 'timestep'; .*cannot honour"),
        ("unet", {"num_attention_heads": [5, 10, 20, 20]}, r"num_attention_heads is \[5, 10, 20, 20\]"),
        ("unet", {"transformer_layers_per_block": 2}, r"transformer_layers_per_block is 2"),
        ("unet", {"upcast_attention": True}, r"upcast_attention is True"),
        ("unet", {"layers_per_block": [2, 2, 1, 2]}, r"layers_per_block is \[2, 2, 1, 2\]; .*same number"),
        ("unet", {"attention_head_dim": [5, 10, 7, 20]}, r"attention_head_dim .*7 heads do not divide block 2's 1280"),
        ("unet", {"down_block_types": ["AttnDownBlock2D"] * 4}, r"down_block_types is \['AttnDownBlock2D'"),
        ("unet", {"up_block_types": ["UpBlock2D"] * 4}, r"up_block_types .*mirror down_block_types"),
        ("unet", {"in_channels": 8}, r"in_channels is 8; MagicBokeh builds 4 \(it must equal vae/config\.json "
                                     r"latent_channels\)"),
        ("unet", {"norm_num_groups": 24}, r"norm_num_groups is 24; it must divide every block width"),
        ("unet", {"sample_size": None}, r"sample_size is None; the tile"),
        ("unet", {"a_future_switch": True}, r"a_future_switch is True; this diffusers version has no such field"),
        ("unet", {"_class_name": "UNet2DModel"}, r"_class_name is 'UNet2DModel'"),
        ("vae", {"shift_factor": 0.1}, r"vae/config\.json: shift_factor is 0\.1"),
        ("vae", {"use_quant_conv": False}, r"use_quant_conv is False"),
        ("vae", {"latent_channels": 0}, r"latent_channels is 0; expected a positive integer"),
        ("vae", {"mid_block_add_attention": "yes"}, r"mid_block_add_attention is 'yes'; expected true or false"),
        ("scheduler", {"prediction_type": "v_prediction"}, r"prediction_type is 'v_prediction'; .*'epsilon'"),
        ("scheduler", {"beta_schedule": ...}, r"beta_schedule is not set \(diffusers' default 'linear'\)"),
        ("scheduler", {"num_train_timesteps": 500}, r"num_train_timesteps is 500; .*t = 999"),
    ],
)
def test_fields_the_model_cannot_honour_are_refused(tmp_path: Path, part, changes, message) -> None:
    folder = _config_files(tmp_path, SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_SCHEDULER)
    edit_config_json(folder, part, **changes)
    with pytest.raises(CheckpointMismatchError, match=message):
        read_sd_folder_fields(folder)


def test_unused_keys_are_not_checked(tmp_path: Path) -> None:
    """Keys that configure only the removed mid block / cross-attention, or no output, are accepted."""
    folder = _config_files(tmp_path, SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_SCHEDULER)
    edit_config_json(folder, "unet", mid_block_type=None, cross_attention_dim=768, dropout=0.1,
                     only_cross_attention=[False] * 4, transformer_layers_per_block=[1] * 4)
    edit_config_json(folder, "vae", sample_size=512, force_upcast=False)
    edit_config_json(folder, "scheduler", _class_name="DDPMScheduler", clip_sample=True, steps_offset=0)
    assert config_from_sd_folder(folder, SD21_INJECTOR, focus_rank=4, expected="sd21") == CONFIGS["sd21"]


def test_injector_must_downsample_as_the_vae(tmp_path: Path) -> None:
    folder = _config_files(tmp_path, SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_SCHEDULER)
    with pytest.raises(CheckpointMismatchError, match=r"has 3 levels \(16, 32, 96\), so it downsamples the defocus "
                                                      r"map 4x, but the VAE .* downsamples 8x"):
        config_from_sd_folder(folder, FieldValue((16, 32, 96), "lora.pkl controlnet"), focus_rank=4)


# -- end to end: loader and command line ----------------------------------------------------------
def _copy(checkpoint, tmp_path: Path) -> Path:
    folder = tmp_path / "sd"
    shutil.copytree(checkpoint.sd21_dir, folder)
    return folder


def test_refusals_reach_the_loader_and_weights_must_match_the_files(odd, tmp_path: Path) -> None:
    checkpoint, _, _ = odd
    folder = _copy(checkpoint, tmp_path)
    edit_config_json(folder, "unet", only_cross_attention=True)
    with pytest.raises(CheckpointMismatchError, match=r"only_cross_attention is True"):
        load_official_with_report(folder, checkpoint.lora_pkl)
    # A config.json that disagrees with its weights: the tensor shapes are checked against it.
    edit_config_json(folder, "unet", only_cross_attention=False, block_out_channels=[32, 48, 72],
                     attention_head_dim=[2, 3, 4])
    with pytest.raises(CheckpointMismatchError, match=r"has shape \(24,\), the 'sd-layout' model expects \(32,\)"):
        load_official_with_report(folder, checkpoint.lora_pkl)


def test_command_line_renders_with_the_folder_and_refuses_a_wrong_name(odd, tmp_path: Path, capsys) -> None:
    checkpoint, model, _ = odd
    height, width = 70, 90
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    np.save(tmp_path / "photo.npy", np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1)))
    weights = ["--sd21", str(checkpoint.sd21_dir), "--lora", str(checkpoint.lora_pkl)]
    common = ["render", "--no-progress", "--image", str(tmp_path / "photo.png"), "--depth", str(tmp_path / "photo.npy"),
              "--focus-value", "0.5", *weights]
    out = tmp_path / "bokeh.png"
    assert cli_main([*common, "--out", str(out)]) == 0
    capsys.readouterr()
    with Image.open(out) as png:
        assert png.size == (width, height)
        assert json.loads(png.text[PNG_MODEL_KEY])["config"] == DERIVED_CONFIG_NAME

    assert cli_main([*common, "--config", "sd21", "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not the 'sd21' configuration: block_out_channels is (24, 48, 72)" in err
    assert not (tmp_path / "no.png").exists()

    native = tmp_path / "odd.safetensors"
    assert cli_main(["convert", *weights, "--out", str(native)]) == 0
    assert f"config '{DERIVED_CONFIG_NAME}'" in capsys.readouterr().out
    converted = load_model(checkpoint=native)  # the derived config travels in the native file
    assert converted.config == model.config and weights_sha256(converted) == weights_sha256(model)
