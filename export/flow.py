"""The one export flow: ``export_target(target, model, out_dir)`` for every target in the registry.

Named steps, in order, each timed and each skippable (``steps=`` / ``skip=``):

1. ``prepare``: the deployable components (``runtime_py.components``) from the model, its weights
   digest and configuration.
2. ``quantize``: the real inputs the recipe's quantizer needs (``quantize.calibration``: tiles
   run through the fp32 reference, photos for depth). The quantizer itself is applied where the
   backend's tools need it, inside ``lower``: PT2E before XNNPACK lowering, QDQ on the ONNX
   graph, palettization on the converted ML program.
3. ``lower``: the family's lowering module (``export.targets.FAMILIES``) writes the component
   files into a staging folder beside ``out_dir``.
4. ``package``: ``manifest.json`` is written last and the staging folder renamed onto ``out_dir``,
   so an interrupted export never leaves a folder that looks valid. ``lower`` and ``package`` run
   (or are skipped) together.
5. ``verify``: parity against the fp32 torch reference by EXECUTING the written artifacts with the
   target's runtime backend, against the bars in ``export/numerics/<family>.json``; writes
   ``parity.json`` / ``parity.md`` into the folder. A backend this machine cannot run is reported
   as unavailable, with the reason, never faked.

The result is typed: one :class:`ComponentResult` per component and one :class:`StepRecord` per step.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from export.targets import ALL_COMPONENTS, FAMILIES, STEPS, TILE, Target, VerifySpec, get_target
from quantize.recipes import CalibrationSpec
from runtime_py.memory import peak_rss_mib

Log = Callable[[str], None]


@dataclass
class ExportSettings:
    """What one run changes against the target's defaults (the CLIs fill it from their flags)."""

    components: tuple[str, ...] | None = None  # None: the target's
    calibration: CalibrationSpec | None = None  # None: the quantization recipe's
    verify: VerifySpec | None = None  # None: the target's
    options: dict[str, Any] = field(default_factory=dict)  # the family's lowering options over the recipe's settings
    depth_checkpoint: Path | str | None = None


@dataclass
class LowerJob:
    """What a family's ``lower`` gets."""

    target: Target
    components: Mapping[str, Any]  # every component prepared (the reference chain); lower ``names``
    names: list[str]
    folder: Path  # the staging folder; files go here, paths in entries are relative to it
    calibration: Any  # quantize.calibration.CalibrationSet or None
    options: Any  # the family's Options
    config: Any
    log: Log


@dataclass
class LoweringOutput:
    """What a family's ``lower`` returns: one manifest entry per component, plus manifest extras."""

    entries: dict[str, Any]  # name -> runtime_py.manifest.ComponentEntry (extra["seconds"]: per stage)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyJob:
    """What a verify function gets (the default one, or a family's own)."""

    target: Target
    folder: Path
    components: Mapping[str, Any]
    names: list[str]
    config: Any
    spec: VerifySpec
    options: Any
    log: Log


@dataclass
class VerifyOutput:
    """The verify step's outcome: the report written, its headline figures, whether the bars held."""

    report: dict[str, Any]
    components: dict[str, dict[str, Any]]  # name -> headline figures (psnr_db, max_abs, ...)
    end_to_end: dict[str, Any] | None
    passed: bool
    failures: list[str]
    executed_by: str = ""


@dataclass
class StepRecord:
    name: str
    status: str  # "done" | "skipped" | "unavailable"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class ComponentResult:
    """One component of one export: its file, size, precision, per-stage seconds and parity."""

    name: str
    file: str | None
    precision: str
    bytes: int | None
    seconds: dict[str, float]
    parity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What ``export_target`` did: steps, components, manifest, parity, time and memory."""

    target: Target
    folder: Path
    steps: dict[str, StepRecord]
    components: dict[str, ComponentResult]
    manifest: Any  # runtime_py.manifest.Manifest, or None when lower/package were skipped
    verify: VerifyOutput | None
    seconds: float
    peak_rss_mib: float

    @property
    def passed(self) -> bool | None:
        """Whether parity met the target's bars (None: not verified)."""
        return None if self.verify is None else self.verify.passed

    def summary_rows(self) -> list[dict[str, Any]]:
        return [{"target": self.target.name, "component": c.name, "precision": c.precision,
                 "MiB": None if c.bytes is None else round(c.bytes / 2**20, 2),
                 "seconds": round(sum(c.seconds.values()), 1) if c.seconds else None,
                 "PSNR dB": None if not c.parity else round(c.parity["psnr_db"], 2)}
                for c in self.components.values()]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.name, "folder": str(self.folder), "seconds": self.seconds,
                "peak_rss_mib": self.peak_rss_mib, "passed": self.passed,
                "steps": {k: vars(v) for k, v in self.steps.items()},
                "components": {k: vars(v) for k, v in self.components.items()}}


def family_module(target: Target) -> Any:
    """The lowering module of the target's family (imported now: it loads the heavy libraries)."""
    return importlib.import_module(FAMILIES[target.family]["module"])


def resolve_steps(target: Target, steps: Sequence[str] | None = None, skip: Sequence[str] = ()) -> list[str]:
    """The steps to run, in order: ``steps`` (default the target's) minus ``skip``; ValueError names a bad choice."""
    wanted = list(target.steps if steps is None else steps)
    unknown = [s for s in [*wanted, *skip] if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; the steps are {' -> '.join(STEPS)}")
    not_here = [s for s in wanted if s not in target.steps]
    if not_here:
        raise ValueError(f"target {target.name} has no step {not_here[0]!r}; its steps: {' -> '.join(target.steps)}")
    chosen = [s for s in target.steps if s in wanted and s not in skip]
    if ("lower" in chosen) != ("package" in chosen):
        raise ValueError("'lower' and 'package' run or are skipped together: lowered files without a manifest are "
                         "not an artifacts folder, and a manifest needs the lowered files")
    if "lower" in chosen and "prepare" not in chosen:
        raise ValueError("'lower' needs 'prepare' (the components to lower)")
    if "lower" in chosen and "quantize" in target.steps and "quantize" not in chosen:
        raise ValueError(f"target {target.name}'s recipe {target.recipe.quantization.name} calibrates on real inputs: "
                         "'lower' needs 'quantize'")
    if "verify" in chosen and "prepare" not in chosen:
        raise ValueError("'verify' needs 'prepare' (the fp32 reference it compares with)")
    return chosen


class _Steps:
    """Runs and times the steps, recording skipped ones too."""

    def __init__(self, chosen: Sequence[str], log: Log):
        self.chosen = list(chosen)
        self.records: dict[str, StepRecord] = {s: StepRecord(s, "skipped") for s in STEPS}
        self.log = log

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self.chosen:
            return None
        start = time.perf_counter()
        value = fn()
        self.records[name] = StepRecord(name, "done", time.perf_counter() - start)
        self.log(f"[{name}] done in {self.records[name].seconds:.1f} s")
        return value


def prepare_components(model: Any, names: Sequence[str], depth_checkpoint: Path | str | None = None) -> dict[str, Any]:
    """The components ``names`` plus the whole tile chain of ``model`` (a model, or a mapping of its
    components already built): calibration and parity feed each tile component the fp32 chain's
    own stage inputs, so the reference needs every tile component even when fewer are lowered."""
    if isinstance(model, Mapping):
        missing = [n for n in names if n not in model]
        if missing:
            raise ValueError(f"unknown components {missing}; available: {sorted(model)}")
        return dict(model)
    from runtime_py.components import export_components

    return export_components(model, list(dict.fromkeys([*TILE, *names])), depth_checkpoint)


def export_target(
    target: Target | str,
    model: Any,
    out_dir: Path | str,
    *,
    steps: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    settings: ExportSettings | None = None,
    weights_sha256: str | None = None,
    model_label: Any = "",
    log: Log = print,
) -> ExportResult:
    """Export ``model`` (a MagicBokeh model, or a mapping of its components) for ``target`` into ``out_dir``.

    ``out_dir`` is the artifacts folder itself (``manifest.json`` directly inside). With a
    mapping of components, ``weights_sha256`` must be given (a model's is computed).
    """
    target = get_target(target) if isinstance(target, str) else target
    settings = settings or ExportSettings()
    chosen = resolve_steps(target, steps, skip)
    names = list(settings.components or target.components)
    unknown = [n for n in names if n not in ALL_COMPONENTS]
    if unknown or not names:
        raise ValueError(f"unknown components {unknown or names}; choose from {' '.join(ALL_COMPONENTS)}")
    module = family_module(target)
    options = module.Options(**(target.recipe.lowering.options | settings.options)).validate()
    out = Path(out_dir)
    run = _Steps(chosen, log)
    started = time.perf_counter()

    def prepare() -> tuple[dict[str, Any], Any, str]:
        components = prepare_components(model, names, settings.depth_checkpoint)
        config = components[names[0]].config
        digest = weights_sha256
        if digest is None:
            if isinstance(model, Mapping):
                raise ValueError("export_target: give weights_sha256 with a mapping of components")
            from runtime_py.checkpoints import weights_sha256 as digest_of

            digest = digest_of(model)
        return components, config, digest

    prepared = run.run("prepare", prepare)
    components, config, digest = prepared if prepared else ({}, None, "")
    calibration = run.run("quantize", lambda: calibrate(target, components, config, names, settings.calibration, log))
    manifest = None
    if "lower" in chosen:
        manifest = _lower_and_package(target, module, run, components, names, out, calibration, options, config,
                                      digest, model_label, log)
    verify = None
    if "verify" in chosen:
        spec = settings.verify or target.verify
        job = VerifyJob(target, out, components, names, config, spec, options, log)
        verify_fn = getattr(module, "verify", verify_parity)
        from runtime_py.backends import BackendUnavailableError

        start = time.perf_counter()
        try:
            verify = verify_fn(job)
        except BackendUnavailableError as exc:
            run.records["verify"] = StepRecord("verify", "unavailable", time.perf_counter() - start, _first_line(exc))
            log(f"[verify] not run here: {_first_line(exc)}")
        else:
            run.records["verify"] = StepRecord("verify", "done", time.perf_counter() - start,
                                               "passed" if verify.passed else "; ".join(verify.failures))
            log(f"[verify] done in {run.records['verify'].seconds:.1f} s")
    if manifest is None and (out / "manifest.json").is_file():
        from runtime_py.manifest import read_manifest

        manifest = read_manifest(out, verify_files=False)
    return ExportResult(target, out, run.records, _component_results(manifest, names, verify), manifest, verify,
                        time.perf_counter() - started, peak_rss_mib())


def calibrate(target: Target, components: Mapping[str, Any], config: Any, names: Sequence[str],
              spec: CalibrationSpec | None, log: Log) -> Any:
    """The quantize step: the recipe's calibration inputs for ``names`` (real tiles, photos for depth)."""
    from quantize.calibration import build_calibration_set

    spec = spec or target.recipe.quantization.calibration or CalibrationSpec()
    log(f"[quantize] {target.recipe.quantization.name}: calibration on {spec.num_scenes} scene(s), "
        f"<= {spec.max_tiles_per_image or 'all'} tiles each" + (f", {spec.depth_images} depth photos" if "depth" in names else ""))
    result = build_calibration_set(components, config, spec, components=names)
    log(f"[quantize] batches: {result.describe()['batches']}")
    return result


def _lower_and_package(target: Target, module: Any, run: _Steps, components: Mapping[str, Any], names: list[str],
                       out: Path, calibration: Any, options: Any, config: Any, digest: str, model_label: Any,
                       log: Log) -> Any:
    from runtime_py.atomic import atomic_path
    from runtime_py.manifest import Manifest, write_manifest

    with atomic_path(out) as folder:
        folder.mkdir(parents=True)
        job = LowerJob(target, components, names, folder, calibration, options, config, log)
        lowered: LoweringOutput = run.run("lower", lambda: module.lower(job))

        def package() -> Any:
            extra = dict(lowered.extra)
            if calibration is not None:
                extra["calibration"] = calibration.describe()
            manifest = Manifest(
                backend=FAMILIES[target.family]["manifest"],
                config=config.to_dict(),
                weights_sha256=digest,
                components=lowered.entries,
                precision=target.precision,
                recipe={"target": target.name, **target.recipe.to_dict(), "options": options.to_dict()},
                model_label=model_label,
                extra=extra,
            )
            write_manifest(folder, manifest)  # last: a folder without it is not an artifacts folder
            return manifest

        return run.run("package", package)


def _component_results(manifest: Any, names: Sequence[str], verify: VerifyOutput | None) -> dict[str, ComponentResult]:
    out = {}
    for name in names:
        entry = manifest.components.get(name) if manifest is not None else None
        out[name] = ComponentResult(
            name=name,
            file=entry.file if entry else None,
            precision=entry.precision if entry else "",
            bytes=entry.total_bytes if entry else None,
            seconds=dict(entry.extra.get("seconds", {})) if entry else {},
            parity=verify.components.get(name) if verify else None,
            extra={k: v for k, v in (entry.extra if entry else {}).items() if k != "seconds"},
        )
    return out


def verification_samples(config: Any, spec: VerifySpec) -> list[Any]:
    """The generated scenes (and the user's photos) parity runs on."""
    from runtime_py.samples import gather_samples

    size = config.tile if spec.scene_size == "tile" else spec.scene_size
    return gather_samples(config, num_scenes=spec.num_scenes, images_dir=spec.images_dir, seed=spec.seed,
                          scene_size=size)


def parity_thresholds(target: Target, part: str = "parity") -> Any:
    """The target's bars for one part of its parity report, from ``export/numerics/<family>.json``."""
    from runtime_py.parity import ParityThresholds

    return ParityThresholds(**target.thresholds()[part])


def verify_parity(job: VerifyJob) -> VerifyOutput:
    """The default verify step: the target's backend runs the written artifacts against fp32 torch."""
    from runtime_py.backends import get_backend
    from runtime_py.backends.torch_backend import TorchBackend
    from runtime_py.parity import run_parity, write_parity_report

    backend = get_backend(job.target.backend)
    tested = backend.load(job.folder, tuple(job.names))
    executed_by = backend.describe() if hasattr(backend, "describe") else job.target.backend
    samples = verification_samples(job.config, job.spec)
    reference = TorchBackend().load(job.components)  # the whole chain: stage inputs come from it
    result = run_parity(reference, tested, samples, config=job.config, components=list(job.names),
                        max_tiles_per_image=job.spec.max_tiles_per_image,
                        thresholds=parity_thresholds(job.target),
                        meta={"reference": "torch fp32", "tested": job.target.name, "executed_by": executed_by,
                              "artifacts": str(job.folder)})
    write_parity_report(result, job.folder, title=f"{job.target.name} parity (artifacts executed by {executed_by})")
    for name, figures in result.components.items():
        job.log(f"[verify] {name}: PSNR {figures['psnr_db']:.2f} dB, max abs {figures['max_abs']:.3g}")
    if result.end_to_end:
        job.log(f"[verify] end to end: PSNR {result.end_to_end['psnr_db']:.2f} dB, SSIM {result.end_to_end['ssim']:.5f}")
    return VerifyOutput(result.to_dict(), result.components, result.end_to_end, result.passed, result.failures,
                        executed_by)


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def with_verify(target: Target, **changes: Any) -> VerifySpec:
    """The target's verify spec with ``changes`` (None values keep the default)."""
    return replace(target.verify, **{k: v for k, v in changes.items() if v is not None})
