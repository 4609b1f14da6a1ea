"""The built-in default model: the shipped trained weights load, and a broken install says so."""

from __future__ import annotations

import shutil

import pytest
import torch

from runtime_py.default_model import (
    DEFAULT_WEIGHTS,
    STRUCTURAL_DESCRIPTION,
    DefaultModelError,
    load_default_model,
)
from runtime_py.model import MagicBokeh

MAX_SHIPPED_BYTES = 20 * 1024 * 1024


def test_shipped_weights_are_small_enough_and_documented():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size <= MAX_SHIPPED_BYTES
    card = DEFAULT_WEIGHTS.parent / "MODEL_CARD.md"
    assert card.is_file() and "PSNR" in card.read_text()
    assert (DEFAULT_WEIGHTS.parent / "metrics.json").is_file()


def test_default_model_is_the_trained_small_model():
    model, label = load_default_model()
    assert isinstance(model, MagicBokeh) and model.config.name == "small" and not model.training
    assert label["kind"] == "trained-default" and label["weights"] == DEFAULT_WEIGHTS.name
    assert len(label["weights_sha256"]) == 64
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored fp16, run fp32


def test_other_configurations_get_the_labelled_structural_model():
    model, label = load_default_model("tiny")
    assert model.config.name == "tiny" and label["description"] == STRUCTURAL_DESCRIPTION


def test_missing_weights_are_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DefaultModelError, match="missing"):
        load_default_model(weights_path=tmp_path / "absent.safetensors")


def test_corrupt_weights_are_an_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    shutil.copyfile(DEFAULT_WEIGHTS, broken)
    data = bytearray(broken.read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 2]))  # truncated download
    with pytest.raises(DefaultModelError, match="cannot be loaded"):
        load_default_model(weights_path=broken)
    flipped = tmp_path / "flipped.safetensors"
    data[-100] ^= 0xFF  # one damaged weight byte: caught by the stored sha256
    flipped.write_bytes(bytes(data))
    with pytest.raises(DefaultModelError, match="cannot be loaded"):
        load_default_model(weights_path=flipped)


def test_the_label_quotes_the_measured_held_out_figures(tmp_path):
    import json

    from runtime_py.default_model import DEFAULT_METRICS, HELD_OUT_SET, trained_description

    held = json.loads(DEFAULT_METRICS.read_text())["evaluation"][HELD_OUT_SET]
    text = trained_description()
    assert f"{held['model']['psnr']:.2f} dB" in text and f"{held['input']['psnr']:.2f} dB" in text
    assert f"{held['gaussian_blur']['psnr']:.2f} dB" in text
    assert load_default_model()[1]["description"] == text
    assert "not measured" in trained_description(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    assert "not measured" in trained_description(tmp_path / "bad.json")


@pytest.mark.slow
def test_a_held_out_card_figure_is_measured_again():
    """The card's figures come from metrics.json; re-measure one of them from the shipped weights.

    The first held-out 512-px scene is generated again from its seed and run through the default
    model as the card's ``finish`` step did (the shipped fp16-rounded weights, float32 compute, one
    thread). Tolerances: the scene's input figure is pure numpy on regenerated data, so it must
    agree to 1e-6 dB (anything else means the scene generator or renderer changed and the card no
    longer describes this code). The model figure differs only by float32 summation order between
    machines and thread counts (~1e-4 dB at most on a 512 x 512 image); 0.01 dB is far above that and
    far below what any change to the weights or the model's computation moves (tenths of a dB).
    """
    import json

    from runtime_py.default_model import DEFAULT_METRICS, HELD_OUT_SET
    from training.default_model.evaluate import evaluate_model

    held = json.loads(DEFAULT_METRICS.read_text())["evaluation"][HELD_OUT_SET]
    recorded = held["per_scene"][0]
    model, _ = load_default_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary, _ = evaluate_model(model, [recorded["seed"]], held["size"], held["family"])
    finally:
        torch.set_num_threads(threads)
    measured = summary["per_scene"][0]
    assert (measured["aperture_k"], measured["focus"]) == (recorded["aperture_k"], recorded["focus"])
    assert measured["input"]["psnr"] == pytest.approx(recorded["input"]["psnr"], abs=1e-6)
    assert measured["model"]["psnr"] == pytest.approx(recorded["model"]["psnr"], abs=0.01)
