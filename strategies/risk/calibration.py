"""Gold-anchored risk: prediction-powered estimates of each risk term (method §9).

The online terms are functionals of the verifiers' own scores, so a bias every verifier view
shares is invisible to them. Probe items with gold answers give, per item, the true value Y of
each term next to the proxy's online estimate f for that item; recent client requests give the
online estimates f̃ of the traffic. PPI++ (Angelopoulos et al., arXiv 2301.09633, 2311.01453)
combines them:

    θ̂   = mean_N(λ f̃) + mean_n(Y − λ f)
    SE² = var_N(λ f̃)/N + var_n(Y − λ f)/n
    λ̂   = Cov_n(Y, f) / ((1 + n/N) · Var_{n+N}(f))

The rectifier mean_n(Y − λ f) makes θ̂ unbiased whatever f is; f only narrows the interval, by
the factor 1 − ρ² at best. λ̂ is not clipped to [0, 1]: the online residual sits on a squashed
scale (0.007 online against 0.535 true on the embedded model), and clipping throws most of the
gain away there. A term the proxy did not estimate for a request enters as f = 0, on the gold
items and the traffic alike, so f stays one fixed function of the request.

Pure numpy; the probe runner and the windows live in `proxy/`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from strategies.contract import finite

COMPONENTS = ("residual", "baseline", "candidate", "prompt", "verifier")
Z90 = 1.6448536269514722
Z95 = 1.959963984540054
# Below this many gold items the sample covariance behind λ̂ is too noisy to trust: the estimate
# is the gold mean alone, with a Wilson interval for 0/1 values and a normal one otherwise.
MIN_GOLD_FOR_PPI = 30
Status = Literal["calibrated", "uncalibrated", "no_gold"]


@dataclass(frozen=True)
class GoldRecord:
    """One probe item's gold utilities and the online estimates its served run reported.

    `served` is A, the utility of the answer a client would have got; `best_served` is O(n), the
    best of the candidates it was chosen from; `best_one_prompt` is O(K), the best of K reference
    candidates from the original prompt; `best_all` is O(K, M), the best of K candidates per
    variant; `mean_one_prompt` is the mean utility of the original prompt's K candidates (what
    asking once is worth). `online` maps each term to the proxy's estimate, None when it had none.
    """

    item: str
    served: float
    best_served: float
    best_one_prompt: float
    best_all: float
    mean_one_prompt: float
    online: Mapping[str, float | None]
    tokens: int = 0
    time: float = 0.0
    # The served run's answered clusters: {"features": {...}, "size": n, "correct": bool}, the
    # training rows of learned selection (strategies/selection/learned.py). Empty for old records.
    clusters: tuple[Mapping[str, Any], ...] = ()
    # The route's knockout judge on (right, wrong) pairs: {"ab": picked right in slot A, "ba": in slot B}.
    pairs: tuple[Mapping[str, bool], ...] = ()

    def truth(self, component: str) -> float:
        """The gold value of a risk term for this item (method §9.1)."""
        if component == "residual":
            return self.best_all - self.served
        if component == "verifier":
            return self.best_served - self.served
        if component == "candidate":
            return self.best_one_prompt - self.best_served
        if component == "prompt":
            return self.best_all - self.best_one_prompt
        if component == "baseline":
            return self.best_all - self.mean_one_prompt
        raise ValueError(f"unknown risk component {component!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item, "served": self.served, "best_served": self.best_served,
            "best_one_prompt": self.best_one_prompt, "best_all": self.best_all,
            "mean_one_prompt": self.mean_one_prompt, "online": dict(self.online),
            "tokens": self.tokens, "time": self.time,
            **({"clusters": [dict(c) for c in self.clusters]} if self.clusters else {}),
            **({"pairs": [dict(p) for p in self.pairs]} if self.pairs else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldRecord:
        """A record as written by `as_dict`; ValueError, KeyError or TypeError for anything else
        (utilities outside [0, 1], a non-finite number), so a reader can skip it alone."""
        return cls(
            item=str(data["item"]), served=finite(data["served"], 0, 1),
            best_served=finite(data["best_served"], 0, 1), best_one_prompt=finite(data["best_one_prompt"], 0, 1),
            best_all=finite(data["best_all"], 0, 1), mean_one_prompt=finite(data["mean_one_prompt"], 0, 1),
            online={str(k): None if v is None else finite(v, -1, 1) for k, v in dict(data["online"]).items()},
            tokens=int(finite(data.get("tokens", 0), 0)), time=finite(data.get("time", 0.0)),
            clusters=tuple(_cluster(c) for c in data.get("clusters") or ()),
            pairs=tuple({"ab": bool(p["ab"]), "ba": bool(p["ba"])} for p in data.get("pairs") or ()),
        )


def _cluster(data: Mapping[str, Any]) -> dict[str, Any]:
    features = {str(k): None if v is None else finite(v) for k, v in dict(data["features"]).items()}
    return {**dict(data), "features": features, "size": int(finite(data["size"], 1)), "correct": bool(data["correct"])}


def surrogate(online: Mapping[str, float | None], component: str) -> float:
    """f for one request: the online estimate, 0 where the proxy reported none."""
    value = online.get(component)
    return 0.0 if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Estimate:
    estimate: float
    low: float
    high: float
    method: Literal["ppi++", "classical", "wilson"]
    lam: float  # the power-tuning weight; 0 for the gold-only fallbacks

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci90": [self.low, self.high], "method": self.method, "lambda": self.lam}


def wilson(successes: float, n: int, z: float = Z90) -> tuple[float, float]:
    """Wilson score interval for a proportion: sensible at small n and at 0 or n successes."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def classical(y: np.ndarray, z: float = Z90) -> Estimate:
    """The gold mean alone: Wilson for 0/1 values, a normal interval otherwise."""
    n = len(y)
    mean = float(np.mean(y))
    if np.all((y == 0) | (y == 1)):
        low, high = wilson(float(y.sum()), n, z)
        return Estimate(mean, low, high, "wilson", 0.0)
    se = float(np.std(y, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return Estimate(mean, mean - z * se, mean + z * se, "classical", 0.0)


def power_tuned_lambda(y: np.ndarray, f: np.ndarray, f_traffic: np.ndarray) -> float:
    """λ̂ = Cov_n(Y, f) / ((1 + n/N) · Var_{n+N}(f)), unclipped; 0 when f does not vary."""
    n, big_n = len(y), len(f_traffic)
    var_f = float(np.var(np.concatenate([f, f_traffic]), ddof=1))
    if var_f <= 1e-12 or n < 2:
        return 0.0
    cov = float(np.cov(y, f, ddof=1)[0, 1])
    return cov / ((1 + n / big_n) * var_f)


def ppi_mean(
    y: Sequence[float] | np.ndarray,
    f: Sequence[float] | np.ndarray,
    f_traffic: Sequence[float] | np.ndarray,
    *,
    z: float = Z90,
    min_gold: int = MIN_GOLD_FOR_PPI,
) -> Estimate | None:
    """The PPI++ estimate of the traffic's mean Y with its interval; None without gold.

    Falls back to the gold-only estimate below `min_gold` items or without traffic.
    """
    y_arr, f_arr, t_arr = (np.asarray(a, dtype=float) for a in (y, f, f_traffic))
    n, big_n = len(y_arr), len(t_arr)
    if n == 0:
        return None
    if n < min_gold or big_n < 2:
        return classical(y_arr, z)
    lam = power_tuned_lambda(y_arr, f_arr, t_arr)
    rectifier = y_arr - lam * f_arr
    estimate = float(lam * t_arr.mean() + rectifier.mean())
    variance = lam * lam * float(np.var(t_arr, ddof=1)) / big_n + float(np.var(rectifier, ddof=1)) / n
    half = z * math.sqrt(max(variance, 0.0))
    return Estimate(estimate, estimate - half, estimate + half, "ppi++", lam)


@dataclass(frozen=True)
class Bias:
    """mean over gold items of (Y − f): how far the online number sits from the truth."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci95": [self.low, self.high]}


def verifier_bias(y: np.ndarray, f: np.ndarray, z: float = Z95) -> Bias | None:
    n = len(y)
    if n < 2:
        return None
    gap = np.asarray(y, dtype=float) - np.asarray(f, dtype=float)
    mean = float(gap.mean())
    se = float(np.std(gap, ddof=1)) / math.sqrt(n)
    return Bias(mean, mean - z * se, mean + z * se)


def status_of(bias: Bias | None) -> Status:
    if bias is None:
        return "no_gold"
    return "calibrated" if bias.low <= 0.0 <= bias.high else "uncalibrated"


def correlation(y: np.ndarray, f: np.ndarray) -> float | None:
    if len(y) < 3 or np.std(y) == 0 or np.std(f) == 0:
        return None
    return float(np.corrcoef(y, f)[0, 1])


def calibrate(
    gold: Sequence[GoldRecord],
    traffic: Sequence[Mapping[str, float | None]],
    *,
    min_gold: int = MIN_GOLD_FOR_PPI,
) -> dict[str, Any]:
    """The `rvr.risk.calibration` object for a route: status, bias, and each term's estimate.

    `traffic` holds the online estimates of recent client requests (never of probe runs).
    """
    body: dict[str, Any] = {
        "status": "no_gold", "n_gold": len(gold), "window_requests": len(traffic), "rho": None,
        **dict.fromkeys(COMPONENTS), "verifier_bias": None, "min_gold_for_ppi": min_gold,
    }
    y_residual = np.array([g.truth("residual") for g in gold])
    f_residual = np.array([surrogate(g.online, "residual") for g in gold])
    bias = verifier_bias(y_residual, f_residual)
    if bias is None:  # one item says nothing about a bias; its terms stay null with the status
        return body
    body["status"] = status_of(bias)
    body["verifier_bias"] = bias.as_dict()
    body["rho"] = correlation(y_residual, f_residual)
    for component in COMPONENTS:
        y = np.array([g.truth(component) for g in gold])
        f = np.array([surrogate(g.online, component) for g in gold])
        f_traffic = np.array([surrogate(t, component) for t in traffic])
        estimate = ppi_mean(y, f, f_traffic, min_gold=min_gold)
        body[component] = None if estimate is None else estimate.as_dict()
    return body
