"""The benchmarks measure registry targets only: every artifact a backend run loads is a registry
entry, and the recommendation's bars come from that entry's numerics file."""

from __future__ import annotations

from benchmarks.full_scale import FULL_SCALE_TARGETS
from benchmarks.latency import BACKEND_RUNS
from benchmarks.report import tile_chain_bar
from export.targets import TARGETS


def test_every_benchmarked_artifact_is_a_registry_target() -> None:
    artifacts = {r.artifact for r in BACKEND_RUNS if r.artifact}
    assert artifacts <= set(TARGETS)
    assert set(FULL_SCALE_TARGETS) <= set(TARGETS)
    for run in BACKEND_RUNS:
        if run.artifact and run.label == run.artifact:  # the run IS the target: same backend, same precision
            assert (TARGETS[run.artifact].backend, TARGETS[run.artifact].precision) == (run.backend, run.precision)


def test_phone_targets_have_a_recommendation_bar() -> None:
    for run in BACKEND_RUNS:
        if run.phone_target:
            assert tile_chain_bar(run.label) == TARGETS[run.artifact].tile_chain_bar is not None
