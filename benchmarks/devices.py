"""Device results measured elsewhere, merged into the report when present, listed as not measured when not.

* Qualcomm AI Hub: ``hub.json`` that ``export/to_qnn.py --hub`` writes into its artifacts folder
  (``{"devices": {device: {component: {"latency_ms", "peak_memory_bytes", ...}}}}``).
* Core ML on a Mac: the JSON ``benchmarks/coreml_mac_timing.py`` writes
  (``{"schema": "magicbokeh-coreml-mac-timing", "machine": ..., "results": {compute_units: {component: {...}}}}``).

Nothing is estimated: a device without a file is reported ``"not measured"`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

NOT_MEASURED = "not measured"
COREML_TIMING_SCHEMA = "magicbokeh-coreml-mac-timing"
HUB_FILE = "hub.json"
COREML_TIMING_FILE = "coreml_mac_timing.json"


def not_measured(reason: str) -> dict[str, Any]:
    return {"status": NOT_MEASURED, "reason": reason}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _usable_files(paths: Iterable[Path], problem: Callable[[Path, dict[str, Any]], str | None]
                  ) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Read each result file; keep those ``problem`` accepts (returns None), list why the others were not."""
    usable, errors = [], []
    for path in paths:
        try:
            data = _read_json(path)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        reason = problem(path, data)
        if reason is None:
            usable.append((path, data))
        else:
            errors.append(reason)
    return usable, errors


def find_files(roots: Iterable[Path | str], name: str) -> list[Path]:
    """Files called ``name`` given directly or directly inside / one level below the given folders."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += sorted(root.glob(name)) + sorted(root.glob(f"*/{name}"))
    unique: dict[Path, None] = {p.resolve(): None for p in found}
    return list(unique)


def load_hub_results(paths: Iterable[Path]) -> dict[str, Any]:
    """AI Hub profile figures per device and component, or not measured with the reason."""
    paths = list(paths)
    if not paths:
        return not_measured("no AI Hub results (hub.json) found: run `python export/to_qnn.py --hub` with an "
                            "AI Hub API token, then pass its artifacts folder with --hub-results")
    devices: dict[str, Any] = {}

    def problem(path: Path, data: dict[str, Any]) -> str | None:
        if not isinstance(data.get("devices"), dict):
            return f"{path}: no 'devices' object (not an export/to_qnn.py --hub result)"
        return None

    usable, errors = _usable_files(paths, problem)
    for path, data in usable:
        for device, rows in data["devices"].items():
            devices.setdefault(device, {})
            for component, row in rows.items():
                devices[device][component] = {
                    "latency_ms": row.get("latency_ms"),
                    "peak_memory_bytes": row.get("peak_memory_bytes"),
                    "compute_unit_counts": row.get("compute_unit_counts"),
                    "psnr_vs_fp32_db": (row.get("vs_fp32") or {}).get("psnr_db"),
                    "source": str(path),
                }
    if not devices:
        return not_measured("AI Hub result files were found but none was usable: " + "; ".join(errors))
    return {"status": "measured", "devices": devices, "errors": errors}


def load_coreml_timings(paths: Iterable[Path]) -> dict[str, Any]:
    """Mac timings of MLModel.predict per compute unit and component, or not measured with the reason."""
    paths = list(paths)
    if not paths:
        return not_measured("no Core ML timings (coreml_mac_timing.json) found: Core ML runs only on Apple OSes; "
                            "run `python benchmarks/coreml_mac_timing.py ARTIFACTS` on a Mac and pass the JSON "
                            "with --coreml-timings")
    machines: dict[str, Any] = {}

    def problem(path: Path, data: dict[str, Any]) -> str | None:
        if data.get("schema") != COREML_TIMING_SCHEMA or not isinstance(data.get("results"), dict):
            return f"{path}: not a {COREML_TIMING_SCHEMA} file"
        return None

    usable, errors = _usable_files(paths, problem)
    for path, data in usable:
        machine = str(data.get("machine", {}).get("name") or path.parent.name)
        machines[machine] = {"machine": data.get("machine"), "precision": data.get("precision"),
                             "results": data["results"], "source": str(path)}
    if not machines:
        return not_measured("Core ML timing files were found but none was usable: " + "; ".join(errors))
    return {"status": "measured", "machines": machines, "errors": errors}


def device_section(hub_roots: Iterable[Path | str], coreml_roots: Iterable[Path | str]) -> dict[str, Any]:
    """The report's devices section."""
    return {
        "qualcomm_ai_hub": load_hub_results(find_files(hub_roots, HUB_FILE)),
        "coreml_mac": load_coreml_timings(find_files(coreml_roots, COREML_TIMING_FILE)),
    }
