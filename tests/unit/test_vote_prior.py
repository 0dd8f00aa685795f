"""The learned vote prior (method §4.6): counts, buckets, the empirical-Bayes fit, the posterior."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.best_of_n.counts import EpochCounts
from strategies.best_of_n.prior import (
    GRID_SIZE,
    VotePrior,
    field_of,
    fit,
    leader_posterior,
    tally,
    tally_of,
)
from strategies.best_of_n.stopping import vote_posterior

UNIFORM = np.full(GRID_SIZE, 1.0 / GRID_SIZE)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def draws(rng: np.random.Generator, p_right: float, wrong: int, k: int) -> list[str]:
    """k answers: right with p_right, else one of `wrong` wrong answers."""
    return ["right" if rng.random() < p_right else f"wrong{rng.integers(wrong)}" for _ in range(k)]


def learned(p_right: float, wrong: int, k: int = 8, requests: int = 300) -> np.ndarray:
    rng = np.random.default_rng(7)
    histogram: dict[tuple[int, int, int], float] = {}
    for _ in range(requests):
        counts = tally(draws(rng, p_right, wrong, k))
        assert counts is not None
        histogram[counts] = histogram.get(counts, 0.0) + 1
    return fit(histogram)


def test_tally_keeps_leader_runner_up_and_the_rest() -> None:
    assert tally(["4", "4", "5", None, "6", "4", "7"]) == (3, 1, 2)
    assert tally(["x", "x"]) == (2, 0, 0)
    assert tally([None, None]) is None
    assert tally_of(field_of((3, 1, 2))) == (3, 1, 2)


@pytest.mark.parametrize("junk", ["", "1,2", "a,b,c", "1,2,3,4", "1,3,0", "0,0,0", "2,0,1", "-1,0,0"])
def test_a_field_this_module_did_not_write_is_ignored(junk: str) -> None:
    assert tally_of(junk) is None


def test_a_uniform_prior_is_close_to_the_beta_rule() -> None:
    # Blind to how easy the route is, the posterior is Adaptive-Consistency's Beta rule, up to the
    # grid: four unanimous votes are the 0.95 floor either way.
    for a in range(1, 8):
        assert leader_posterior(UNIFORM, (a, 0, 0)) == pytest.approx(vote_posterior(a, 0), abs=0.03)
    assert leader_posterior(UNIFORM, (3, 0, 0)) < 0.95 < leader_posterior(UNIFORM, (4, 0, 0))


@given(st.integers(1, 40), st.integers(0, 40), st.integers(0, 40))
def test_posterior_is_a_probability_that_rises_with_the_leader(c1: int, c2: int, r: int) -> None:
    c2 = min(c2, c1)
    r = r if c2 > 0 else 0
    value = leader_posterior(UNIFORM, (c1, c2, r))
    assert 0.0 <= value <= 1.0
    assert leader_posterior(UNIFORM, (c1 + 1, c2, r)) >= value - 1e-12


def test_two_agreeing_votes_prove_much_on_an_easy_route_and_little_on_a_hard_one() -> None:
    easy = learned(p_right=0.9, wrong=50)
    hard = learned(p_right=0.35, wrong=2)
    assert leader_posterior(easy, (2, 0, 0)) >= 0.99
    assert leader_posterior(hard, (2, 0, 0)) < 0.9
    assert leader_posterior(hard, (4, 0, 0)) < leader_posterior(easy, (2, 0, 0))


def test_the_fit_keeps_every_shape_possible() -> None:
    weights = fit({(8, 0, 0): 1000.0})
    assert weights.sum() == pytest.approx(1.0)
    assert weights.min() > 0  # a route that turns hard is not ruled out by its past
    assert leader_posterior(weights, (1, 1, 0)) == pytest.approx(0.5)


def test_the_prior_waits_for_enough_requests_then_refits_at_most_once_a_second() -> None:
    clock, ticks = Clock(), Clock(0.0)
    prior = VotePrior(min_requests=3, window_s=3600, clock=clock, monotonic=ticks)
    prior.observe(["7", "7", "7", "7"])
    prior.observe([None, None])  # nothing extractable: nothing to learn
    assert prior.posterior((2, 0, 0)) is None
    for _ in range(19):
        prior.observe(["7", "7", "7", "7"])
    confident = prior.posterior((2, 0, 0))  # short of min_requests it checked every time
    assert confident is not None and confident > 0.99
    assert prior.learned_from == 20
    prior.observe(["7", "8"])
    assert prior.posterior((2, 0, 0)) == confident  # a fit under a second old, on 5% less data
    ticks.now += 1.0
    assert prior.posterior((2, 0, 0)) < confident and prior.learned_from == 21  # type: ignore[operator]


def test_a_young_prior_refits_as_soon_as_its_data_grew_by_a_tenth() -> None:
    ticks = Clock(0.0)
    prior = VotePrior(min_requests=3, window_s=3600, monotonic=ticks)
    for _ in range(3):
        prior.observe(["7", "7", "7", "7"])
    assert prior.posterior((2, 0, 0)) is not None and prior.learned_from == 3
    prior.observe(["7", "8"])  # 4 ≥ 1.1 × 3: refit at once, though no time passed
    prior.posterior((2, 0, 0))
    assert prior.learned_from == 4


def test_counts_forget_buckets_older_than_one_window_before_the_current() -> None:
    clock = Clock(10_000.0)
    counts = EpochCounts(100.0, clock)
    counts.add("a")
    clock.now += 100.0
    counts.add("a", 2.0)
    assert counts.totals() == {"a": 3.0}
    assert sorted(counts.buckets()) == ["100", "101"]
    clock.now += 100.0
    assert counts.totals() == {"a": 2.0}  # the first window has passed
    counts.restore("100", {"a": 50.0})  # no longer live: ignored
    counts.restore("101", {"a": 5.0, "b": 1.0, "c": 0.0})
    assert counts.totals() == {"a": 5.0, "b": 1.0}


def test_a_window_that_passes_changes_the_counts_version() -> None:
    clock = Clock(10_000.0)
    counts = EpochCounts(100.0, clock)
    counts.add("a")
    seen = counts.version
    clock.now += 100.0
    assert counts.version == seen  # the bucket is still the previous one
    clock.now += 100.0
    assert counts.version != seen and counts.totals() == {}
