"""Risk estimators checked against brute force and closed forms (method §2–§3)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strategies.contract import RiskReport
from strategies.risk import estimators as risk
from strategies.risk.estimators import (
    RouteRiskState,
    aeu,
    assess,
    candidate_term,
    doubling,
    expected_max,
    expected_max_weights,
    is_binary,
    prompt_term,
    recoverable_share,
    reu_binary,
    verifier_term,
)
from strategies.selection.weighted import ensemble_mean

unit = st.floats(0.0, 1.0, allow_nan=False)


def brute_expected_max(scores: list[float], k: int) -> float:
    subsets = list(itertools.combinations(scores, k))
    return sum(max(s) for s in subsets) / len(subsets)


@given(st.lists(unit, min_size=1, max_size=9), st.data())
def test_expected_max_equals_mean_max_over_all_k_subsets(scores: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(scores)))
    assert expected_max(scores, k) == pytest.approx(brute_expected_max(scores, k), abs=1e-12)


@given(st.integers(1, 40), st.data())
def test_expected_max_of_binary_scores_is_codex_pass_at_k(n: int, data: st.DataObject) -> None:
    correct = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    scores = [1.0] * correct + [0.0] * (n - correct)
    pass_at_k = 1.0 - math.comb(n - correct, k) / math.comb(n, k)
    assert expected_max(scores, k) == pytest.approx(pass_at_k, abs=1e-12)


def test_weights_stay_finite_and_exact_for_512_candidates() -> None:
    n = 512
    for k in (1, 2, 64, 256, 511, 512):
        w = expected_max_weights(n, k)
        assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0, abs=1e-12)
        i = n  # the top weight is k/n exactly
        assert w[i - 1] == pytest.approx(k / n, rel=1e-9)
    exact = math.comb(300, 63) / math.comb(n, 64)  # C(i−1, k−1)/C(n, k) at i = 301
    assert expected_max_weights(n, 64)[300] == pytest.approx(exact, rel=1e-9)


@given(st.lists(unit, min_size=2, max_size=30))
def test_last_step_identity(scores: list[float]) -> None:
    s = sorted(scores)
    n = len(s)
    assert expected_max(s, n) - expected_max(s, n - 1) == pytest.approx((s[-1] - s[-2]) / n, abs=1e-12)


@given(st.lists(unit, min_size=1, max_size=20))
def test_k1_is_the_mean_and_kn_the_max(scores: list[float]) -> None:
    assert expected_max(scores, 1) == pytest.approx(float(np.mean(scores)), abs=1e-12)
    assert expected_max(scores, len(scores)) == pytest.approx(max(scores), abs=1e-12)


def test_fractional_k_interpolates_between_neighbours() -> None:
    s = [0.1, 0.4, 0.5, 0.9, 0.2]
    assert expected_max(s, 2.5) == pytest.approx((expected_max(s, 2) + expected_max(s, 3)) / 2)


def test_k_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        expected_max([0.5, 0.6], 3)


def test_candidate_term_is_unknown_below_four() -> None:
    assert candidate_term([0.1, 0.9, 0.5]) is None
    assert doubling([0.1, 0.9, 0.5]) is None


def test_candidate_term_matches_hand_computation() -> None:
    s = [0.2, 0.4, 0.6, 0.8]
    e4, e2, e1 = (brute_expected_max(s, k) for k in (4, 2, 1))
    d_n, d_half = e4 - e2, e2 - e1
    rho = min(max(d_n / d_half, 0), 1)
    t = math.log2(64 / 4)  # 4 doublings
    expected = d_n * sum(rho**i for i in range(1, int(t) + 1))
    assert candidate_term(s, 64) == pytest.approx(expected, abs=1e-12)
    trend = doubling(s)
    assert trend is not None and trend.predicted_gain == pytest.approx(d_n * rho)


def test_candidate_term_is_zero_at_or_beyond_k_ref_and_for_flat_scores() -> None:
    assert candidate_term([0.1, 0.3, 0.6, 0.9], k_ref=4) == 0.0
    assert candidate_term([0.5] * 8) == 0.0


@given(st.lists(unit, min_size=4, max_size=24))
def test_candidate_term_is_nonnegative_and_bounded_by_headroom_times_doublings(scores: list[float]) -> None:
    assume(not is_binary(scores))  # 0/1 scores take the posterior term, which §3's bound does not cover
    c = candidate_term(scores, 64)
    assert c is not None and c >= -1e-12
    trend = doubling(scores)
    assert trend is not None
    assert c <= trend.d_n * max(math.log2(64 / len(scores)), 0) + 1e-12


def test_aeu_uses_original_candidates_or_all_without_an_original() -> None:
    assert aeu([0.2, 0.8, 0.4], ["original", "cot", "original"]) == pytest.approx(0.3)
    assert aeu([0.2, 0.8, 0.4], ["a", "b", "a"]) == pytest.approx(1.4 / 3)
    assert aeu([], []) is None


def test_prompt_term_is_pooled_minus_original_at_matched_count() -> None:
    scores = [0.1, 0.5, 0.9, 0.3, 0.7]
    variants = ["original", "cot", "cot", "original", "cot"]
    m = 2
    expected = brute_expected_max(scores, m) - max(0.1, 0.3)
    assert prompt_term(scores, variants) == pytest.approx(expected)


def test_prompt_term_can_be_negative_and_is_unknown_without_variants() -> None:
    assert prompt_term([0.9, 0.1, 0.1], ["original", "x", "x"]) < 0  # type: ignore[operator]
    assert prompt_term([0.9, 0.1], ["original", "original"]) is None
    assert prompt_term([0.9, 0.1], ["x", "y"]) is None


def brute_verifier_term(views: np.ndarray, weights: np.ndarray, eligible: np.ndarray,
                        selected: int, seed: int, resamples: int) -> float:
    """The same draws as the vectorized version, aggregated one resample at a time."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, views.shape[1], size=(resamples, views.shape[1]))
    losses = []
    for row in picks:
        s = ensemble_mean(views[:, row], weights[row])
        s = np.where(eligible, s, 0.0)
        if np.isnan(s[selected]):
            continue
        losses.append(np.nanmax(s) - s[selected])
    return float(np.mean(losses))


@settings(max_examples=50)
@given(st.integers(2, 6), st.integers(2, 5), st.integers(0, 10_000))
def test_verifier_term_matches_a_plain_loop(n: int, w: int, seed: int) -> None:
    gen = np.random.default_rng(seed + 1)
    views = gen.random((n, w))
    views[gen.random((n, w)) < 0.2] = np.nan
    views[0, :] = gen.random(w)  # the selected one is always scored
    weights = gen.random(w) + 0.1
    eligible = np.ones(n, dtype=bool)
    got = verifier_term(views, weights, eligible, 0, np.random.default_rng(seed), 50)
    assert got == pytest.approx(brute_verifier_term(views, weights, eligible, 0, seed, 50), abs=1e-12)
    assert got is not None and got >= 0


def test_verifier_term_expectation_for_two_opposed_views() -> None:
    # resamples AA: loss 0, BB: loss 1, AB/BA: tie, loss 0 → expectation 1/4
    views = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = verifier_term(views, np.ones(2), np.ones(2, bool), 0, np.random.default_rng(0), 20_000)
    assert got == pytest.approx(0.25, abs=0.01)


def test_verifier_term_zero_when_views_agree_and_unknown_for_one_view() -> None:
    views = np.array([[0.9, 0.9], [0.2, 0.2]])
    assert verifier_term(views, np.ones(2), np.ones(2, bool), 0, np.random.default_rng(0)) == 0.0
    assert verifier_term(views[:, :1], np.ones(1), np.ones(2, bool), 0, np.random.default_rng(0)) is None


def test_verifier_term_never_reads_a_missing_score_as_zero() -> None:
    # candidate 1 is missing in view B; as 0 it would look worse, skipped it stays at 0.95
    views = np.array([[0.9, 0.9], [0.95, np.nan]])
    got = verifier_term(views, np.ones(2), np.ones(2, bool), 0, np.random.default_rng(3), 400)
    assert got is not None and got > 0.03  # the 0.05 loss shows in every resample with view A


def test_reu_binary_and_recoverable_share() -> None:
    assert reu_binary(0.5, 1) == pytest.approx(0.5)
    assert reu_binary(0.1, 64) == pytest.approx(1 - 0.9**64)
    np.testing.assert_allclose(reu_binary(np.array([0.0, 1.0]), 8), [0.0, 1.0])
    # RVR 0.3 against a floor of 0.1 unreachable: 0.3 / 0.4
    assert recoverable_share(0.3, 0.9) == pytest.approx(0.75)
    assert recoverable_share(0.0, 1.0) is None


def report_for(scores: list[float], variants: list[str], views: np.ndarray | None = None,
               route: RouteRiskState | None = None, seed: int = 0) -> RiskReport:
    n = len(scores)
    if views is None:
        views = np.array(scores)[:, None]
    selected = int(np.argmax(scores))
    return assess(scores, variants, selected, views, np.ones(views.shape[1]), np.ones(n, bool),
                  np.random.default_rng(seed), k_ref=64, resamples=200, route=route)


def test_report_components_and_formulae() -> None:
    scores = [0.2, 0.5, 0.9, 0.4, 0.6, 0.3]
    variants = ["original", "cot", "original", "cot", "original", "cot"]
    views = np.column_stack([scores, np.array(scores) * 0.9 + 0.05])
    r = report_for(scores, variants, views)
    assert r.sources == {"candidate": "request", "prompt": "request", "verifier": "request"}
    assert r.aeu == pytest.approx((0.2 + 0.9 + 0.6) / 3)
    assert r.candidate == pytest.approx(candidate_term(scores, 64))
    assert r.prompt == pytest.approx(prompt_term(scores, variants))
    assert r.baseline == pytest.approx(0.9 + r.candidate - r.aeu)
    # The request sampled the variants itself: their gain is in the pool, not still to be had.
    assert r.residual == pytest.approx(r.candidate + r.verifier)
    assert r.residual_terms == ["candidate", "verifier"]
    for name in ("baseline", "candidate", "prompt", "residual"):
        lo, hi = r.intervals[name]
        assert lo <= hi
    assert report_for(scores, variants, views).as_dict() == r.as_dict()  # seeded: reproducible


def test_baseline_with_more_candidates_than_k_ref_uses_the_expected_max_at_k_ref() -> None:
    rng = np.random.default_rng(3)
    scores = list(rng.uniform(size=16))
    r = assess(scores, ["original"] * 16, int(np.argmax(scores)), np.array(scores)[:, None], np.ones(1),
               np.ones(16, bool), np.random.default_rng(0), k_ref=8)
    assert r.candidate == pytest.approx(0.0)  # nothing left to gain below K_ref
    assert r.baseline == pytest.approx(expected_max(scores, 8) - np.mean(scores))
    assert r.baseline < max(scores) - np.mean(scores)


def test_verifier_interval_is_the_spread_of_the_per_resample_gaps() -> None:
    scores = [0.2, 0.5, 0.9, 0.4, 0.6, 0.3]
    agree = np.column_stack([scores, np.array(scores) * 0.9, np.array(scores) * 0.8])
    assert report_for(scores, ["original"] * 6, agree).intervals["verifier"] == (0.0, 0.0)
    # Two views that rank the candidates in opposite orders: many resamples pick another winner.
    opposed = np.column_stack([[0.1, 0.2, 0.9, 0.3, 0.4, 0.5], [0.9, 0.8, 0.1, 0.7, 0.6, 0.5]])
    r = report_for(scores, ["original"] * 6, opposed)
    lo, hi = r.intervals["verifier"]
    assert 0.0 <= lo <= hi <= 1.0 and hi > 0.3 and r.verifier > 0
    assert "verifier" not in report_for(scores, ["original"] * 6).intervals  # one view: unknown


def test_unknown_terms_are_none_and_left_out_of_the_residual() -> None:
    r = report_for([0.3, 0.7], ["original", "original"])
    assert (r.candidate, r.prompt, r.verifier, r.baseline) == (None, None, None, None)
    assert r.residual is None and r.residual_terms == []
    assert r.aeu == pytest.approx(0.5) and r.selected_utility == pytest.approx(0.7)
    assert r.sources == {} and r.intervals == {}


def test_route_state_fills_terms_a_request_cannot_measure() -> None:
    route = RouteRiskState()
    audit = report_for([0.1, 0.4, 0.8, 0.6, 0.2, 0.9], ["original", "cot"] * 3,
                       np.column_stack([[0.1, 0.4, 0.8, 0.6, 0.2, 0.9], [0.2, 0.3, 0.7, 0.9, 0.1, 0.8]]))
    route.observe(audit)
    assert route.count("prompt") == 1 and route.estimate("prompt") == pytest.approx(audit.prompt)
    small = report_for([0.3, 0.7], ["original", "original"], route=route)
    assert small.sources == {"candidate": "route", "prompt": "route", "verifier": "route"}
    assert small.candidate == pytest.approx(audit.candidate)
    assert small.baseline == pytest.approx(0.7 + audit.candidate - 0.5)
    assert small.residual_terms == ["candidate", "prompt", "verifier"]
    assert "residual" not in small.intervals and "baseline" in small.intervals
    route.observe(small)  # borrowed values never feed back
    assert route.count("candidate") == 1


def test_unscored_candidates_are_left_out() -> None:
    views = np.array([[0.2], [np.nan], [0.8], [0.6], [0.4]])
    r = assess([0.2, None, 0.8, 0.6, 0.4], ["original"] * 5, 2, views, np.ones(1), np.ones(5, bool),
               np.random.default_rng(0))
    assert r.aeu == pytest.approx(0.5)
    assert r.candidate == pytest.approx(candidate_term([0.2, 0.8, 0.6, 0.4]))


def test_module_defaults() -> None:
    assert risk.DEFAULT_K_REF == 64 and risk.DEFAULT_RESAMPLES == 200


# --- binary utilities: the posterior candidate term ------------------------------------------


def brute_posterior_miss(correct: int, n: int, k: int, grid: int = 20_001) -> float:
    """E[(1 − p)^k] under Beta(c + ½, n − c + ½) by quadrature, no Beta function involved.

    With p = sin²θ the Jeffreys posterior density times dp is ∝ sin^{2c}θ cos^{2(n−c)}θ dθ, which
    is smooth on [0, π/2] (the p^{−½} singularities are gone), so Simpson's rule is exact to ~1e-12.
    """
    theta = np.linspace(0.0, math.pi / 2, grid)
    density = np.sin(theta) ** (2 * correct) * np.cos(theta) ** (2 * (n - correct))
    simpson = np.ones(grid)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    integrand = density * np.cos(theta) ** (2 * k)
    return float((integrand @ simpson) / (density @ simpson))


@pytest.mark.parametrize("correct,n,k", [(0, 16, 64), (1, 16, 64), (5, 16, 16), (16, 16, 64), (0, 4, 256), (3, 8, 64)])
def test_posterior_miss_matches_numeric_integration(correct: int, n: int, k: int) -> None:
    assert risk.posterior_miss(correct, n, k) == pytest.approx(brute_posterior_miss(correct, n, k), rel=1e-9, abs=1e-15)


@given(st.integers(1, 40), st.data())
def test_posterior_miss_matches_the_exact_product(n: int, data: st.DataObject) -> None:
    # E[(1 − p)^k] = Π_{j<k} (β + j) / (α + β + j) for integer k, α = c + ½, β = n − c + ½
    correct = data.draw(st.integers(0, n))
    k = data.draw(st.integers(0, 300))
    alpha, beta = correct + 0.5, n - correct + 0.5
    exact = math.prod((beta + j) / (alpha + beta + j) for j in range(k))
    assert risk.posterior_miss(correct, n, k) == pytest.approx(exact, rel=1e-10)


def test_binary_candidate_term_is_the_posterior_mean_of_reu_kref_minus_reu_n() -> None:
    for correct in (0, 1, 7, 16):
        expected = brute_posterior_miss(correct, 16, 16) - brute_posterior_miss(correct, 16, 64)
        scores = [1.0] * correct + [0.0] * (16 - correct)
        assert candidate_term(scores, 64) == pytest.approx(expected, abs=1e-12)


def test_binary_candidate_term_is_calibrated_under_its_own_prior() -> None:
    # Law of total expectation: averaging the posterior mean over the Jeffreys beta-binomial
    # distribution of c gives the prior mean of the true C = (1 − p)^n − (1 − p)^Kref.
    n, k_ref = 16, 64
    log_b = risk._log_beta
    pmf = [math.comb(n, c) * math.exp(log_b(c + 0.5, n - c + 0.5) - log_b(0.5, 0.5)) for c in range(n + 1)]
    assert sum(pmf) == pytest.approx(1.0, abs=1e-12)
    averaged = sum(w * risk.binary_candidate_term(c, n, k_ref) for c, w in enumerate(pmf))
    prior_mean = brute_posterior_miss(0, 0, n) - brute_posterior_miss(0, 0, k_ref)
    assert averaged == pytest.approx(prior_mean, abs=1e-10)


def test_all_wrong_gives_a_positive_term_and_all_right_almost_none() -> None:
    all_wrong = candidate_term([0.0] * 16, 64)
    assert all_wrong is not None and 0.2 < all_wrong < 0.3  # 0.2599; §3 gives exactly 0 here
    all_right = candidate_term([1.0] * 16, 64)
    assert all_right is not None and 0.0 <= all_right < 1e-6
    assert candidate_term([0.0] * 16, 256) > all_wrong  # type: ignore[operator]  # more left past 64


def test_binary_candidate_term_is_zero_at_or_beyond_k_ref_and_unknown_below_four() -> None:
    assert candidate_term([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], k_ref=8) == 0.0
    assert candidate_term([0.0] * 16, k_ref=8) == 0.0
    assert candidate_term([0.0, 0.0, 1.0]) is None


def test_mixed_binary_term_no_longer_runs_away() -> None:
    # One right in 16: §3 sees D_n = 1/2, ρ = 1 and extrapolates Ĉ = 1/2 · 2 = 1.0.
    scores = [1.0] + [0.0] * 15
    trend = doubling(scores)
    assert trend is not None and trend.d_n * 2 == pytest.approx(1.0)
    assert candidate_term(scores, 64) == pytest.approx(risk.binary_candidate_term(1, 16, 64))
    assert 0.2 < candidate_term(scores, 64) < 0.3  # type: ignore[operator]


def test_non_binary_scores_keep_the_section_3_formula() -> None:
    s = [0.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0]  # one score strictly inside (0, 1)
    assert not is_binary(s) and is_binary([0.0, 1.0]) and not is_binary([])
    e8, e4, e2 = (brute_expected_max(s, k) for k in (8, 4, 2))
    d_n, d_half = e8 - e4, e4 - e2
    rho = min(max(d_n / d_half, 0), 1)
    expected = d_n * sum(rho**i for i in range(1, 4))  # log2(64 / 8) = 3 doublings
    assert candidate_term(s, 64) == pytest.approx(expected, abs=1e-12)
    assert candidate_term([0.5] * 8) == 0.0


def test_binary_report_takes_the_posterior_term_and_a_credible_interval() -> None:
    scores = [0.0] * 16
    r = report_for(scores, ["original"] * 16)
    assert r.candidate is not None
    assert r.candidate == pytest.approx(risk.binary_candidate_term(0, 16, 64))
    assert r.baseline == pytest.approx(0.0 + r.candidate - 0.0)  # Ê_n + Ĉ − AEU, as in §3
    lo, hi = r.intervals["candidate"]
    assert 0.0 <= lo < r.candidate < hi <= 1.0  # a bootstrap of 16 zeros would give one point
    mixed = report_for([1.0, 0.0, 0.0, 1.0] + [0.0] * 12, ["original"] * 16)
    assert mixed.candidate is not None
    assert mixed.baseline == pytest.approx(1.0 + mixed.candidate - 2 / 16)


def test_posterior_draws_average_to_the_closed_form() -> None:
    draws = risk._binary_posterior_draws(2, 16, 64, np.random.default_rng(0), 400_000)
    assert draws.mean() == pytest.approx(risk.binary_candidate_term(2, 16, 64), abs=2e-3)


# --- disagreement: candidates that disagree are never reported risk-free -----------------------


def _vote_report(answers: list[str], selected: int = 0) -> risk.RiskReport:
    shares = [answers.count(a) / len(answers) for a in answers]  # what self-consistency scores
    n = len(answers)
    views = np.array(shares, dtype=float).reshape(n, 1)
    return risk.assess(
        shares, ["original"] * n, selected, views, np.ones(1), np.ones(n, dtype=bool),
        np.random.default_rng(0), answers=answers,
    )


def test_eight_distinct_answers_have_risk_and_an_interval_wider_than_zero() -> None:
    report = _vote_report([f"answer {i}" for i in range(8)])
    assert report.residual is not None and report.residual > 0.05
    assert report.baseline is not None and report.baseline > 0.0
    low, high = report.intervals["residual"]
    assert high > low and low <= report.residual <= high
    assert "disagreement" in report.residual_terms and report.disagreement == report.residual


def test_more_agreement_means_less_disagreement_risk() -> None:
    split = _vote_report(["a", "b", "c", "d", "a", "b", "c", "d"]).disagreement
    lean = _vote_report(["a", "a", "a", "a", "a", "b", "c", "d"]).disagreement
    assert split is not None and lean is not None and lean < split


def test_serving_a_minority_answer_costs_more_than_serving_the_majority() -> None:
    answers = ["paris"] * 5 + ["31.5", "17942365", "lyon"]
    majority, minority = _vote_report(answers, 0).residual, _vote_report(answers, 5).residual
    assert majority is not None and minority is not None and minority > majority + 0.2


def test_unanimous_answers_add_no_floor() -> None:
    report = _vote_report(["7"] * 8)
    assert report.disagreement is None and "disagreement" not in report.residual_terms
    assert risk.disagreement_draws(["7"] * 8, 0, np.random.default_rng(0)) is None
