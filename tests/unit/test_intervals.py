"""Intervals that keep their width at the edges (strategies/risk/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.risk.intervals import Z90, Z95, effective_wilson, pseudo_items, student_t, wilson


def test_wilson_takes_fractional_counts() -> None:
    half = wilson(1.5, 3)
    assert half[0] < 0.5 < half[1] and wilson(3, 6)[1] - wilson(3, 6)[0] < half[1] - half[0]
    low, high = wilson(0.5, 1)
    assert 0 < low < 0.5 < high < 1
    assert wilson(0, 0) == (0.0, 1.0)


def test_pseudo_items_give_wilsons_centre_and_variance_for_0_1_values() -> None:
    values = np.array([1.0] * 7 + [0.0] * 13)
    centre, variance = pseudo_items(values, (0.0, 1.0), Z90)
    assert centre == pytest.approx((7 + Z90**2 / 2) / (20 + Z90**2))
    assert variance == pytest.approx(centre * (1 - centre))
    assert pseudo_items(np.zeros(30), (0.0, 1.0), Z90)[1] > 0  # all alike, and still a spread


def test_effective_wilson_is_wilson_at_the_n_its_variance_implies() -> None:
    p, n = 0.3, 50
    assert effective_wilson(p, p * (1 - p) / n, p, 10**6, Z90) == pytest.approx(wilson(p * n, n))
    narrower = effective_wilson(p, p * (1 - p) / (4 * n), p, 10**6, Z90)  # an SE half as large
    full = wilson(p * n, n)
    assert narrower[1] - narrower[0] == pytest.approx((full[1] - full[0]) / 2, rel=0.05)


def test_effective_wilson_never_collapses() -> None:
    centre, spread = pseudo_items(np.zeros(30), (0.0, 1.0), Z90)
    assert effective_wilson(0.0, spread / 30, centre, 2000, Z90) == pytest.approx(wilson(0, 30))
    # with no spread at all, no narrower than all the observations allow
    low, high = effective_wilson(0.5, 0.0, 0.5, 2000, Z90)
    assert (low, high) == pytest.approx(wilson(1000, 2000)) and high - low > 0.03


def test_the_t_quantile_is_exact_at_one_and_two_and_close_above() -> None:
    assert student_t(1, Z95) == pytest.approx(12.7062, rel=1e-4)
    assert student_t(2, Z95) == pytest.approx(4.3027, rel=1e-4)
    for df, exact in ((3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423)):
        assert student_t(df, Z95) == pytest.approx(exact, rel=0.01)
    assert student_t(10_000, Z90) == pytest.approx(Z90, rel=1e-3)
