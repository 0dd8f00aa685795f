"""Intervals for means of bounded values that keep their coverage at small n and near the edges.

A normal interval `mean ± z·SE` collapses to zero width when every value is the same: 30 gold
items that all show a residual of 0 give [0, 0], although a true rate of 0.05 leaves all 30 at 0
one time in five. The intervals here never collapse:

* `wilson`: Wilson's score interval for a proportion (Wilson 1927).
* `pseudo_items`: the spread of a sample after adding z²/2 pseudo-observations at each end of
  the values' range. For 0/1 values this is exactly the variance behind Wilson's interval
  (Agresti & Coull 1998 add the same counts); where the sample has real spread it changes
  little (2-3% of the variance at 100 items); where it has none, it is what keeps the interval
  open: a sample of items that all read 0 cannot rule out a share of about z²/n that do not.
* `effective_wilson`: Wilson's interval at the *effective sample size* `n_eff = p̃(1 − p̃)/SE²`
  (Korn & Graubard 1998, for proportions with a design-based SE). An estimator whose SE is
  smaller than a plain proportion's (PPI++ with an informative surrogate, item means of
  repeated records) keeps its narrower interval, asymptotically `p̂ ± z·SE`; for 0/1 values
  and no surrogate it is Wilson's interval itself. `n_eff` never exceeds `n_cap`, the number of
  observations behind the estimate.
* `student_t`: the t quantile, for a mean whose spread a few items estimate.

Pure Python and numpy.
"""

from __future__ import annotations

import math

import numpy as np

Z90 = 1.6448536269514722
Z95 = 1.959963984540054


def wilson(successes: float, n: float, z: float = Z90) -> tuple[float, float]:
    """Wilson score interval for a proportion: sensible at small n and at 0 or n successes.

    `successes` and `n` may be fractional (an effective count, or ties counted ½)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pseudo_items(values: np.ndarray, ends: tuple[float, float], z: float) -> tuple[float, float]:
    """(mean, variance) of `values` with z²/2 pseudo-observations at each of `ends` added.

    The variance divides by the total weight, as Wilson's p(1 − p) does: for 0/1 values the
    result is (p̃, p̃(1 − p̃)) with Wilson's centre p̃ = (successes + z²/2)/(n + z²).
    """
    weight = z * z / 2
    total = len(values) + 2 * weight
    mean = (float(np.sum(values)) + weight * (ends[0] + ends[1])) / total
    spread = float(np.sum((values - mean) ** 2)) + weight * ((ends[0] - mean) ** 2 + (ends[1] - mean) ** 2)
    return mean, spread / total


def effective_wilson(estimate: float, variance: float, centre: float, n_cap: float, z: float) -> tuple[float, float]:
    """Wilson's interval for a mean in [0, 1] at the effective sample size its SE implies.

    `variance` is the estimate's own SE²; `centre` the shrunk value whose p(1 − p) sets the
    scale (`pseudo_items`' mean); `n_cap` the most observations the estimate can rest on.
    """
    centre = min(max(centre, 0.0), 1.0)
    n_eff = centre * (1 - centre) / variance if variance > 0 else math.inf
    n_eff = min(n_eff, n_cap)
    return wilson(min(max(estimate, 0.0), 1.0) * n_eff, n_eff, z)


def student_t(df: int, z: float) -> float:
    """The Student t quantile with `df` degrees of freedom at the level of the normal quantile `z`.

    Exact for 1 and 2 degrees of freedom; above, the series of Abramowitz & Stegun 26.7.5
    (within 1% of the exact value at 3 degrees of freedom, and closer from there). A few probe
    items estimate their own spread badly, and the normal quantile then under-covers.
    """
    if df < 1:
        return math.inf
    tail = 0.5 * math.erfc(z / math.sqrt(2))  # the upper tail the quantile leaves
    if df == 1:
        return math.tan(math.pi * (0.5 - tail))
    if df == 2:
        p = 1 - tail
        return math.sqrt(2 / (4 * p * (1 - p)) - 2)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
