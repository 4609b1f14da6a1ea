"""The artifact manifest: one versioned JSON format written by every exporter and read by the
runtime and the phone apps.

An artifacts folder holds one file per component plus ``manifest.json`` describing, for each
component, its inputs and outputs (from the components' own :class:`TensorSpec` statements), the
file's size and sha256, the precision/recipe, and for the whole export the model configuration,
a hash of the weights, the tiling and pre/post-processing, and the tool versions. Loading checks
the schema, the files' hashes and (when asked) that the manifest matches the model in hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_json
from .components import Component
from .model import MagicBokehConfig

SCHEMA = "magicbokeh-artifacts"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOOL_PACKAGES = ("torch", "executorch", "coremltools", "onnx", "onnxruntime", "onnxruntime-qnn", "diffusers", "transformers", "numpy")


MAX_MANIFEST_BYTES = 4 << 20  # a manifest is a few KB; the cap bounds what parsing may cost


class ManifestError(ValueError):
    """An artifacts folder is missing, corrupt, or does not match what is being loaded."""


def _check_relative(file: Any, where: str) -> None:
    """A plain relative path inside the artifacts folder, or ManifestError naming ``where``."""
    if not isinstance(file, str) or not file:
        raise ManifestError(f"{where} names no file")
    if Path(file).is_absolute() or ".." in Path(file).parts or "\\" in file or ":" in file:
        raise ManifestError(f"{where}: file {file[:100]!r} is not a path inside the artifacts folder")


def _tensor_names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ManifestError(f"{where} is not a non-empty list of tensors")
    names = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{where}: every tensor needs a 'name'")
        names.append(name)
    return names


def _check_parts(component: str, entry: dict[str, Any]) -> None:
    """A component's ``parts``: files inside the folder, and a chain whose every input exists.

    Each part may read the component's inputs and what earlier parts wrote; the component's
    outputs must be written by some part. Anything else is one ManifestError naming the part.
    """
    parts = entry["parts"]
    label = f"manifest component {component[:60]!r}"
    if not isinstance(parts, list) or not parts:
        raise ManifestError(f"{label}: 'parts' is not a non-empty list")
    available = {s.get("name") for s in entry.get("inputs", []) if isinstance(s, dict)}
    for index, part in enumerate(parts):
        where = f"{label} part {index}"
        if not isinstance(part, dict):
            raise ManifestError(f"{where} is not an object")
        if part.get("index", index) != index:
            raise ManifestError(f"{where} says it is part {part.get('index')!r}: parts must be listed in order")
        _check_relative(part.get("file"), where)
        for key, kind in (("sha256", str), ("bytes", int), ("context_files", dict)):
            if key in part and not isinstance(part[key], kind):
                raise ManifestError(f"{where}: field {key!r} is not a {kind.__name__}")
        if part.get("fp32_file") is not None:
            _check_relative(part["fp32_file"], f"{where} fp32_file")
        for soc, file in (part.get("context_files") or {}).items():
            _check_relative(file, f"{where} context file for {soc[:20]!r}")
        inputs = _tensor_names(part.get("inputs"), f"{where} inputs")
        unknown = [n for n in inputs if n not in available]
        if unknown:
            raise ManifestError(f"{where} ({part['file'][:80]}) reads tensor {unknown[0][:80]!r}, which neither the "
                                "component's inputs nor an earlier part provide")
        available |= set(_tensor_names(part.get("outputs"), f"{where} outputs"))
    missing = [s.get("name") for s in entry.get("outputs", []) if isinstance(s, dict) and s.get("name") not in available]
    if missing:
        raise ManifestError(f"{label}: no part writes the component's output {str(missing[0])[:80]!r}")


def _check_schema(data: Any) -> None:
    """The manifest's structure and field types, before any field is used.

    Component files must be plain relative paths inside the artifacts folder: a manifest from
    elsewhere must not make the loader hash or load files outside it.
    """
    if not isinstance(data, dict):
        raise ManifestError(f"manifest is a JSON {type(data).__name__}, expected an object")
    for key, kind in (("backend", str), ("precision", str), ("model", dict), ("components", dict)):
        if not isinstance(data.get(key), kind):
            raise ManifestError(f"manifest field {key!r} is missing or not a {kind.__name__}")
    for key, kind in (("recipe", dict), ("tools", dict), ("extra", dict), ("created", str)):
        if key in data and not isinstance(data[key], kind):
            raise ManifestError(f"manifest field {key!r} is not a {kind.__name__}")
    model = data["model"]
    if not isinstance(model.get("config"), dict) or not isinstance(model.get("weights_sha256"), str):
        raise ManifestError("manifest field 'model' needs a 'config' object and a 'weights_sha256' string")
    for name, entry in data["components"].items():
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest component {name[:60]!r} is not an object")
        for key, kind in (("name", str), ("file", str), ("inputs", list), ("outputs", list), ("precision", str),
                          ("sha256", str), ("bytes", int), ("extra", dict)):
            if key in entry and not isinstance(entry[key], kind):
                raise ManifestError(f"manifest component {name[:60]!r}: field {key!r} is not a {kind.__name__}")
        _check_relative(entry.get("file"), f"manifest component {name[:60]!r}")
        if "parts" in entry:
            _check_parts(name, entry)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder (e.g. an .mlpackage): hashed over sorted relative paths + bytes."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(sub.relative_to(path)).encode())
            with open(sub, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
        return h.hexdigest()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def size_bytes(path: Path | str) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def tool_versions(packages: Iterable[str] = TOOL_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def tiling_section(config: MagicBokehConfig) -> dict[str, Any]:
    """What an app needs to cut, feed and blend tiles exactly as the reference pipeline does."""
    return {
        "tile": config.tile,
        "stride": config.stride,
        "ramp_length": config.tile - config.stride,
        "ramp": "torch.linspace(0, 1, ramp_length) on sides not at the image border",
        "order": "regular grid row-major, then bottom-flush (left to right), right-flush (top to bottom), bottom-right corner",
        "min_side": config.tile,
    }


def processing_section(config: MagicBokehConfig) -> dict[str, Any]:
    return {
        "input": "rgb = 2 * uint8 / 255 - 1 (sRGB, NCHW)",
        "depth": "disparity in [0, 1] (larger = nearer), quantised: uint8(depth * 255) / 255",
        "focus": "median of the 8-bit depth inside the focus mask (lower middle), / 255",
        "defocus": "|depth - focus| * K / 32, K integer in 1..32",
        "in_focus": f"1 - [defocus > {config.defocus_in_focus_threshold}]",
        "output": "uint8 = trunc(clamp((rgb + 1) / 2, 0, 1) * 255), then per-channel mean/std colour fix against the input",
        "latent_scale": config.latent_scale,
    }


@dataclass
class ComponentPart:
    """One part of a component split into files run in sequence, passing tensors by name.

    ``inputs`` / ``outputs``: ``{"name", "dtype", "shape"}`` of the tensors it reads and writes;
    ``file`` is the part's main (deployed-precision) file, hashed like a component's;
    ``fp32_file`` and ``context_files`` (SoC -> file) are its other forms, checked to exist.
    """

    index: int
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    sha256: str = ""
    bytes: int = 0
    fp32_file: str | None = None
    context_files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.outputs]

    def files(self) -> list[str]:
        """Every file of this part (main, fp32, contexts), once each."""
        return list(dict.fromkeys([self.file, *([self.fp32_file] if self.fp32_file else []),
                                   *self.context_files.values()]))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComponentPart":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ComponentEntry:
    """One exported component as the manifest records it (``parts``: see the module docstring)."""

    name: str
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    precision: str
    sha256: str = ""
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    parts: list[ComponentPart] | None = None

    @property
    def total_bytes(self) -> int:
        """The deployed size: the file's bytes, or the sum over the parts' main files."""
        return sum(p.bytes for p in self.parts) if self.parts else self.bytes

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "parts"}
        if self.parts:  # absent, not null, on unsplit components: older readers see what they always saw
            data["parts"] = [vars(p) for p in self.parts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComponentEntry":
        body = dict(data)
        parts = body.pop("parts", None)
        entry = cls(**body)
        if parts is not None:
            entry.parts = [ComponentPart.from_dict(p) for p in parts]
        return entry

    @classmethod
    def from_component(cls, component: Component, file: str, precision: str, **extra: Any) -> "ComponentEntry":
        return cls(
            name=component.name,
            file=file,
            inputs=[s.to_dict() for s in component.input_specs()],
            outputs=[s.to_dict() for s in component.output_specs()],
            precision=precision,
            extra=dict(extra),
        )

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s["shape"]) for s in self.inputs]

    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s["shape"]) for s in self.outputs]


@dataclass
class Manifest:
    backend: str
    config: dict[str, Any]
    weights_sha256: str
    components: dict[str, ComponentEntry]
    precision: str
    recipe: dict[str, Any] = field(default_factory=dict)
    model_label: dict[str, Any] | str = ""
    tools: dict[str, str] = field(default_factory=tool_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self) -> MagicBokehConfig:
        return MagicBokehConfig.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        cfg = self.model_config
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "backend": self.backend,
            "precision": self.precision,
            "recipe": self.recipe,
            "model": {"config": self.config, "weights_sha256": self.weights_sha256, "label": self.model_label},
            "tiling": tiling_section(cfg),
            "processing": processing_section(cfg),
            "components": {name: entry.to_dict() | {"name": name} for name, entry in self.components.items()},
            "tools": self.tools,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"manifest is a JSON {type(data).__name__}, expected an object")
        if data.get("schema") != SCHEMA:
            raise ManifestError(f"not a MagicBokeh artifacts manifest (schema {str(data.get('schema'))[:60]!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema version {str(data.get('schema_version'))[:40]} is not supported (this runtime reads {SCHEMA_VERSION})"
            )
        _check_schema(data)
        try:
            components = {name: ComponentEntry.from_dict(entry) for name, entry in data["components"].items()}
            return cls(
                backend=data["backend"],
                config=data["model"]["config"],
                weights_sha256=data["model"]["weights_sha256"],
                model_label=data["model"].get("label", ""),
                components=components,
                precision=data["precision"],
                recipe=data.get("recipe", {}),
                tools=data.get("tools", {}),
                created=data.get("created", ""),
                extra=data.get("extra", {}),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest is malformed: {str(exc)[:200]}") from None


def write_manifest(folder: Path | str, manifest: Manifest) -> Path:
    """Fill in each component file's size and sha256, then write ``manifest.json`` atomically."""
    folder = Path(folder)
    for entry in manifest.components.values():
        for part in entry.parts or ():
            for file in part.files():
                if not (folder / file).exists():
                    raise ManifestError(f"component {entry.name!r} part {part.index}: artifact {folder / file} does not exist")
            part.sha256 = sha256_file(folder / part.file)
            part.bytes = size_bytes(folder / part.file)
        if entry.parts and entry.file != entry.parts[0].file:
            raise ManifestError(f"component {entry.name!r}: a split component's file is its first part's, "
                                f"{entry.parts[0].file!r}, not {entry.file!r}")
        path = folder / entry.file
        if not path.exists():
            raise ManifestError(f"component {entry.name!r}: artifact {path} does not exist")
        entry.sha256 = sha256_file(path)
        entry.bytes = size_bytes(path)
    _check_schema(json.loads(json.dumps(manifest.to_dict())))  # what readers will check, before writing
    return write_json(folder / MANIFEST_NAME, manifest.to_dict())


def read_manifest(folder: Path | str, verify_files: bool = True) -> Manifest:
    """Read and check an artifacts folder's manifest (schema, files present, hashes)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"artifacts folder {folder} does not exist")
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST_NAME}: not an artifacts folder, or an export that did not finish")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {str(exc)[:200]}") from None
    try:
        manifest = Manifest.from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if verify_files:
        for entry in manifest.components.values():
            file = folder / entry.file
            if not file.exists():
                raise ManifestError(f"component {entry.name!r}: {file} is listed in the manifest but missing")
            digest = sha256_file(file)
            if digest != entry.sha256:
                raise ManifestError(
                    f"component {entry.name!r}: {file} does not match the manifest (sha256 {digest[:12]}..., "
                    f"manifest says {entry.sha256[:12]}...): the file changed after export"
                )
            for part in entry.parts or ():
                _verify_part_files(folder, entry.name, part)
    return manifest


def _verify_part_files(folder: Path, component: str, part: ComponentPart) -> None:
    for file in part.files():
        if not (folder / file).exists():
            raise ManifestError(f"component {component!r} part {part.index}: {folder / file} is listed in the "
                                "manifest but missing")
    digest = sha256_file(folder / part.file)
    if digest != part.sha256:
        raise ManifestError(f"component {component!r} part {part.index}: {folder / part.file} does not match the "
                            f"manifest (sha256 {digest[:12]}..., manifest says {part.sha256[:12]}...): the file "
                            "changed after export")


def check_matches(
    manifest: Manifest,
    *,
    config: MagicBokehConfig | None = None,
    weights_sha256: str | None = None,
    backend: str | None = None,
    components: Iterable[str] = (),
) -> None:
    """Refuse artifacts that do not belong to the model / backend in hand, with the reason."""
    if backend is not None and manifest.backend != backend:
        raise ManifestError(f"artifacts were exported for backend {manifest.backend!r}, not {backend!r}")
    if config is not None and manifest.model_config != config:
        ours, theirs = config.to_dict(), manifest.config
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != _listify(theirs.get(k)) and theirs.get(k) != ours.get(k))
        raise ManifestError(f"artifacts were exported from config {manifest.config.get('name')!r}; differing fields: {diff}")
    if weights_sha256 is not None and manifest.weights_sha256 != weights_sha256:
        raise ManifestError(
            f"artifacts were exported from other weights (sha256 {manifest.weights_sha256[:12]}..., model in hand "
            f"{weights_sha256[:12]}...)"
        )
    missing = [c for c in components if c not in manifest.components]
    if missing:
        raise ManifestError(f"artifacts lack components {missing}; they hold {sorted(manifest.components)}")


def _listify(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
