"""Gold-anchored estimates (strategies/risk/calibration.py) and gold checkers (strategies/risk/checkers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.risk.calibration import (
    COMPONENTS,
    Bias,
    GoldRecord,
    calibrate,
    classical,
    power_tuned_lambda,
    ppi_mean,
    status_of,
    verifier_bias,
)
from strategies.risk.intervals import wilson
from strategies.risk.checkers import CheckerError, build_checker, score


def record(served: float, best_served: float, one: float, every: float, mean_one: float, **online: float) -> GoldRecord:
    return GoldRecord("x", served, best_served, one, every, mean_one, online)


def test_the_gold_terms_add_up_to_the_gold_residual() -> None:
    r = record(0.0, 1.0, 0.5, 1.0, 0.25)
    assert r.truth("verifier") + r.truth("candidate") + r.truth("prompt") == r.truth("residual") == 1.0
    assert r.truth("baseline") == 0.75
    with pytest.raises(ValueError):
        r.truth("other")


def test_ppi_matches_the_formula_and_lambda_is_not_clipped() -> None:
    rng = np.random.default_rng(0)
    y_all = rng.binomial(1, 0.5, 5000).astype(float)
    f_all = 0.01 * y_all + rng.normal(0, 0.001, 5000)  # right order, squashed scale: λ ≈ 100
    y, f, traffic = y_all[:200], f_all[:200], f_all[200:]
    est = ppi_mean(y, f, traffic)
    assert est is not None and est.method == "ppi++"
    lam = power_tuned_lambda(y, f, traffic)
    assert lam > 50  # clipping to [0, 1] would throw this information away
    expected = lam * traffic.mean() + (y - lam * f).mean()
    assert est.estimate == pytest.approx(expected)
    gold_only = classical(y)
    assert est.high - est.low < 0.5 * (gold_only.high - gold_only.low)  # the surrogate buys width
    assert est.low <= y_all.mean() <= est.high


def test_small_gold_sets_fall_back_to_the_gold_mean() -> None:
    est = ppi_mean([1, 0, 1, 1], [0.1, 0.2, 0.1, 0.3], [0.1] * 100)
    assert est is not None and est.method == "wilson" and est.lam == 0.0
    assert est.estimate == 0.75 and (est.low, est.high) == pytest.approx(wilson(3, 4))
    assert ppi_mean([0.5, 0.25], [0, 0], [0] * 10, min_gold=30).method == "classical"  # type: ignore[union-attr]
    assert ppi_mean([], [], [0.1] * 10) is None
    assert ppi_mean([1.0] * 40, [0.0] * 40, []).method == "wilson"  # type: ignore[union-attr]  # no traffic


def test_wilson_is_sensible_at_the_edges() -> None:
    low, high = wilson(0, 10)
    assert low == 0.0 and 0.1 < high < 0.3
    low, high = wilson(10, 10)
    assert high == 1.0 and 0.7 < low < 0.9


def test_a_shared_bias_makes_the_status_uncalibrated_and_the_estimate_honest() -> None:
    """The embedded model's failure: the online residual says ~0 while half the value is lost."""
    rng = np.random.default_rng(1)
    gold = []
    for i in range(100):
        wrong = float(rng.random() < 0.5)
        gold.append(GoldRecord(f"g{i}", 1 - wrong, 1.0, 1.0, 1.0, 0.4, {"residual": 0.007, "verifier": 0.0}))
    traffic = [{"residual": 0.007, "verifier": 0.0}] * 500
    body = calibrate(gold, traffic)
    assert body["status"] == "uncalibrated"
    assert body["verifier_bias"]["ci95"][0] > 0.3
    low, high = body["residual"]["ci90"]
    truth = np.mean([g.truth("residual") for g in gold])
    assert low <= truth <= high and body["residual"]["estimate"] == pytest.approx(truth)
    assert body["n_gold"] == 100 and body["window_requests"] == 500


def test_an_unbiased_surrogate_is_calibrated_and_narrows_the_interval() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 6000)
    y = (rng.random(6000) < p).astype(float)
    gold = [GoldRecord(f"g{i}", 1 - y[i], 1, 1, 1, 0.5, {"residual": float(p[i])}) for i in range(3000)]
    traffic = [{"residual": float(v)} for v in p[3000:]]
    body = calibrate(gold, traffic)
    # 3,000 items pin the bias within ±0.03; 200 could not (a 95% half-width of 0.057: inconclusive)
    assert body["status"] == "calibrated"
    assert calibrate(gold[:200], traffic)["status"] == "inconclusive"
    assert body["rho"] > 0.4
    est = body["residual"]
    gold_only = classical(np.array([g.truth("residual") for g in gold]))
    assert est["ci90"][1] - est["ci90"][0] < gold_only.high - gold_only.low
    assert est["ci90"][0] <= p.mean() <= est["ci90"][1]


def test_without_gold_every_term_is_null() -> None:
    for gold in ([], [record(1, 1, 1, 1, 1)]):
        body = calibrate(gold, [{"residual": 0.1}])
        assert body["status"] == "no_gold"
        assert all(body[c] is None for c in COMPONENTS) and body["verifier_bias"] is None


def test_the_interval_covers_the_truth_at_its_nominal_rate() -> None:
    """200 gold/traffic splits of one biased world: the 90% interval covers the mean ≥ 85%."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        y = rng.binomial(1, 0.55, 2100).astype(float)
        f = np.clip(0.02 + 0.05 * y + rng.normal(0, 0.05, 2100), 0, None)  # biased low, correlated
        est = ppi_mean(y[:100], f[:100], f[100:])
        assert est is not None
        covered += est.low <= 0.55 <= est.high
    assert covered >= 170


def test_bias_needs_two_items() -> None:
    assert verifier_bias(np.array([1.0]), np.array([0.0])) is None
    bias = verifier_bias(np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0, 0.0]))
    assert bias is not None and bias.estimate == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("checker", "text", "answer", "expected"),
    [
        ("exact", "Paris.", "paris", 1.0),
        ("exact", "The answer is Paris", "Paris", 1.0),
        ("exact", "London", "Paris", 0.0),
        ("numeric", "2 + 3 = 5", "5", 1.0),
        ("numeric", "The answer is 1,000.", "1000", 1.0),
        ("numeric", "3 plus 4", "7", 0.0),
        ("numeric", "no number here", "7", 0.0),
        ("regex", "It is Bangkok, of course", "(?i)bangkok", 1.0),
        ("regex", "Chiang Mai", "(?i)bangkok", 0.0),
        ("choice", "I pick (B).", "B", 1.0),
        ("choice", "Answer: C", "b", 0.0),
    ],
)
def test_built_in_checkers(checker: str, text: str, answer: str, expected: float) -> None:
    assert score(build_checker(checker), text, {"answer": answer}) == expected


def test_a_failing_checker_is_an_error_never_a_zero() -> None:
    broken = build_checker("plugin:tests.plugin_verifier:broken_checker")
    with pytest.raises(CheckerError, match="RuntimeError"):
        score(broken, "42", {"answer": "42"})
    with pytest.raises(CheckerError, match="not a utility"):
        score(lambda text, item: 2.0, "42", {"answer": "42"})
    with pytest.raises(CheckerError, match="not a number"):
        score(build_checker("numeric"), "42", {"answer": "forty-two"})
    with pytest.raises(ValueError, match="unknown checker"):
        build_checker("fuzzy")


# ---- issue 20, item 1: inference over probe items, intervals that never collapse --------------


def polarized_gold(items: int, runs: int, rate: float, seed: int) -> list[GoldRecord]:
    """`items` probe items each always right or always wrong (a share `rate` wrong), each run
    `runs` times: the repeated records of one item carry no new information about the route."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(items) < rate
    return [
        GoldRecord(f"i{i}", 0.0 if wrong[i] else 1.0, 1.0, 1.0, 1.0, 0.5, {"residual": float(rng.normal(0.01, 0.005))})
        for _ in range(runs) for i in range(items)
    ]


def test_repeated_runs_of_an_item_count_once() -> None:
    traffic = [{"residual": 0.01}] * 1000
    cycled = calibrate(polarized_gold(100, 20, 0.5, 0), traffic)
    assert (cycled["n_items"], cycled["n_records"], cycled["n_gold"]) == (100, 2000, 100)
    once = calibrate(polarized_gold(100, 1, 0.5, 0), traffic)
    width = lambda body: body["residual"]["ci90"][1] - body["residual"]["ci90"][0]  # noqa: E731
    # 2,000 records of 100 items are worth 100 items: about ±0.08, not the ±0.018 of 2,000 draws
    assert width(cycled) == pytest.approx(width(once), rel=0.05)
    assert width(cycled) > 0.14
    assert cycled["residual"]["estimate"] == pytest.approx(once["residual"]["estimate"], abs=0.005)


def test_equal_gold_values_never_give_a_zero_width_interval() -> None:
    gold = [GoldRecord(f"i{i}", 1.0, 1.0, 1.0, 1.0, 1.0, {"residual": 0.0}) for i in range(30)]
    body = calibrate(gold, [{"residual": 0.0}] * 500)
    low, high = body["residual"]["ci90"]
    # Wilson's 0.083 at 0 of 30: a true rate of 1% stays inside
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(wilson(0, 30)[1])
    for estimate in ppi_mean([0.5] * 40, [0.5] * 40, [0.5] * 100), classical(np.array([0.25] * 40)):
        assert estimate is not None and estimate.high - estimate.low > 0


# ---- issue 20, item 2: a status with a tolerance ------------------------------------------------


def gap_gold(items: int, wrong_rate: float, online: float, seed: int = 0) -> list[GoldRecord]:
    rng = np.random.default_rng(seed)
    return [GoldRecord(f"i{i}", float(rng.random() >= wrong_rate), 1.0, 1.0, 1.0, 0.5, {"residual": online})
            for i in range(items)]


def test_a_negligible_bias_reads_calibrated_not_uncalibrated() -> None:
    """Issue 20: an online residual off by 6e-6 made the route `uncalibrated` for ever."""
    body = calibrate(gap_gold(2000, 0.0, 6e-6), [{"residual": 6e-6}] * 100)
    assert body["status"] == "calibrated" and body["tolerance"] == 0.03
    low, high = body["verifier_bias"]["ci95"]
    assert low < 0 < high and high - low > 1e-3  # Wilson's width at 0 of 2,000, not a sliver


def test_the_status_is_inconclusive_until_the_items_can_tell() -> None:
    assert calibrate(gap_gold(5, 0.0, 0.0), [])["status"] == "inconclusive"
    assert calibrate(gap_gold(1, 0.0, 0.0), [])["status"] == "no_gold"
    assert calibrate(gap_gold(400, 0.0, 0.0), [])["status"] == "calibrated"


def test_the_tolerance_is_the_routes_to_choose() -> None:
    gold = gap_gold(3000, 0.08, 0.0, seed=1)  # the online residual misses 8 points of 100
    assert calibrate(gold, [], tolerance=0.03)["status"] == "uncalibrated"
    assert calibrate(gold, [], tolerance=0.15)["status"] == "calibrated"
    assert calibrate(gold[:30], [], tolerance=0.03)["status"] == "inconclusive"
    assert status_of(None) == "no_gold"
    assert status_of(Bias(0.0, -0.01, 0.04), 0.03) == "inconclusive"
    assert status_of(Bias(-0.1, -0.2, -0.05), 0.03) == "uncalibrated"


def test_a_gold_record_keeps_an_online_estimate_past_1() -> None:
    """The online baseline extrapolates past 1; such a record was skipped when read back."""
    record = GoldRecord("a", 1.0, 1.0, 1.0, 1.0, 0.5, {"baseline": 1.17, "residual": 0.02})
    assert GoldRecord.from_dict(record.as_dict()) == record
    with pytest.raises(ValueError):
        GoldRecord.from_dict({**record.as_dict(), "online": {"baseline": 1e308}})
