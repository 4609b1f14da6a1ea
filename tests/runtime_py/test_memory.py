"""The one peak-memory helper reports bytes on every platform (ru_maxrss is KiB on Linux, bytes on macOS)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_py.memory import peak_rss_bytes, peak_rss_mib


def test_peak_grows_by_what_is_touched() -> None:
    before = peak_rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, written so that it is resident
    after = peak_rss_bytes()
    del block
    # The peak never goes down, and at least most of the block must show (other threads may free memory).
    assert after >= before
    assert after >= 48 * 2**20
    assert peak_rss_mib() == pytest.approx(peak_rss_bytes() / 2**20, rel=0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux only)")
def test_matches_the_kernels_own_peak_on_linux() -> None:
    status = Path("/proc/self/status").read_text()
    vm_hwm_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    assert peak_rss_bytes() == pytest.approx(vm_hwm_kib * 1024, rel=0.05)
