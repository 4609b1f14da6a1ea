"""Checkpoints: the published weights (SD2.1 folder + ``lora.pkl``) and the toolkit's own format.

``load_model`` is the one entry point the rest of the toolkit uses::

    load_model(sd21="sd21-base/", lora="lora.pkl")                   # published weights, LoRAs merged
    load_model(checkpoint="magicbokeh.safetensors")                  # native file (see native.py)

``python -m runtime_py convert`` turns the first form into the second once, so that later steps
never touch a pickle.
"""

from __future__ import annotations

from pathlib import Path

from ..model import MagicBokeh
from ..model.config import MagicBokehConfig
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .native import load_native, read_native_config, read_native_metadata, save_native, weights_sha256
from .official import OfficialLoadReport, load_official, load_official_with_report
from .safe_pickle import module_tensors, safe_torch_load

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "OfficialLoadReport",
    "UnsafeCheckpointError",
    "load_model",
    "load_native",
    "load_official",
    "load_official_with_report",
    "module_tensors",
    "read_native_config",
    "read_native_metadata",
    "safe_torch_load",
    "save_native",
    "weights_sha256",
]


def load_model(
    *,
    sd21: Path | str | None = None,
    lora: Path | str | None = None,
    checkpoint: Path | str | None = None,
    config: MagicBokehConfig | str | None = None,
) -> MagicBokeh:
    """Load MagicBokeh from exactly one source: ``sd21`` + ``lora`` together, or ``checkpoint``.

    ``config``: an optional guard. The published weights' shapes are read from the folder's
    config.json files and ``lora.pkl`` (``"sd21"`` then checks they are the real release's); a
    native checkpoint carries its own config, which must match it.
    """
    official = sd21 is not None or lora is not None
    if official and checkpoint is not None:
        raise ValueError("give either sd21= and lora= (published weights) or checkpoint= (native file), not both")
    if official:
        if sd21 is None or lora is None:
            raise ValueError(
                "the published weights need both sd21= (the Stable Diffusion 2.1-base folder) and lora= (lora.pkl); "
                f"got only {'sd21' if lora is None else 'lora'}="
            )
        return load_official(sd21, lora, config)
    if checkpoint is not None:
        return load_native(checkpoint, config=config)
    raise ValueError("no weights given: pass sd21= and lora= (published weights) or checkpoint= (a native .safetensors file)")
