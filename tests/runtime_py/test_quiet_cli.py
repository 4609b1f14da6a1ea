"""Quiet, fast command lines: --help prints nothing on stderr; known-harmless third-party lines are
hidden precisely (their logger, their text) and shown again by --verbose."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime_py import third_party_logs
from runtime_py.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["--help"], ["render", "--help"], ["convert", "--help"], ["parity", "--help"]])
def test_help_is_quiet_and_its_time_is_reported(argv: list[str]) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runtime_py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    seconds = time.perf_counter() - start
    # Measured, not asserted: the time depends on the machine's load (about 0.35 s on a shared 2-core host).
    print(f"python -m runtime_py {' '.join(argv)}: {seconds:.2f} s")
    assert proc.returncode == 0 and proc.stdout.startswith("usage:")
    assert proc.stderr == ""


@pytest.fixture()
def captured_records():
    """Records that reach a handler on each known logger (what a user would see)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    loggers = [logging.getLogger(m.logger) for m in third_party_logs.KNOWN_HARMLESS]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # the test's own records stay out of the libraries' handlers
    third_party_logs.hide_known_harmless_messages()
    yield records
    for logger, before in zip(loggers, propagate):
        logger.removeHandler(handler)
        logger.propagate = before
    third_party_logs.hide_known_harmless_messages()  # a test that lifted the filters puts them back


def _emit_known_and_real() -> None:
    logging.getLogger("torchao").warning(
        "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
        "Could not load this library")
    logging.getLogger("torch.utils._pytree").warning(
        "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type. "
        "Calling register_constant() on Enum subclasses is deprecated.", "<enum 'KernelPreference'>")
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning(
        "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`")
    logging.getLogger("coremltools").warning(
        "Torch version 2.13.0+cpu has not been tested with coremltools. You may run into unexpected errors. "
        "Torch 2.7.0 is the most recent version that has been tested.")
    logging.getLogger("coremltools").warning(
        "scikit-learn version 1.9.1 is not supported. Minimum required version: 0.17. Maximum required version: "
        "1.5.1. Disabling scikit-learn conversion API.")
    # Real messages from the same loggers must still show.
    logging.getLogger("torchao").warning("Skipping import of cpp extensions due to incompatible torch version.")
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning("some real problem")
    logging.getLogger("coremltools").warning("Failed to load _MLModelProxy: dlopen: symbol not found")


def test_only_the_known_messages_are_hidden(captured_records) -> None:
    _emit_known_and_real()
    shown = [r.getMessage() for r in captured_records]
    assert shown == ["Skipping import of cpp extensions due to incompatible torch version.", "some real problem",
                     "Failed to load _MLModelProxy: dlopen: symbol not found"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the libcoremlpython notice is harmless on Linux only")
def test_coremltools_missing_native_module_is_hidden_on_linux(captured_records) -> None:
    logging.getLogger("coremltools").warning("Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'")
    assert captured_records == []


def test_verbose_shows_what_is_hidden(captured_records, monkeypatch, capsys) -> None:
    # --verbose is accepted before or after the command and lifts the filters before the command runs;
    # here the command then stops at a usage error, printed as one line.
    assert main(["render", "--verbose"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    _emit_known_and_real()
    assert len(captured_records) == 8
