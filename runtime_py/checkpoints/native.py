"""The toolkit's own checkpoint: one ``.safetensors`` file, no pickle anywhere.

Layout: the tensors are ``MagicBokeh.state_dict()`` (LoRAs already merged; names ``unet.*``,
``vae.*``, ``injector.*``). The safetensors header metadata (string -> string) carries

* ``format``: ``"magicbokeh-native"`` and ``format_version``: ``"1"``,
* ``config``: the :class:`MagicBokehConfig` as JSON (so the file alone rebuilds the model),
* ``weights_sha256``: :func:`weights_sha256` of the tensors, checked on load (safetensors has no
  checksum of its own, so a flipped byte would otherwise go unnoticed).

One file (rather than a sidecar JSON) means a model cannot be separated from its configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import torch

from ..atomic import atomic_path
from ..model import MagicBokeh
from ..model.config import MagicBokehConfig, get_config
from .errors import CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, short_repr, summarize_names
from .official import _empty_model, assign_state
from .safetensors_check import read_safetensors_header

__all__ = [
    "NATIVE_FORMAT",
    "NATIVE_FORMAT_VERSION",
    "load_native",
    "read_native_config",
    "read_native_metadata",
    "save_native",
    "weights_sha256",
]

NATIVE_FORMAT = "magicbokeh-native"
NATIVE_FORMAT_VERSION = "1"


def weights_sha256(model_or_state: MagicBokeh | torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Identity of a set of weights: sha256 over the persistent tensors in sorted name order.

    Per tensor it hashes ``name``, dtype, shape and the raw (little-endian, C-contiguous) bytes,
    separated so that no two different state dicts produce the same byte stream. Independent of
    the file format, device and the order modules were registered in.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_native(model: MagicBokeh, path: Path | str, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as one safetensors file (atomically: a crash leaves no half-written file).

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that type to halve a
    shipped file; :func:`load_native` casts them back to the model's dtype.
    """
    from safetensors.torch import save_file

    if not isinstance(model, MagicBokeh):
        raise TypeError(f"save_native needs a MagicBokeh model, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"native checkpoints are .safetensors files; got {path}")
    state = model.state_dict()
    if any(t.is_meta for t in state.values()):
        raise ValueError("the model has parameters without data (meta tensors); load weights before saving")
    state = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    if dtype is not None:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    metadata = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_FORMAT_VERSION,
        "config": model.config.to_json(),
        "weights_sha256": weights_sha256(state),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # an ordinary file's permissions, not the temp folder's private ones
    return path


def read_native_metadata(path: Path | str) -> dict[str, str]:
    """The header metadata of a native checkpoint (reads no tensor data; the header is checked)."""
    path = _existing_file(path)
    metadata = read_safetensors_header(path).metadata
    if metadata.get("format") != NATIVE_FORMAT:
        raise CorruptCheckpointError(
            f"{path} is a safetensors file but not a MagicBokeh native checkpoint (metadata format is "
            f"{short_repr(metadata.get('format'))}, expected {NATIVE_FORMAT!r}); write one with `python -m runtime_py convert`"
        )
    if metadata.get("format_version") != NATIVE_FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path} has native format version {short_repr(metadata.get('format_version'))}; this toolkit reads "
            f"version {NATIVE_FORMAT_VERSION!r}"
        )
    return dict(metadata)


def read_native_config(path: Path | str) -> MagicBokehConfig:
    """The model configuration stored in a native checkpoint."""
    metadata = read_native_metadata(path)
    try:
        return MagicBokehConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
        raise CorruptCheckpointError(f"{path}: the stored model config cannot be read: {short_repr(str(err), 160)}") from None


def load_native(
    path: Path | str, *, config: MagicBokehConfig | str | None = None, verify: bool = True
) -> MagicBokeh:
    """Rebuild the model saved by :func:`save_native`.

    ``config``, if given, guards against loading the wrong size: a name must equal the stored
    config's name (the stored config wins for details such as a checkpoint's focus-LoRA rank), a
    :class:`MagicBokehConfig` must equal it. ``verify`` re-hashes the tensors against the stored
    ``weights_sha256``.
    """
    from safetensors.torch import load_file

    path = _existing_file(path)
    metadata = read_native_metadata(path)
    stored = read_native_config(path)
    if config is not None:
        wanted = get_config(config)
        # A name guards the size; a full config object must match field for field.
        if wanted.name != stored.name or (isinstance(config, MagicBokehConfig) and wanted != stored):
            raise CheckpointMismatchError(
                f"{path} holds a {stored.name!r} model, but config {wanted.name!r} was requested"
                + ("" if wanted.name != stored.name else " (same name, different fields)")
            )
    # Names and shapes are checked from the header, before any tensor data is read.
    header = read_safetensors_header(path)
    expected_shapes = {name: tuple(t.shape) for name, t in _empty_model(stored).state_dict().items()}
    missing = sorted(set(expected_shapes) - set(header.tensors))
    unexpected = sorted(set(header.tensors) - set(expected_shapes))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path} does not fit the stored {stored.name!r} config: missing {summarize_names(missing) or 'none'}; "
            f"unexpected {summarize_names([short_repr(n, 60) for n in unexpected]) or 'none'}"
        )
    for name, entry in header.tensors.items():
        if entry.shape != expected_shapes[name]:
            raise CheckpointMismatchError(
                f"{path}: tensor {name} has shape {entry.shape}, the stored config expects {expected_shapes[name]}"
            )
    try:
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise CorruptCheckpointError(f"{path} cannot be read (truncated?): {type(err).__name__}: {short_repr(str(err), 160)}") from None
    if verify and weights_sha256(tensors) != metadata.get("weights_sha256"):
        raise CorruptCheckpointError(
            f"{path}: the tensors do not match the stored weights_sha256 (the file was modified or damaged)"
        )
    model = _empty_model(stored)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path} does not fit the stored {stored.name!r} config: missing {summarize_names(missing) or 'none'}; "
            f"unexpected {summarize_names(unexpected) or 'none'}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointMismatchError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the stored config expects {tuple(expected[name].shape)}"
            )
        if tensor.dtype != expected[name].dtype:
            tensors[name] = tensor.to(expected[name].dtype)
    return assign_state(model, tensors, str(path))


def _existing_file(path: Path | str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} is not a file")
    return path
