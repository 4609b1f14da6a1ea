"""The main job: export the model to every target, measure parity, render a sample photo.

``bash scripts/main.sh`` runs this module. Each target runs its own exporter CLI in a subprocess
(so one failing target, or one holding a lot of memory, cannot take the others down, and each
step's peak memory is its own), then the sample photo is rendered through every backend with the
same ``render`` command a user would run, and one summary (JSON + Markdown) collects the exporters'
own parity reports. Nothing here computes a figure itself: it only gathers what the steps measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.cli import EXIT_PARITY_BELOW_BARS as PARITY_BELOW_BARS
from export.targets import FAMILIES, TARGETS, Target, get_target, main_job_targets

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PlannedExport:
    """One registry target as the main job builds it: its exporter CLI with the target's main-job flags."""

    target: Target
    exporter: str
    args: list[str]

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def folder(self) -> str:
        return self.target.artifacts

    @property
    def backend(self) -> str:
        return self.target.backend


def planned_exports(out: Path, config: str | None, names: Sequence[str] | None = None) -> list[PlannedExport]:
    """The exports the main job runs: ``names`` from the registry (default: every target with main-job flags)."""
    cfg = ["--config", config] if config else []
    targets = [get_target(n) for n in names] if names else main_job_targets()
    return [PlannedExport(t, FAMILIES[t.family]["cli"],
                          ["--recipe", t.recipe.name, "--out", str(out / t.artifacts), *(t.main_job or ()), *cfg])
                for t in targets]


@dataclass
class StepResult:
    name: str
    command: list[str]
    returncode: int
    seconds: float
    log: str
    outputs: dict[str, Any] = field(default_factory=dict)


def run_step(name: str, command: list[str], log_path: Path) -> StepResult:
    """Run one command, tee its output to a log file, and time it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - start
    print(f"=== {name}: exit {code} after {seconds:.0f} s (log: {log_path})", flush=True)
    return StepResult(name, command, code, seconds, str(log_path))


def write_sample_photo(folder: Path, seed: int, height: int, width: int) -> dict[str, Path]:
    """A generated photo (degraded like a digital zoom) with exact depth and a subject mask."""
    import numpy as np
    from PIL import Image

    from runtime_py.scenes import generate_scene

    scene = generate_scene(seed=seed, size=max(height, width), family="street", aperture_k=24)
    crop = lambda a: a[a.shape[0] - height :, :width]  # noqa: E731  (street subjects stand near the bottom)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"image": folder / "photo.png", "depth": folder / "depth.npy", "mask": folder / "mask.png"}
    Image.fromarray((crop(scene.degraded) * 255).round().astype(np.uint8)).save(paths["image"])
    np.save(paths["depth"], crop(scene.depth).astype(np.float32))
    Image.fromarray((crop(scene.mask) > 0).astype(np.uint8) * 255).save(paths["mask"])
    return paths


def crop_sample_photo(photo: dict[str, Path], folder: Path, height: int, width: int) -> dict[str, Path]:
    """The bottom-left ``height x width`` crop of a sample photo, its depth and mask (where the
    street scene's subject stands), written to ``folder``; the photo itself if it is not larger."""
    import numpy as np
    from PIL import Image

    image = np.array(Image.open(photo["image"]))
    if image.shape[0] <= height and image.shape[1] <= width:
        return photo
    crop = lambda a: a[max(0, a.shape[0] - height):, :width]  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    out = {"image": folder / "photo.png", "depth": folder / "depth.npy", "mask": folder / "mask.png"}
    Image.fromarray(crop(image)).save(out["image"])
    np.save(out["depth"], crop(np.load(photo["depth"])))
    Image.fromarray(crop(np.array(Image.open(photo["mask"])))).save(out["mask"])
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summarise(out: Path, targets: Sequence[PlannedExport], exports: dict[str, StepResult], renders: dict[str, StepResult]) -> dict[str, Any]:
    rows = []
    for target in targets:
        folder = out / target.folder
        manifest = _read_json(folder / "manifest.json")
        parity = _read_json(folder / "parity.json")
        step = exports.get(target.name)
        render = renders.get(target.name)
        sizes = {name: entry.get("bytes") for name, entry in (manifest or {}).get("components", {}).items()}
        rows.append({
            "target": target.name,
            "backend": target.backend,
            "export_exit": step.returncode if step else None,
            "export_seconds": round(step.seconds, 1) if step else None,
            "export_log": step.log if step else None,
            "artifacts": str(folder) if manifest else None,
            "component_bytes": sizes,
            "parity": parity,
            "render": str(out / "renders" / f"{target.name}.png") if render and render.returncode == 0 else None,
            "render_exit": render.returncode if render else None,
            "thresholds": target.target.thresholds(),
            "notes": "; ".join(x for x in (target.target.notes, _htp_note(parity)) if x),
        })
    torch_render = renders.get("torch")
    return {"targets": rows, "recommended_quantized": recommend_quantized(targets, rows),
            "reference_render": str(out / "renders" / "torch.png") if torch_render and torch_render.returncode == 0 else None}


def _min_component_psnr(parity: dict[str, Any] | None) -> float | None:
    comps = (_headline(parity) or {}).get("components") or {}
    values = [e.get("psnr_db") for e in comps.values() if isinstance(e, dict) and isinstance(e.get("psnr_db"), (int, float))]
    return min(values) if values else None


def recommend_quantized(targets: Sequence[PlannedExport], rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per platform (family + delegate), the quantized target of this run to ship: the smallest one whose
    measured parity meets its registry bar (``benchmark.min_psnr_tile_chain`` of export/numerics: end to
    end, or every component when end to end was not measured); when none meets it, the closest, marked so."""
    by_platform: dict[str, list[tuple[Target, dict[str, Any]]]] = {}
    for planned, row in zip(targets, rows):
        target = planned.target
        if target.recipe.quantization.quantized and row["parity"] is not None:
            platform = f"{target.family}-{target.recipe.lowering.delegate}"
            by_platform.setdefault(platform, []).append((target, row))
    out: dict[str, dict[str, Any]] = {}
    for platform, candidates in by_platform.items():
        scored = []
        for target, row in candidates:
            e2e = (_headline(row["parity"]) or {}).get("end_to_end") or {}
            measured = e2e.get("psnr_db") if isinstance(e2e.get("psnr_db"), (int, float)) else _min_component_psnr(row["parity"])
            bar = target.tile_chain_bar
            size = sum(v for v in row["component_bytes"].values() if isinstance(v, int))
            meets = measured is not None and (bar is None or measured >= bar)
            scored.append((meets, target, measured, bar, size))
        passing = [c for c in scored if c[0]]
        meets, target, measured, bar, size = (min(passing, key=lambda c: (c[4], c[1].name)) if passing else
                                              max(scored, key=lambda c: (c[2] if c[2] is not None else -math.inf)))
        out[platform] = {"target": target.name, "recipe": target.recipe.name, "precision": target.precision,
                         "psnr_db": measured, "bar_db": bar, "meets_bar": meets, "bytes": size,
                         "candidates": [c[1].name for c in scored],
                         "why": ("smallest quantized artifact meeting its bar" if meets else
                                 "no quantized artifact met its bar: the closest one")}
    return out


def _headline(parity: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a parity report the table shows: a split report's ``total`` (accelerator vs fp32)."""
    if parity and "split" in parity:
        return parity.get("total") or parity.get("quantization")
    return parity


def _htp_note(parity: dict[str, Any] | None) -> str:
    """How much the simulated-HTP parity ran: runs per component and seconds (split reports only)."""
    meta = ((parity or {}).get("backend") or {}).get("meta") or {}
    if "htp_calls" not in meta:
        return ""
    runs = ", ".join(f"{n} {c}" for n, c in meta["htp_calls"].items())
    return (f"HTP parity: {meta.get('scene_size')}-px scene, <= {meta.get('max_tiles_per_image')} tile(s) per "
            f"component; HTP runs {runs}; {meta.get('htp_seconds', 0):.0f} s on the simulator")


def _component_psnrs(parity: dict[str, Any] | None) -> str:
    parity = _headline(parity)
    if not parity:
        return "not measured"
    comps = parity.get("components") or {}
    parts = []
    for name, entry in comps.items():
        value = entry.get("psnr_db") if isinstance(entry, dict) else None
        if value is not None:
            parts.append(f"{name} {value:.1f}" if isinstance(value, (int, float)) else f"{name} {value}")
    return ", ".join(parts) or "see parity.md"


def _end_to_end(parity: dict[str, Any] | None) -> str:
    e2e = (_headline(parity) or {}).get("end_to_end") or {}
    if not e2e:
        return "not measured"
    psnr, ssim = e2e.get("psnr_db"), e2e.get("ssim")
    return f"{psnr:.1f} dB / SSIM {ssim:.4f}" if isinstance(psnr, (int, float)) and isinstance(ssim, (int, float)) else str(e2e)


def _bars(thresholds: dict[str, Any] | None, parity: dict[str, Any] | None) -> str:
    """The target's parity bars (from its numerics file) and whether its report met them."""
    names = {"min_psnr_component": "component", "min_psnr_end_to_end": "end to end", "min_ssim": "SSIM"}
    parts = [f"{part + ' ' if part != 'parity' else ''}{names[k]} >= {v:g}"
             for part, bars in (thresholds or {}).items() for k, v in bars.items() if v is not None]
    if not parts:
        return "reported only"
    verdict = "" if not parity or "passed" not in parity else (": met" if parity["passed"] else ": MISSED")
    return ", ".join(parts) + verdict


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# MagicBokeh main job: export + parity",
        "",
        "Parity is measured against the fp32 torch reference by executing each exported artifact on this machine",
        "(PSNR = 20 log10(max|ref| / RMSE)); for QNN that is the simulated HTP against fp32 (its `parity.md`",
        "splits it into quantization and backend error). Each target's own `parity.md` has the details.",
        "",
        "| target | export | component PSNR (dB) | end to end (dB / SSIM) | bars (export/numerics) | size (MiB) | render | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["targets"]:
        ok = ("ok" if row["export_exit"] == 0 else "ok, parity below its bars" if row["export_exit"] == PARITY_BELOW_BARS
              else f"exit {row['export_exit']} (see {row['export_log']})")
        size = sum(v for v in row["component_bytes"].values() if isinstance(v, int)) / 2**20 if row["component_bytes"] else None
        lines.append(
            f"| {row['target']} | {ok}, {row['export_seconds']} s | {_component_psnrs(row['parity'])} | {_end_to_end(row['parity'])} | "
            f"{_bars(row.get('thresholds'), row['parity'])} | "
            f"{'' if size is None else f'{size:.1f}'} | {row['render'] or 'not rendered'} | {row['notes']} |"
        )
    recommended = summary.get("recommended_quantized") or {}
    if recommended:
        lines += ["", "## Recommended quantized recipe per platform", "",
                  "| platform | target (--recipe) | measured PSNR (dB) | bar (dB) | size (MiB) | why | candidates |",
                  "|---|---|---|---|---|---|---|"]
        for platform, r in recommended.items():
            psnr = "not measured" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            lines.append(f"| {platform} | {r['target']} (`--recipe {r['recipe']}`) | {psnr} | {r['bar_db']} | "
                         f"{r['bytes'] / 2**20:.1f} | {r['why']} | {', '.join(r['candidates'])} |")
    lines += ["", f"Reference render (fp32 torch): {summary['reference_render'] or 'not rendered'}", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "main", help="output folder (default outputs/main)")
    p.add_argument("--targets", nargs="+", default=None, metavar="TARGET",
                   help=f"registry targets to build (default: {' '.join(t.name for t in main_job_targets())}; "
                        f"any of {' '.join(TARGETS)})")
    p.add_argument("--config", default=None, help="model size of the built-in model (advanced; default: the built-in model's)")
    p.add_argument("--photo-size", default="640x1024", help="HxW of the generated sample photo (default 640x1024)")
    p.add_argument("--no-render", action="store_true", help="skip rendering the sample photo through each backend")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a target's parity is below its bars (default: report it in summary.md and on "
                        "stderr, exit 1 only when a target could not be exported)")
    p.add_argument("--verbose", action="store_true",
                   help="pass --verbose to every step: their logs then also show the known-harmless third-party "
                        "messages they hide by default (runtime_py/third_party_logs.py lists them)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out.resolve()
    unknown = sorted(set(args.targets or ()) - set(TARGETS))
    if unknown:
        print(f"error: unknown targets {unknown}; choose from {sorted(TARGETS)}", file=sys.stderr)
        return 2
    targets = planned_exports(out, args.config, args.targets)
    py = sys.executable
    verbose = ["--verbose"] if args.verbose else []
    exports = {t.name: run_step(f"export {t.name}", [py, t.exporter, *t.args, *verbose],
                                out / "logs" / f"export-{t.name}.log")
               for t in targets}

    renders: dict[str, StepResult] = {}
    if not args.no_render:
        h, w = (int(v) for v in args.photo_size.lower().split("x"))
        photo = write_sample_photo(out / "sample", seed=12345, height=h, width=w)
        render = lambda p: [py, "-m", "runtime_py", "render", "--image", str(p["image"]),  # noqa: E731
                            "--depth", str(p["depth"]), "--mask", str(p["mask"]), "--K", "24", "--no-progress",
                            *verbose]
        cfg = ["--config", args.config] if args.config else []
        renders["torch"] = run_step("render torch", [*render(photo), *cfg, "--out", str(out / "renders" / "torch.png")],
                                    out / "logs" / "render-torch.log")
        for t in targets:
            folder = out / t.folder
            if exports[t.name].returncode not in (0, PARITY_BELOW_BARS) or not (folder / "manifest.json").exists():
                continue
            crop = t.target.render_crop
            source = crop_sample_photo(photo, out / "sample" / t.name, *crop) if crop else photo
            renders[t.name] = run_step(
                f"render {t.name}",
                [*render(source), "--backend", t.backend, "--artifacts", str(folder),
                 "--out", str(out / "renders" / f"{t.name}.png")],
                out / "logs" / f"render-{t.name}.log",
            )

    from runtime_py.atomic import write_json, write_text

    summary = summarise(out, targets, exports, renders)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))
    print("\n" + summary_markdown(summary))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    below = [t.name for t in targets if exports[t.name].returncode == PARITY_BELOW_BARS]
    failed = [t.name for t in targets if exports[t.name].returncode not in (0, PARITY_BELOW_BARS)]
    if below:
        print(f"targets exported with parity below their bars: {below} (summary.md and their parity.md say which "
              "figure; --strict makes this an error)", file=sys.stderr)
    if failed:
        print(f"targets that did not export here: {failed} (see their logs)", file=sys.stderr)
    return 1 if failed or (below and args.strict) else 0


if __name__ == "__main__":
    raise SystemExit(main())
