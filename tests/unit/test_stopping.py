"""Stop rules (method §4): exact posterior, order of rules, caps."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.best_of_n.settings import StopSettings
from strategies.best_of_n.stopping import (
    Caps,
    Evidence,
    cap_reached,
    decide,
    good_enough,
    no_gain,
    regularized_beta_half,
    top_two_counts,
    verifier_first,
    vote_confident,
    vote_posterior,
)
from strategies.contract import StopReason
from strategies.risk.estimators import doubling

counts = st.integers(0, 60)


def numeric_beta_half(a: int, b: int) -> float:
    """I_0.5(a, b) by integrating the Beta density (Simpson on a fine grid)."""
    x = np.linspace(0.0, 1.0, 20_001)
    density = x ** (a - 1) * (1 - x) ** (b - 1)
    half = x <= 0.5
    simpson = lambda y, xs: (xs[1] - xs[0]) / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
    return simpson(density[half], x[half]) / simpson(density, x)


@pytest.mark.parametrize("a,b", [(1, 1), (2, 1), (1, 3), (5, 1), (4, 4), (7, 3), (3, 9)])
def test_incomplete_beta_matches_numeric_integration(a: int, b: int) -> None:
    assert float(regularized_beta_half(a, b)) == pytest.approx(numeric_beta_half(a, b), abs=1e-9)


@given(st.integers(1, 80), st.integers(1, 80))
def test_incomplete_beta_symmetry_at_one_half(a: int, b: int) -> None:
    assert regularized_beta_half(a, b) + regularized_beta_half(b, a) == 1


def test_four_unanimous_votes_give_0969() -> None:
    assert vote_posterior(4, 0) == pytest.approx(31 / 32)
    assert round(vote_posterior(4, 0), 3) == 0.969
    assert vote_posterior(3, 0) == pytest.approx(15 / 16)  # three are not enough at 0.95
    assert regularized_beta_half(5, 1) == Fraction(1, 32)
    assert vote_posterior(2, 2) == pytest.approx(0.5)


@given(counts, counts)
def test_posterior_rises_with_the_leader_and_falls_with_the_runner_up(a: int, b: int) -> None:
    assert vote_posterior(a + 1, b) >= vote_posterior(a, b)
    assert vote_posterior(a, b + 1) <= vote_posterior(a, b)
    assert 0.0 <= vote_posterior(a, b) <= 1.0


def test_posterior_handles_hundreds_of_votes() -> None:
    assert vote_posterior(300, 200) > 0.99999
    assert vote_posterior(250, 250) == pytest.approx(0.5)


def test_top_two_ignores_unextractable_answers() -> None:
    assert top_two_counts(["4", "4", None, "5", "4", None]) == (3, 1)
    assert top_two_counts([None, None]) == (0, 0)
    assert not vote_confident([None] * 10, 0.95)
    assert vote_confident(["x"] * 4 + [None] * 3, 0.95)


def test_small_rules() -> None:
    assert no_gain(0.005, 0.01) and not no_gain(0.02, 0.01) and not no_gain(None, 0.01)
    assert good_enough(0.9, 0.8) and not good_enough(0.7, 0.8) and not good_enough(0.9, None)
    assert not good_enough(None, 0.5)
    assert verifier_first(0.2, 0.1) and not verifier_first(0.1, 0.1) and not verifier_first(None, 0.1)


def test_caps() -> None:
    assert cap_reached(Caps(n=8, max_n=8)) is StopReason.MAX_N
    assert cap_reached(Caps(n=4, max_n=8)) is None
    assert cap_reached(Caps(n=4, max_n=8, tokens_used=90, token_budget=100, tokens_per_candidate=20)) \
        is StopReason.TOKEN_BUDGET
    assert cap_reached(Caps(n=4, max_n=8, tokens_used=60, token_budget=100, tokens_per_candidate=20)) is None
    assert cap_reached(Caps(n=4, max_n=8, elapsed_s=2.0, deadline_s=1.5)) is StopReason.DEADLINE


ROOMY = Caps(n=4, max_n=64)
DEFAULTS = StopSettings()


def test_rules_apply_in_the_documented_order() -> None:
    flat = [0.9] * 4  # zero predicted gain
    everything = Evidence(answers=["a"] * 4, utilities=flat, selected_utility=0.99, verifier_term=0.5)
    tau = StopSettings(good_enough=0.5)
    assert decide(tau, everything, Caps(n=4, max_n=4)).stop is StopReason.VOTE_CONFIDENT
    unextractable = Evidence(answers=None, utilities=flat, selected_utility=0.99)
    assert decide(tau, unextractable, ROOMY).stop is StopReason.NO_GAIN
    split_vote = Evidence(answers=["a", "b", "c", "d"], utilities=flat, selected_utility=0.99)
    assert decide(tau, split_vote, ROOMY).stop is StopReason.GOOD_ENOUGH
    rising = [0.1, 0.3, 0.6, 0.95]
    assert decide(tau, Evidence(utilities=rising, selected_utility=0.95), ROOMY).stop is StopReason.GOOD_ENOUGH
    assert decide(DEFAULTS, Evidence(utilities=rising, selected_utility=0.95), ROOMY).stop is None
    assert decide(DEFAULTS, Evidence(utilities=rising), Caps(n=4, max_n=4)).stop is StopReason.MAX_N


def test_verifier_first_when_views_disagree_more_than_sampling_gains() -> None:
    rising = [0.1, 0.3, 0.6, 0.95]
    trend = doubling(rising)
    assert trend is not None
    loud = Evidence(utilities=rising, verifier_term=trend.d_n + 0.01)
    quiet = Evidence(utilities=rising, verifier_term=trend.d_n - 0.01)
    assert decide(DEFAULTS, loud, ROOMY) == decide(DEFAULTS, loud, ROOMY)
    assert decide(DEFAULTS, loud, ROOMY).verify_first and decide(DEFAULTS, loud, ROOMY).stop is None
    assert not decide(DEFAULTS, quiet, ROOMY).verify_first
    assert not decide(StopSettings(verifier_first=False), loud, ROOMY).verify_first
    capped = decide(DEFAULTS, loud, Caps(n=4, max_n=4))
    assert capped.stop is StopReason.MAX_N and not capped.verify_first


def test_fixed_n_obeys_only_the_caps() -> None:
    evidence = Evidence(answers=["a"] * 8, utilities=[0.5] * 8, selected_utility=1.0)
    assert decide(StopSettings(good_enough=0.1), evidence, Caps(n=6, max_n=8), adaptive=False).stop is None
    assert decide(DEFAULTS, evidence, Caps(n=8, max_n=8), adaptive=False).stop is StopReason.MAX_N


@given(st.integers(1, 64), st.integers(1, 64), st.lists(st.sampled_from("abc"), max_size=64))
def test_a_cap_reached_always_stops(n: int, max_n: int, answers: list[str]) -> None:
    decision = decide(DEFAULTS, Evidence(answers=answers), Caps(n=n, max_n=max_n))
    if n >= max_n:
        assert decision.stop is not None
    if decision.stop is None:
        assert n < max_n


@given(st.lists(st.floats(0, 1), min_size=4, max_size=32), st.floats(0, 0.2), st.floats(0, 0.2))
def test_no_gain_is_monotone_in_epsilon(scores: list[float], low: float, high: float) -> None:
    low, high = sorted((low, high))
    stops = [decide(StopSettings(min_gain=e), Evidence(utilities=scores), ROOMY).stop is StopReason.NO_GAIN
             for e in (low, high)]
    assert stops[0] <= stops[1]  # a stop at a stricter ε is also a stop at a looser one


def test_split_vote_keeps_sampling_instead_of_reading_a_flat_curve() -> None:
    # Four different answers: vote shares are all 0.25, so the scored-candidate rule would see
    # no gain; while answers are extractable only the vote (or a cap) may stop.
    evidence = Evidence(answers=["1", "2", "3", "4"], utilities=[0.25] * 4, selected_utility=0.25)
    decision = decide(StopSettings(), evidence, Caps(n=4, max_n=16))
    assert decision.stop is None
    unscored = Evidence(answers=[None, None, None, "4"], utilities=[0.25] * 4, selected_utility=0.25)
    assert decide(StopSettings(), unscored, Caps(n=4, max_n=16)).stop is StopReason.NO_GAIN


def test_all_wrong_binary_scores_keep_sampling_and_all_right_stop() -> None:
    from strategies.best_of_n.stopping import next_doubling_gain

    assert next_doubling_gain([0.0] * 4) > 0.05  # nothing right yet: the next doubling may find one
    assert next_doubling_gain([1.0] * 8) < 0.01
    assert decide(StopSettings(), Evidence(utilities=[0.0] * 4), Caps(n=4, max_n=16)).stop is None
    assert decide(StopSettings(), Evidence(utilities=[1.0] * 8), Caps(n=8, max_n=16)).stop is StopReason.NO_GAIN
    assert next_doubling_gain([0.2, 0.4, 0.6, 0.9]) == doubling([0.2, 0.4, 0.6, 0.9]).predicted_gain
