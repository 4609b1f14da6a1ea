"""Loading the published format (SD2.1 folder + lora.pkl) into a merged MagicBokeh.

The reference is the UNMERGED computation: PEFT LoRA layers wrapping SD2.1's layers, exactly as
the published code runs them (tests/fixtures/official_checkpoint.py writes both).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime_py.checkpoints import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    load_model,
    load_official,
    load_official_with_report,
)
from runtime_py.checkpoints.official import is_dropped_unet_key
from runtime_py.cli import main as cli_main
from runtime_py.checkpoints.native import read_native_config, weights_sha256
from tests.fixtures.official_checkpoint import tile_inputs, write_official_checkpoint

# Merged weights are rounded once from float64; the reference adds base and LoRA outputs in
# float32, so the two differ by float32 rounding (~1e-7 relative per layer, measured ~4e-6 on eps
# of magnitude ~1). x0 = (z - sqrt(1-a) eps) / sqrt(a) amplifies eps errors ~15x: 2e-5 on eps
# (and 15x that on x0) leaves a 5x margin. Switching the LoRAs off changes eps by ~1 here (measured
# while writing this test), five orders of magnitude above the tolerance.
EPS_ATOL = 2e-5
X0_ATOL = 15 * EPS_ATOL
# PEFT merges in float32 (one rounding of W + s*B@A, ~1e-7 relative); weights here are O(0.1-1).
WEIGHT_ATOL = 1e-6


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    checkpoint = write_official_checkpoint(tmp_path_factory.mktemp("official"), "tiny", seed=0)
    model, report = load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl, "tiny")
    return checkpoint, model, report


def _eps(model, latent, defocus, in_focus):
    with torch.no_grad():
        return model.predict_noise(latent, defocus, in_focus)


def test_merged_model_matches_unmerged_peft_reference(official) -> None:
    checkpoint, model, _ = official
    reference = checkpoint.reference
    rgb, defocus, in_focus = tile_inputs(checkpoint.config, seed=1)
    with torch.no_grad():
        latent_ref = reference.encode(rgb)
        assert (model.encode(rgb) - latent_ref).abs().max() < EPS_ATOL  # VAE encoder + quant_conv LoRA
        eps_ref = _eps(reference, latent_ref, defocus, in_focus)
        eps = _eps(model, latent_ref, defocus, in_focus)  # UNet LoRAs, conv_in, injector, focus LoRA
        assert (eps - eps_ref).abs().max() < EPS_ATOL
        x0_ref = (latent_ref - reference.sqrt_one_minus_alpha * eps_ref) / reference.sqrt_alpha
        x0 = (latent_ref - model.sqrt_one_minus_alpha * eps) / model.sqrt_alpha
        assert (x0 - x0_ref).abs().max() < X0_ATOL

    # The decoder carries no LoRA: it is SD2.1's, tensor for tensor.
    decoder_ref = reference.vae.decoder.state_dict()
    assert all(torch.equal(t, decoder_ref[k]) for k, t in model.vae.decoder.state_dict().items())
    # The LoRAs matter: merged weights move far from SD2.1's (a skipped merge could not pass above).
    base = load_file(str(checkpoint.sd21_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    state = model.state_dict()
    for module in checkpoint.contents["unet_lora_decoder_modules"][:5]:
        assert (state[f"unet.{module}.weight"] - base[f"{module}.weight"]).abs().max() > 1e-2, module


def _peft_merged_state(reference) -> dict[str, torch.Tensor]:
    """PEFT's own merge of every adapter, renamed to plain layer names."""
    from peft.tuners.lora import LoraLayer

    for layer in reference.modules():
        if isinstance(layer, LoraLayer):
            layer.merge(adapter_names=list(layer.lora_A.keys()))
    return {
        k.replace(".base_layer.", "."): v
        for k, v in reference.state_dict().items()
        if ".lora_A." not in k and ".lora_B." not in k
    }


def test_every_key_of_lora_pkl_is_consumed(official) -> None:
    checkpoint, _, report = official
    assert report.consumed == checkpoint.lora_keys
    assert report.ignored_injector_keys == []
    # Every LoRA tensor in the fixture is non-zero, so a skipped merge could not hide.
    for field in ("state_dict_unet", "state_dict_vae", "processor_state_dict"):
        for key, tensor in checkpoint.contents[field].items():
            assert tensor.abs().min() > 0 or "lora" not in key, key


def test_exactly_mid_block_and_cross_attention_are_dropped(official) -> None:
    checkpoint, model, report = official
    base_keys = set(load_file(str(checkpoint.sd21_dir / "unet" / "diffusion_pytorch_model.safetensors")))
    dropped = set(report.dropped_unet_keys)
    assert dropped == {k for k in base_keys if is_dropped_unet_key(k)}
    assert any(k.startswith("mid_block.") for k in dropped)
    assert any(".attn2." in k for k in dropped) and any(".transformer_blocks.0.norm2." in k for k in dropped)
    assert not any(".resnets." in k for k in dropped if not k.startswith("mid_block."))  # resnets' norm2 stays
    kept = {f"unet.{k}" for k in base_keys - dropped}
    assert kept <= set(model.state_dict())


def test_loaded_model_is_plain(official) -> None:
    """No PEFT wrappers, nothing on the meta device, eval mode: ready for export."""
    _, model, report = official
    assert all(not p.is_meta for p in model.parameters())
    assert not any("lora_A" in name or "base_layer" in name for name in model.state_dict())
    assert not model.training
    assert report.merged_modules["unet"] > 0 and report.merged_modules["vae"] > 0


def test_variants_duplicated_processor_keys_and_focus_rank(tmp_path: Path) -> None:
    """Focus tensors repeated in state_dict_unet, a focus rank that differs from the config's
    (taken from the checkpoint)."""
    checkpoint = write_official_checkpoint(
        tmp_path, "tiny", seed=3, unet_rank=2, vae_rank=5, focus_rank=3, processor_keys_in_unet_dict=True,
    )
    model, report = load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl, "tiny")
    assert model.config.focus_rank == 3 and report.focus_rank == 3
    assert all(p.rank == 3 for p in model.focus_processors().values())
    assert report.consumed == checkpoint.lora_keys
    # Weight-level check against PEFT's own merge (the forward-pass check is done above).
    merged = _peft_merged_state(checkpoint.reference)
    state = model.state_dict()
    assert set(merged) == set(state)
    worst = max((state[k] - merged[k]).abs().max().item() for k in state)
    assert worst < WEIGHT_ATOL


# -- errors -----------------------------------------------------------------------------------
def test_legacy_format_is_refused_unread(tmp_path: Path) -> None:
    """A legacy (non-zip) torch.save stream is a pickle stream the loader never interprets."""
    checkpoint = write_official_checkpoint(tmp_path, "tiny", seed=3, legacy_format=True)
    with pytest.raises(CorruptCheckpointError, match="legacy torch.save stream") as info:
        load_official(checkpoint.sd21_dir, checkpoint.lora_pkl, "tiny")
    assert "\n" not in str(info.value)


def _save_variant(official, path: Path, **changes) -> Path:
    """lora.pkl with some fields replaced/removed (controlnet stored as a state dict)."""
    checkpoint = official[0]
    contents = {k: (dict(v) if isinstance(v, dict) else v) for k, v in checkpoint.contents.items()}
    for key, value in changes.items():
        if value is None:
            contents.pop(key)
        else:
            contents[key] = value
    torch.save(contents, path)
    return path


def test_state_dict_controlnet_loads_too(official, tmp_path: Path) -> None:
    checkpoint, model, _ = official
    other = load_official(checkpoint.sd21_dir, _save_variant(official, tmp_path / "l.pkl"), "tiny")
    assert weights_sha256(other) == weights_sha256(model)


def test_extra_injector_tensors_are_reported(official, tmp_path: Path) -> None:
    checkpoint = official[0]
    controlnet = {**checkpoint.contents["controlnet"], "controlnet_mid_block.weight": torch.ones(32, 32, 1, 1),
                  "controlnet_mid_block.bias": torch.ones(32)}
    path = _save_variant(official, tmp_path / "extra.pkl", controlnet=controlnet)
    with pytest.raises(CheckpointMismatchError, match=r"controlnet_mid_block\.(bias|weight)"):
        load_official(checkpoint.sd21_dir, path, "tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = load_official_with_report(checkpoint.sd21_dir, path, "tiny", allow_extra_injector_keys=True)
    assert report.ignored_injector_keys == ["controlnet_mid_block.bias", "controlnet_mid_block.weight"]
    assert any("controlnet_mid_block" in str(w.message) for w in caught)


def test_wrong_config_names_the_field(official) -> None:
    """A named config is checked against the folder's config.json before any tensor is read."""
    checkpoint = official[0]
    with pytest.raises(CheckpointMismatchError, match=r"is not the 'small' configuration: block_out_channels is "
                                                      r"\(16, 32, 32, 32\) \(unet/config\.json block_out_channels\)"):
        load_official(checkpoint.sd21_dir, checkpoint.lora_pkl, "small")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rank_vae": None}, r"missing fields \['rank_vae'\]"),
        ({"optimizer_state": {"step": 3}}, r"unknown fields \['optimizer_state'\]"),
        ({"rank_unet": "4"}, r"rank_unet is '4', expected a positive integer"),
        ({"state_dict_attn": 0}, r"state_dict_attn is 0"),
        ({"controlnet": 7}, r"controlnet is a int"),
    ],
)
def test_malformed_fields(official, tmp_path: Path, change, message) -> None:
    path = _save_variant(official, tmp_path / "l.pkl", **change)
    with pytest.raises((CheckpointMismatchError, CorruptCheckpointError), match=message):
        load_official(official[0].sd21_dir, path, "tiny")


def _unet_dict_with(official, **updates) -> dict:
    state = dict(official[0].contents["state_dict_unet"])
    for key, value in updates.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


def test_lora_errors_name_the_module(official, tmp_path: Path) -> None:
    checkpoint = official[0]
    contents = checkpoint.contents
    first = contents["unet_lora_encoder_modules"][0]
    a_key, b_key = f"{first}.lora_A.default_encoder.weight", f"{first}.lora_B.default_encoder.weight"
    cases = {
        # A LoRA on the (removed) mid block.
        "mid": ({"state_dict_unet": _unet_dict_with(
            official, **{"mid_block.resnets.0.conv1.lora_A.default_encoder.weight": torch.ones(4, 32, 3, 3),
                         "mid_block.resnets.0.conv1.lora_B.default_encoder.weight": torch.ones(32, 4, 1, 1)})},
                r"mid_block\.resnets\.0\.conv1"),
        "half": ({"state_dict_unet": _unet_dict_with(official, **{b_key: None})}, rf"{first} has no lora_B"),
        "listed_without_tensors": ({"state_dict_unet": _unet_dict_with(official, **{a_key: None, b_key: None})},
                                   rf"lists 1 module\(s\) with no 'default_encoder' LoRA tensors: {first}"),
        "rank": ({"rank_unet": 8}, r"has rank 4, but rank_unet is 8"),
        "adapter": ({"state_dict_unet": _unet_dict_with(
            official, **{f"{first}.lora_A.default_others.weight": contents["state_dict_unet"][a_key],
                         f"{first}.lora_B.default_others.weight": contents["state_dict_unet"][b_key]})},
                    r"adapter 'default_others'"),
        "stray": ({"state_dict_vae": {**contents["state_dict_vae"], "decoder.something": torch.ones(2)}},
                  r"decoder\.something"),
        "focus": ({"processor_state_dict": {**contents["processor_state_dict"], "down_blocks.0.x": torch.ones(1)}},
                  r"down_blocks\.0\.x"),
    }
    for name, (change, message) in cases.items():
        path = _save_variant(official, tmp_path / f"{name}.pkl", **change)
        with pytest.raises(CheckpointMismatchError, match=message):
            load_official(checkpoint.sd21_dir, path, "tiny")


def test_base_folder_errors(official, tmp_path: Path) -> None:
    checkpoint = official[0]
    folder = tmp_path / "sd21"
    shutil.copytree(checkpoint.sd21_dir, folder)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    unet = load_file(str(unet_file))
    vae = load_file(str(vae_file))

    save_file({**unet, "add_embedding.linear_1.weight": torch.ones(2, 2)}, str(unet_file))
    with pytest.raises(CheckpointMismatchError, match=r"add_embedding\.linear_1\.weight"):
        load_official(folder, checkpoint.lora_pkl, "tiny")
    save_file(unet, str(unet_file))

    missing = "decoder.conv_out.weight"
    save_file({k: v for k, v in vae.items() if k != missing}, str(vae_file))
    with pytest.raises(CheckpointMismatchError, match=rf"vae\.{missing}"):
        load_official(folder, checkpoint.lora_pkl, "tiny")

    vae_file.write_bytes(vae_file.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match="vae"):
        load_official(folder, checkpoint.lora_pkl, "tiny")
    vae_file.unlink()
    with pytest.raises(CheckpointNotFoundError, match="none of the weight files"):
        load_official(folder, checkpoint.lora_pkl, "tiny")
    shutil.rmtree(folder / "vae")
    with pytest.raises(CheckpointNotFoundError, match="has no vae/ folder"):
        load_official(folder, checkpoint.lora_pkl, "tiny")
    with pytest.raises(CheckpointNotFoundError, match="nowhere"):
        load_official(tmp_path / "nowhere", checkpoint.lora_pkl, "tiny")
    with pytest.raises(CheckpointNotFoundError, match="missing.pkl"):
        load_official(checkpoint.sd21_dir, tmp_path / "missing.pkl", "tiny")

    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(checkpoint.lora_pkl.read_bytes()[:5000])
    with pytest.raises(CorruptCheckpointError, match="truncated.pkl"):
        load_official(checkpoint.sd21_dir, truncated, "tiny")


def test_old_vae_attention_names_and_bin_weights(official, tmp_path: Path) -> None:
    checkpoint, model, _ = official
    folder = tmp_path / "sd21"
    shutil.copytree(checkpoint.sd21_dir, folder)
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, tensor in load_file(str(vae_file)).items():
        for new, legacy in old.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        renamed[key] = tensor
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(vae_file))
    # ... and a UNet stored as diffusion_pytorch_model.bin (read by the checked torch.save archive reader).
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(unet_file)), unet_file.with_suffix(".bin"))
    unet_file.unlink()
    assert weights_sha256(load_official(folder, checkpoint.lora_pkl, "tiny")) == weights_sha256(model)


def test_load_model_and_convert_cli(official, tmp_path: Path, capsys) -> None:
    checkpoint, model, _ = official
    via_load_model = load_model(sd21=checkpoint.sd21_dir, lora=checkpoint.lora_pkl, config="tiny")
    assert weights_sha256(via_load_model) == weights_sha256(model)

    out = tmp_path / "magicbokeh-tiny.safetensors"
    argv = ["convert", "--sd21", str(checkpoint.sd21_dir), "--lora", str(checkpoint.lora_pkl), "--config", "tiny",
            "--out", str(out)]
    assert cli_main(argv) == 0
    assert weights_sha256(model) in capsys.readouterr().out
    assert read_native_config(out) == model.config
    converted = load_model(checkpoint=out)
    assert weights_sha256(converted) == weights_sha256(model)

    bad = ["convert", "--sd21", str(tmp_path / "nowhere"), "--lora", str(checkpoint.lora_pkl), "--config", "tiny",
           "--out", str(tmp_path / "x.safetensors")]
    assert cli_main(bad) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_sd21_scale_conversion(tmp_path: Path) -> None:
    """Real SD2.1-base shapes (1.05 B parameters; ~13 GB RAM, a few minutes): every key consumed,
    merged weights equal PEFT's own merge, and the native file round-trips."""
    checkpoint = write_official_checkpoint(tmp_path, "sd21", seed=0)
    merged = _peft_merged_state(checkpoint.reference)
    checkpoint.reference = None  # the merged tensors above are all that is kept
    model, report = load_official_with_report(checkpoint.sd21_dir, checkpoint.lora_pkl, "sd21")
    assert report.consumed == checkpoint.lora_keys
    state = model.state_dict()
    assert set(state) == set(merged)
    assert max((state[k] - merged[k]).abs().max().item() for k in state) < WEIGHT_ATOL
    del merged, state
    out = tmp_path / "magicbokeh-sd21.safetensors"
    from runtime_py.checkpoints import save_native

    save_native(model, out)
    assert weights_sha256(load_model(checkpoint=out, config="sd21")) == weights_sha256(model)
