"""Assemble the benchmark report (JSON), render it as Markdown, draw its plots.

Every figure in the report comes from this run's measurements; the ratios are computed here from
same-run numbers only (backend figure / torch eager fp32 figure measured in the same invocation).
Anything that was not measured says so, with the reason, instead of a number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from runtime_py.atomic import atomic_path, write_json, write_text
from runtime_py.components import TILE_COMPONENTS

from .devices import NOT_MEASURED
from .latency import BACKEND_RUNS, BASELINE, get_backend_run

SCHEMA = "magicbokeh-benchmark"
SCHEMA_VERSION = 1
#: A cheaper tiling plan is acceptable when its 8-bit output is within this PSNR of the published
#: plan's: at 35 dB the RMS difference is ~4.5 levels of 255 against the image peak, blending seams
#: that are not visible at normal viewing (a stated, adjustable bar, not a measured number).
PLAN_MIN_PSNR_DB = 35.0


def tile_chain_bar(label: str) -> float | None:
    """The tile-chain PSNR bar of a backend run's artifacts: its target's, in ``export/numerics/<family>.json``."""
    from export.targets import get_target

    artifact = get_backend_run(label).artifact
    return get_target(artifact).tile_chain_bar if artifact else None


# -- assembling ------------------------------------------------------------------------------------------


def _ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline <= 0:
        return None
    return value / baseline


def run_sizes(label: str, exports: Mapping[str, Any], skipped: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Artifact bytes per component for one backend run (from its export's manifest).

    ``skipped``: runs left out on purpose (e.g. by --quick), with the reason the report shows.
    """
    run = get_backend_run(label)
    if run.artifact is None:
        return {"status": NOT_MEASURED, "reason": "no artifact: the in-memory torch model"}
    if skipped and label in skipped:
        return {"status": NOT_MEASURED, "reason": skipped[label]}
    export = exports.get(run.artifact)
    if not export:
        return {"status": NOT_MEASURED, "reason": f"{run.artifact} was not exported in this run"}
    if export.get("status") != "ok":
        return {"status": NOT_MEASURED, "reason": f"export {run.artifact} failed: {export.get('error') or 'no error recorded'}"}
    kind = {"onnxruntime-fp32": "fp32", "qnn-htp": None}.get(run.backend, run.precision)
    components = {}
    for name, sizes in export["sizes"]["components"].items():
        if kind is None:  # the HTP loads the precompiled context binary
            key = next((k for k in sizes if "-context-" in k), run.precision)
        else:
            key = kind
        components[name] = sizes.get(key)
    total = sum(v for v in components.values() if v is not None)
    return {"status": "measured", "components": components, "total_bytes": total}


def latency_section(runs: Mapping[str, Any]) -> dict[str, Any]:
    """Per backend: per-component median / p90 and their ratios to the same-run baseline."""
    baseline = runs.get(BASELINE, {})
    base_ok = baseline.get("status") == "ok"
    base_value = baseline.get("value") or {}
    section: dict[str, Any] = {"baseline": BASELINE, "baseline_measured": base_ok, "backends": {}}
    for label, outcome in runs.items():
        run = get_backend_run(label)
        row: dict[str, Any] = {"description": run.description, "backend": run.backend, "precision": run.precision,
                               "simulated": run.simulated, "phone_target": run.phone_target,
                               "peak_rss_bytes": outcome.get("peak_rss_bytes"), "wall_seconds": outcome.get("seconds")}
        if run.simulated:
            row["note"] = "SIMULATED on x86: this time says nothing about a phone"
        if outcome.get("status") != "ok":
            row.update({"status": NOT_MEASURED, "reason": outcome.get("error") or outcome.get("reason")})
            section["backends"][label] = row
            continue
        value = outcome["value"]
        row["status"] = "measured"
        row["load_seconds"] = value["load_seconds"]
        row["components"] = {}
        for name in TILE_COMPONENTS:
            lat = value["components"][name]["latency"]
            base_lat = base_value.get("components", {}).get(name, {}).get("latency", {}) if base_ok else {}
            row["components"][name] = {
                "median_s": lat["median_s"], "p90_s": lat["p90_s"], "samples_s": lat["samples_s"],
                "warmup": lat["warmup"], "repeats": lat["repeats"],
                "median_vs_baseline": _ratio(lat["median_s"], base_lat.get("median_s")),
                "p90_vs_baseline": _ratio(lat["p90_s"], base_lat.get("p90_s")),
                "parity_vs_baseline": value["components"][name].get("parity_vs_baseline"),
            }
        row["tile"] = {"median_s": value["tile_median_s"],
                       "median_vs_baseline": _ratio(value["tile_median_s"], base_value.get("tile_median_s") if base_ok else None)}
        row["tile_chain_parity_vs_baseline"] = value.get("tile_chain_parity_vs_baseline")
        if "whole_image" in value:
            whole = dict(value["whole_image"])
            base_whole = base_value.get("whole_image", {}) if base_ok else {}
            whole["seconds_vs_baseline"] = _ratio(whole["seconds"], base_whole.get("seconds"))
            row["whole_image"] = whole
        section["backends"][label] = row
    return section


def photo_section(latency: Mapping[str, Any], compute: Mapping[str, Any], default_label: str) -> dict[str, Any]:
    """For the report's photo size: tiles, FLOPs and host time per backend and precision."""
    image = compute["configs"][default_label]["image"]
    rows = {}
    base_seconds = None
    for label, row in latency["backends"].items():
        if row.get("status") != "measured":
            rows[label] = {"status": NOT_MEASURED, "reason": row.get("reason"), "precision": row["precision"],
                           "tiles": image["tiles"], "flops": image["flops_per_image"]}
            continue
        whole = row.get("whole_image")
        if whole and whole.get("height") == image["height"] and whole.get("width") == image["width"]:
            seconds, method = whole["seconds"], "measured: one whole-image render"
        else:
            seconds = image["tiles"] * row["tile"]["median_s"]
            method = f"derived: {image['tiles']} tiles x measured per-tile median (encoder + denoiser + decoder)"
        rows[label] = {"precision": row["precision"], "host_seconds": seconds, "method": method,
                       "simulated": row["simulated"], "tiles": image["tiles"], "flops": image["flops_per_image"],
                       "host_gflops_per_s": image["flops_per_image"] / seconds / 1e9 if seconds > 0 else None}
        if label == BASELINE:
            base_seconds = seconds
    for row in rows.values():
        if "host_seconds" in row:
            row["host_seconds_vs_baseline"] = _ratio(row["host_seconds"], base_seconds)
    return {"height": image["height"], "width": image["width"], "tile": image["tile"], "stride": image["stride"],
            "tiles": image["tiles"], "tiles_per_megapixel": image["tiles_per_megapixel"],
            "flops": image["flops_per_image"], "flops_per_megapixel": image["flops_per_megapixel"],
            "backends": rows}


def plans_section(plans: Mapping[str, Any] | None, config_name: str, flops_for_tile: Mapping[int, int]) -> dict[str, Any]:
    """Tiling plans with their FLOPs (counted) and parity (measured) against the published plan."""
    from .compute import image_compute

    if not plans or plans.get("status") != "ok":
        reason = (plans or {}).get("error") or (plans or {}).get("reason") or "not run"
        return {"status": NOT_MEASURED, "reason": reason}
    value = plans["value"]
    h, w = value["image"]["height"], value["image"]["width"]
    rows = []
    for row in value["plans"]:
        row = dict(row)
        if row.get("status") == "ok" and row["tile"] in flops_for_tile:
            row.update({k: v for k, v in image_compute(h, w, row["tile"], row["stride"], flops_for_tile[row["tile"]]).items()
                        if k in ("tiles_per_megapixel", "flops_per_tile", "flops_per_image", "flops_per_megapixel")})
        rows.append(row)
    return {"status": "measured", "config": config_name, "image": value["image"], "plans": rows,
            "tile_seconds": value["tile_seconds"], "host_time_method": value["host_time_method"],
            "peak_rss_bytes": plans.get("peak_rss_bytes")}


def _plan_ok(row: Mapping[str, Any]) -> bool:
    parity = row.get("parity_vs_published") or {}
    if parity.get("identical"):
        return True
    return parity.get("psnr_db") is not None and parity["psnr_db"] >= PLAN_MIN_PSNR_DB


def recommend(plans: Mapping[str, Any], latency: Mapping[str, Any], sizes: Mapping[str, Any]) -> dict[str, Any]:
    """A plan and a precision for a phone, from this run's figures, by the stated rules."""
    plan_rule = (f"the tiling plan with the fewest FLOPs per image whose output is within {PLAN_MIN_PSNR_DB:g} dB PSNR "
                 "of the published plan's (8-bit blended image); the published plan if none qualifies")
    precision_rule = ("among the phone artifacts measured in this run, the smallest one whose tile-chain PSNR against "
                      "torch fp32 meets its target's bar in export/numerics (" +
                      ", ".join(f"{r.label} >= {tile_chain_bar(r.label):g} dB" for r in BACKEND_RUNS
                                if r.phone_target and tile_chain_bar(r.label) is not None) +
                      "); ties broken by host time; simulated host times are not used")
    out: dict[str, Any] = {"plan_rule": plan_rule, "precision_rule": precision_rule}
    if plans.get("status") == "measured":
        candidates = [r for r in plans["plans"] if r.get("status") == "ok" and "flops_per_image" in r]
        passing = [r for r in candidates if _plan_ok(r)]
        if passing:
            best = min(passing, key=lambda r: (r["flops_per_image"], r["tiles"]))
            published = candidates[0]
            psnr = (best.get("parity_vs_published") or {}).get("psnr_db")
            out["plan"] = {"label": best["label"], "tile": best["tile"], "stride": best["stride"], "tiles": best["tiles"],
                           "flops_per_image": best["flops_per_image"]}
            saving = 1 - best["flops_per_image"] / published["flops_per_image"] if published.get("flops_per_image") else 0.0
            out["plan_reason"] = (f"{best['label']} (tile {best['tile']}, stride {best['stride']}): {best['tiles']} tiles, "
                                  f"{saving * 100:.0f}% fewer FLOPs than the published plan, "
                                  + ("identical output" if psnr is None else f"{psnr:.1f} dB from it"))
        else:
            out["plan"] = None
            out["plan_reason"] = "no plan was rendered successfully"
    else:
        out["plan"] = None
        out["plan_reason"] = f"tiling plans not measured: {plans.get('reason')}"
    rows = []
    for label, row in latency["backends"].items():
        if not row.get("phone_target"):
            continue
        if row.get("status") != "measured":
            rows.append({"label": label, "eligible": False, "why": f"not measured: {row.get('reason')}"})
            continue
        parity = row.get("tile_chain_parity_vs_baseline") or {}
        psnr = math.inf if parity.get("identical") else parity.get("psnr_db")
        bar = tile_chain_bar(label)
        size = sizes.get(label, {})
        if size.get("status") != "measured":
            rows.append({"label": label, "eligible": False, "why": f"size not measured: {size.get('reason')}"})
            continue
        eligible = psnr is not None and bar is not None and psnr >= bar
        rows.append({"label": label, "precision": row["precision"], "bytes": size["total_bytes"],
                     "psnr_db": None if psnr in (None, math.inf) else psnr, "bar_db": bar, "eligible": eligible,
                     "host_seconds": None if row["simulated"] else row["tile"]["median_s"],
                     "why": "meets its bar" if eligible else
                            f"tile-chain PSNR {'unknown' if psnr is None else f'{psnr:.1f}'} dB below the {bar} dB bar"})
    out["precision_candidates"] = rows
    eligible = [r for r in rows if r["eligible"]]
    if eligible:
        best = min(eligible, key=lambda r: (r["bytes"], r["host_seconds"] if r["host_seconds"] is not None else math.inf))
        out["precision"] = {"label": best["label"], "precision": best["precision"], "bytes": best["bytes"]}
        psnr_text = "identical to fp32" if best["psnr_db"] is None else f"{best['psnr_db']:.1f} dB vs fp32"
        out["precision_reason"] = (f"{best['label']}: {best['bytes'] / 2**20:.1f} MiB, {psnr_text} "
                                   f"(bar {best['bar_db']:g} dB); smallest eligible of {len(eligible)}")
        plan = out.get("plan")
        if plan and best["host_seconds"] is not None:
            out["photo_host_seconds"] = plan["tiles"] * best["host_seconds"]
            out["photo_host_seconds_method"] = (f"derived: {plan['tiles']} tiles of the recommended plan x the measured "
                                                f"{best['label']} per-tile median on this host CPU (not a phone time)")
    else:
        out["precision"] = None
        out["precision_reason"] = "no phone artifact measured in this run met its bar: " + "; ".join(
            f"{r['label']}: {r['why']}" for r in rows) if rows else "no phone artifact was measured"
    return out


# -- Markdown --------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _db(parity: Mapping[str, Any] | None) -> str:
    if not parity:
        return "-"
    if parity.get("identical"):
        return "identical"
    return "-" if parity.get("psnr_db") is None else f"{parity['psnr_db']:.1f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report."""
    m = report["machine"]
    lines = [
        "# MagicBokeh benchmark",
        "",
        f"Mode `{report['mode']}`, model `{report['model']['config']}` ({report['model']['description']}), "
        f"created {report['created']}. Host: {m['platform']}, {m['cpu_count']} CPUs, load average at start "
        f"{m['load_average_start']}, {report['settings']['threads']} CPU thread(s) per run (torch, ONNX Runtime, "
        f"XNNPACK). Warm-up {report['settings']['warmup']}, repeats {report['settings']['repeats']}; "
        "latency = median (p90) over the repeats; ratios = figure / torch eager fp32 figure of this same run.",
        "",
    ]
    photo = report["photo"]
    lines += [
        f"## A {photo['width']} x {photo['height']} photo",
        "",
        f"Published plan (tile {photo['tile']}, stride {photo['stride']}): **{photo['tiles']} tiles** "
        f"({photo['tiles_per_megapixel']:.2f} per megapixel), **{photo['flops'] / 1e9:.1f} GFLOP** "
        f"({photo['flops_per_megapixel'] / 1e9:.1f} GFLOP per megapixel).",
        "",
        "| backend | precision | tiles | GFLOP | host time (s) | vs baseline | host GFLOP/s | how |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, row in photo["backends"].items():
        gflop = f"{row['flops'] / 1e9:.1f}" if row.get("flops") is not None else "-"
        if "host_seconds" in row:
            sim = " (SIMULATED)" if row.get("simulated") else ""
            rate = "-" if row.get("host_gflops_per_s") is None else f"{row['host_gflops_per_s']:.1f}"
            lines.append(f"| {label}{sim} | {row['precision']} | {row.get('tiles', photo['tiles'])} | {gflop} | "
                         f"{row['host_seconds']:.2f} | {_x(row.get('host_seconds_vs_baseline'))} | {rate} | {row['method']} |")
        else:
            lines.append(f"| {label} | {row['precision']} | {row.get('tiles', photo['tiles'])} | {gflop} | not measured | "
                         f"- | - | {row.get('reason')} |")
    lines += ["", "Host time is this machine's CPU (see the header), not a phone; device timings are under Devices.", ""]
    rec = report["recommendation"]
    lines += ["## Recommendation for a phone", ""]
    if rec.get("plan") and rec.get("precision"):
        summary = (f"**Recommended: {rec['plan']['label']} plan (tile {rec['plan']['tile']}, stride "
                   f"{rec['plan']['stride']}, {rec['plan']['tiles']} tiles) with {rec['precision']['label']} "
                   f"({rec['precision']['precision']})**")
        if rec.get("photo_host_seconds") is not None:
            summary += f": {rec['photo_host_seconds']:.2f} s per photo on this host ({rec['photo_host_seconds_method']})"
        lines += [summary + ".", ""]
    lines += [f"- Plan rule: {rec['plan_rule']}.", f"  - Result: {rec['plan_reason']}.",
              f"- Precision rule: {rec['precision_rule']}.", f"  - Result: {rec['precision_reason']}."]
    for cand in rec.get("precision_candidates", []):
        lines.append(f"  - {cand['label']}: " + ("eligible" if cand.get("eligible") else "not eligible") +
                     f" ({cand.get('why')})")
    lines.append("")
    if report.get("not_run_in_quick"):
        lines += ["## Not run in --quick", "", "| what | reason |", "|---|---|"]
        lines += [f"| {r['what']} | {r['reason']} |" for r in report["not_run_in_quick"]]
        lines.append("")
    if report["model"].get("kind") == "structural-test":
        lines += ["Note: the model has seeded random weights; parity figures measure numerical agreement of "
                  "backends and plans, not bokeh quality.", ""]

    lat = report["latency"]
    lines += ["## Host latency per component (ms)", "",
              "| backend | precision | " + " | ".join(f"{c} median (p90)" for c in TILE_COMPONENTS) +
              " | tile median | tile vs baseline | peak RSS (MiB) |",
              "|---|---|" + "---:|" * (len(TILE_COMPONENTS) + 3)]
    for label, row in lat["backends"].items():
        name = label + (" (SIMULATED)" if row["simulated"] else "")
        if row["status"] != "measured":
            lines.append(f"| {name} | {row['precision']} | not measured: {row.get('reason')} |" + " |" * (len(TILE_COMPONENTS) + 2))
            continue
        cells = [f"{_ms(row['components'][c]['median_s'])} ({_ms(row['components'][c]['p90_s'])}) "
                 f"{_x(row['components'][c]['median_vs_baseline'])}" for c in TILE_COMPONENTS]
        lines.append(f"| {name} | {row['precision']} | " + " | ".join(cells) +
                     f" | {_ms(row['tile']['median_s'])} | {_x(row['tile']['median_vs_baseline'])} | "
                     f"{_mib(row.get('peak_rss_bytes'))} |")
    lines += ["", "Simulated: the QNN HTP runs in Qualcomm's x86 simulator; its time says nothing about a phone.", ""]

    lines += ["## Size and parity per precision", "",
              "| backend | precision | " + " | ".join(f"{c} MiB" for c in TILE_COMPONENTS) + " | total MiB | "
              + " | ".join(f"{c} PSNR dB" for c in TILE_COMPONENTS) + " | tile chain PSNR dB |",
              "|---|---|" + "---:|" * (2 * len(TILE_COMPONENTS) + 2)]
    for label, row in lat["backends"].items():
        size = report["size"].get(label, {})
        if size.get("status") == "measured":
            size_cells = [_mib(size["components"].get(c)) for c in TILE_COMPONENTS] + [_mib(size["total_bytes"])]
        else:
            size_cells = ["-"] * len(TILE_COMPONENTS) + [f"not measured: {size.get('reason')}"]
        comps = row.get("components", {})
        parity_cells = [_db(comps.get(c, {}).get("parity_vs_baseline")) for c in TILE_COMPONENTS]
        lines.append(f"| {label} | {row['precision']} | " + " | ".join(size_cells + parity_cells) +
                     f" | {_db(row.get('tile_chain_parity_vs_baseline'))} |")
    lines.append("")

    comp = report["compute"]
    lines += ["## Compute per tile", "", f"FLOPs: {comp['flop_convention']}.", "",
              "| config | component | params (M) | GFLOP | activations written (MiB) | peak live activations (MiB) |",
              "|---|---|---:|---:|---:|---:|"]
    for label, data in comp["configs"].items():
        for name in (*TILE_COMPONENTS, "tile_total"):
            c = data["components"][name]
            lines.append(f"| {label} ({data['config']}, {data['tile']} px) | {name} | {c['params'] / 1e6:.2f} | "
                         f"{c['flops'] / 1e9:.2f} | {_mib(c['activation_bytes_written'])} | "
                         f"{_mib(c['peak_live_activation_bytes'])} |")
    lines += ["", "| config | image | tile / stride | tiles | tiles per MP | GFLOP per image | GFLOP per MP |",
              "|---|---|---|---:|---:|---:|---:|"]
    for label, data in comp["configs"].items():
        i = data["image"]
        if "tiles" not in i:
            lines.append(f"| {label} | - | {data['tile']} / {data['stride']} | {i.get('reason')} | | | |")
            continue
        lines.append(f"| {label} | {i['width']} x {i['height']} | {i['tile']} / {i['stride']} | {i['tiles']} | "
                     f"{i['tiles_per_megapixel']:.2f} | {i['flops_per_image'] / 1e9:.1f} | {i['flops_per_megapixel'] / 1e9:.1f} |")
    lines.append("")

    plans = report["tiling_plans"]
    lines += ["## Tiling plans", ""]
    if plans.get("status") != "measured":
        lines += [f"Not measured: {plans.get('reason')}", ""]
    else:
        img = plans["image"]
        lines += [f"Rendered with torch fp32 on a generated {img['width']} x {img['height']} photo; parity against the "
                  f"published plan's output. Host time: {plans['host_time_method']}.", "",
                  "| plan | tile / stride | tiles | GFLOP per image | host time (s, derived) | PSNR vs published (dB) | SSIM |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in plans["plans"]:
            if r.get("status") != "ok":
                lines.append(f"| {r['label']} | {r['tile']} / {r['stride']} | {r.get('status')}: {r.get('reason')} | | | | |")
                continue
            parity = r.get("parity_vs_published") or {}
            gflop = f"{r['flops_per_image'] / 1e9:.1f}" if "flops_per_image" in r else "-"
            host = f"{r['host_seconds_derived']:.2f}" if "host_seconds_derived" in r else "-"
            lines.append(f"| {r['label']} | {r['tile']} / {r['stride']} | {r['tiles']} | {gflop} | {host} | "
                         f"{_db(parity)} | {parity.get('ssim', float('nan')):.4f} |")
        lines.append("")

    lines += ["## Exports", "",
              "| target | config | status | seconds | peak RSS (MiB) | artifact MiB (all files) | error |",
              "|---|---|---|---:|---:|---:|---|"]
    merged = " (merged from file)" if (report.get("full_scale") or {}).get("source") else ""
    for suffix, section in (("", report["exports"]), (merged, (report.get("full_scale") or {}).get("targets") or {})):
        for target, row in section.items():
            total = None
            if row.get("sizes"):
                total = sum(sum(v for v in c.values() if v) for c in row["sizes"]["components"].values())
            seconds = "reused" if row.get("reused") else f"{row.get('seconds') or 0:.1f}"
            lines.append(f"| {target}{suffix} | {row.get('config')} | {row['status']} | {seconds} | "
                         f"{_mib(row.get('peak_rss_bytes'))} | {_mib(total)} | "
                         f"{(row.get('error') or '').replace('|', '/')[:200]} |")
    fs = report.get("full_scale")
    if not fs or fs.get("status") == NOT_MEASURED:
        lines += ["", f"Full scale (sd21): not measured: {(fs or {}).get('reason', 'not requested')}"]
    else:
        if fs.get("source"):
            lines += ["", f"Full scale ({fs.get('config')}, {fs.get('weights', 'weights unknown')}): {fs.get('merged')}; "
                          f"source `{fs['source']}`" + (f", finished {fs['finished_utc']}" if fs.get("finished_utc") else "") + "."]
        lines += ["", "Full-scale artifact sizes (MiB):", ""]
        for target, row in fs["targets"].items():
            if row["status"] != "ok":
                lines.append(f"- {target}: {row['status']}: {row.get('error')}")
            else:
                parts = ", ".join(f"{c}: " + "/".join(f"{k} {_mib(v)}" for k, v in s.items())
                                  for c, s in row["sizes"]["components"].items())
                lines.append(f"- {target}: {parts}")
    lines.append("")

    dev = report["devices"]
    lines += ["## Devices", ""]
    hub = dev["qualcomm_ai_hub"]
    if hub["status"] != "measured":
        lines.append(f"- Qualcomm AI Hub: not measured: {hub['reason']}")
    else:
        for device, rows in hub["devices"].items():
            for name, r in rows.items():
                lines.append(f"- AI Hub {device} {name}: {r['latency_ms']} ms, peak {_mib(r.get('peak_memory_bytes'))} MiB")
    cm = dev["coreml_mac"]
    if cm["status"] != "measured":
        lines.append(f"- Core ML (Mac): not measured: {cm['reason']}")
    else:
        for machine, data in cm["machines"].items():
            for units, rows in data["results"].items():
                for name, r in rows.items():
                    value = f"{_ms(r.get('median_s'))} ms (p90 {_ms(r.get('p90_s'))})" if "median_s" in r else r.get("error")
                    lines.append(f"- Core ML {machine} {units} {name}: {value}")
    lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]] + [""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------------


def write_plots(report: Mapping[str, Any], out: Path) -> list[str]:
    """latency.png (per backend and component, log scale) and size_vs_psnr.png; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    measured = {k: v for k, v in report["latency"]["backends"].items() if v["status"] == "measured"}
    if measured:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        labels = list(measured)
        x = np.arange(len(labels))
        width = 0.8 / len(TILE_COMPONENTS)
        for i, name in enumerate(TILE_COMPONENTS):
            med = [measured[l]["components"][name]["median_s"] * 1e3 for l in labels]
            p90 = [measured[l]["components"][name]["p90_s"] * 1e3 for l in labels]
            err = [max(0.0, p - m) for p, m in zip(p90, med)]
            ax.bar(x + (i - 1) * width, med, width, yerr=[np.zeros(len(med)), err], label=name, capsize=2)
        ax.set_xticks(x, [l + ("\n(SIMULATED)" if measured[l]["simulated"] else "") for l in labels],
                      rotation=20, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("host latency per tile, ms (median, p90 bar)")
        ax.set_title(f"Host latency per backend ({report['model']['config']}, {report['machine']['cpu_count']} CPUs)")
        ax.legend()
        fig.tight_layout()
        with atomic_path(out / "latency.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    points = []
    for label, row in measured.items():
        size = report["size"].get(label, {})
        parity = row.get("tile_chain_parity_vs_baseline") or {}
        if size.get("status") == "measured" and (parity.get("psnr_db") is not None or parity.get("identical")):
            points.append((label, row["precision"], size["total_bytes"] / 2**20, parity.get("psnr_db")))
    if points:
        finite = [p[3] for p in points if p[3] is not None]
        top = (max(finite) + 10) if finite else 100.0
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, precision, mib, psnr in points:
            y = top if psnr is None else psnr
            ax.scatter([mib], [y])
            ax.annotate(f"{label}\n{precision}" + (" (identical)" if psnr is None else ""), (mib, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("artifact size, MiB (encoder + denoiser + decoder)")
        ax.set_ylabel("tile-chain PSNR vs torch fp32, dB")
        ax.set_title("Size vs parity per precision")
        fig.tight_layout()
        with atomic_path(out / "size_vs_psnr.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        written.append("size_vs_psnr.png")
    return written


def write_report(report: dict[str, Any], out: Path | str) -> dict[str, Path]:
    """report.json, report.md and the plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out)
    json_path = write_json(out / "report.json", report)
    md_path = write_text(out / "report.md", report_markdown(report))
    return {"json": json_path, "markdown": md_path}


__all__ = ["BACKEND_RUNS", "PLAN_MIN_PSNR_DB", "SCHEMA", "latency_section", "photo_section",
           "plans_section", "recommend", "report_markdown", "run_sizes", "write_plots", "write_report"]
