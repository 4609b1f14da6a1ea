"""Issue 17's evaluation: the fine_texture family, the in-focus figures against the (latent-low-passed)
input, the moire indicator, simulated W8A8 per component, the compute record and the card."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime_py.bokeh_renderer import gaussian_blur
from runtime_py.parity import psnr
from runtime_py.scenes import EVALUATION_ONLY_FAMILIES, FINE_STRIPE_REFERENCE_PERIOD, generate_scene
from training.default_model.evaluate import in_focus_fidelity, latent_lowpass, moire_indicator

SIZE = 192  # fine_texture's first patch is then >= 40 px: a 3-px period is 13+ cycles, well resolved
FACTOR = 4  # the default model's VAE factor (the figures take it as an argument)


def _stripes(shape: tuple[int, int], period: float, amplitude: float = 0.25, angle: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    t = 0.5 + amplitude * np.sin(2 * np.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    return np.repeat(t[..., None], 3, axis=2).astype(np.float32)


def _peak(image: np.ndarray) -> tuple[float, float]:
    """(radial frequency in cycles/px, amplitude) of the strongest non-DC component of the luminance."""
    lum = image.mean(axis=2)
    lum = (lum - lum.mean()) * np.hanning(lum.shape[0])[:, None] * np.hanning(lum.shape[1])[None, :]
    spectrum = np.abs(np.fft.fft2(lum))
    fy, fx = np.fft.fftfreq(lum.shape[0])[:, None], np.fft.fftfreq(lum.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    spectrum[radius < 0.05] = 0.0  # ignore the smooth content
    index = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    return float(radius[index]), float(spectrum[index])


# -- the fine_texture family ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fine_scene():
    return generate_scene(11, SIZE, "fine_texture")


def test_fine_texture_is_deterministic_and_mostly_in_focus(fine_scene):
    again = generate_scene(11, SIZE, "fine_texture")
    for name in ("clean", "degraded", "depth", "mask", "teacher"):
        assert np.array_equal(getattr(fine_scene, name), getattr(again, name)), name
    assert fine_scene.mask.mean() >= 0.5  # "most of the frame": the panel covers 60-85 % of it
    assert "fine_texture" in EVALUATION_ONLY_FAMILIES


def test_fine_texture_input_keeps_the_3px_stripes(fine_scene):
    # The first patch of the panel (top-left cell) always carries 3-px stripes; a third of the
    # panel's box is inside that cell for both 2 x 2 and 3 x 3 grids.
    rows, cols = np.flatnonzero(fine_scene.mask.any(1)), np.flatnonzero(fine_scene.mask.any(0))
    h, w = (rows[-1] - rows[0]) // 3, (cols[-1] - cols[0]) // 3
    window = (slice(rows[0], rows[0] + h), slice(cols[0], cols[0] + w))
    f_clean, a_clean = _peak(fine_scene.clean[window])
    f_given, a_given = _peak(fine_scene.degraded[window])
    # Frequency bins of a ~45-px window are ~0.022 cycles/px apart: the peak must sit within two
    # bins of 1/3 in both images.
    assert abs(f_clean - 1 / FINE_STRIPE_REFERENCE_PERIOD) < 0.045
    assert abs(f_given - 1 / FINE_STRIPE_REFERENCE_PERIOD) < 0.045
    # No zoom, <= 0.2 px blur, JPEG >= 85: the stripes reach the input with most of their amplitude
    # (a 2x zoom would remove them entirely).
    assert a_given >= 0.7 * a_clean


def test_evaluation_only_families_stay_out_of_training_pools_and_calibration(tmp_path):
    from runtime_py.samples import scene_samples
    from training.default_model.data import PoolSpec, TrainingDataError, build_scene_pool

    with pytest.raises(TrainingDataError, match="evaluation only"):
        build_scene_pool(PoolSpec(0, 1, 64, family="fine_texture"), tmp_path / "pool.npz")
    assert not any("fine_texture" in s.name for s in scene_samples(3, 64))


# -- the in-focus figures ------------------------------------------------------------------------------


def test_identity_output_scores_the_known_psnr_against_the_low_passed_input():
    given = _stripes((96, 96), period=3.0, amplitude=0.25)
    mask = np.zeros((96, 96), bool)
    mask[16:-16, 16:-16] = True  # away from the image border, where the resampling kernels are cut
    figures = in_focus_fidelity(given, given, mask, FACTOR)
    # A 3-px stripe lies far above the 8-px latent Nyquist period: the low-pass keeps only the mean
    # 0.5, so the identity output's error is the stripe itself, RMSE = 0.25 / sqrt(2): 15.05 dB.
    # Lanczos-3's stop band passes a few per cent of that amplitude, under 0.3 dB.
    expected = 20 * math.log10(1.0 / (0.25 / math.sqrt(2)))
    assert figures["psnr_in_focus_vs_lowpass"] == pytest.approx(expected, abs=0.3)
    assert figures["psnr_in_focus_vs_input"] == math.inf
    assert figures["moire_in_focus"] == 0.0 and figures["sharpness_in_focus_vs_input"] == 1.0


def test_a_blurred_output_is_closer_to_the_low_passed_input_than_to_the_input():
    rng = np.random.default_rng(0)
    given = np.clip(_stripes((96, 96), 3.0) + gaussian_blur(rng.random((96, 96, 3)).astype(np.float32), 4.0) - 0.5, 0, 1)
    blurred = gaussian_blur(given, 2.0)
    mask = np.ones((96, 96), bool)
    figures = in_focus_fidelity(blurred, given, mask, FACTOR)
    assert figures["psnr_in_focus_vs_lowpass"] > figures["psnr_in_focus_vs_input"] + 3.0
    assert figures["sharpness_in_focus_vs_input"] < 0.5
    assert figures["psnr_in_focus_vs_input"] == pytest.approx(psnr(given, blurred, peak=1.0), abs=1e-9)


def test_latent_lowpass_keeps_coarse_content_and_refuses_bad_input():
    coarse = _stripes((64, 64), period=32.0)
    assert psnr(coarse, latent_lowpass(coarse, FACTOR), peak=1.0) > 30.0  # far below the latent Nyquist
    with pytest.raises(ValueError, match="factor"):
        latent_lowpass(coarse[..., 0], FACTOR)


def test_moire_indicator_flags_aliasing_not_blur():
    shape = (128, 128)
    given = _stripes(shape, period=3.0)
    # What sampling a 3-px stripe every 4 px makes of it: the same stripe at a 12-px period.
    aliased = _stripes(shape, period=12.0)
    mask = np.ones(shape, bool)
    moire_aliased = moire_indicator(aliased, given, mask, FACTOR)
    moire_blurred = moire_indicator(gaussian_blur(given, 1.5), given, mask, FACTOR)
    # All of the stripe's energy comes back below the latent Nyquist frequency, attenuated by the
    # two Lanczos passes at 1/3 of the latent grid's band (gain ~0.8 each way -> ~0.6 in energy).
    assert moire_aliased > 0.4
    assert moire_blurred < 0.05
    assert moire_indicator(given, given, mask, FACTOR) == 0.0
    assert math.isnan(moire_indicator(given, given, np.zeros(shape, bool), FACTOR))


# -- compute, W8A8, card -------------------------------------------------------------------------------


def test_compute_record_counts_the_attention_the_config_implies():
    from runtime_py.model import get_config
    from training.default_model.evaluate import compute_record

    config = get_config("tiny")
    record = compute_record(config)
    lt = config.latent_tile
    grids = [(lt // 2**level) ** 2 for level, on in enumerate(config.attention_levels) if on]
    if getattr(config, "vae_mid_block_attention", True):
        grids.append(lt * lt)  # the VAE's mid blocks attend over every latent pixel
    assert record["max_attention_tokens"] == max(grids)
    for name in ("encoder", "denoiser", "decoder"):
        c = record["components"][name]
        assert c["params"] > 0 and c["flops"] > 0 and c["peak_live_activation_bytes"] > 0
        assert c["memory_mib"] == pytest.approx((4 * c["params"] + c["peak_live_activation_bytes"]) / 2**20)
    assert record["attention_within_limit"] == (record["max_attention_tokens"] <= record["attention_token_limit"])


def test_simulated_w8a8_gives_finite_psnr_per_component_on_tiny():
    pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", reason="ExecuTorch is not installed")
    import torch

    from export.quant_simulation import simulate_w8a8
    from runtime_py.default_model import load_default_model
    from training.default_model.evaluate import QUANTIZATION_FIRST_SEED, held_out_tiles

    torch.manual_seed(0)
    model, _ = load_default_model("tiny")
    calibration = held_out_tiles(model, 1, QUANTIZATION_FIRST_SEED)
    measured_on = held_out_tiles(model, 1, QUANTIZATION_FIRST_SEED + 1)
    result = simulate_w8a8(model, calibration, measured_on)
    assert set(result["components"]) == {"encoder", "denoiser", "decoder"}
    for name, figures in result["components"].items():
        # 8-bit rounding moves every output a little (not identical) and far less than the signal.
        assert math.isfinite(figures["psnr_db"]) and figures["psnr_db"] > 10.0, name
    assert math.isfinite(result["chain"]["psnr_db"])
    assert (result["calibration_tiles"], result["evaluation_tiles"]) == (1, 1)


def test_card_renders_with_and_without_previous_metrics(tmp_path):
    from runtime_py.default_model import DEFAULT_METRICS
    from runtime_py.model import MagicBokeh, get_config
    from training.default_model.model_card import NOT_MEASURED, comparison_rows, measure_model, write_model_card

    shipped = json.loads(DEFAULT_METRICS.read_text())
    model = MagicBokeh(get_config("tiny")).eval()
    measured, _ = measure_model(model, num_scenes=1, eval_size=128, fine_texture_scenes=1, training_scale=False)
    metrics = shipped | measured
    metrics.pop("comparison", None)  # the shipped card's own before/after table: this card has none
    metrics["evaluation"] = shipped["evaluation"] | measured["evaluation"]
    card = write_model_card(tmp_path, metrics).read_text()
    for heading in ("## In focus", "## Simulated 8-bit (W8A8) per component", "## Compute per tile"):
        assert heading in card
    assert "fine_texture (held out, evaluation only)" in card and "Before / after" not in card
    assert f"{metrics['compute']['max_attention_tokens']:,} tokens" in card

    previous = {"generated_utc": "earlier", "architecture": {"parameters": 123},
                "evaluation": {"dead_leaves (held out)": shipped["evaluation"]["dead_leaves (held out)"]}}
    rows = comparison_rows(metrics, previous)
    by_name = {r["figure"]: r for r in rows}
    assert by_name["parameters"]["previous"] == 123
    assert by_name["GFLOP per tile"]["previous"] is None  # absent from the previous file: not invented
    metrics["comparison"] = {"sources": ["v1.json"], "previous_generated": "earlier", "rows": rows}
    card = write_model_card(tmp_path, metrics).read_text()
    assert "## Before / after" in card and "`v1.json`" in card
    assert f"| GFLOP per tile | {NOT_MEASURED} |" in card


def test_finish_refuses_a_missing_previous_metrics_file(tmp_path, capsys):
    from export.train_default import main

    with pytest.raises(SystemExit, match="previous-metrics .* does not exist"):
        main(["finish", "--run-dir", str(tmp_path), "--previous-metrics", str(tmp_path / "absent.json")])
