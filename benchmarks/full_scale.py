"""Full scale: export the SD2.1-scale model (random weights) to each target on this machine.

Each target runs in its own process with a per-target timeout (``benchmarks.memory.run_isolated``),
recording wall time, that process's peak resident memory and the artifact sizes. A target that
fails, is killed (out of memory) or times out is reported with its error, never left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .memory import run_isolated

FULL_SCALE_CONFIG = "sd21"
FULL_SCALE_TARGETS = ("executorch-xnnpack-fp32", "coreml-fp16", "onnx-fp32")


def export_row(target: str, config_name: str, out_dir: Path, timeout_s: float, threads: int | None = None,
               **options: Any) -> dict[str, Any]:
    """One isolated export (``options`` go to ``benchmarks.artifacts.export_for_benchmark``): status, error,
    seconds, peak memory, sizes."""
    result = run_isolated("benchmarks.artifacts:export_for_benchmark",
                          {"target": target, "config_name": config_name, "out_dir": str(out_dir), "threads": threads,
                           **options}, timeout_s)
    row: dict[str, Any] = {"target": target, "config": config_name, "timeout_s": timeout_s} | result.to_dict()
    if result.ok:
        row.update({k: v for k, v in result.value.items() if k != "target"})
    return row


def run_full_scale(work: Path, targets: Sequence[str] = FULL_SCALE_TARGETS, timeout_s: float = 3600.0,
                   log: Callable[[str], None] = print, threads: int | None = None) -> dict[str, Any]:
    """Export the sd21-scale model to every target; the report's full-scale section."""
    rows = {}
    for target in targets:
        log(f"[full scale] exporting {FULL_SCALE_CONFIG} -> {target} (timeout {timeout_s:.0f} s)")
        row = export_row(target, FULL_SCALE_CONFIG, work / f"{FULL_SCALE_CONFIG}-{target}", timeout_s, threads)
        log(f"[full scale] {target}: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""))
        rows[target] = row
    return {"config": FULL_SCALE_CONFIG, "weights": "seeded random (structural)", "targets": rows}


def load_full_scale_results(path: Path | str) -> dict[str, Any]:
    """A full-scale section measured earlier (``run_full_scale``'s result saved as JSON), for the report.

    An sd21 export takes an hour or more on a CPU, so a benchmark can merge that measurement instead
    of repeating it; the section keeps its source file so the report says where the figures came from.
    Raises ``ValueError`` with the reason when the file is not such a result.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--full-scale-results {path}: not a readable JSON file ({exc})") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"--full-scale-results {path}: no 'targets' object (expected the JSON of "
                         "benchmarks.full_scale.run_full_scale)")
    for target, row in targets.items():
        if not isinstance(row, dict) or "status" not in row:
            raise ValueError(f"--full-scale-results {path}: target {target!r} has no 'status'")
        if row["status"] == "ok" and not isinstance(row.get("sizes"), dict):
            raise ValueError(f"--full-scale-results {path}: target {target!r} is 'ok' but has no 'sizes'")
    config = data.get("config", FULL_SCALE_CONFIG)
    return {**data, "config": config, "targets": targets, "source": str(path.resolve()),
            "merged": "measured earlier and merged with --full-scale-results, not re-exported in this run"}
