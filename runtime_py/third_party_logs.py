"""Known-harmless messages that third-party libraries log while they are imported, hidden at their source.

Building the torch model imports diffusers, whose quantizer registry imports torchao. On a
machine without CUDA that prints lines that say nothing about this toolkit's work. Each one is
listed here with the logger that emits it, the exact text, and why it is harmless; a
:class:`logging.Filter` on that one logger drops only records matching that text, so every other
message of the same library (and every real warning) still shows. Nothing here touches Python's
``warnings`` machinery or any other logger.

``python -m runtime_py --verbose`` calls :func:`show_hidden_messages`, which lifts the filters.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownMessage:
    """One harmless message: the logger that emits it, a regular expression its text matches, why."""

    logger: str
    pattern: str
    why: str


KNOWN_HARMLESS: tuple[KnownMessage, ...] = (
    KnownMessage(
        "torchao",
        r"^Failed to load \S*torchao[/\\]_C\w*[.\w-]*\.so: ",
        "torchao's CUDA-only kernel libraries (e.g. _C_mxfp8, _C_cutlass_90a) cannot load on a CPU-only "
        "machine; torchao's CPU code and this toolkit do not use them",
    ),
    KnownMessage(
        "torch.utils._pytree",
        r"^<enum '\w+'> is an Enum subclass and is now natively supported by torch\.compile as an opaque value type\.",
        "torchao registers its enums as pytree constants on import, which torch now deprecates; a "
        "notice to torchao's maintainers, nothing this toolkit calls",
    ),
    KnownMessage(
        "diffusers.quantizers.torchao.torchao_quantizer",
        r"^Unable to import `torchao` Tensor objects\. This may affect loading checkpoints serialized with `torchao`",
        "diffusers tries to allow-list torchao tensor classes for loading torchao-quantized checkpoints; "
        "this toolkit never loads such checkpoints (its own weights are safetensors)",
    ),
)


class _KnownMessageFilter(logging.Filter):
    """Drops the records of one logger whose text matches one known-harmless pattern."""

    def __init__(self, message: KnownMessage):
        super().__init__()
        self.message = message
        self._regex = re.compile(message.pattern)
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let it through
            return True
        if self._regex.search(text):
            self.hidden += 1
            return False
        return True


_FILTERS: list[_KnownMessageFilter] = []


def hide_known_harmless_messages() -> None:
    """Install the filters (idempotent). Call before the libraries are imported."""
    if _FILTERS:
        return
    for message in KNOWN_HARMLESS:
        filt = _KnownMessageFilter(message)
        logging.getLogger(message.logger).addFilter(filt)
        _FILTERS.append(filt)


def show_hidden_messages() -> None:
    """Remove the filters: every message shows again (``--verbose``)."""
    while _FILTERS:
        filt = _FILTERS.pop()
        logging.getLogger(filt.message.logger).removeFilter(filt)


def hidden_count() -> int:
    """How many records the filters dropped so far in this process."""
    return sum(f.hidden for f in _FILTERS)
