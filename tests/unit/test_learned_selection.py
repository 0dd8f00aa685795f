"""Learned selection, the pure parts: AUROC, the logistic fit, the selector, cluster features,
the cluster choice, the few-shot variants and the settings."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from strategies.answers import answer_key
from strategies.best_of_n.settings import BestOfNSettings
from strategies.best_of_n.variants import build_variants
from strategies.contract import Candidate, Scored
from strategies.selection.choice import choose
from strategies.selection.clusters import NO_ANSWER, build_clusters, shot_answers, token_confidence
from strategies.selection.learned import (
    ClusterRow,
    LearnedSelector,
    NotFittable,
    SelectorState,
    auroc,
    fit_logistic,
    fit_selector,
    rank_clusters,
)
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import VerifierResult, select


def test_auroc_counts_pairs_and_ties() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([0.1, math.nan, 0.9], [False, True, True]) == 1.0  # NaN rows are left out
    assert auroc([0.1, 0.2], [True, True]) is None


def test_the_logistic_fit_is_the_penalised_optimum() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    y = (rng.random(300) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))).astype(float)
    w, b = fit_logistic(x, y, l2=1.0)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.allclose(x.T @ (p - y) + 1.0 * w, 0.0, atol=1e-6)  # gradient of the penalised loss
    assert abs(float((p - y).sum())) < 1e-6  # the intercept is not penalised
    assert w[0] > 1.0 and w[1] < -0.4 and abs(w[2]) < 0.3
    strong, _ = fit_logistic(x, y, l2=1000.0)
    assert np.abs(strong).sum() < np.abs(w).sum() / 3


def rows(items: int = 150, seed: int = 0) -> list[ClusterRow]:
    """Four clusters per item, the first right 70% of the time; `good` tells them apart,
    `copied` marks wrong ones, `noise` knows nothing."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(items):
        for c in range(4):
            right = c == 0 and rng.random() < 0.7
            out.append(ClusterRow(f"i{i}", {
                "good": rng.normal(1.5 if right else 0.0, 1.0),
                "copied": float(not right and rng.random() < 0.6),
                "noise": rng.normal(),
                "vote_share": 0.25,
            }, right))
    return out


def test_the_selector_keeps_informative_signals_either_way_and_drops_chance() -> None:
    model = fit_selector(rows())
    # vote_share is at chance here (every cluster 0.25) and still kept: the vote is always weighed
    assert set(model.signals) == {"good", "copied", "vote_share"}
    assert set(model.dropped) == {"noise"}
    weights = dict(zip(model.signals, model.weights, strict=True))
    assert weights["good"] > 0 and weights["copied"] < 0  # AUROC below 0.5 is kept, with its sign
    assert model.auroc["copied"] is not None and model.auroc["copied"] < 0.45
    assert model.l2 in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert model.cv_accuracy is not None and model.cv_accuracy > 0.5
    right = model.probability({"good": 2.0, "copied": 0.0})
    assert right > model.probability({"good": 2.0, "copied": 1.0})
    assert right > model.probability({"good": 2.0})  # a missing signal counts as the training mean
    assert LearnedSelector.from_dict(model.as_dict()) == model


def test_the_selector_says_why_it_cannot_fit() -> None:
    with pytest.raises(NotFittable, match="no probe clusters"):
        fit_selector([])
    with pytest.raises(NotFittable, match="all 2 probe clusters are wrong"):
        fit_selector([ClusterRow("a", {"x": 1.0}, False), ClusterRow("b", {"x": 0.0}, False)])
    flat = [ClusterRow(f"i{i}", {"x": 1.0}, i % 2 == 0) for i in range(20)]
    with pytest.raises(NotFittable, match="no signal reaches probe AUROC 0.55"):
        fit_selector(flat)


def candidate(i: int, text: str, variant: str = "original", logprobs: list[float] | None = None) -> Candidate:
    return Candidate(i, variant, {"role": "assistant", "content": text}, "stop", logprobs)


SHOTS = [
    {"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "2"},
    {"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7"},
    {"role": "user", "content": "What is 2 plus 3?"},
]


def test_clusters_carry_votes_variants_shots_confidence_and_verifier_means() -> None:
    cands = [
        candidate(0, "7", "original", [-0.1, -0.1]),
        candidate(1, "7", "original", [-0.1, -2.0]),
        candidate(2, "5", "shuffle_shots", [-0.5]),
        candidate(3, "The answer is 7", "shuffle_shots"),
        candidate(4, "no idea"),
    ]
    judge = VerifierResult("judge", 1.0, Scored(views={"judge:yes": [0.2, 0.4, 0.9, None, 0.1]}))
    selection = select(cands, [judge])
    clusters = build_clusters(cands, answer_key, selection.matrix, selection.ranking, SHOTS)
    assert [c.key for c in clusters] == ["7", "5", NO_ANSWER]
    seven, five, none = clusters
    assert seven.members == (0, 1, 3) and seven.representative == 1  # the judge's favourite of them
    assert seven.features["vote_share"] == pytest.approx(3 / 5)
    assert seven.features["variant_support"] == 1.0 and five.features["variant_support"] == 0.5
    assert seven.features["copied_shot"] == 1.0 and five.features["copied_shot"] == 0.0
    assert seven.features["v:judge"] == pytest.approx(0.3)  # missing scores are skipped
    assert five.features["conf_mean"] == pytest.approx(math.exp(-0.5))
    assert seven.features["conf_low"] == pytest.approx((math.exp(-0.1) + math.exp(-1.05)) / 2)
    assert math.isnan(none.features["conf_mean"])
    assert seven.features["format_ok"] == 1.0
    assert not none.answered
    assert shot_answers(SHOTS, answer_key) == {"2", "7"}


def test_token_confidence_is_the_mean_and_the_weakest_window() -> None:
    mean, low = token_confidence([-0.1] * 10 + [-3.0] * 8 + [-0.1] * 10, window=8)
    assert low == pytest.approx(math.exp(-3.0))
    assert mean == pytest.approx(math.exp((-0.1 * 20 - 24.0) / 28))
    assert all(math.isnan(v) for v in token_confidence(None))


def model_preferring_small_clusters() -> LearnedSelector:
    return LearnedSelector(
        signals=("vote_share",), center=(0.5,), scale=(0.25,), weights=(-3.0,), bias=0.0, l2=1.0,
        auroc={"vote_share": 0.2}, n_items=50, n_clusters=120, cv_log_loss=0.5,
    )


def test_learned_choice_serves_the_most_likely_cluster_and_reports_its_probability() -> None:
    cands = [candidate(0, "7"), candidate(1, "7"), candidate(2, "7"), candidate(3, "5")]
    votes = VerifierResult("votes", 1.0, Scored(views={"votes": [0.75, 0.75, 0.75, 0.25]}))
    selection = select(cands, [votes])
    learned = SelectionSettings(mode="learned")
    chosen, choice = choose(cands, selection, SHOTS, answer_key, learned, lambda: SelectorState(model_preferring_small_clusters()))
    assert selection.index in (0, 1, 2) and chosen.index == 3
    assert choice.mode == "learned" and choice.confidence == pytest.approx(1 / (1 + math.exp(-3.0)))
    report = choice.report(chosen.index)
    assert report["chosen_cluster"] == 1 and report["model"]["weights"] == {"vote_share": -3.0}
    assert [row["size"] for row in choice.training_rows()] == [3, 1]

    same, fallback = choose(cands, selection, SHOTS, answer_key, learned, lambda: SelectorState(None, "3 of 50 probe items"))
    assert same.index == selection.index
    assert fallback.mode == "weighted" and fallback.fallback_reason == "3 of 50 probe items" and fallback.confidence is None
    _, weighted = choose(cands, selection, SHOTS, answer_key, SelectionSettings(), None)
    assert weighted.mode == "weighted" and weighted.fallback_reason is None


def test_a_hard_verifiers_veto_outranks_the_model() -> None:
    best, _ = rank_clusters([{"vote_share": 0.25}, {"vote_share": 0.75}], [False, True], model_preferring_small_clusters())
    assert best == 1


def test_few_shot_variants_reorder_or_drop_the_requests_own_examples() -> None:
    three = [{"role": "system", "content": "S"}, *SHOTS[:4], {"role": "user", "content": "q3"},
             {"role": "assistant", "content": "3"}, {"role": "user", "content": "Q"}]
    variants = build_variants(["original", "shuffle_shots", "shuffle_shots_2", "resample_shots"], None)
    rendered = {v.name: asyncio.run(v.render(three, None))[0] for v in variants}  # type: ignore[arg-type]
    pairs = {(m["content"], n["content"]) for m, n in zip(three[1:7:2], three[2:7:2], strict=True)}
    for name in ("shuffle_shots", "shuffle_shots_2"):
        out = rendered[name]
        assert out[0] == three[0] and out[-1] == three[-1] and len(out) == len(three)
        assert {(m["content"], n["content"]) for m, n in zip(out[1:7:2], out[2:7:2], strict=True)} == pairs
        assert out != three
    assert len(rendered["resample_shots"]) == len(three) - 2
    again = asyncio.run(variants[1].render(three, None))[0]  # type: ignore[arg-type]
    assert again == rendered["shuffle_shots"]  # the name fixes the order
    one_shot = [SHOTS[0], SHOTS[1], SHOTS[4]]
    assert asyncio.run(variants[1].render(one_shot, None))[0] == one_shot  # type: ignore[arg-type]


def test_selection_settings_are_checked() -> None:
    assert BestOfNSettings().selection.mode == "weighted"
    with pytest.raises(ValidationError, match="needs mode `learned`"):
        SelectionSettings(min_confidence=0.5, abstain_message="no")
    with pytest.raises(ValidationError, match="exactly one of"):
        SelectionSettings(mode="learned", min_confidence=0.5)
    with pytest.raises(ValidationError, match="need `min_confidence`"):
        SelectionSettings(mode="learned", abstain_message="no")
    with pytest.raises(ValueError, match="built-in variant name"):
        build_variants([{"name": "shuffle_shots_3", "system": "x"}], None)


def test_a_fallback_route_must_be_another_route() -> None:
    from proxy.config.settings import ConfigError, parse_config

    def config(fallback: str) -> dict[str, object]:
        selection = {"mode": "learned", "min_confidence": 0.5, "fallback_route": fallback}
        return {
            "upstreams": [{"name": "u", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9"}}],
            "routes": [{"model": "a", "upstream": "u", "strategy": {"name": "best_of_n", "selection": selection}},
                       {"model": "b", "upstream": "u"}],
        }

    assert parse_config(config("b")).routes[0].strategy.selection.fallback_route == "b"  # type: ignore[union-attr]
    for bad in ("a", "nowhere"):
        with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.selection\.fallback_route: .* is not another route"):
            parse_config(config(bad))


def test_the_knockout_gate_needs_enough_pairs_and_both_orders() -> None:
    from strategies.selection.knockout import gate

    assert gate([{"ab": True, "ba": True}] * 3, min_pairs=4, min_accuracy=0.6).reason == "3 of 4 judged probe pairs so far"
    biased = gate([{"ab": True, "ba": False}] * 10, min_pairs=4, min_accuracy=0.6)
    assert not biased.enabled and biased.accuracy_ab == 1.0 and biased.accuracy_ba == 0.0
    good = gate([{"ab": True, "ba": True}] * 7 + [{"ab": False, "ba": True}] * 3, min_pairs=4, min_accuracy=0.6)
    assert good.enabled and good.accuracy_ab == pytest.approx(0.7) and good.reason is None


def test_a_comparison_the_budget_refused_is_no_miss_and_no_played_match() -> None:
    """The knockout gate's flake (about one probe pair in a hundred judged wrong by a judge that
    is never wrong): near an hour's end the probe budget refused judge calls, and each refusal
    counted as a miss. A refused call is never a verdict."""
    from strategies.contract import BudgetExhausted, Reply, Usage, VerifyContext
    from strategies.selection.knockout import match, measure_pairs
    from strategies.verifiers import build_verifiers

    class Budgeted:
        def __init__(self, calls: int) -> None:
            self.calls = calls

        async def chat(self, upstream: str, messages: object, **params: object) -> Reply:
            if self.calls == 0:
                raise BudgetExhausted("spent")
            self.calls -= 1
            return Reply("Verdict: A", Usage(10, 2))  # slot A: right first, as the wrong pair is shown

    (judge,) = build_verifiers([{"type": "llm_judge", "upstream": "j", "mode": "pairwise", "templates": []}])
    right, wrong = (Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(["42", "41"]))
    for calls, judged in ((4, 2), (3, 1), (1, 0)):
        ctx = VerifyContext([{"role": "user", "content": "6*7?"}], Budgeted(calls))  # type: ignore[arg-type]
        pairs, usage = asyncio.run(measure_pairs(judge, ctx, right, [wrong, wrong]))
        assert len(pairs) == judged and usage.total_tokens == 12 * min(calls, 4)
    ctx = VerifyContext([{"role": "user", "content": "6*7?"}], Budgeted(1))  # type: ignore[arg-type]
    upset, usage = asyncio.run(match(judge, ctx, right, wrong))
    assert upset is False and usage.total_tokens == 12


def test_a_route_refits_from_its_gold_clusters_and_keeps_the_model(tmp_path: Path) -> None:
    from proxy.config.probe_set import ProbeSettings
    from proxy.probes.calibration import RouteCalibration
    from proxy.probes.selection import RouteSelection
    from strategies.risk.calibration import GoldRecord

    probes = ProbeSettings(file=tmp_path / "unused.jsonl")
    calibration = RouteCalibration("r/1", probes, tmp_path / "probes")
    settings = SelectionSettings(mode="learned", min_items=20)
    selection = RouteSelection("r/1", settings, calibration, tmp_path)
    assert selection.state().reason == "0 of 20 probe items with cluster data so far"
    training = rows(items=30)
    for i in range(0, len(training), 4):  # one gold record per item, with its four clusters
        clusters = tuple({"features": dict(r.features), "size": 1, "correct": r.correct} for r in training[i : i + 4])
        calibration.add_gold(GoldRecord(f"i{i}", 1.0, 1.0, 1.0, 1.0, 0.5, {}, time=float(i), clusters=clusters))
    selection._checked = -math.inf  # the once-a-second check, now
    assert selection.state().model is None  # the refit runs in the fit helper: not waited for
    state = selection.wait(timeout=60)
    assert state.model is not None and "good" in state.model.signals and state.reason is None
    restarted = RouteSelection("r/1", settings, RouteCalibration("r/1", probes, tmp_path / "other"), tmp_path)
    assert restarted._state.model == state.model  # read back from state_dir/selection/r%2F1.json


def test_the_probe_table_shows_each_signals_auroc_and_weight() -> None:
    from proxy.probes.command import selection_table

    text = selection_table(SelectorState(fit_selector(rows())), "learned")
    signal_rows = text.split("\n\n")[0].splitlines()[3:]  # the signal table; the confidence's follows
    lines = {line.split()[0]: line.split()[1:] for line in signal_rows}
    assert lines["good"][1].startswith("+") and lines["copied"][1].startswith("-")
    assert lines["noise"][1] == "dropped" and float(lines["noise"][0]) > 0.4
    assert "held-out top-cluster accuracy" in text
    assert "none yet: 3 of 50" in selection_table(SelectorState(None, "3 of 50 probe items"), "learned")
