"""The full-size plan (``python -m benchmarks.full_scale``): the documented commands parse with their
own CLIs, each step runs in its own process with its wall time and peak RSS recorded, and the
result is the JSON ``--full-scale-results`` merges, with per-part sizes of split QNN components."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from benchmarks.full_scale import (
    FULL_SIZE_TARGETS,
    FullSizeStep,
    full_size_steps,
    load_full_scale_results,
    main,
    run_command,
    run_full_size_plan,
)

CLIS = {"export/to_qnn.py": "export.to_qnn", "export/to_coreml.py": "export.to_coreml",
        "export/to_executorch.py": "export.to_executorch"}


def test_every_documented_command_parses_with_its_own_cli(tmp_path: Path) -> None:
    from runtime_py.cli import build_parser

    steps = full_size_steps(tmp_path / "ck", tmp_path / "work")
    assert [s.name for s in steps] == ["checkpoint", *FULL_SIZE_TARGETS] and steps[0].skip_reason is None
    args = build_parser().parse_args(list(steps[0].argv[3:]))  # after "python -m runtime_py"
    assert args.command == "make-checkpoint" and args.config == "sd21"
    for step in steps[1:]:
        cli = next(k for k in CLIS if step.argv[1].endswith(k))
        parsed = importlib.import_module(CLIS[cli]).build_parser().parse_args(list(step.argv[2:]))
        assert parsed.sd21 == tmp_path / "ck" / "sd21" and parsed.lora == tmp_path / "ck" / "lora.pkl"
        assert parsed.out == step.out == tmp_path / "work" / step.name and parsed.parity_scene_size == "tile"
    qnn = importlib.import_module("export.to_qnn")
    options = qnn.lowering_options(qnn.build_parser().parse_args(list(steps[1].argv[2:])))
    assert options["max_part_mb"] == 400 and options["socs"] == ("SM8550", "SM8650", "SM8750")


def test_an_existing_checkpoint_is_not_made_again(tmp_path: Path, capsys) -> None:
    (tmp_path / "ck" / "sd21").mkdir(parents=True)
    (tmp_path / "ck" / "lora.pkl").write_bytes(b"")
    assert full_size_steps(tmp_path / "ck", tmp_path / "w", ["qnn-w8a16"])[0].skip_reason
    assert main(["--checkpoint", str(tmp_path / "ck"), "--work", str(tmp_path / "w"), "--dry-run",
                 "--targets", "qnn-w8a16"]) == 0
    printed = capsys.readouterr().out
    assert "# skipped" in printed and "export/to_qnn.py" in printed and "--max-part-mb 400" in printed
    assert not (tmp_path / "w").exists()  # a dry run writes nothing
    with pytest.raises(ValueError, match="no full-size command for"):
        full_size_steps(tmp_path / "ck", tmp_path / "w", ["nonsense"])


# The child allocates and touches this many bytes; its recorded peak must include them (the
# interpreter itself adds ~10 MB, so the bound below is a strict lower bound).
ALLOCATED = 200 * 2**20


def test_a_command_runs_in_its_own_process_with_its_peak_rss_and_time(tmp_path: Path) -> None:
    code = f"import time; b = bytearray({ALLOCATED}); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3)"
    row = run_command([sys.executable, "-c", code], tmp_path / "log.txt", timeout_s=60)
    assert row["exitcode"] == 0 and not row["timed_out"] and row["seconds"] >= 0.3
    assert row["peak_rss_bytes"] >= ALLOCATED
    slow = run_command([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "slow.txt", timeout_s=1)
    assert slow["timed_out"] and slow["exitcode"] != 0 and slow["seconds"] < 15


def test_plan_records_each_step_and_writes_mergeable_results(tmp_path: Path) -> None:
    from tests.fixtures.qnn_parts import write_parted_artifacts
    from runtime_py.components import tile_components
    from runtime_py.model import build_model

    artifacts = tmp_path / "work" / "qnn-w8a16"
    write_parted_artifacts(artifacts, tile_components(build_model("tiny", seed=0)))
    code = f"import pathlib; p = pathlib.Path({str(tmp_path / 'ck')!r}); p.mkdir(); (p / 'lora.pkl').write_bytes(b'12345')"
    steps = [FullSizeStep("checkpoint", (sys.executable, "-c", code), tmp_path / "ck"),
             FullSizeStep("qnn-w8a16", (sys.executable, "-c", "print('exported')"), artifacts),
             FullSizeStep("coreml-fp16", (sys.executable, "-c", "raise SystemExit('no coremltools')"),
                          tmp_path / "work" / "coreml-fp16")]
    report = run_full_size_plan(steps, tmp_path / "work", timeout_s=60, log=lambda _m: None)
    rows = report["targets"]
    assert [rows[s.name]["status"] for s in steps] == ["ok", "ok", "error"]
    assert "no coremltools" in rows["coreml-fp16"]["error"]
    for row in rows.values():
        assert row["seconds"] > 0 and row["peak_rss_bytes"] > 0 and row["within_rss_limit"] is True
    assert rows["checkpoint"]["sizes"]["components"] == {"ck": {"lora.pkl": 5}}
    sizes = rows["qnn-w8a16"]["sizes"]
    assert {"w8a16-part0", "w8a16-part1", "w8a16-part0-context-SM8650"} <= set(sizes["components"]["denoiser"])
    assert [p["index"] for p in sizes["parts"]["denoiser"]["parts"]] == [0, 1]
    merged = load_full_scale_results(tmp_path / "work" / "full_scale.json")
    assert merged["targets"].keys() == rows.keys()
    assert json.loads((tmp_path / "work" / "full_scale.json").read_text())["peak_rss_limit_bytes"] == 20 * 2**30


def test_a_failed_checkpoint_stops_the_plan(tmp_path: Path) -> None:
    steps = [FullSizeStep("checkpoint", (sys.executable, "-c", "raise SystemExit(2)")),
             FullSizeStep("qnn-w8a16", (sys.executable, "-c", "pass"), tmp_path / "q")]
    report = run_full_size_plan(steps, tmp_path, timeout_s=60, log=lambda _m: None)
    assert list(report["targets"]) == ["checkpoint"] and report["targets"]["checkpoint"]["status"] == "error"
