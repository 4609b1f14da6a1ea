"""The exporters are quiet: ``--help`` writes nothing on stderr, and a real (tiny) export hides the
known-harmless third-party lines that ``runtime_py.third_party_logs`` lists (torchao's CUDA
kernels, coremltools' Linux notices, torch's LeafSpec deprecation), while ``--verbose`` lifts them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from runtime_py import third_party_logs

REPO = Path(__file__).resolve().parents[2]
EXPORTERS = ("export/to_executorch.py", "export/to_coreml.py", "export/to_qnn.py", "export/run_all.py")

# The lines the main job's logs showed before the filters, as they look on stderr (logging's
# last-resort handler prints the bare message; warnings print "file:line: Category: text").
NOISE = [re.compile(m.pattern.lstrip("^"), re.MULTILINE) for m in third_party_logs.KNOWN_HARMLESS] + [
    re.compile(rf"{w.category.__name__}: {w.pattern}") for w in third_party_logs.KNOWN_HARMLESS_WARNINGS]


def _noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in NOISE)]


@pytest.mark.parametrize("script", EXPORTERS)
def test_help_writes_nothing_on_stderr(script: str) -> None:
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr
    assert proc.stderr == ""
    assert "--verbose" in proc.stdout


def test_noise_patterns_match_the_lines_they_hide() -> None:
    """The patterns this test looks for find the lines as they were printed (so a pass means something)."""
    seen = [
        "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
        "Could not load this library: /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so",
        "Torch version 2.13.0+cpu has not been tested with coremltools. You may run into unexpected errors. "
        "Torch 2.7.0 is the most recent version that has been tested.",
        "scikit-learn version 1.9.1 is not supported. Minimum required version: 0.17. Maximum required version: "
        "1.5.1. Disabling scikit-learn conversion API.",
        "Failed to load _MLModelProxy: No module named 'coremltools.libcoremlpython'",
        "/usr/lib/python3.11/copyreg.py:105: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated, use "
        "`isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.",
    ]
    assert _noise_in("\n".join(seen)) == seen
    assert _noise_in("Failed to load _MLModelProxy: dlopen failed\nUserWarning: a real one") == []


def test_tiny_core_ml_export_prints_no_third_party_noise(tmp_path: Path) -> None:
    """A real export in a fresh interpreter (imports torch, diffusers/torchao and coremltools, converts
    through torch.export): stderr stays empty. The tiny decoder is the cheapest real conversion."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)  # the exporter decides itself (stderr is a pipe here)
    proc = subprocess.run(
        [sys.executable, "export/to_coreml.py", "--config", "tiny", "--components", "decoder", "--skip", "verify",
         "--threads", "1", "--out", str(tmp_path / "coreml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "coreml" / "manifest.json").is_file()
    assert _noise_in(proc.stderr) == []
    assert proc.stderr == "", proc.stderr[-3000:]  # no progress bars either: stderr is not a terminal


def test_exporter_verbose_shows_the_hidden_warnings() -> None:
    from torch.utils._pytree import LeafSpec

    from export.to_executorch import main

    third_party_logs.hide_known_harmless_messages()  # pytest's per-test warnings block may have dropped them
    try:
        with warnings.catch_warnings(record=True) as quiet:
            warnings.simplefilter("always", append=True)  # behind the known filters: the rest shows every time
            LeafSpec()
            warnings.warn("a real deprecation", FutureWarning)
        assert [str(w.message) for w in quiet] == ["a real deprecation"]
        # --verbose lifts the filters before anything runs; a bad flag value then stops the exporter.
        with pytest.raises(SystemExit) as stop:
            main(["--verbose", "--parity-scenes", "0"])
        assert stop.value.code == 2
        with warnings.catch_warnings(record=True) as loud:
            warnings.simplefilter("always", append=True)
            LeafSpec()
        assert len(loud) == 1 and "LeafSpec" in str(loud[0].message)
    finally:
        third_party_logs.hide_known_harmless_messages()
