"""A confidence that means what it says: one distribution over a request's answer clusters
(method §10.7, issue 20 item 3).

The selector's per-cluster P(correct) are independent logistic scores, fitted in-sample: on the
simulated routes of issue 20 they summed above 1 in 42% of requests and their mean (0.56) missed
the served accuracy (0.74). `rvr.confidence` is meant to be P(the served answer is right), and
`min_confidence` acts on it, so it is rebuilt here:

* **One distribution.** A conditional logit over the request's answered clusters with an outside
  option, "none of them is right": `P(j) = exp(a·z_j) / (exp(c) + Σ_k exp(a·z_k))`,
  `P(none) = exp(c) / (...)`, `z_j` the selector's logit for cluster j. The clusters and `none`
  sum to 1; the clusters alone sum to 1 − P(none), because often no answer is right (the oracle
  of the embedded model's pools is far below 1).
* **Cross-fitted, then recalibrated.** `a` and `c` are fitted by maximum likelihood on the
  selector's *held-out* logits (each probe item scored by a model fitted without it), so they
  learn how far an unseen request's logits are to be trusted, and are then applied to the model
  fitted on every item. This is Platt scaling (two parameters, logistic likelihood) made
  multinomial: with 50-200 probe items isotonic regression has too few points per step and
  Venn–Abers gives an interval where `min_confidence` needs one number; two parameters are
  what that many items can pin down.
* **Measured.** The reliability table and the expected calibration error are cross-fitted too:
  the items of each fold are scored with `a`, `c` fitted on the other folds.

Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.contract import finite

LOGIT_CLIP = 12.0  # logits of P in [6e-6, 1 − 6e-6]: a saturated selector must not decide alone
MIN_SCALE = 0.05  # a > 0 keeps the distribution's order the selector's, which chooses
BINS = 10
_STEPS = 100


def logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p / (1 - p)), -LOGIT_CLIP, LOGIT_CLIP)


@dataclass(frozen=True)
class Recalibration:
    """`a` (the scale on the selector's logits) and `c` (the score of "none is right")."""

    scale: float = 1.0
    none: float = 0.0

    def distribution(self, z: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
        """P of each cluster and of none, for the clusters' selector logits `z`."""
        u = self.scale * np.clip(np.asarray(z, dtype=float), -LOGIT_CLIP, LOGIT_CLIP)
        top = max(float(u.max()) if u.size else -math.inf, self.none)
        e, e_none = np.exp(u - top), math.exp(self.none - top)
        total = float(e.sum()) + e_none
        return e / total, e_none / total

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "none": self.none}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recalibration:
        return cls(finite(data["scale"], MIN_SCALE, 1e3), finite(data["none"], -1e3, 1e3))


Run = tuple[np.ndarray, np.ndarray]  # one request: its clusters' logits and which are right


@dataclass(frozen=True)
class _Runs:
    """Runs padded into one matrix, so a likelihood is a few array operations, not a loop."""

    z: np.ndarray  # (runs, most clusters), 0 where padded
    mask: np.ndarray  # real clusters
    right: np.ndarray  # right clusters
    some_right: np.ndarray  # (runs,)

    @classmethod
    def of(cls, runs: Sequence[Run]) -> _Runs:
        width = max(len(z) for z, _ in runs)
        z, mask, right = (np.zeros((len(runs), width)), np.zeros((len(runs), width), bool),
                          np.zeros((len(runs), width), bool))
        for i, (logit, ok) in enumerate(runs):
            z[i, : len(logit)] = np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP)
            mask[i, : len(logit)] = True
            right[i, : len(logit)] = ok
        return cls(z, mask, right, right.any(axis=1))

    def probabilities(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.where(self.mask, theta[0] * self.z, -np.inf)
        top = np.maximum(u.max(axis=1), theta[1])
        e = np.exp(u - top[:, None])
        e_none = np.exp(theta[1] - top)
        total = e.sum(axis=1) + e_none
        return e / total[:, None], e_none / total

    def log_likelihood(self, theta: np.ndarray) -> float:
        p, p_none = self.probabilities(theta)
        chosen = np.where(self.some_right, (p * self.right).sum(axis=1), p_none)
        return float(np.log(np.maximum(chosen, 1e-300)).sum())


def fit_recalibration(runs: Sequence[Run], ridge: float = 1e-3) -> Recalibration:
    """Maximum likelihood (a, c) over `runs`, by Fisher scoring with step halving.

    A run's likelihood is P(one of its right clusters), or P(none) where no cluster is right.
    `ridge` pulls (a, c) gently towards (1, 0), so a handful of runs cannot send them off.
    """
    runs = [r for r in runs if len(r[0])]
    if not runs:
        return Recalibration()
    data = _Runs.of(runs)
    theta, prior = np.array([1.0, 0.0]), np.array([1.0, 0.0])

    def objective(t: np.ndarray) -> float:
        return data.log_likelihood(t) - ridge / 2 * float(((t - prior) ** 2).sum())

    current = objective(theta)
    for _ in range(_STEPS):
        p, p_none = data.probabilities(theta)
        observed = np.where(data.right, p, 0.0)
        mass = np.where(data.some_right, observed.sum(axis=1), 1.0)
        q = observed / mass[:, None]  # where no cluster is right, all the mass is on none
        q_none = (~data.some_right).astype(float)
        # the statistics of an alternative: (z_j, 0) for a cluster, (0, 1) for none
        mean_z = (p * data.z).sum(axis=1)
        gradient = np.array([float(((q - p) * data.z).sum()), float((q_none - p_none).sum())]) - ridge * (theta - prior)
        var_z = (p * data.z**2).sum(axis=1) - mean_z**2
        cov = -mean_z * p_none
        var_none = p_none - p_none**2
        information = np.array([[var_z.sum(), cov.sum()], [cov.sum(), var_none.sum()]]) + ridge * np.eye(2)
        step = np.linalg.solve(information, gradient)
        for _ in range(30):  # halve until the likelihood does not fall
            proposal = theta + step
            proposal[0] = max(proposal[0], MIN_SCALE)
            value = objective(proposal)
            if value >= current - 1e-12:
                break
            step /= 2
        else:
            break
        moved = float(np.abs(proposal - theta).max())
        theta, current = proposal, value
        if moved < 1e-8:
            break
    return Recalibration(float(theta[0]), float(theta[1]))


@dataclass(frozen=True)
class Reliability:
    """Confidence against accuracy in `BINS` equal bins of [0, 1], and the expected calibration
    error `Σ (n_b/n)·|accuracy_b − confidence_b|`."""

    bins: tuple[tuple[float, float, int, float | None, float | None], ...]  # (low, high, n, confidence, accuracy)
    ece: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"bins": [list(b) for b in self.bins], "ece": self.ece, "n": self.n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reliability:
        def share(value: Any) -> float | None:
            return None if value is None else finite(value, 0, 1)

        bins = tuple((finite(b[0], 0, 1), finite(b[1], 0, 1), int(finite(b[2], 0)), share(b[3]), share(b[4]))
                     for b in data["bins"])
        return cls(bins, finite(data["ece"], 0, 1), int(finite(data["n"], 0)))


def reliability(confidence: Sequence[float], right: Sequence[bool], bins: int = BINS) -> Reliability:
    c, y = np.asarray(confidence, dtype=float), np.asarray(right, dtype=float)
    which = np.minimum((c * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            mean_c, mean_y = float(c[inside].mean()), float(y[inside].mean())
            ece += count / len(c) * abs(mean_y - mean_c)
            table.append((b / bins, (b + 1) / bins, count, mean_c, mean_y))
        else:
            table.append((b / bins, (b + 1) / bins, 0, None, None))
    return Reliability(tuple(table), ece if len(c) else 0.0, len(c))
