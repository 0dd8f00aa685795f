"""Gold-anchored risk: prediction-powered estimates of each risk term (method §9).

The online terms are functionals of the verifiers' own scores, so a bias every verifier view
shares is invisible to them. Probe items with gold answers give, per item, the true value Y of
each term next to the proxy's online estimate f for that item; recent client requests give the
online estimates f̃ of the traffic. PPI++ (Angelopoulos et al., arXiv 2301.09633, 2311.01453)
combines them, over the n probe *items* (a repeated item's records are averaged first, so Y and
f below are means per item) and the N requests:

    θ̂   = mean_N(λ f̃) + mean_n(Y − λ f)
    SE² = var_N(λ f̃)/N + var_n(Y − λ f)/n
    λ̂   = Cov_n(Y, f) / (Var_n(f) + (n/N) · Var_N(f̃))

The rectifier mean_n(Y − λ f) makes θ̂ unbiased whatever f is; f only narrows the interval, by
the factor 1 − ρ² at best. λ̂ is not clipped to [0, 1]: the online residual sits on a squashed
scale (0.007 online against 0.535 true on the embedded model), and clipping throws most of the
gain away there. A term the proxy did not estimate for a request enters as f = 0, on the gold
items and the traffic alike, so f stays one fixed function of the request. The 90% interval is
Wilson's at the effective sample size θ̂(1 − θ̂)/SE² (`strategies.risk.intervals`), so it never
collapses to zero width where every item shows the same value.

Pure numpy; the probe runner and the windows live in `proxy/`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from strategies.contract import finite
from strategies.risk.intervals import Z90, Z95, effective_wilson, pseudo_items, student_t

COMPONENTS = ("residual", "baseline", "candidate", "prompt", "verifier")
# Below this many gold items the sample covariance behind λ̂ is too noisy to trust: the estimate
# is the gold mean alone, with a Wilson interval for 0/1 values and a normal one otherwise.
MIN_GOLD_FOR_PPI = 30
# How far the online residual may sit from the gold one and still count as calibrated: a bias
# this small does not change how a risk number reads, and a bare test of "bias = 0" flagged
# healthy routes off by 6e-6 forever (issue 20).
DEFAULT_TOLERANCE = 0.03
# The online estimates are surrogates, not utilities: PPI++ is unbiased whatever they are, and the
# online baseline extrapolates past 1 (1.17 on the simulated upstream), which a bound of [−1, 1]
# had turned into skipped gold records. The bound only keeps absurd numbers out of the sums.
MAX_ONLINE = 100.0
Status = Literal["calibrated", "uncalibrated", "inconclusive", "no_gold"]
STATUSES: tuple[Status, ...] = ("calibrated", "uncalibrated", "inconclusive", "no_gold")


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
            online={str(k): None if v is None else finite(v, -MAX_ONLINE, MAX_ONLINE)
                    for k, v in dict(data["online"]).items()},
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


def traffic_matrix(traffic: Sequence[Mapping[str, float | None]] | np.ndarray) -> np.ndarray:
    """The traffic's surrogates, one row per request and one column per `COMPONENTS` term.

    An array is taken as such, with NaN where a request had no estimate (it becomes 0, as in
    `surrogate`)."""
    if isinstance(traffic, np.ndarray):
        matrix = np.asarray(traffic, dtype=float).reshape(-1, len(COMPONENTS))
        return np.where(np.isfinite(matrix), matrix, 0.0)
    return np.array([[surrogate(t, c) for c in COMPONENTS] for t in traffic], dtype=float).reshape(-1, len(COMPONENTS))


@dataclass(frozen=True)
class Items:
    """Gold values grouped by probe item, the unit the estimates count (method §9.2).

    Probe items cycle through the window: 100 items fill 2,000 records with 20 runs of each, and
    the runs of one item share its difficulty. Counted as 2,000 independent draws, the 90%
    interval covered the truth 46% of the time (issue 20); the items are the independent draws,
    so the estimates, their SEs and `n_items` are taken over the means per item. `y` and `f`
    hold one row per item and one column per `COMPONENTS` term.
    """

    y: np.ndarray
    f: np.ndarray
    records: int

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def column(self, component: str) -> tuple[np.ndarray, np.ndarray]:
        j = COMPONENTS.index(component)
        return self.y[:, j], self.f[:, j]


def by_item(gold: Sequence[GoldRecord]) -> Items:
    """The means per probe item of every term's gold value and online estimate."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(g.item, len(index)) for g in gold), dtype=np.intp, count=len(gold))
    truth = np.array([[g.truth(c) for c in COMPONENTS] for g in gold], dtype=float).reshape(-1, len(COMPONENTS))
    online = np.array([[surrogate(g.online, c) for c in COMPONENTS] for g in gold], dtype=float).reshape(
        -1, len(COMPONENTS)
    )
    counts = np.bincount(codes, minlength=len(index)).astype(float)[:, None]

    def means(values: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(index), len(COMPONENTS)))
        np.add.at(sums, codes, values)
        return sums / np.maximum(counts, 1.0)

    return Items(means(truth), means(online), len(gold))


@dataclass(frozen=True)
class Estimate:
    estimate: float
    low: float
    high: float
    method: Literal["ppi++", "classical", "wilson"]
    lam: float  # the power-tuning weight; 0 for the gold-only fallbacks

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci90": [self.low, self.high], "method": self.method, "lambda": self.lam}


def _range(y: np.ndarray) -> tuple[float, float]:
    """The range a term's values live in: [0, 1], or [−1, 1] where one is negative (the
    candidate term when the served candidates came from several prompt variants)."""
    return (-1.0, 1.0) if bool((y < 0).any()) else (0.0, 1.0)


def _interval(
    estimate: float, y: np.ndarray, rectifier: np.ndarray, surrogate_at: tuple[float, float], lam: float,
    traffic_variance: float, n_cap: float, z: float,
) -> tuple[float, float]:
    """Wilson's interval at the effective n of SE² = traffic_variance + s̃²/n.

    s̃² is the rectifier's spread with z²/2 pseudo-items at each end of the term's range, so a
    sample of items that all read alike still leaves room for the ones it did not draw. A
    pseudo-item's surrogate is `surrogate_at` its end (what f's regression on Y predicts there),
    so an informative f narrows the pseudo-items as it narrows the real ones. For 0/1 values
    without a surrogate this is Wilson's interval itself.
    """
    lo, hi = _range(y)
    width = hi - lo
    n = len(y)
    ends = (lo - lam * surrogate_at[0], hi - lam * surrogate_at[1])
    _, spread = pseudo_items(rectifier, ends, z)
    variance = (traffic_variance + spread / n) / width**2
    unit = (estimate - lo) / width
    weight = z * z / 2
    centre = (n * min(max(unit, 0.0), 1.0) + weight) / (n + 2 * weight)  # as Wilson's p̃
    low, high = effective_wilson(unit, variance, centre, n_cap, z)
    return lo + width * low, lo + width * high


def _surrogate_at_ends(y: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """f's least-squares line on Y, at each end of Y's range; f's mean where Y has no spread."""
    lo, hi = _range(y)
    var_y = float(np.var(y))
    slope = float(np.mean((y - y.mean()) * (f - f.mean()))) / var_y if var_y > 1e-12 else 0.0
    return float(f.mean()) + slope * (lo - float(y.mean())), float(f.mean()) + slope * (hi - float(y.mean()))


def _inside(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def classical(y: np.ndarray, z: float = Z90, n_cap: float | None = None) -> Estimate:
    """The gold mean alone, with `_interval`'s: Wilson's for 0/1 values (method `wilson`);
    `n_cap`: the records behind the means (default: one each)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    mean = float(np.mean(y))
    low, high = _interval(mean, y, y, (0.0, 0.0), 0.0, 0.0, n if n_cap is None else n_cap, z)
    method: Literal["classical", "wilson"] = "wilson" if np.all((y == 0) | (y == 1)) else "classical"
    return Estimate(_inside(mean, low, high), low, high, method, 0.0)


def power_tuned_lambda(y: np.ndarray, f: np.ndarray, f_traffic: np.ndarray) -> float:
    """λ̂ = Cov_n(Y, f) / (Var_n(f) + (n/N)·Var_N(f̃)), unclipped; 0 when f does not vary.

    The λ that minimises SE² below. With item means on the gold side, f's variance there is
    smaller than the traffic's (a mean over runs), so the two variances enter apart; with one
    record per item both estimate Var(f) and this is PPI++'s Cov/((1 + n/N)·Var(f)).
    """
    n, big_n = len(y), len(f_traffic)
    if n < 2 or big_n < 2:
        return 0.0
    denominator = float(np.var(f, ddof=1)) + n / big_n * float(np.var(f_traffic, ddof=1))
    if denominator <= 1e-12:
        return 0.0
    return float(np.cov(y, f, ddof=1)[0, 1]) / denominator


def ppi_mean(
    y: Sequence[float] | np.ndarray,
    f: Sequence[float] | np.ndarray,
    f_traffic: Sequence[float] | np.ndarray,
    *,
    z: float = Z90,
    min_gold: int = MIN_GOLD_FOR_PPI,
    records: int | None = None,
) -> Estimate | None:
    """The PPI++ estimate of the traffic's mean Y with its interval; None without gold.

    `y` and `f` hold one value per probe item (means over its records; `records` counts those,
    default one per item). Falls back to the gold-only estimate below `min_gold` items or
    without traffic. The interval is Wilson's at the effective sample size of the PPI++ SE, so
    it never collapses where every item shows the same value.
    """
    y_arr, f_arr, t_arr = (np.asarray(a, dtype=float) for a in (y, f, f_traffic))
    n, big_n = len(y_arr), len(t_arr)
    if n == 0:
        return None
    n_records = n if records is None else records
    if n < min_gold or big_n < 2:
        return classical(y_arr, z, n_cap=n_records)
    lam = power_tuned_lambda(y_arr, f_arr, t_arr)
    rectifier = y_arr - lam * f_arr
    estimate = float(lam * t_arr.mean() + rectifier.mean())
    traffic_variance = lam * lam * float(np.var(t_arr, ddof=1)) / big_n
    ends = _surrogate_at_ends(y_arr, f_arr)
    low, high = _interval(estimate, y_arr, rectifier, ends, lam, traffic_variance, n_records + big_n, z)
    return Estimate(_inside(estimate, low, high), low, high, "ppi++", lam)


@dataclass(frozen=True)
class Bias:
    """mean over gold items of (Y − f): how far the online number sits from the truth."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci95": [self.low, self.high]}


def verifier_bias(y: np.ndarray, f: np.ndarray, z: float = Z95) -> Bias | None:
    """mean over items of (Y − f), with a t interval at the level of the normal quantile `z`.

    The spread is the gaps' with the pseudo-items of `_interval` added (Y at each end of its
    range, f where its line on Y puts it there), so items that all show the same gap still
    leave an interval as wide as Wilson's would be around their Y; the t quantile keeps the
    interval honest when a handful of items estimate that spread. None below two items.
    """
    y, f = np.asarray(y, dtype=float), np.asarray(f, dtype=float)
    n = len(y)
    if n < 2:
        return None
    gap = y - f
    lo, hi = _range(y)
    at_lo, at_hi = _surrogate_at_ends(y, f)
    _, spread = pseudo_items(gap, (lo - at_lo, hi - at_hi), z)
    mean = float(gap.mean())
    half = student_t(n - 1, z) * math.sqrt(spread / n)
    return Bias(mean, mean - half, mean + half)


def status_of(bias: Bias | None, tolerance: float = DEFAULT_TOLERANCE) -> Status:
    """`calibrated` when the bias interval lies inside ±tolerance, `uncalibrated` when it lies
    wholly outside, `inconclusive` when it straddles an end (too few items to tell)."""
    if bias is None:
        return "no_gold"
    if -tolerance <= bias.low and bias.high <= tolerance:
        return "calibrated"
    if bias.low > tolerance or bias.high < -tolerance:
        return "uncalibrated"
    return "inconclusive"


def correlation(y: np.ndarray, f: np.ndarray) -> float | None:
    if len(y) < 3 or np.std(y) == 0 or np.std(f) == 0:
        return None
    return float(np.corrcoef(y, f)[0, 1])


def calibrate(
    gold: Sequence[GoldRecord],
    traffic: Sequence[Mapping[str, float | None]] | np.ndarray,
    *,
    min_gold: int = MIN_GOLD_FOR_PPI,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The `rvr.risk.calibration` object for a route: status, bias, and each term's estimate.

    `traffic` holds the online estimates of recent client requests (never of probe runs), as
    mappings or as a `traffic_matrix`. Every count and interval is over probe items
    (`n_items`, also as `n_gold`); `n_records` says how many runs they rest on.
    """
    items = by_item(gold)
    flows = traffic_matrix(traffic)
    body: dict[str, Any] = {
        "status": "no_gold", "n_gold": items.n, "n_items": items.n, "n_records": items.records,
        "window_requests": int(flows.shape[0]), "rho": None, **dict.fromkeys(COMPONENTS), "verifier_bias": None,
        "min_gold_for_ppi": min_gold, "tolerance": tolerance,
    }
    y_residual, f_residual = items.column("residual")
    bias = verifier_bias(y_residual, f_residual)
    if bias is None:  # one item says nothing about a bias; its terms stay null with the status
        return body
    body["status"] = status_of(bias, tolerance)
    body["verifier_bias"] = bias.as_dict()
    body["rho"] = correlation(y_residual, f_residual)
    for j, component in enumerate(COMPONENTS):
        y, f = items.column(component)
        estimate = ppi_mean(y, f, flows[:, j], min_gold=min_gold, records=items.records)
        body[component] = None if estimate is None else estimate.as_dict()
    return body
