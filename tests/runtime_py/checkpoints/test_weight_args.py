"""The shared weight flags: every command refuses the same mistakes and loads the same way."""

from __future__ import annotations

import argparse

import pytest

from runtime_py.checkpoints import save_native
from runtime_py.checkpoints.weight_args import (
    WeightArgumentError,
    add_weight_arguments,
    load_weights,
    uses_checkpoint,
)
from runtime_py.model import build_model


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_weight_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["--sd21", "x"], "go together"),
    (["--lora", "x"], "go together"),
    (["--sd21", "a", "--lora", "b", "--checkpoint", "c"], "not both"),
    (["--checkpoint", "/nonexistent/file.safetensors"], "weights not found"),
])
def test_contradictory_or_missing_sources_are_refused(argv, message):
    with pytest.raises(WeightArgumentError, match=message):
        load_weights(_parse(argv))


def test_builtin_model_by_default_and_config_is_checked():
    args = _parse(["--config", "tiny"])
    assert not uses_checkpoint(args)
    model, label = load_weights(args)
    assert model.config.name == "tiny" and label["kind"] == "structural-test"
    with pytest.raises(WeightArgumentError, match="not built in"):
        load_weights(_parse([]), default_config="sd99")


def test_native_checkpoint_loads_with_a_label_and_a_bad_file_is_a_clear_error(tmp_path):
    path = save_native(build_model("tiny", seed=3), tmp_path / "m.safetensors")
    args = _parse(["--checkpoint", str(path)])
    assert uses_checkpoint(args)
    model, label = load_weights(args)
    assert model.config.name == "tiny" and label["checkpoint"] == str(path) and label["kind"] == "checkpoint"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightArgumentError, match="cannot load the MagicBokeh weights"):
        load_weights(_parse(["--checkpoint", str(bad)]))
    with pytest.raises(WeightArgumentError, match="cannot load"):
        load_weights(_parse(["--checkpoint", str(path), "--config", "small"]))  # the file is tiny
