"""The safety gate of learned selection (strategies/selection/safety.py, issue 20 item 4): the
model serves only while the probes show it no worse than weighted selection by more than a
margin; otherwise weighted serves, and `rvr.selection` says why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from proxy.config.probe_set import ProbeSettings
from proxy.probes.calibration import RouteCalibration
from proxy.probes.jobs import FitRequest, fit_of
from proxy.probes.runner import measure
from proxy.probes.selection import RouteSelection
from proxy.telemetry import metrics
from strategies.answers import answer_key
from strategies.contract import Candidate, Outcome, Scored, StopReason, Usage
from strategies.risk.calibration import GoldRecord
from strategies.selection.choice import choose
from strategies.selection.explain import explain
from strategies.selection.learned import ClusterRow, LearnedSelector, SelectorState, fit_selector
from strategies.selection.safety import HeldOut, paired_difference, safety_gate
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import VerifierResult, select


def test_the_paired_interval_stays_open_when_the_selectors_always_agree() -> None:
    difference, low, high = paired_difference(0, 0, 50)
    assert difference == 0 and low < 0 < high  # 50 agreements cannot rule out a 2-point loss
    assert low < -0.02
    assert paired_difference(0, 0, 200)[1] > -0.02  # 200 can
    difference, low, high = paired_difference(30, 5, 100)
    assert difference == pytest.approx(0.25) and 0.1 < low < 0.25 < high


def test_the_gate_opens_only_where_a_loss_beyond_the_margin_is_ruled_out() -> None:
    better = safety_gate(HeldOut(100, 20, 3, 0.6, 0.43), margin=0.02)
    assert better.serves and better.reason is None and better.state == "open"
    worse = safety_gate(HeldOut(100, 2, 15, 0.3, 0.43), margin=0.02)
    assert not worse.serves and worse.state == "closed"
    assert "0.300 against weighted selection's 0.430 on 100 probe items" in (worse.reason or "")
    # a generous margin lets a model within it serve
    assert safety_gate(HeldOut(100, 2, 4, 0.41, 0.43), margin=0.15).serves
    unmeasured = safety_gate(None, margin=0.02)
    assert not unmeasured.serves and "no held-out comparison" in (unmeasured.reason or "")


def noisy_rows(items: int, seed: int) -> list[ClusterRow]:
    """Weighted selection picks the right cluster of 8 in 9 items of 10; the model sees only
    noise (and a flat vote), so on held-out items it does worse than weighted selection."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(items):
        right = int(rng.integers(4))
        weighted = right if rng.random() < 0.9 else (right + 1) % 4
        for c in range(4):
            features = {f"noise{k}": float(rng.normal()) for k in range(8)} | {"vote_share": 0.25}
            rows.append(ClusterRow(f"i{i}", features, c == right, weighted=c == weighted))
    return rows


def test_a_fit_measures_the_model_against_weighted_selection_held_out() -> None:
    model = fit_selector(noisy_rows(80, 0))
    held = model.held_out
    assert held is not None and held.items == 80
    assert held.weighted == pytest.approx(0.9, abs=0.06)
    assert held.learned < held.weighted and held.losses > held.wins
    assert not safety_gate(held, 0.02).serves
    assert "vote_share" in model.signals  # the vote is always a feature, at chance or not
    assert LearnedSelector.from_dict(model.as_dict()).held_out == held


def test_records_without_the_weighted_mark_compare_with_the_largest_cluster() -> None:
    rows = [
        ClusterRow("a", {"vote_share": 0.75, "x": 0.0}, False), ClusterRow("a", {"vote_share": 0.25, "x": 1.0}, True),
        ClusterRow("b", {"vote_share": 0.75, "x": 0.0}, True), ClusterRow("b", {"vote_share": 0.25, "x": 1.0}, False),
    ] * 3
    rows = [ClusterRow(f"{r.item}{k // 4}", r.features, r.correct) for k, r in enumerate(rows)]
    held = fit_selector(rows).held_out
    assert held is not None and held.weighted == pytest.approx(0.5)


VOTES = VerifierResult("votes", 1.0, Scored(views={"votes": [0.75, 0.75, 0.75, 0.25]}))
CANDIDATES = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate("7775")]


def model_preferring_small_clusters(held: HeldOut | None) -> LearnedSelector:
    return LearnedSelector(
        signals=("vote_share",), center=(0.5,), scale=(0.25,), weights=(-3.0,), bias=0.0, l2=1.0,
        auroc={"vote_share": 0.2}, n_items=50, n_clusters=120, cv_log_loss=0.5, held_out=held,
    )


def test_a_closed_gate_serves_the_weighted_choice_and_says_why() -> None:
    selection = select(CANDIDATES, [VOTES])
    model = model_preferring_small_clusters(HeldOut(60, 1, 12, 0.25, 0.44))
    state = SelectorState(model, safety=safety_gate(model.held_out, 0.02))
    chosen, choice = choose(CANDIDATES, selection, [], answer_key, SelectionSettings(mode="learned"), lambda: state)
    assert chosen.index == selection.index in (0, 1, 2)  # the majority, not the model's 1/4 cluster
    assert choice.mode == "weighted" and choice.confidence is None
    assert choice.fallback_reason == state.safety.reason  # type: ignore[union-attr]
    assert choice.report(chosen.index)["gate"]["serves"] is False
    explained = explain(chosen, choice, None, ["votes"]).as_dict()
    assert explained["rule"] == "vote"  # the weighted rule, as the weighted choice was served

    state = SelectorState(model, safety=safety_gate(HeldOut(60, 15, 1, 0.6, 0.37), 0.02))
    chosen, choice = choose(CANDIDATES, selection, [], answer_key, SelectionSettings(mode="learned"), lambda: state)
    assert choice.mode == "learned" and chosen.index == 3 and choice.fallback_reason is None


def test_the_weighted_choice_is_marked_in_the_training_rows_and_kept_by_the_probe() -> None:
    selection = select(CANDIDATES, [VOTES])
    model = model_preferring_small_clusters(HeldOut(60, 15, 1, 0.6, 0.37))
    chosen, choice = choose(CANDIDATES, selection, [], answer_key, SelectionSettings(mode="learned"),
                            lambda: SelectorState(model, safety=safety_gate(model.held_out, 0.02)))
    rows = choice.training_rows()
    assert [row.get("weighted", False) for row in rows] == [True, False]  # weighted chose "7", learned "5"
    outcome = Outcome(candidates=CANDIDATES, selected=chosen.index, stop_reason=StopReason.MAX_N, usage=Usage(),
                      strategy="best_of_n", clusters=rows)
    record = measure("q", 1.0, outcome, CANDIDATES, lambda c: 1.0 if c.text == "5" else 0.0)
    assert [c.get("weighted", False) for c in record.clusters] == [True, False]
    assert [c["correct"] for c in record.clusters] == [False, True]
    assert GoldRecord.from_dict(record.as_dict()).clusters == record.clusters


def gold_records(rows: list[ClusterRow]) -> list[GoldRecord]:
    by_item: dict[str, list[ClusterRow]] = {}
    for row in rows:
        by_item.setdefault(row.item, []).append(row)
    return [
        GoldRecord(item, 1.0, 1.0, 1.0, 1.0, 0.5, {}, time=float(k), clusters=tuple(
            {"features": dict(r.features), "size": 1, "correct": r.correct,
             **({"weighted": True} if r.weighted else {})}
            for r in members
        ))
        for k, (item, members) in enumerate(by_item.items())
    ]


def test_a_route_whose_model_loses_to_weighted_serves_weighted_and_exports_the_gate(tmp_path: Path) -> None:
    result = fit_of(gold_records(noisy_rows(80, 1)), FitRequest(min_items=50, max_rows=6000, margin=0.02))
    assert result.model is not None and result.safety is not None and not result.safety.serves

    calibration = RouteCalibration("gated", ProbeSettings(file=tmp_path / "p.jsonl"), None)
    for record in gold_records(noisy_rows(80, 1)):
        calibration.add_gold(record)
    selection = RouteSelection("gated", SelectionSettings(mode="learned", min_items=50), calibration, tmp_path)
    state = selection.wait()
    assert state.model is not None and state.safety is not None and not state.safety.serves

    def gate(name: str) -> float:
        return metrics.SELECTION_GATE.labels("gated", name)._value.get()  # type: ignore[attr-defined]

    assert (gate("open"), gate("closed"), gate("no_model")) == (0.0, 1.0, 0.0)
    assert not math.isnan(state.safety.low or math.nan)


def test_runs_of_one_item_count_once_in_the_comparison() -> None:
    once = noisy_rows(60, 2)
    repeated = [ClusterRow(r.item, r.features, r.correct, r.weighted, run=str(k)) for k in range(4) for r in once]
    held = fit_selector(repeated).held_out
    assert held is not None and held.items == 60  # not 240 runs: a run repeats its item's difficulty
