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
        file = entry.get("file")
        if not isinstance(file, str) or not file:
            raise ManifestError(f"manifest component {name[:60]!r} names no file")
        parts = Path(file).parts
        if Path(file).is_absolute() or ".." in parts or "\\" in file or ":" in file:
            raise ManifestError(
                f"manifest component {name[:60]!r}: file {file[:100]!r} is not a path inside the artifacts folder"
            )


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
class ComponentEntry:
    """One exported component as the manifest records it."""

    name: str
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    precision: str
    sha256: str = ""
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

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
            "components": {name: vars(entry) | {"name": name} for name, entry in self.components.items()},
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
            components = {name: ComponentEntry(**entry) for name, entry in data["components"].items()}
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
        path = folder / entry.file
        if not path.exists():
            raise ManifestError(f"component {entry.name!r}: artifact {path} does not exist")
        entry.sha256 = sha256_file(path)
        entry.bytes = size_bytes(path)
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
    return manifest


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
