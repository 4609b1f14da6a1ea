"""Known-harmless messages that third-party libraries print while they are imported or run, hidden at their source.

Building the torch model imports diffusers, whose quantizer registry imports torchao; importing
coremltools on Linux reports its macOS-only native module and its table of tested versions; torch's
export machinery copies pytree specs through a deprecated class. None of those lines says anything
about this toolkit's work. Each one is listed here with where it comes from (the logger that emits
it, or the warning category), the exact text, and why it is harmless:

- a logged message gets a :class:`logging.Filter` on that one logger that drops only records
  matching that text, so every other message of the same library still shows;
- a Python warning gets one ``warnings`` filter of that category and text (never a category or a
  module as a whole), so every other warning, of that library or ours, still shows.

``runtime_py`` installs them when it is imported, so every command line of the toolkit (the runtime
CLI, the exporters, the main job's children) starts quiet; their ``--verbose`` flag calls
:func:`show_hidden_messages`, which lifts every filter. The exporters also call
:func:`quiet_progress_bars_off_terminal`: coremltools draws tqdm bars that only a terminal can redraw.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownMessage:
    """One harmless message: the logger that emits it, a regular expression its text matches, why."""

    logger: str
    pattern: str
    why: str
    #: ``sys.platform`` prefixes where the message is harmless; empty: everywhere.
    platforms: tuple[str, ...] = ()

    def applies_here(self) -> bool:
        return not self.platforms or sys.platform.startswith(self.platforms)


@dataclass(frozen=True)
class KnownWarning:
    """One harmless Python warning: its category, a regular expression its text starts with, why."""

    category: type[Warning]
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
    KnownMessage(
        "coremltools",
        r"^Failed to load _ML\w*Proxy: No module named 'coremltools\.libcoremlpython'$",
        "coremltools' native module (prediction, compute plans, devices) exists only in its macOS wheels; "
        "on Linux the toolkit converts and saves packages and runs them with runtime_py.coreml_interpreter, "
        "and its Core ML backend says itself when a step needs macOS",
        platforms=("linux",),
    ),
    KnownMessage(
        "coremltools",
        r"^scikit-learn version \S+ is not supported\. .*Disabling scikit-learn conversion API\.$",
        "coremltools' scikit-learn converter, which this toolkit never uses (it converts torch programs only)",
    ),
    KnownMessage(
        "coremltools",
        r"^Torch version \S+ has not been tested with coremltools\. You may run into unexpected errors\.",
        "coremltools' list of tested torch versions lags torch; the versions this toolkit uses are pinned in "
        "pyproject.toml and every Core ML export is checked by executing the package (its parity step)",
    ),
)

KNOWN_HARMLESS_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        FutureWarning,
        re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        "torch deprecated its LeafSpec class, and torch.export/ExecuTorch/coremltools still copy the specs "
        "of exported programs through it (the warning points at copyreg, once per copied spec); a notice "
        "to those libraries' maintainers, nothing this toolkit calls",
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
_WARNING_FILTERS: list[tuple] = []  # the entries this module put into warnings.filters


def hide_known_harmless_messages() -> None:
    """Install the filters (idempotent). Call before the libraries are imported.

    The warning filters are put back if a ``warnings.catch_warnings`` block (pytest wraps every
    test in one) restored the list they were in.
    """
    if not _FILTERS:
        for message in KNOWN_HARMLESS:
            if message.applies_here():
                filt = _KnownMessageFilter(message)
                logging.getLogger(message.logger).addFilter(filt)
                _FILTERS.append(filt)
    if not _WARNING_FILTERS or any(entry not in warnings.filters for entry in _WARNING_FILTERS):
        _WARNING_FILTERS.clear()
        for known in KNOWN_HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=known.pattern, category=known.category)
            _WARNING_FILTERS.append(warnings.filters[0])  # filterwarnings puts the new entry first


def show_hidden_messages() -> None:
    """Remove the filters: every message shows again (``--verbose``)."""
    while _FILTERS:
        filt = _FILTERS.pop()
        logging.getLogger(filt.message.logger).removeFilter(filt)
    while _WARNING_FILTERS:
        entry = _WARNING_FILTERS.pop()
        # In place: warnings reads this very list on every warning. An "ignore" entry leaves nothing
        # in the modules' warning registries, so the next matching warning shows at once.
        if entry in warnings.filters:
            warnings.filters.remove(entry)


def quiet_progress_bars_off_terminal(stream=None) -> bool:
    """Turn off third-party tqdm progress bars when ``stream`` (default stderr) is not a terminal.

    coremltools draws a bar per conversion pass and gives no switch for it. On a terminal a bar
    redraws itself in place; in a log file or a pipe each one leaves hundreds of characters of
    carriage-return frames. tqdm reads ``TQDM_DISABLE`` as its default when it is imported, so call
    this before anything imports tqdm; a bar created with an explicit ``disable=`` (the render
    pipeline's ``--no-progress``) keeps its own choice. The variable also reaches child processes.
    Returns whether the bars were turned off.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    os.environ.setdefault("TQDM_DISABLE", "1")
    return os.environ["TQDM_DISABLE"] == "1"


def hidden_count() -> int:
    """How many records the filters dropped so far in this process."""
    return sum(f.hidden for f in _FILTERS)
