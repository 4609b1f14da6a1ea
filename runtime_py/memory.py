"""This process's peak resident memory, the one helper every exporter, test and benchmark uses.

``getrusage(RUSAGE_SELF).ru_maxrss`` is the peak so far (it never goes down), in KiB on Linux but
in bytes on macOS; the unit is handled here once.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (2**20 bytes)."""
    return peak_rss_bytes() / 2**20
