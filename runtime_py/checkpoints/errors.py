"""Errors raised while reading checkpoints.

Every checkpoint problem a user can cause (a wrong path, a truncated download, a file from another
model, a booby-trapped pickle) surfaces as one of these, with the file and the offending tensor or
pickle global named, instead of a deep torch or pickle traceback.
"""

from __future__ import annotations

import itertools
import reprlib


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


class _BoundedRepr(reprlib.Repr):
    """reprlib without its full sort of dict keys and set members (sorting is unbounded work)."""

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(pieces) + (", ..." if len(x) > self.maxdict else "") + "}"

    def _repr_members(self, x: set | frozenset, level: int, left: str, right: str) -> str:
        if not x:
            return f"{type(x).__name__}()"
        if level <= 0:
            return left + "..." + right
        pieces = [self.repr1(item, level - 1) for item in itertools.islice(x, self.maxset)]
        return left + ", ".join(pieces) + (", ..." if len(x) > self.maxset else "") + right

    def repr_set(self, x: set, level: int) -> str:
        return self._repr_members(x, level, "{", "}")

    def repr_frozenset(self, x: frozenset, level: int) -> str:
        return self._repr_members(x, level, "frozenset({", "})")


_REPR = _BoundedRepr()
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxarray = 4
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def short_repr(value: object, limit: int = 80) -> str:
    """``repr`` for error messages about untrusted data, with bounded work and length.

    A pickle can build a structure whose full ``repr`` is exponentially long (nested lists
    sharing their elements) or an int too long to print; neither must hang or break an error
    message. Tensors are described by shape and dtype, never printed.
    """
    try:
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if type(value).__name__ in ("Tensor", "Parameter") and shape is not None:
            text = f"tensor{tuple(shape)} {dtype}"
        else:
            text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int beyond Python's printable digits
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
