"""Distillation building blocks: sampler, students, data, teachers, losses (tiny configs, fast)."""

from __future__ import annotations

import pytest
import torch

from runtime_py.components import tile_components
from training.distill import (
    STUDENT_CONFIGS,
    FoldedMagicBokeh,
    LossWeights,
    ModelTeacher,
    RendererTeacher,
    SceneTiles,
    SyntheticTiles,
    build_student,
    check_compatible,
    load_student,
    renderer_teacher,
    sample_latent,
    save_student,
    scene_generator_from_runtime,
)
from training.distill.cost import build_on_meta
from training.distill.losses import FeatureTaps, build_adapters, feature_loss
from runtime_py.model.sampling import sampling_timesteps
from runtime_py.model import build_model, get_config

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def teacher_model():
    return build_model("tiny", seed=0)


@pytest.fixture(scope="module")
def batch():
    return SyntheticTiles(TINY, seed=3).batch(0, 2)


def test_sampler_reproduces_reference_sample(teacher_model, batch):
    # Same schedule and the same noise draws as MagicBokeh.sample: identical ops, so equal to
    # float rounding (1e-5 on [-1, 1] outputs).
    ref = teacher_model.sample(batch.rgb, batch.defocus, batch.in_focus, num_steps=3,
                               generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = teacher_model.encode(batch.rgb)
        x0 = sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 3,
                           generator=torch.Generator().manual_seed(7), renoise="random")
        ours = teacher_model.decode(x0)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert sampling_timesteps(TINY, 4) == [999, 749, 500, 250]


def test_ddim_sampler_is_deterministic_and_one_step_is_forward(teacher_model, batch):
    with torch.no_grad():
        z = teacher_model.encode(batch.rgb)
        a = sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 4, renoise="ddim")
        b = sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 4, renoise="ddim")
        one = sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 1)
        assert torch.equal(a, b)
        assert torch.allclose(teacher_model.decode(one), teacher_model(batch.rgb, batch.defocus, batch.in_focus), atol=1e-6)
    with pytest.raises(ValueError, match="num_steps"):
        sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 0)
    with pytest.raises(ValueError, match="renoise"):
        sample_latent(teacher_model, z, batch.defocus, batch.in_focus, 2, renoise="euler")


def test_folded_student_fits_the_component_interface(batch):
    student = build_student("tiny-mobile", "folded", seed=0)
    assert isinstance(student, FoldedMagicBokeh) and not hasattr(student, "injector")
    comps = tile_components(student)
    for name, comp in comps.items():
        inputs = comp.example_inputs()
        with torch.no_grad():
            out = comp(*inputs)
        assert tuple(out.shape) == comp.output_specs()[0].shape, name
    # The defocus map reaches the UNet through the folded conditioning embedding.
    den = comps["denoiser"]
    latent, defocus, in_focus = den.example_inputs()
    with torch.no_grad():
        assert not torch.allclose(den(latent, defocus, in_focus), den(latent, defocus * 0.0, in_focus))
    student.set_focus_implementation("split")
    with torch.no_grad():
        split = den(latent, defocus, in_focus)
    student.set_focus_implementation("bias")
    with torch.no_grad():
        bias = den(latent, defocus, in_focus)
    assert torch.allclose(split, bias, atol=1e-4)  # the two focus realisations are the same maths


def test_student_init_from_teacher_and_save_load(teacher_model, batch, tmp_path):
    copy = build_student("tiny", "magicbokeh", seed=5, init_from=teacher_model)
    with torch.no_grad():
        assert torch.equal(copy(batch.rgb, batch.defocus, batch.in_focus),
                           teacher_model(batch.rgb, batch.defocus, batch.in_focus))
    folded = build_student("tiny", "folded", seed=5, init_from=teacher_model)
    emb_t = teacher_model.injector.controlnet_cond_embedding.conv_in.weight
    assert torch.equal(folded.cond_embedding.conv_in.weight, emb_t)
    path = save_student(folded, tmp_path / "student")
    again = load_student(path)
    assert isinstance(again, FoldedMagicBokeh) and again.config == folded.config
    with torch.no_grad():
        assert torch.equal(again(batch.rgb, batch.defocus, batch.in_focus), folded(batch.rgb, batch.defocus, batch.in_focus))
    with pytest.raises(FileNotFoundError, match="not a saved student"):
        load_student(tmp_path)


def test_student_configs_build_and_fit_their_teachers():
    teacher_params = {}
    for name, cfg in STUDENT_CONFIGS.items():
        check_compatible(get_config(cfg.extra["teacher"]), cfg)
        if cfg.extra["teacher"] not in teacher_params:
            teacher = build_on_meta(cfg.extra["teacher"])
            teacher_params[cfg.extra["teacher"]] = sum(p.numel() for p in teacher.parameters())
        for arch in ("magicbokeh", "folded"):
            model = build_on_meta(cfg, arch)
            assert sum(p.numel() for p in model.parameters()) < teacher_params[cfg.extra["teacher"]], name
    with pytest.raises(ValueError, match="tile"):
        check_compatible(get_config("small"), STUDENT_CONFIGS["tiny-mobile"])
    with pytest.raises(ValueError, match="unknown student configuration"):
        build_student("huge")
    with pytest.raises(ValueError, match="architecture"):
        build_student("tiny-mobile", "transformer")


def test_synthetic_tiles_are_deterministic_and_in_range():
    src = SyntheticTiles(TINY, seed=1)
    a, b = src.batch(4, 3), src.batch(4, 3)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.defocus, b.defocus)
    assert not torch.equal(a.rgb, src.batch(5, 3).rgb)
    assert a.rgb.shape == (3, 3, 128, 128) and a.rgb.min() >= -1 and a.rgb.max() <= 1
    assert a.defocus.min() >= 0 and a.defocus.max() <= 1
    # in_focus follows the contract: 1 exactly where defocus <= threshold; the focus depth occurs in the tile.
    assert torch.equal(a.in_focus, (a.defocus <= TINY.defocus_in_focus_threshold).float())
    assert (a.in_focus.flatten(1).sum(1) > 0).all()
    pooled = SyntheticTiles(TINY, seed=1, period=2)
    assert torch.equal(pooled.batch(0, 1).rgb, pooled.batch(2, 1).rgb)


def test_scene_tiles_and_renderer_teacher_agree():
    src = SceneTiles(TINY, scene_generator_from_runtime(TINY), seed=0)
    batch = src.batch(0, 2)
    assert batch.rgb.shape == (2, 3, 128, 128) and batch.target is not None
    assert batch.rgb.min() >= -1 and batch.rgb.max() <= 1
    stored = renderer_teacher(precomputed=True)(batch).rgb
    rendered = renderer_teacher()(batch).rgb
    # The scene's stored teacher is the same renderer on the same clean image (float32 round trip).
    assert torch.allclose(stored, rendered, atol=1e-5)
    with pytest.raises(ValueError, match="batch.target"):
        RendererTeacher()(SyntheticTiles(TINY).batch(0, 1))


def test_model_teacher_outputs(teacher_model, batch):
    out = ModelTeacher(teacher_model, num_steps=2)(batch)
    assert out.rgb.shape == batch.rgb.shape and out.x0.shape == out.latent.shape == (2, 4, 16, 16)
    assert out.rgb.abs().max() <= 1.0
    with pytest.raises(ValueError, match="num_steps"):
        ModelTeacher(teacher_model, num_steps=0)


def test_feature_taps_adapters_and_loss(teacher_model, batch):
    names = ["unet.down_blocks.0", "unet.up_blocks.3", "vae.decoder.up_blocks.0"]
    taps = FeatureTaps(teacher_model, names)
    with torch.no_grad():
        teacher_model.sample(batch.rgb, batch.defocus, batch.in_focus, num_steps=2)
    feats = taps.take()
    assert set(feats) == set(names) and feats["unet.down_blocks.0"].ndim == 4
    taps.remove()
    shapes = {n: f.shape for n, f in feats.items()}
    adapters = build_adapters(shapes, shapes)
    # Equal channel counts start as the identity: a copy of the teacher has zero feature loss.
    assert float(feature_loss(adapters, feats, feats).detach()) < 1e-10
    with pytest.raises(ValueError, match="no modules named"):
        FeatureTaps(teacher_model, ["unet.nothing"])
    with pytest.raises(ValueError, match="must be >= 0"):
        LossWeights(pixel=-1.0)


@pytest.mark.slow
def test_sd21_scale_mobile_student_runs_a_512_tile():
    # The phone student at full tile size, real (random) weights: every component runs at 512 px.
    student = build_student("sd21-mobile", "folded", seed=0)
    comps = tile_components(student)
    with torch.no_grad():
        for name, comp in comps.items():
            out = comp(*comp.example_inputs())
            assert tuple(out.shape) == comp.output_specs()[0].shape, name
            assert torch.isfinite(out).all(), name
