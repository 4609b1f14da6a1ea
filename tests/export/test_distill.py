"""export/distill.py: the CLI, resumable training through it, and the cost report."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from training.distill.cost import count_flops

ROOT = Path(__file__).resolve().parents[2]


def _load_cli():
    spec = importlib.util.spec_from_file_location("distill_cli", ROOT / "export" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


def _train_args(out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--output", str(out), "--teacher-config", "tiny", "--teacher-steps", "2",
            "--student", "tiny-mobile", "--steps", str(steps), "--batch-size", "1", "--lr", "1e-3",
            "--warmup-steps", "2", "--save-every", "2", "--eval-every", "0", "--eval-batches", "1",
            "--no-progress", *extra]


def test_every_flag_is_explained():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in [parser, *subparsers.choices.values()]:
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (p.prog, action.dest)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0


def test_flop_counter_convention():
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate (bias additions not counted):
    # a (4 x 8) @ (8 x 16) product is 4 * 8 * 16 MACs.
    layer = nn.Linear(8, 16)
    assert count_flops(lambda: layer(torch.zeros(4, 8))) == 2 * 4 * 8 * 16


def test_cost_report_teacher_and_students(tmp_path):
    code = cli.main(["cost", "--teacher-config", "sd21", "--teacher-steps", "4", "--students",
                     "sd21/folded/1", "sd21-mobile/folded/1", "sd21-mobile-xs/folded/2", "--output", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "cost_report.json").read_text())
    assert "| model |" in (tmp_path / "cost_report.md").read_text()
    teacher, *students = report["models"]
    assert teacher["role"] == "teacher" and teacher["denoiser_steps"] == 4
    for m in report["models"]:
        assert all(m[c]["params"] > 0 and m[c]["flops"] > 0 for c in ("encoder", "denoiser", "decoder"))
        assert m["flops_per_tile"] == m["encoder"]["flops"] + m["denoiser_steps"] * m["denoiser"]["flops"] \
            + m["decoder"]["flops"]
    # SD2.1 scale: UNet + injector near a billion parameters; the VAE dominates one step's FLOPs.
    assert 0.9e9 < teacher["denoiser"]["params"] < 1.1e9
    assert teacher["encoder"]["flops"] + teacher["decoder"]["flops"] > 2 * teacher["denoiser"]["flops"]
    for m in students:
        assert m["params"] < teacher["params"] and m["flops_per_tile"] < teacher["flops_per_tile"]
    folded = students[0]
    # Folding the injector away removes its parameters and compute, nothing else.
    assert folded["denoiser"]["params"] < teacher["denoiser"]["params"]
    assert folded["decoder"] == teacher["decoder"] and folded["encoder"] == teacher["encoder"]
    assert students[1]["flops_vs_teacher"] < 0.1


def test_report_only_writes_the_default_report(tmp_path):
    assert cli.main(["--report-only", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cost_report.json").read_text())
    assert report["teacher"] == "sd21" and len(report["models"]) >= 4


def test_cli_training_resumes_exactly(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(_train_args(straight, 4)) == 0
    # A zero time limit stops after the first step, with a checkpoint and no final student.
    assert cli.main(_train_args(split, 4, "--time-limit", "0")) == 0
    assert (split / "checkpoints" / "step-00000001").is_dir() and not (split / "student").exists()
    assert json.loads((split / "summary.json").read_text())["stopped_early"] is True
    assert cli.main(_train_args(split, 4)) == 0  # the same command again resumes at step 1
    records = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    summary = json.loads((split / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["student"]["architecture"] == "folded"
    # Data, noise, optimizer and scheduler state all come back: the resumed run is the straight run.
    a = load_file(str(straight / "student" / "model.safetensors"))
    b = load_file(str(split / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    # Progressive chaining: the trained (folded) student teaches a copy of itself with fewer steps.
    chained = tmp_path / "chained"
    argv = ["train", "--output", str(chained), "--teacher-checkpoint", str(straight / "student"), "--teacher-steps",
            "2", "--student", "teacher", "--steps", "2", "--batch-size", "1", "--save-every", "2",
            "--eval-batches", "1", "--eval-every", "0", "--no-progress"]
    assert cli.main(argv) == 0
    chained_summary = json.loads((chained / "summary.json").read_text())
    assert chained_summary["student"] == {"config": "tiny-mobile", "architecture": "folded", "steps": 1}
    assert chained_summary["teacher"] == "tiny-mobile@2-step-ddim"
    # A different student in the same folder is refused, not silently mixed.
    assert cli.main(_train_args(split, 6, "--architecture", "magicbokeh")) == 2
    assert "different distillation run" in capsys.readouterr().err


def test_renderer_teacher_on_generated_scenes(tmp_path):
    out = tmp_path / "renderer"
    argv = ["train", "--output", str(out), "--teacher", "renderer", "--teacher-config", "tiny", "--student",
            "tiny-mobile", "--data", "scenes", "--steps", "3", "--batch-size", "1", "--save-every", "3",
            "--eval-batches", "1", "--eval-every", "0", "--no-progress"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    # A renderer has no latents or features: only the image term can be (and is) used.
    assert len(train) == 3 and all(set(r) == {"kind", "step", "seconds", "lr", "pixel", "total"} for r in train)
    assert (out / "student" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_training_with_torchrun(tmp_path):
    # DDP on two CPU processes (gloo): one checkpoint folder holds both processes' RNG states.
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "export" / "distill.py"),
           *_train_args(out, 4)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    ckpt = out / "checkpoints" / "step-00000004"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--output", "x", "--teacher-config", "nope"], "unknown MagicBokeh configuration"),
        (["train", "--output", "x", "--teacher-config", "tiny", "--student-steps", "0"], "must be >= 1"),
        (["train", "--output", "x", "--teacher-checkpoint", "/no/such/file.safetensors"], "does not exist"),
        (["train", "--output", "x", "--teacher-config", "tiny", "--student", "small-mobile"], "tile"),
        (["cost", "--teacher-config", "tiny", "--students", "sd21-mobile", "--output", "x"], "px tiles"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err

