"""Rational value risk estimators (method §2–§3), computed from one request's candidates.

All utilities are the ensemble scores s̄ in [0, 1] (see `strategies.selection.weighted`). A term a
request cannot measure is `None`, never 0; the route's running estimate may stand in for it,
and the report says so in `sources`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.contract import ORIGINAL_VARIANT, RiskReport
from strategies.selection.weighted import utilities as ensemble_utilities

DEFAULT_K_REF = 64
DEFAULT_RESAMPLES = 200
MIN_CANDIDATES_FOR_TREND = 4  # D_n and D_{n/2} need n/4 ≥ 1
INTERVAL = (5.0, 95.0)  # a 90% percentile interval
TERMS = ("candidate", "prompt", "verifier")


# --- expected maximum of k draws ---------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _integer_weights(n: int, k: int) -> np.ndarray:
    """w_i = C(i−1, k−1) / C(n, k) for the i-th smallest of n (1-based); 0 below i = k.

    Log space keeps n in the hundreds finite; the weights are renormalized so rounding
    cannot leak mass (they sum to 1 exactly by the hockey-stick identity).
    """
    weights = np.zeros(n)
    log_total = _log_comb(n, k)
    for i in range(k, n + 1):
        weights[i - 1] = math.exp(_log_comb(i - 1, k - 1) - log_total)
    return weights / weights.sum()


def expected_max_weights(n: int, k: float) -> np.ndarray:
    """Weights on ascending-sorted scores giving Ê_k; a fractional k interpolates linearly.

    Fractional k appears when n is odd and the method asks for Ê_{n/2}: the expected best of
    2.5 draws is read as halfway between the best of 2 and the best of 3.
    """
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"need 1 ≤ k ≤ n, got k={k}, n={n}")
    low = math.floor(k)
    frac = k - low
    weights = _integer_weights(n, low)
    if frac > 0:
        weights = (1 - frac) * weights + frac * _integer_weights(n, low + 1)
    return weights


def expected_max(scores: Sequence[float] | np.ndarray, k: float) -> float:
    """Unbiased expected best of k draws from the n observed (mean max over all k-subsets)."""
    values = np.sort(np.asarray(scores, dtype=float))
    return float(values @ expected_max_weights(len(values), k))


# --- binary utilities (§2) ---------------------------------------------------------------


def reu_binary(p: float | np.ndarray, k: int) -> float | np.ndarray:
    """REU_K for a right/wrong task where one sample is right with probability p."""
    result = 1.0 - (1.0 - np.asarray(p, dtype=float)) ** k
    return float(result) if result.ndim == 0 else result


def recoverable_share(rvr: float, reu: float) -> float | None:
    """RVR / ((1 − REU) + RVR): the part of the total loss that sampling can win back."""
    denominator = (1.0 - reu) + rvr
    return None if denominator <= 0 else rvr / denominator


# --- the candidate term ------------------------------------------------------------------


@dataclass(frozen=True)
class Doubling:
    """The trend of Ê over the last two doublings of n."""

    d_n: float  # Ê_n − Ê_{n/2}
    d_half: float  # Ê_{n/2} − Ê_{n/4}
    rho: float  # clip(D_n / D_{n/2}, 0, 1)

    @property
    def predicted_gain(self) -> float:
        """What the next doubling should add (§4.2)."""
        return self.d_n * self.rho


_ROUNDING = 1e-12  # log-space weights leave ~1e-16 residue; a flat tail must read as exactly 0


def _snap(values: np.ndarray) -> np.ndarray:
    return np.where(np.abs(values) < _ROUNDING, 0.0, values)


def _ratio(d_n: float, d_half: float) -> float:
    if d_half > 0:
        return min(max(d_n / d_half, 0.0), 1.0)
    return 1.0 if d_n > 0 else 0.0  # growth after a flat step: assume it keeps going


def doubling(scores: Sequence[float] | np.ndarray) -> Doubling | None:
    """None below four candidates: the trend needs Ê_{n/4} with n/4 ≥ 1."""
    values = np.sort(np.asarray(scores, dtype=float))
    n = len(values)
    if n < MIN_CANDIDATES_FOR_TREND:
        return None
    e_n, e_half, e_quarter = (float(values @ expected_max_weights(n, k)) for k in (n, n / 2, n / 4))
    d_n, d_half = (float(d) for d in _snap(np.array([e_n - e_half, e_half - e_quarter])))
    return Doubling(d_n, d_half, _ratio(d_n, d_half))


def doublings_to(k_ref: int, n: int) -> float:
    """T = log2(K_ref / n); zero once n has reached K_ref."""
    return max(math.log2(k_ref / n), 0.0)


def geometric_sum(rho: float, steps: float) -> float:
    """Σ_{t=1..T} ρ^t in closed form, so a fractional T counts a partial last doubling."""
    if steps <= 0:
        return 0.0
    if rho >= 1.0:
        return steps
    return rho * (1.0 - rho**steps) / (1.0 - rho)


# Binary utilities: a Beta posterior for p instead of the doubling trend (see `candidate_term`).

BINARY_PRIOR = (0.5, 0.5)  # Jeffreys Beta(½, ½)


def is_binary(scores: Sequence[float] | np.ndarray) -> bool:
    """Every score is exactly 0 or 1: a right/wrong task (method §2's binary utilities)."""
    values = np.asarray(scores, dtype=float)
    return len(values) > 0 and bool(np.all((values == 0.0) | (values == 1.0)))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def posterior_miss(correct: int, n: int, k: float, prior: tuple[float, float] = BINARY_PRIOR) -> float:
    """E[(1 − p)^k] for p ~ Beta(correct + a, n − correct + b), the posterior after `correct` of n.

    Closed form: B(α, β + k) / B(α, β), in log space so n and k in the thousands stay finite.
    So E[REU_k] = 1 − posterior_miss(c, n, k).
    """
    alpha, beta = correct + prior[0], n - correct + prior[1]
    return math.exp(_log_beta(alpha, beta + k) - _log_beta(alpha, beta))


def binary_candidate_term(correct: int, n: int, k_ref: int) -> float:
    """E_post[REU_Kref − REU_n] = E_post[(1 − p)^n − (1 − p)^Kref]; 0 once n has reached K_ref."""
    if k_ref <= n:
        return 0.0
    return max(posterior_miss(correct, n, n) - posterior_miss(correct, n, k_ref), 0.0)


def candidate_term(scores: Sequence[float] | np.ndarray, k_ref: int = DEFAULT_K_REF) -> float | None:
    """Ĉ: gain still available from sampling up to K_ref. None below four candidates.

    Scores in [0, 1] with any value strictly between: method §3, Ĉ = D_n · Σ_{t=1..T} ρ^t.

    Departure from §3 for binary scores (every score exactly 0 or 1, e.g. an oracle or a pass/fail
    check): with c right out of n, Ĉ = E_post[(1 − p)^n − (1 − p)^Kref], the posterior mean of
    the true C = REU_Kref − REU_n (method §2, REU_K = 1 − E[(1 − p)^K]) under a Jeffreys
    Beta(½, ½) prior, posterior Beta(c + ½, n − c + ½), in closed form (`posterior_miss`).
    §3's trend is blind here: all-wrong requests have D_n = 0, hence Ĉ = 0, although a request
    that saw 0 of 16 right is exactly the one with most left to gain; and on mixed requests
    D_n / D_{n/2} is 1 whenever the right ones are few, so Ĉ = D_n · T overshoots. K_ref ≤ n
    keeps Ĉ = 0 as in §3 (the baseline is then the study's R̂_K).

    Measured with `python bench/validate_risk.py --scenarios oracle,binary` (one oracle view,
    n = 16, 300 requests per scenario, p_x ~ Beta(0.5, 2) unless named; §3 → this), against the
    bench's exact truth C = REU_Kref − REU_n and RVR = REU_Kref − AEU:

        scenario              estimate   bias            RMSE          Spearman     90% coverage
        oracle-k64            candidate  +.039 → −.005   .357 → .127   .12 → .71    61 → 88%
                              baseline   +.031 → −.013   .591 → .306   .50 → .53    63 → 77%
        oracle-k256           candidate  +.136 → −.007   .757 → .192   −.03 → .79   61 → 87%
                              baseline   +.128 → −.015   .963 → .298   .21 → .38    63 → 73%
        oracle-n8-k64 (n=8)   candidate  +.066 → −.022   .621 → .187   −.05 → .56   49 → 87%
                              baseline   +.059 → −.029   .866 → .343   .20 → .29    51 → 68%
        oracle-easy-k64       candidate  +.003 → +.002   .040 → .017   .52 → .89    84 → 98%
          (p_x ~ Beta(2, ½))  baseline   +.003 → +.001   .111 → .089   .88 → .90    60 → 61%
        oracle-variants-k64   candidate  +.060 → −.008   .352 → .125   .23 → .74    64 → 90%
          (4 variants × 4)    baseline   +.095 → +.028   .582 → .319   .58 → .59    55 → 68%

    On oracle-k64, all-wrong requests (34%): mean Ĉ 0 → 0.260 (truth 0.248); mixed requests:
    0.306 → 0.105 (truth 0.119). The interval for the binary Ĉ is a 90% credible interval
    (`_binary_posterior_draws`), not a bootstrap. The baseline keeps §3's Ê_n + Ĉ − AEU.
    The Jeffreys prior is within 0.001 RMSE of the simulator's own Beta(0.5, 2) prior on that
    world (offline Monte Carlo, 20 000 requests), so an empirical-Bayes prior fed from the
    route is not worth its state.
    """
    values = np.asarray(scores, dtype=float)
    if len(values) < MIN_CANDIDATES_FOR_TREND:
        return None
    if is_binary(values):
        return binary_candidate_term(int(values.sum()), len(values), k_ref)
    trend = doubling(values)
    assert trend is not None
    return trend.d_n * geometric_sum(trend.rho, doublings_to(k_ref, len(values)))


# --- AEU and the prompt term -------------------------------------------------------------


def original_mask(variants: Sequence[str]) -> np.ndarray:
    """Which candidates came from the plain prompt; all of them if none is named original."""
    mask = np.array([v == ORIGINAL_VARIANT for v in variants], dtype=bool)
    return mask if mask.any() else np.ones(len(variants), dtype=bool)


def aeu(scores: Sequence[float] | np.ndarray, variants: Sequence[str]) -> float | None:
    values = np.asarray(scores, dtype=float)
    if len(values) == 0:
        return None
    return float(values[original_mask(variants)].mean())


def prompt_term(scores: Sequence[float] | np.ndarray, variants: Sequence[str]) -> float | None:
    """P̂ = Ê_m(pooled) − Ê_m(original only) at m = the original count; None without variants."""
    values = np.asarray(scores, dtype=float)
    is_original = np.array([v == ORIGINAL_VARIANT for v in variants], dtype=bool)
    m = int(is_original.sum())
    if m == 0 or m == len(values):
        return None
    return float(_snap(np.array(expected_max(values, m) - values[is_original].max())))


# --- the verifier term -------------------------------------------------------------------


def verifier_term(
    views: np.ndarray,
    weights: np.ndarray,
    eligible: np.ndarray,
    selected: int,
    rng: np.random.Generator,
    resamples: int = DEFAULT_RESAMPLES,
) -> float | None:
    gaps = verifier_gaps(views, weights, eligible, selected, rng, resamples)
    return None if gaps is None else float(np.mean(gaps))


# The 90% interval of the verifier term is the spread of these per-resample gaps: an interval for
# the loss this request's choice realized, max U − U(ŷ). With noise-only views it covered that
# loss 92% of the time (python bench/validate_risk.py --scenarios noise, 300 requests); with a
# bias all views share it does not (35% at β=0.1), as the method says it cannot. When most
# resamples agree the interval is (0, 0) although V̂r, the expected loss, is above 0.


def verifier_gaps(
    views: np.ndarray,
    weights: np.ndarray,
    eligible: np.ndarray,
    selected: int,
    rng: np.random.Generator,
    resamples: int = DEFAULT_RESAMPLES,
) -> np.ndarray | None:
    """V̂r = mean_b [max_i s̄_i^(b) − s̄_ŷ^(b)] over view sets drawn with replacement.

    None for fewer than two views: the method lists "one view" among the cases a request
    cannot measure (the bootstrap of one deterministic view is 0 by construction, which says
    nothing about the verifier). Resamples in which ŷ has no score are skipped.
    """
    width = views.shape[1]
    if width < 2:
        return None
    picks = rng.integers(0, width, size=(resamples, width))
    resampled = np.transpose(views[:, picks], (1, 0, 2))  # B × n × W
    means = ensemble_utilities(resampled, weights[picks][:, None, :], eligible)
    chosen = means[:, selected]
    usable = ~np.isnan(chosen)
    if not usable.any():
        return None
    best = np.nanmax(means[usable], axis=1)
    return best - chosen[usable]


# --- route-level fallbacks ---------------------------------------------------------------


class RouteRiskState:
    """Running means of the three residual terms over a route's requests, in one process.

    Fed only by terms a request measured itself (audit traffic and ordinary requests), never by
    values it borrowed from here, so the estimate cannot feed on itself. Not thread-safe: one
    per route per event loop.
    """

    def __init__(self) -> None:
        self._sums = dict.fromkeys(TERMS, 0.0)
        self._counts = dict.fromkeys(TERMS, 0)

    def observe(self, report: RiskReport) -> None:
        for term in TERMS:
            value = getattr(report, term)
            if value is not None and report.sources.get(term) == "request":
                self._sums[term] += value
                self._counts[term] += 1

    def estimate(self, term: str) -> float | None:
        count = self._counts[term]
        return self._sums[term] / count if count else None

    def count(self, term: str) -> int:
        return self._counts[term]

    def totals(self) -> dict[str, tuple[float, int]]:
        """(sum, count) of each term: what processes sharing a route's estimate exchange."""
        return {term: (self._sums[term], self._counts[term]) for term in TERMS}

    def restore(self, totals: dict[str, tuple[float, int]]) -> None:
        """Replace the running sums by `totals`, e.g. every process's observations merged."""
        for term in TERMS:
            self._sums[term], self._counts[term] = totals.get(term, (0.0, 0))


# --- the per-request report --------------------------------------------------------------


@dataclass(frozen=True)
class _Terms:
    candidate: float | None
    prompt: float | None
    verifier: float | None


def _fill_from_route(measured: _Terms, route: RouteRiskState | None) -> tuple[_Terms, dict[str, str]]:
    values: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    for term in TERMS:
        value = getattr(measured, term)
        if value is not None:
            sources[term] = "request"
        elif route is not None and (value := route.estimate(term)) is not None:
            sources[term] = "route"
        values[term] = value
    return _Terms(**values), sources


def _residual(terms: _Terms, sources: dict[str, str]) -> tuple[float | None, list[str]]:
    """Ĉ + max(P̂, 0) + V̂r over the known terms, with one departure from method §3.

    A request that sampled the variants itself has already collected their gain: Ĉ extrapolates
    the pooled candidates, so adding P̂ again counts it twice (measured on the simulated upstream,
    bench/validate_risk.py: residual bias +0.058 with it, −0.004 without). P̂ enters the residual
    only when it is the route's estimate for a request that asked one way.
    """
    prompt = terms.prompt if sources.get("prompt") == "route" else None
    parts = {
        "candidate": terms.candidate,
        "prompt": None if prompt is None else max(prompt, 0.0),
        "verifier": terms.verifier,
    }
    used = [name for name, value in parts.items() if value is not None]
    if not used:
        return None, []
    return float(sum(parts[name] for name in used)), used  # type: ignore[misc]


def _stratified_resamples(variants: Sequence[str], rng: np.random.Generator, count: int) -> np.ndarray:
    """B × n row indices, resampling within each variant so its count (and m) stays fixed."""
    labels = np.asarray(variants)
    picks = np.empty((count, len(labels)), dtype=int)
    for label in dict.fromkeys(variants):
        rows = np.flatnonzero(labels == label)
        picks[:, rows] = rows[rng.integers(0, len(rows), size=(count, len(rows)))]
    return picks


def _binary_posterior_draws(correct: int, n: int, k_ref: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """Draws of the true C = (1 − p)^n − (1 − p)^Kref with p from the Jeffreys posterior.

    Their percentiles are a 90% credible interval for C. A bootstrap of 0/1 scores cannot give
    one: an all-wrong request resamples to all-wrong every time, so its interval is one point.
    """
    p = rng.beta(correct + BINARY_PRIOR[0], n - correct + BINARY_PRIOR[1], size=count)
    return (1.0 - p) ** n - (1.0 - p) ** k_ref


def _bootstrap_terms(
    scores: np.ndarray, variants: Sequence[str], k_ref: int, picks: np.ndarray,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Ê_n, Ĉ, AEU and P̂ for every resample at once (sorting rows, then fixed weight vectors).

    Binary scores (`is_binary`) with K_ref > n take Ĉ's draws from the posterior instead, using
    `rng` (the bootstrap when no rng is given).
    """
    n = len(scores)
    samples = scores[picks]
    is_original = original_mask(variants)  # strata keep positions, so one mask fits every row
    ordered = np.sort(samples, axis=1)
    out: dict[str, np.ndarray] = {
        "best": ordered @ expected_max_weights(n, min(n, k_ref)),
        "aeu": np.where(is_original, samples, 0.0).sum(axis=1) / is_original.sum(),
    }
    if n >= MIN_CANDIDATES_FOR_TREND and is_binary(scores):
        if k_ref > n and rng is not None:
            out["candidate"] = _binary_posterior_draws(int(scores.sum()), n, k_ref, rng, len(picks))
        else:
            out["candidate"] = np.array([binary_candidate_term(int(c), n, k_ref) for c in samples.sum(axis=1)])
    elif n >= MIN_CANDIDATES_FOR_TREND:
        e_n, e_half, e_quarter = (ordered @ expected_max_weights(n, k) for k in (n, n / 2, n / 4))
        d_n, d_half = _snap(e_n - e_half), _snap(e_half - e_quarter)
        rho = np.array([_ratio(a, b) for a, b in zip(d_n, d_half, strict=True)])
        steps = doublings_to(k_ref, n)
        out["candidate"] = d_n * np.array([geometric_sum(r, steps) for r in rho])
    originals = np.array([v == ORIGINAL_VARIANT for v in variants])
    m = int(originals.sum())
    if 0 < m < n:
        pooled = ordered @ expected_max_weights(n, m)
        out["prompt"] = _snap(pooled - np.where(originals, samples, -np.inf).max(axis=1))
    return out


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, INTERVAL)
    return float(low), float(high)


def _intervals(
    boot: dict[str, np.ndarray], terms: _Terms, sources: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """90% percentile intervals for baseline, candidate, prompt and residual where defined.

    Route-supplied terms and the verifier term (whose noise is over views, not candidates)
    enter as constants; a residual made only of constants gets no interval.
    """
    intervals: dict[str, tuple[float, float]] = {}
    candidate = boot.get("candidate") if sources.get("candidate") == "request" else None
    prompt = boot.get("prompt") if sources.get("prompt") == "request" else None
    if candidate is not None:
        intervals["candidate"] = _interval(candidate)
    if prompt is not None:
        intervals["prompt"] = _interval(prompt)
    c_draws = candidate if candidate is not None else terms.candidate
    if c_draws is not None:
        intervals["baseline"] = _interval(boot["best"] + c_draws - boot["aeu"])
    if candidate is not None:
        total = np.zeros_like(boot["best"])
        total += c_draws if c_draws is not None else 0.0
        # As in `_residual`: only a route-supplied prompt term is still to be gained.
        p_draws = terms.prompt if sources.get("prompt") == "route" else None
        total += max(p_draws, 0.0) if p_draws is not None else 0.0
        total += terms.verifier if terms.verifier is not None else 0.0
        intervals["residual"] = _interval(total)
    return intervals


def disagreement_draws(
    answers: Sequence[str | None], selected: int, rng: np.random.Generator, count: int = DEFAULT_RESAMPLES
) -> tuple[np.ndarray, np.ndarray] | None:
    """Posterior draws of (baseline, residual) that the answers' disagreement alone implies.

    The vote's own model (method §3.10): a candidate is worth `p_y`, the chance that a fresh
    sample gives its answer, so asking once is worth Σ p_k², the best of many samples finds the
    most likely answer (worth max p_k), and the served answer is worth its own p. The `p` are
    unknown; their posterior given the observed cluster counts is Dirichlet(counts + ½) with one
    more ½ for answers not seen yet. Per draw, baseline = max p − Σ p², residual = max p − p_served.
    None when fewer than two distinct answers were seen: there is no disagreement to see.
    """
    counts = Counter(a for a in answers if a is not None)
    if len(counts) < 2:
        return None
    labels = list(counts)
    p = rng.dirichlet([counts[k] + 0.5 for k in labels] + [0.5], size=count)[:, :-1]
    best = p.max(axis=1)
    chosen = answers[selected]
    served = p[:, labels.index(chosen)] if chosen in counts else np.zeros(count)
    return best - (p**2).sum(axis=1), best - served


def _floor_by_disagreement(report: RiskReport, draws: tuple[np.ndarray, np.ndarray]) -> None:
    """Raise the baseline and residual to what disagreement alone implies, and widen their
    intervals to cover its interval: candidates that disagree are never reported risk-free."""
    for name, values in zip(("baseline", "residual"), draws, strict=True):
        floor, (low, high) = float(values.mean()), _interval(values)
        current = getattr(report, name)
        if current is None or floor > current:
            setattr(report, name, floor)
            if name == "residual":
                report.residual_terms.append("disagreement")
        own = report.intervals.get(name)
        report.intervals[name] = (min(low, own[0]), max(high, own[1])) if own is not None else (low, high)
    report.disagreement = float(draws[1].mean())
    report.intervals["disagreement"] = _interval(draws[1])


def assess(
    utilities: Sequence[float | None] | np.ndarray,
    variants: Sequence[str],
    selected: int,
    views: np.ndarray,
    weights: np.ndarray,
    eligible: np.ndarray,
    rng: np.random.Generator,
    *,
    k_ref: int = DEFAULT_K_REF,
    resamples: int = DEFAULT_RESAMPLES,
    route: RouteRiskState | None = None,
    answers: Sequence[str | None] | None = None,
) -> RiskReport:
    """The per-request report of §3. Candidates no view scored are left out of every estimate.

    `answers` (each candidate's extracted answer, None where it has none) add the floor of
    `disagreement_draws`: without it, candidates that all disagree score alike and look safe.
    """
    values = np.asarray([np.nan if u is None else u for u in utilities], dtype=float)
    scored = ~np.isnan(values)
    report = RiskReport(k_ref=k_ref)
    selected_utility = values[selected]
    report.selected_utility = None if np.isnan(selected_utility) else float(selected_utility)
    kept = values[scored]
    kept_variants = [v for v, ok in zip(variants, scored, strict=True) if ok]
    gaps = verifier_gaps(views, weights, eligible, selected, rng, resamples)
    measured = _Terms(
        candidate=candidate_term(kept, k_ref) if len(kept) else None,
        prompt=prompt_term(kept, kept_variants) if len(kept) else None,
        verifier=None if gaps is None else float(np.mean(gaps)),
    )
    terms, report.sources = _fill_from_route(measured, route)
    report.candidate, report.prompt, report.verifier = terms.candidate, terms.prompt, terms.verifier
    report.aeu = aeu(kept, kept_variants)
    if report.aeu is not None and terms.candidate is not None:
        # Ê at min(n, K_ref): with more candidates than K_ref the observed max overstates REU_Kref.
        report.baseline = expected_max(kept, min(len(kept), k_ref)) + terms.candidate - report.aeu
    report.residual, report.residual_terms = _residual(terms, report.sources)
    if len(kept):
        picks = _stratified_resamples(kept_variants, rng, resamples)
        report.intervals = _intervals(
            _bootstrap_terms(kept, kept_variants, k_ref, picks, rng), terms, report.sources
        )
    if gaps is not None:
        report.intervals["verifier"] = _interval(gaps)
    draws = disagreement_draws(answers, selected, rng, resamples) if answers is not None else None
    if draws is not None:
        _floor_by_disagreement(report, draws)
    return report
