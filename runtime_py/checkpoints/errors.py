"""Errors raised while reading checkpoints.

Every checkpoint problem a user can cause (a wrong path, a truncated download, a file from another
model, a booby-trapped pickle) surfaces as one of these, with the file and the offending tensor or
pickle global named, instead of a deep torch or pickle traceback.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """Base class: a checkpoint cannot be turned into a MagicBokeh model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or folder does not exist."""


class CorruptCheckpointError(CheckpointError):
    """A file exists but cannot be parsed (truncated, wrong format, malformed content)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle tries to run code (call a global) that a weights file has no business calling."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint does not fit the model: missing, unexpected or wrongly shaped tensors."""


def summarize_names(names: list[str] | set[str] | tuple[str, ...], limit: int = 8) -> str:
    """``a, b, c ... (+N more)``: error messages stay readable when thousands of keys differ."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    if len(ordered) > limit:
        shown += f" ... (+{len(ordered) - limit} more)"
    return shown
