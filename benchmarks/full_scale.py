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
    """One isolated export (``options`` go to ``benchmarks.artifacts.export_target``): status, error,
    seconds, peak memory, sizes."""
    result = run_isolated("benchmarks.artifacts:export_target",
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
