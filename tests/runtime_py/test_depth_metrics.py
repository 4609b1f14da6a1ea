"""AbsRel and delta_1 (runtime_py.parity), exact on arrays whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime_py.parity import _DepthPool, abs_rel, delta1


def test_abs_rel_and_delta1_by_hand():
    ref = np.array([1.0, 2.0, 4.0, 8.0], dtype=np.float32)
    test = np.array([1.1, 2.0, 5.0, 4.0], dtype=np.float32)
    # |d| / ref: 0.1, 0, 0.25, 0.5 -> mean 0.2125
    assert abs_rel(ref, test) == pytest.approx(0.2125, abs=1e-7)
    # ratios 1.1, 1, 1.25 (not < 1.25), 2 -> 2 of 4
    assert delta1(ref, test) == 0.5
    assert abs_rel(ref, ref) == 0.0 and delta1(ref, ref) == 1.0


def test_invalid_reference_pixels_are_left_out_and_nonpositive_tests_miss():
    ref = np.array([0.0, 1.0, 1.0], dtype=np.float32)
    test = np.array([5.0, -1.0, 1.0], dtype=np.float32)
    assert abs_rel(ref, test) == pytest.approx(1.0)  # (2 + 0) / 2; the zero reference pixel is not valid
    assert delta1(ref, test) == 0.5
    assert math.isnan(abs_rel(np.zeros(3), np.ones(3))) and math.isnan(delta1(np.zeros(3), np.ones(3)))


def test_depth_pool_pools_over_pixels():
    pool = _DepthPool()
    pool.add(np.array([1.0, 1.0]), np.array([1.5, 1.0]), "a")  # rel 0.5, 0 ; delta hits 1
    pool.add(np.array([2.0, 2.0, 2.0, 2.0]), np.array([2.0] * 4), "b")  # rel 0 ; hits 4
    out = pool.summary()
    assert out["abs_rel"] == pytest.approx(0.5 / 6) and out["delta1"] == pytest.approx(5 / 6)
    assert pool.items[0]["abs_rel"] == pytest.approx(0.25) and pool.items[0]["delta1"] == 0.5
