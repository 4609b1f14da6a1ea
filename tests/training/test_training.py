"""Training the default model: data built like the pipeline's tiles, resumable checkpoints, a loss that falls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runtime_py.contract import defocus_map
from runtime_py.model import build_model
from runtime_py.parity import psnr
from training.default_model.data import (
    PoolSpec,
    SceneTileDataset,
    TrainingDataError,
    build_scene_pool,
    load_scene_pool,
    tile_inputs,
)
from training.default_model.losses import bokeh_loss, gradient_energy, ssim, ssim_np
from training.default_model.trainer import (
    TrainConfig,
    TrainingError,
    load_checkpoint,
    lr_factor,
    save_checkpoint,
    train,
)

POOL = PoolSpec(first_seed=0, count=4, size=64, apertures=((4, 16), (17, 32)))


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    return build_scene_pool(POOL, tmp_path_factory.mktemp("pool") / POOL.file_name(), log_every=0)


def test_pool_holds_scenes_and_teachers(pool_file):
    pool = load_scene_pool(pool_file)
    assert pool["clean"].shape == (4, 64, 64, 3) and pool["teachers"].shape == (4, 2, 64, 64, 3)
    assert pool["k_values"].shape == (4, 2)
    assert ((pool["k_values"][:, 0] >= 4) & (pool["k_values"][:, 0] <= 16)).all()
    assert ((pool["k_values"][:, 1] >= 17) & (pool["k_values"][:, 1] <= 32)).all()
    both = load_scene_pool([pool_file, pool_file])  # shards concatenate
    assert both["clean"].shape[0] == 8


def test_missing_pool_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_scene_pool(tmp_path / "nope.npz")


def test_dataset_samples_are_the_pipelines_tile_inputs(pool_file):
    dataset = SceneTileDataset(load_scene_pool(pool_file), crop=64, length=10, seed=3)
    sample = dataset[5]
    assert sample["x"].shape == (3, 64, 64) and sample["defocus"].shape == (1, 64, 64)
    assert sample["x"].min() >= -1 and sample["x"].max() <= 1
    assert torch.equal(sample["in_focus"], (sample["defocus"] <= 0.1).float())
    again = SceneTileDataset(load_scene_pool(pool_file), crop=64, length=10, seed=3)[5]
    assert all(torch.equal(sample[k], again[k]) for k in sample)  # reproducible per index
    with pytest.raises(TrainingDataError, match="multiple of 64"):
        SceneTileDataset(load_scene_pool(pool_file), crop=48, length=1)


def test_tile_inputs_follow_the_model_contract():
    depth = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    image = np.full((64, 64, 3), 0.5, np.float32)
    inputs = tile_inputs(image, depth, 0.5, 16)
    np.testing.assert_array_equal(inputs["defocus"][0, 0].numpy(), defocus_map(depth, 0.5, 16))
    np.testing.assert_array_equal(inputs["in_focus"][0, 0].numpy(), (defocus_map(depth, 0.5, 16) <= 0.1).astype(np.float32))
    # A model configuration's own threshold reaches the mask.
    wide = tile_inputs(image, depth, 0.5, 16, in_focus_threshold=0.2)
    assert wide["in_focus"].sum() > inputs["in_focus"].sum()
    assert torch.allclose(inputs["x"], torch.zeros_like(inputs["x"]))  # 0.5 -> 0 in [-1, 1]


def test_losses_and_metrics():
    a = torch.rand(1, 3, 32, 32)
    assert abs(float(ssim(a, a)) - 1.0) < 1e-6
    terms = bokeh_loss(a * 2 - 1, a * 2 - 1)
    assert float(terms["total"]) < 1e-6
    img = np.random.default_rng(0).random((32, 32, 3))
    assert psnr(img, img, peak=1.0) == float("inf")
    assert abs(ssim_np(img, img) - 1.0) < 1e-9
    assert gradient_energy(np.full((8, 8, 3), 0.3)) == 0.0
    assert psnr(img, np.clip(img + 0.1, 0, 1), peak=1.0) < psnr(img, np.clip(img + 0.01, 0, 1), peak=1.0)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(pool_files=["x"], run_dir="x", autoencoder_steps=10, total_steps=110, warmup_steps=5)
    assert lr_factor(0, cfg) == pytest.approx(0.2)
    assert lr_factor(9, cfg) == 1.0
    assert lr_factor(14, cfg) == pytest.approx(1.0, abs=0.01)
    assert lr_factor(109, cfg) < 0.1


def test_bad_config_is_named():
    with pytest.raises(TrainingError, match="autoencoder_steps"):
        TrainConfig(pool_files=["x"], run_dir="x", autoencoder_steps=5, total_steps=5).validate()
    with pytest.raises(TrainingError, match="schedule"):
        TrainConfig(pool_files=["x"], run_dir="x", schedule="fast").validate()


def test_checkpoint_round_trip(tmp_path):
    model = build_model("tiny", seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, 128, 128), torch.zeros(1, 1, 128, 128), torch.ones(1, 1, 128, 128)).mean().backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, optimizer, {"step": 7, "history": []})
    fresh = build_model("tiny", seed=2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    meta = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert meta["step"] == 7
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(p, q), name
    state, restored = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg"], restored[i]["exp_avg"]) for i in state)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot be read"):
        load_checkpoint(tmp_path, fresh)


def test_thirty_steps_on_tiny_reduce_the_loss_and_resume(pool_file, tmp_path):
    config = TrainConfig(
        pool_files=[str(pool_file)], run_dir=str(tmp_path / "run"), model_config="tiny", crop=64, batch_size=2,
        autoencoder_steps=0, total_steps=30, lr=1e-3, warmup_steps=3, log_every=5, checkpoint_every=10,
        num_workers=0, threads=1, max_minutes=5.0, vae_init="random", zero_unet_output=False,
    )
    logs: list[str] = []
    result = train(config, resume=False, log=logs.append)
    assert result.steps_done == 30 and result.stopped_by == "steps"
    losses = [h["total"] for h in result.history]
    # A random one-step model starts far off (a random VAE; at tiny's t = 999 x0 = 15 z); 30
    # steps of Adam must at least take a third off the loss of the first logged window.
    assert losses[-1] < 0.67 * losses[0], losses
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["step"] == 30
    # Resuming a finished run trains nothing more and keeps its weights.
    config.total_steps = 30
    again = train(config, resume=True, log=logs.append)
    assert again.steps_done == 30
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()))


def test_analytic_vae_start_makes_the_first_output_a_reconstruction(pool_file, tmp_path):
    """With the analytic VAE, a zero UNet output and the default model's t = 50, the untrained
    model already returns (a 1 / sqrt(a) = 1.025 brighter copy of) its input; a random VAE does not."""
    import math

    from training.default_model.data import load_scene_pool

    layout = {"vae_block_out_channels": [16, 16, 16], "vae_norm_num_groups": 4, "latent_channels": 4,
              "cond_embedding_channels": [8, 8, 16],
              "timestep": 50}
    pool = load_scene_pool([pool_file])
    x = torch.from_numpy(pool["degraded"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    fidelity = {}
    for init in ("analytic", "random"):
        config = TrainConfig(pool_files=[str(pool_file)], run_dir=str(tmp_path / init), model_config="tiny",
                             model_overrides=layout, crop=64, batch_size=1, autoencoder_steps=0, total_steps=1,
                             lr=0.0, num_workers=0, threads=1, vae_init=init)
        model = train(config, resume=False, log=lambda *_: None).model  # lr 0: the weights are the start
        d = torch.full((x.shape[0], 1, 64, 64), 0.5)
        with torch.no_grad():
            out = model(x, d, torch.zeros_like(d))
        fidelity[init] = 10 * math.log10(4.0 / float(((out - x) ** 2).mean()))
    assert fidelity["analytic"] > 20.0 and fidelity["random"] < 15.0, fidelity  # measured 30.4 and 13.0 dB
    # tiny's own VAE has no room for the analytic start: a clear training error, nothing written.
    config = TrainConfig(pool_files=[str(pool_file)], run_dir=str(tmp_path / "tiny"), model_config="tiny", crop=64,
                         batch_size=1, autoencoder_steps=0, total_steps=1, num_workers=0, threads=1)
    with pytest.raises(TrainingError, match="use --vae-init random"):
        train(config, resume=False, log=lambda *_: None)
    assert not (tmp_path / "tiny").exists()


def test_pack_keeps_the_model_in_fp16_and_drops_the_optimiser(tmp_path):
    from training.default_model.trainer import pack_checkpoint

    model = build_model("tiny", seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, 128, 128), torch.zeros(1, 1, 128, 128), torch.ones(1, 1, 128, 128)).mean().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "run", model, optimizer, {"step": 3, "history": [], "config": {"crop": 64}})
    packed = pack_checkpoint(tmp_path / "run", tmp_path / "packed")
    assert (packed / "checkpoint.safetensors").stat().st_size < (tmp_path / "run" / "checkpoint.safetensors").stat().st_size / 4
    assert "optimizer" not in json.loads((packed / "checkpoint.json").read_text())
    fresh = build_model("tiny", seed=2)
    assert load_checkpoint(packed, fresh)["step"] == 3
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(p.half().float(), q), name  # exactly the fp16 rounding, nothing else
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        pack_checkpoint(tmp_path / "nothing", tmp_path / "out")


def test_model_overrides_change_the_trained_configuration():
    from training.default_model.trainer import model_config_of

    base = TrainConfig(pool_files=["x"], run_dir="r", model_config="tiny")
    assert model_config_of(base).latent_channels == 4
    wide = TrainConfig(pool_files=["x"], run_dir="r", model_config="tiny", model_overrides={"latent_channels": 8})
    assert model_config_of(wide).latent_channels == 8 and model_config_of(wide).tile == 128
    with pytest.raises(TrainingError, match="bad model override"):
        model_config_of(TrainConfig(pool_files=["x"], run_dir="r", model_config="tiny", model_overrides={"nope": 1}))


def test_cli_parses_overrides_and_pool_shards():
    from export.train_default import parse_overrides, pool_specs

    assert parse_overrides(["latent_channels=16", "vae_block_out_channels=[8,16]"]) == {
        "latent_channels": 16, "vae_block_out_channels": (8, 16)}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["not_a_field=3"])
    specs = pool_specs(250, 64, 100)
    assert [(s.first_seed, s.count) for s in specs] == [(0, 100), (100, 100), (200, 50)]
    with pytest.raises(SystemExit):
        pool_specs(0, 64, 100)


def test_pool_shards_build_in_parallel_and_match_a_serial_build(tmp_path):
    from training.default_model.data import build_scene_pool_shards

    specs = [PoolSpec(0, 2, 64), PoolSpec(2, 2, 64)]
    paths = build_scene_pool_shards(specs, tmp_path / "par", workers=2)
    serial = build_scene_pool(specs[1], tmp_path / "one.npz", log_every=0)
    assert np.array_equal(load_scene_pool(paths[1])["teachers"], load_scene_pool(serial)["teachers"])
    mtime = paths[0].stat().st_mtime_ns
    build_scene_pool_shards(specs, tmp_path / "par", workers=2)  # present shards are kept, not rebuilt
    assert paths[0].stat().st_mtime_ns == mtime


def test_a_run_loads_with_its_overrides_and_cli_errors_are_clear(tmp_path, capsys):
    from export.train_default import main
    from training.default_model.trainer import load_trained_model

    model = build_model(build_model("tiny").config.replace(latent_channels=8), seed=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"pool_files": ["x"], "run_dir": str(tmp_path), "model_config": "tiny",
              "model_overrides": {"latent_channels": 8}}
    save_checkpoint(tmp_path / "run", model, optimizer, {"step": 2, "history": [], "config": config})
    loaded, state = load_trained_model(tmp_path / "run")
    assert loaded.config.latent_channels == 8 and state["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    for command in ("evaluate", "pack"):
        argv = [command, "--run-dir", str(tmp_path / "missing")] + (["--out", str(tmp_path / "o")] if command == "pack" else [])
        assert main(argv) == 2
        assert "no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written for a missing run
