"""The route's learned prior over how concentrated its answers are (method §4.6).

After Huang, Ma & Zhou, "Optimal Bayesian Stopping for Efficient Inference of Consistent LLM
Answers" (arXiv 2602.05395): a request's answers are draws from an unknown distribution whose
mode is the answer self-consistency would settle on, and a prior over the *shape* of that
distribution, learned from the route's past answers, says how much a few agreeing samples prove.
As in their L = 3 aggregation, only three counts are kept: the leading answer's `c1`, the
runner-up's `c2` and all the rest `r`. A shape is a profile (p1, p2, q): the mode's probability,
the runner-up's, and the rest's total. Given a shape, the two ways to label the observed top two
(leader = mode, or leader = runner-up) have likelihoods

    p1^c1 · p2^c2 · q^r    and    p2^c1 · p1^c2 · q^r,

and the prior is a distribution w over a fixed grid of shapes. Then

    P(leader is the mode | c1, c2, r) = Σ_g w_g p1^c1 p2^c2 q^r / Σ_g w_g (p1^c1 p2^c2 + p2^c1 p1^c2) q^r.

With w uniform over the runner-up's share and blind to q, this is exactly Adaptive-Consistency's
Beta rule (§4.1). Here w is learned by empirical Bayes: the nonparametric maximum likelihood
mixing distribution over the grid (Kiefer–Wolfowitz, fitted by EM) of the counts the route's
recent requests ended with, plus the unstopped counts of its gold probes' and audits' reference
draws. The stopping rule depends only on the counts, so the likelihood of a stopped request is
the same function of its shape as an unstopped one's: stopped requests are fair data. A little
uniform mass (`UNIFORM_SHARE`) keeps every shape possible, so a route whose traffic turns hard is
not ruled out by its past.

Departure from the paper: the observed top two are assumed to be the true top two (an answer
outside them is never the mode), which is what makes the posterior a sum over two labellings.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from strategies.best_of_n.counts import Clock, EpochCounts

Tally = tuple[int, int, int]  # (leader's votes, runner-up's votes, the rest's votes)

# The grid of shapes: the mode's share of the top two `t` and the top two's total `s`, so that
# p1 = t·s, p2 = (1 − t)·s, q = 1 − s. Dense near t = 1 and s = 1, where easy routes live.
SHARES = (0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995)
TOP_TWO = (0.15, 0.3, 0.5, 0.7, 0.85, 0.95, 0.99, 1.0)
UNIFORM_SHARE = 0.05  # of the prior's mass spread evenly over the grid, whatever was learned
EM_ITERATIONS = 200
EM_TOLERANCE = 1e-7
GROWTH_REFIT = 1.1  # data grown by this factor since the last fit: refit now, not in a second


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, s = np.meshgrid(np.array(SHARES), np.array(TOP_TWO), indexing="ij")
    with np.errstate(divide="ignore"):  # q = 0 where s = 1: log 0 = −inf rules out r > 0 there
        return np.log((t * s).ravel()), np.log(((1 - t) * s).ravel()), np.log((1 - s).ravel())


LOG_P1, LOG_P2, LOG_Q = _grid()
GRID_SIZE = LOG_P1.size


def tally(answers: Sequence[str | None]) -> Tally | None:
    """(c1, c2, r) of the extracted answers; None when none was extractable."""
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    if not counts:
        return None
    c1 = counts[0]
    c2 = counts[1] if len(counts) > 1 else 0
    return c1, c2, sum(counts) - c1 - c2


def field_of(counts: Tally) -> str:
    return ",".join(map(str, counts))


def tally_of(field: str) -> Tally | None:
    """A field name back to its counts; None for anything this module did not write."""
    parts = field.split(",")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    c1, c2, r = (int(p) for p in parts)
    return (c1, c2, r) if c1 >= c2 >= 0 and c1 > 0 and (c2 > 0 or r == 0) else None


def _labellings(counts: Tally) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each grid shape with the leader as the mode, and as the runner-up."""
    c1, c2, r = counts
    rest = r * LOG_Q if r else np.zeros(GRID_SIZE)  # 0 · log 0 would be nan; q^0 is 1
    return c1 * LOG_P1 + c2 * LOG_P2 + rest, c2 * LOG_P1 + c1 * LOG_P2 + rest


def fit(histogram: Mapping[Tally, float]) -> np.ndarray:
    """The NPMLE mixing weights over the grid for requests that ended with these counts (EM)."""
    rows = [(counts, weight) for counts, weight in histogram.items() if weight > 0]
    weights = np.full(GRID_SIZE, 1.0 / GRID_SIZE)
    if not rows:
        return weights
    loglik = np.array([np.logaddexp(*_labellings(counts)) for counts, _ in rows])
    loglik -= loglik.max(axis=1, keepdims=True)
    likelihood = np.exp(loglik)  # rows × shapes, each row's best shape at 1
    mass = np.array([weight for _, weight in rows])
    mass /= mass.sum()
    for _ in range(EM_ITERATIONS):
        joint = likelihood * weights
        joint /= joint.sum(axis=1, keepdims=True)
        updated = mass @ joint
        done = float(np.abs(updated - weights).max()) < EM_TOLERANCE
        weights = updated
        if done:
            break
    return (1 - UNIFORM_SHARE) * weights + UNIFORM_SHARE / GRID_SIZE


def leader_posterior(weights: np.ndarray, counts: Tally) -> float:
    """P(the leading answer is the mode | counts) under the prior `weights`."""
    lead, swap = _labellings(counts)
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    numerator = np.logaddexp.reduce(log_w + lead)
    denominator = np.logaddexp.reduce(log_w + np.logaddexp(lead, swap))
    if not math.isfinite(float(denominator)):
        return 0.5
    return float(np.exp(numerator - denominator))


class VotePrior:
    """A route's prior, learned from the counts its requests and probes ended with.

    `posterior` is None until `min_requests` counts have been seen (then §4.1's Beta rule
    decides alone). The fit is cached and redone when the counts changed, at most every
    `refit_s` seconds unless they grew by a tenth since (a route's first requests teach it most):
    an EM over a few hundred distinct counts takes milliseconds.
    """

    def __init__(self, min_requests: int, window_s: float, *, clock: Clock = time.time,
                 refit_s: float = 1.0, monotonic: Clock = time.monotonic) -> None:
        self.min_requests = min_requests
        self.counts = EpochCounts(window_s, clock)
        self._refit_s = refit_s
        self._monotonic = monotonic
        self._weights: np.ndarray | None = None
        self._fitted: tuple[int, float] = (-1, -math.inf)  # (counts version, when)
        self._learned_from = 0.0

    def observe(self, answers: Sequence[str | None]) -> None:
        """The extracted answers one request (or one probe's reference draws) ended with."""
        counts = tally(answers)
        if counts is not None:
            self.counts.add(field_of(counts))

    def histogram(self) -> dict[Tally, float]:
        out: dict[Tally, float] = {}
        for field, weight in self.counts.totals().items():
            counts = tally_of(field)
            if counts is not None and weight > 0:
                out[counts] = out.get(counts, 0.0) + weight
        return out

    def weights(self) -> np.ndarray | None:
        """The learned prior, or None before `min_requests` counts."""
        version, when = self._fitted
        now = self._monotonic()
        if version == self.counts.version:
            return self._weights
        # Short of `min_requests` the histogram is small and nothing is fitted: check every time.
        # A young prior also refits as soon as its data grew by a tenth, however fast they came.
        due = self._weights is None or now - when >= self._refit_s
        if not due and self.counts.total() >= GROWTH_REFIT * self._learned_from:
            due = True
        if due:
            histogram = self.histogram()
            self._learned_from = sum(histogram.values())
            self._weights = fit(histogram) if self._learned_from >= self.min_requests else None
            self._fitted = (self.counts.version, now)
        return self._weights

    @property
    def learned_from(self) -> float:
        """How many requests and probe items the current fit was learned from."""
        return self._learned_from

    def posterior(self, counts: Tally) -> float | None:
        weights = self.weights()
        return None if weights is None else leader_posterior(weights, counts)
