"""P(cluster correct) from weak signals, with weights fitted on a route's gold probe clusters.

An L2-penalised logistic regression (Weaver's supervised baseline, arXiv 2506.18203) over the
cluster features of `strategies.selection.clusters`:

* signals are standardised on the training rows; a missing value (NaN) enters as the training
  mean, i.e. 0 after standardising, so it neither helps nor hurts a cluster;
* a signal whose probe AUROC is within `floor − 0.5` of chance (AUROC in (0.45, 0.55) at the
  default 0.55) is dropped before fitting, as Weaver filters weak verifiers. The AUROC is kept
  as measured: a signal far *below* 0.5 (a copied few-shot answer is usually wrong) is as
  informative as one far above and is kept, with a negative weight. `vote_share` is never
  dropped: a screen that dropped it let one binary signal choose a 1/8 cluster over a 7/8
  majority (issue 20), and the model should weigh the vote, not forget it;
* the L2 strength is chosen by grouped K-fold cross-validation (clusters of one item stay in
  one fold) on held-out log loss;
* the fit is Newton's method (IRLS) on the penalised log likelihood; the intercept is not
  penalised;
* the held-out predictions of the chosen L2 give, per probe item, whether the model's top
  cluster was right next to whether weighted selection's was (`HeldOut`), which the safety
  gate (strategies/selection/safety.py) compares, and the held-out logits on which the
  request's confidence is recalibrated into one distribution over its clusters
  (strategies/selection/confidence.py).

Pure numpy; the proxy decides when to refit and where the model is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from strategies.contract import finite

from strategies.selection.confidence import Recalibration, Reliability, fit_recalibration, logits, reliability
from strategies.selection.safety import HeldOut

if TYPE_CHECKING:
    from strategies.selection.knockout import JudgeGate
    from strategies.selection.safety import SafetyGate

SIGNAL_FLOOR = 0.55
ALWAYS_KEPT = ("vote_share",)  # signals the AUROC screen never drops
L2_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
FOLDS = 5
_MAX_NEWTON = 100


class NotFittable(ValueError):
    """The probe clusters cannot support a model; the message says why, in words for `rvr`."""


MAX_PARAMETER = 1e6  # a saved model's weights, centres and scales; fitted ones stay far below


@dataclass(frozen=True)
class ClusterRow:
    """One answered cluster of one probe item: its features, whether its answer was right, and
    whether weighted selection chose it (what the safety gate compares the model with)."""

    item: str
    features: Mapping[str, float]
    correct: bool
    weighted: bool = False
    run: str | None = None  # which run of the item (probe items recur in the window); None: one run


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """P(score of a right cluster > score of a wrong one), ties counting ½; NaN scores left out.

    None when the finite scores do not include both classes.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (Mann–Whitney U)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - pos * (pos + 1) / 2
    return float(u / (pos * neg))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and intercept minimising Σ log loss + (l2/2)·‖w‖², by Newton's method."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    beta = np.zeros(d + 1)
    prior = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
    beta[-1] = math.log(prior / (1 - prior))
    for _ in range(_MAX_NEWTON):
        p = _sigmoid(xb @ beta)
        gradient = xb.T @ (p - y) + penalty * beta
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


@dataclass(frozen=True)
class LearnedSelector:
    """A fitted model: which signals it reads, how it scales them, and what it learned."""

    signals: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]  # per standardised signal
    bias: float
    l2: float
    auroc: dict[str, float | None]  # every signal seen on the probes, kept or not
    n_items: int
    n_clusters: int
    cv_log_loss: float
    cv_accuracy: float | None = None  # held-out: the top cluster by P was right
    cv_vote_accuracy: float | None = None  # the same items: the largest cluster was right
    dropped: tuple[str, ...] = field(default=())
    held_out: HeldOut | None = None  # per item against weighted selection, for the safety gate
    # The request's confidence (strategies/selection/confidence.py); None: a model saved before
    # it, whose confidence is the chosen cluster's own P(correct)
    recalibration: Recalibration | None = None
    reliability: Reliability | None = None  # cross-fitted: the confidence against what was right

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.bias
        for name, mu, sd, w in zip(self.signals, self.center, self.scale, self.weights, strict=True):
            value = features.get(name, math.nan)
            if value is None or not math.isfinite(value):
                continue  # the training mean: contributes 0
            z += w * (float(value) - mu) / sd
        return float(_sigmoid(np.array(z)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "signals": list(self.signals), "center": list(self.center), "scale": list(self.scale),
            "weights": list(self.weights), "bias": self.bias, "l2": self.l2, "auroc": dict(self.auroc),
            "n_items": self.n_items, "n_clusters": self.n_clusters, "cv_log_loss": self.cv_log_loss,
            "cv_accuracy": self.cv_accuracy, "cv_vote_accuracy": self.cv_vote_accuracy,
            "dropped": list(self.dropped), "held_out": None if self.held_out is None else self.held_out.as_dict(),
            "recalibration": None if self.recalibration is None else self.recalibration.as_dict(),
            "reliability": None if self.reliability is None else self.reliability.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedSelector:
        signals = tuple(str(s) for s in data["signals"])

        def share(key: str) -> float | None:
            return None if data.get(key) is None else finite(data[key], 0, 1)

        # Bounded, not only finite: a weight of 1e308 overflows the logistic into inf and NaN.
        model = cls(
            signals=signals, center=tuple(finite(v, -MAX_PARAMETER, MAX_PARAMETER) for v in data["center"]),
            scale=tuple(finite(v, 1 / MAX_PARAMETER, MAX_PARAMETER) for v in data["scale"]),
            weights=tuple(finite(v, -MAX_PARAMETER, MAX_PARAMETER) for v in data["weights"]),
            bias=finite(data["bias"], -MAX_PARAMETER, MAX_PARAMETER), l2=finite(data["l2"], 0),
            auroc={str(k): None if v is None else finite(v, 0, 1) for k, v in dict(data["auroc"]).items()},
            n_items=int(finite(data["n_items"], 0)), n_clusters=int(finite(data["n_clusters"], 0)),
            cv_log_loss=finite(data["cv_log_loss"], 0), cv_accuracy=share("cv_accuracy"),
            cv_vote_accuracy=share("cv_vote_accuracy"), dropped=tuple(str(s) for s in data.get("dropped", ())),
            held_out=None if data.get("held_out") is None else HeldOut.from_dict(dict(data["held_out"])),
            recalibration=None if data.get("recalibration") is None else Recalibration.from_dict(data["recalibration"]),
            reliability=None if data.get("reliability") is None else Reliability.from_dict(data["reliability"]),
        )
        if not len(model.center) == len(model.scale) == len(model.weights) == len(signals):
            raise ValueError("signals, center, scale and weights differ in length")
        return model

    def public(self) -> dict[str, Any]:
        """What `rvr.selection` shows: weights by signal (standardised units) and every AUROC."""
        return {
            "weights": {s: round(w, 4) for s, w in zip(self.signals, self.weights, strict=True)},
            "bias": round(self.bias, 4),
            "auroc": {s: None if a is None else round(a, 4) for s, a in self.auroc.items()},
            "dropped": list(self.dropped),
            "l2": self.l2,
            "n_items": self.n_items,
            "cv_accuracy": self.cv_accuracy,
            "cv_vote_accuracy": self.cv_vote_accuracy,
            "cv_weighted_accuracy": None if self.held_out is None else self.held_out.weighted,
            "ece": None if self.reliability is None else round(self.reliability.ece, 4),
        }

    def distribution(self, features: Sequence[Mapping[str, float]]) -> tuple[list[float], float | None]:
        """P(right) of each of a request's answer clusters and P(none is right), summing to 1
        (method §10.7). A model saved before the recalibration gives each cluster's own
        P(correct) and no P(none)."""
        own = [self.probability(f) for f in features]
        if self.recalibration is None:
            return own, None
        probs, p_none = self.recalibration.distribution(logits(np.array(own)))
        return [float(p) for p in probs], float(p_none)


def _matrix(rows: Sequence[ClusterRow], signals: Sequence[str]) -> np.ndarray:
    return np.array([[_finite(r.features.get(s)) for s in signals] for r in rows], dtype=float).reshape(len(rows), len(signals))


def _finite(value: float | None) -> float:
    return math.nan if value is None or not math.isfinite(value) else float(value)


def _zscore(x: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Standardised values; a missing one (NaN) enters as the center, i.e. 0."""
    z = (x - center) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`x` from `_matrix`: every value is finite or NaN."""
    with np.errstate(invalid="ignore"):
        center = np.where(np.isfinite(x).any(axis=0), np.nanmean(x, axis=0), 0.0)
        spread = np.nanstd(x, axis=0)
    scale = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
    return _zscore(x, center, scale), center, scale


def _fit_on(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    z, center, scale = _standardise(x)
    w, b = fit_logistic(z, y, l2)
    return w, b, center, scale


def _predict(x: np.ndarray, w: np.ndarray, b: float, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return _sigmoid(_zscore(x, center, scale) @ w + b)


def _folds(items: Sequence[str], k: int, seed: int) -> list[set[str]]:
    order = list(items)
    np.random.default_rng(seed).shuffle(order)
    return [set(order[i::k]) for i in range(k)]


Run = tuple[str, str | None]  # (item, run)


def _top_choice(rows: Sequence[ClusterRow], score: np.ndarray) -> dict[Run, bool]:
    """Per run of an item, whether its highest-scoring cluster is right (ties: the first row)."""
    best: dict[Run, tuple[float, bool]] = {}
    for row, s in zip(rows, score, strict=True):
        key = (row.item, row.run)
        if key not in best or s > best[key][0]:
            best[key] = (float(s), row.correct)
    return {key: right for key, (_, right) in best.items()}


def _per_item(values: Mapping[Run, float]) -> dict[str, float]:
    """Means over each item's runs: the items are the independent draws (method §9.2)."""
    sums: dict[str, list[float]] = {}
    for (item, _), value in values.items():
        sums.setdefault(item, []).append(value)
    return {item: sum(v) / len(v) for item, v in sums.items()}


def _top_right(rows: Sequence[ClusterRow], score: np.ndarray) -> float:
    """Share of items whose highest-scoring cluster is right (ties: the first row)."""
    right = _per_item({key: float(ok) for key, ok in _top_choice(rows, score).items()})
    return sum(right.values()) / len(right)


def _weighted_choice(rows: Sequence[ClusterRow]) -> dict[Run, bool]:
    """Per run, whether weighted selection's cluster was right: the row marked `weighted`, or
    the largest cluster where none is (records written before the mark, or weighted selection
    chose a cluster without an answer)."""
    votes = _top_choice(rows, np.array([r.features.get("vote_share", 0.0) for r in rows], dtype=float))
    marked = {(r.item, r.run): r.correct for r in rows if r.weighted}
    return {key: marked.get(key, right) for key, right in votes.items()}


def _held_out(rows: Sequence[ClusterRow], predicted: np.ndarray) -> HeldOut:
    learned, weighted = _top_choice(rows, predicted), _weighted_choice(rows)
    wins = _per_item({k: float(learned[k] and not weighted[k]) for k in learned})
    losses = _per_item({k: float(weighted[k] and not learned[k]) for k in learned})
    right = _per_item({k: float(v) for k, v in learned.items()})
    right_weighted = _per_item({k: float(v) for k, v in weighted.items()})
    items = len(right)
    return HeldOut(items, sum(wins.values()), sum(losses.values()), sum(right.values()) / items,
                   sum(right_weighted.values()) / items)


def fit_selector(
    rows: Sequence[ClusterRow],
    *,
    floor: float = SIGNAL_FLOOR,
    grid: Sequence[float] = L2_GRID,
    folds: int = FOLDS,
    seed: int = 0,
) -> LearnedSelector:
    """Fit the selector on answered probe clusters; raises `NotFittable` saying why it cannot."""
    if not rows:
        raise NotFittable("no probe clusters yet")
    y = np.array([r.correct for r in rows], dtype=bool)
    if y.all() or not y.any():
        raise NotFittable(f"all {len(rows)} probe clusters are {'right' if y.all() else 'wrong'}: nothing to tell apart")
    names = sorted({name for r in rows for name in r.features})
    x = _matrix(rows, names)
    scores = {name: auroc(x[:, j], y) for j, name in enumerate(names)}
    margin = floor - 0.5
    signals = [
        n for n in names
        if scores[n] is not None and (n in ALWAYS_KEPT or abs(scores[n] - 0.5) >= margin)  # type: ignore[operator]
    ]
    dropped = tuple(n for n in names if n not in signals)
    if not signals:
        raise NotFittable(f"no signal reaches probe AUROC {floor} (or {1 - floor:.2f} the other way)")
    # The kept signals' matrix is built once and the folds index into it: rebuilding it from
    # the rows for every fold and L2 was most of a fit's time.
    x, labels = _matrix(rows, signals), y.astype(float)
    items = sorted({r.item for r in rows})
    k = min(folds, len(items))
    best_l2, best_loss = grid[0], math.inf
    held: dict[float, np.ndarray] = {}
    tests: list[np.ndarray] = []
    if k >= 2:
        tests = [np.array([r.item in part for r in rows]) for part in _folds(items, k, seed)]
        for l2 in grid:
            predicted = np.zeros(len(rows))
            for test in tests:
                train = ~test
                if not train.any() or not test.any() or y[train].all() or not y[train].any():
                    predicted[test] = float(labels[train].mean()) if train.any() else 0.5
                    continue
                w, b, c, s = _fit_on(x[train], labels[train], l2)
                predicted[test] = _predict(x[test], w, b, c, s)
            loss = log_loss(predicted, labels)
            held[l2] = predicted
            if loss < best_loss - 1e-12:
                best_l2, best_loss = l2, loss
    w, b, center, scale = _fit_on(x, labels, best_l2)
    if not math.isfinite(best_loss):
        best_loss = log_loss(_predict(x, w, b, center, scale), labels)
    held_out = _held_out(rows, held[best_l2]) if best_l2 in held else None
    recalibration, measured = _recalibrate(rows, held[best_l2], tests) if best_l2 in held else (None, None)
    votes = np.array([r.features.get("vote_share", 0.0) for r in rows], dtype=float)
    return LearnedSelector(
        signals=tuple(signals), center=tuple(float(v) for v in center), scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w), bias=b, l2=best_l2, auroc=scores, n_items=len(items),
        n_clusters=len(rows), cv_log_loss=best_loss, cv_accuracy=None if held_out is None else held_out.learned,
        cv_vote_accuracy=_top_right(rows, votes), dropped=dropped, held_out=held_out,
        recalibration=recalibration, reliability=measured,
    )


def _recalibrate(
    rows: Sequence[ClusterRow], predicted: np.ndarray, tests: Sequence[np.ndarray]
) -> tuple[Recalibration, Reliability]:
    """(a, c) on every run's held-out logits, and the reliability of the confidence with the
    runs of each fold scored by (a, c) fitted on the other folds' runs."""
    z = logits(predicted)
    labels = np.array([r.correct for r in rows], dtype=bool)
    runs: dict[Run, list[int]] = {}
    for i, row in enumerate(rows):
        runs.setdefault((row.item, row.run), []).append(i)
    groups = [np.array(members) for members in runs.values()]
    fold_of = np.zeros(len(rows), dtype=int)
    for f, test in enumerate(tests):
        fold_of[test] = f
    confidence, right = [], []
    for f in range(len(tests)):
        inside = [g for g in groups if fold_of[g[0]] == f]
        cal = fit_recalibration([(z[g], labels[g]) for g in groups if fold_of[g[0]] != f])
        for g in inside:
            probs, _ = cal.distribution(z[g])
            top = int(np.argmax(z[g]))  # the cluster the model serves (ties: the first row)
            confidence.append(float(probs[top]))
            right.append(bool(labels[g][top]))
    return fit_recalibration([(z[g], labels[g]) for g in groups]), reliability(confidence, right)


@dataclass(frozen=True)
class SelectorState:
    """What a route's learned selection has right now: a model, or why there is none."""

    model: LearnedSelector | None
    reason: str | None = None  # why selection falls back to `weighted`, in words for `rvr`
    judge_gate: JudgeGate | None = None  # whether the knockout tournament may run (when configured)
    # Whether the model may serve (method §10.6); None: not checked (a model handed in directly)
    safety: SafetyGate | None = None


def rank_clusters(
    features: Sequence[Mapping[str, float]], answered: Sequence[bool], model: LearnedSelector
) -> tuple[int, list[float]]:
    """The index of the cluster to serve and every cluster's P(correct).

    An unanswered cluster is never chosen while an answered one exists; ties go to the larger
    vote share, then to the earlier cluster.
    """
    probabilities = [model.probability(f) for f in features]
    eligible = [i for i, a in enumerate(answered) if a] or list(range(len(features)))
    best = max(eligible, key=lambda i: (probabilities[i], features[i].get("vote_share", 0.0), -i))
    return best, probabilities
