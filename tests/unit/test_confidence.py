"""`rvr.confidence` as P(the served answer is right): one distribution over a request's clusters,
cross-fitted and recalibrated (strategies/selection/confidence.py, issue 20 item 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxy.probes.command import selection_table
from strategies.answers import answer_key
from strategies.contract import Candidate, Scored
from strategies.selection.choice import choose
from strategies.selection.confidence import Recalibration, fit_recalibration, reliability
from strategies.selection.learned import ClusterRow, LearnedSelector, SelectorState, fit_selector
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import VerifierResult, select


def test_a_distribution_over_clusters_and_none_sums_to_1() -> None:
    probs, p_none = Recalibration(0.8, 0.3).distribution([2.0, -1.0, 0.5])
    assert float(probs.sum()) + p_none == pytest.approx(1.0)
    assert list(np.argsort(-probs)) == [0, 2, 1]  # the selector's order stands
    assert Recalibration(1.0, 0.0).distribution([])[1] == 1.0  # no cluster: none is right


def test_the_recalibration_recovers_the_scale_and_the_none_score() -> None:
    rng = np.random.default_rng(0)
    truth = Recalibration(0.6, 0.8)
    runs = []
    for _ in range(3000):
        z = rng.normal(0, 2, int(rng.integers(1, 5)))
        probs, p_none = truth.distribution(z)
        pick = rng.choice(len(z) + 1, p=np.append(probs, p_none))
        runs.append((z, np.arange(len(z)) == pick))
    fitted = fit_recalibration(runs)
    assert fitted.scale == pytest.approx(0.6, abs=0.06) and fitted.none == pytest.approx(0.8, abs=0.15)


def test_reliability_bins_confidence_against_accuracy() -> None:
    measured = reliability([0.05, 0.15, 0.95, 0.91, 0.99], [False, False, True, True, False])
    assert measured.n == 5 and len(measured.bins) == 10
    top = measured.bins[9]
    assert top[2] == 3 and top[3] == pytest.approx((0.95 + 0.91 + 0.99) / 3) and top[4] == pytest.approx(2 / 3)
    expected = (1 * 0.05 + 1 * 0.15 + 3 * abs(2 / 3 - (0.95 + 0.91 + 0.99) / 3)) / 5
    assert measured.ece == pytest.approx(expected)


def rows(items: int, seed: int) -> list[ClusterRow]:
    """Clusters whose `judge` score tells the right one; a fifth of the items have none right."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(items):
        k = int(rng.integers(2, 5))
        right = int(rng.integers(k)) if rng.random() < 0.8 else None
        for j in range(k):
            out.append(ClusterRow(f"i{i}", {"judge": float(rng.normal(1.0 if j == right else 0.0, 1.0)),
                                            "vote_share": 1 / k}, j == right))
    return out


def test_a_fit_recalibrates_its_held_out_logits_and_measures_its_reliability() -> None:
    model = fit_selector(rows(300, 1))
    assert model.recalibration is not None and model.reliability is not None
    assert model.reliability.n == 300 and 0 <= model.reliability.ece < 0.15
    assert LearnedSelector.from_dict(model.as_dict()) == model
    probabilities, p_none = model.distribution([{"judge": 2.0, "vote_share": 0.5}, {"judge": 0.0, "vote_share": 0.5}])
    assert p_none is not None and sum(probabilities) + p_none == pytest.approx(1.0)


def test_the_served_confidence_is_the_chosen_clusters_share_of_the_distribution() -> None:
    model = fit_selector(rows(200, 2))
    cands = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate("7775")]
    votes = VerifierResult("votes", 1.0, Scored(views={"votes": [0.75, 0.75, 0.75, 0.25]}))
    judge = VerifierResult("judge", 1.0, Scored(views={"judge": [0.1, 0.2, 0.1, 0.9]}))
    _, choice = choose(cands, select(cands, [votes, judge]), [], answer_key, SelectionSettings(mode="learned"),
                       lambda: SelectorState(model))
    assert choice.probabilities is not None and choice.p_none is not None
    assert sum(choice.probabilities) + choice.p_none == pytest.approx(1.0)
    chosen = next(j for j, c in enumerate(choice.clusters) if c.representative in choice.clusters[j].members
                  and choice.probabilities[j] == max(choice.probabilities))
    assert choice.confidence == choice.probabilities[chosen]
    assert choice.report(choice.clusters[chosen].representative)["p_none"] == choice.p_none


def test_the_probe_table_prints_the_reliability_table_and_the_ece() -> None:
    model = fit_selector(rows(200, 3))
    text = selection_table(SelectorState(model), "learned")
    assert "expected calibration error" in text and f"{model.reliability.ece:.3f}" in text  # type: ignore[union-attr]
    assert "confidence" in text and "accuracy" in text
    rows_shown = [line for line in text.splitlines() if line.strip().startswith("[0.")]
    assert rows_shown and all(len(line.split()) >= 4 for line in rows_shown)
    assert not math.isnan(model.reliability.ece)  # type: ignore[union-attr]
