"""Ensemble selection: weights, normalization, gates, missing views, ties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from strategies.contract import Candidate, Scored
from strategies.selection.weighted import (
    VerifierResult,
    build_view_matrix,
    canonical_answer,
    ensemble_mean,
    normalize_per_verifier,
    select,
)


def texts(*contents: str) -> list[Candidate]:
    return [Candidate(i, "original", {"role": "assistant", "content": c}) for i, c in enumerate(contents)]


def tool_candidate(i: int, name: str, args: dict) -> Candidate:
    call = {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return Candidate(i, "original", {"role": "assistant", "content": None, "tool_calls": [call]})


def soft(name: str, weight: float = 1.0, **views: list[float | None]) -> VerifierResult:
    return VerifierResult(name, weight, Scored(views=dict(views)))


def hard(name: str, values: list[float | None]) -> VerifierResult:
    return VerifierResult(name, 1.0, Scored(views={"check": values}, hard=True))


def test_weighted_mean_and_argmax() -> None:
    sel = select(texts("a", "b", "c"), [soft("judge", 1.0, v=[0.2, 0.9, 0.5]),
                                         soft("rm", 3.0, v=[0.8, 0.1, 0.6])])
    assert sel.utilities == pytest.approx([(0.2 + 2.4) / 4, (0.9 + 0.3) / 4, (0.5 + 1.8) / 4])
    # normalized: judge [0, 1, 3/7], rm [1, 0, 5/7] → weighted [0.75, 0.25, ~0.643]
    assert sel.index == 0 and sel.selected_utility == pytest.approx(0.65)


def test_a_verifiers_weight_is_split_over_its_views() -> None:
    matrix = build_view_matrix([soft("judge", 2.0, ab=[0.1, 0.9], ba=[0.3, 0.7]), soft("rm", 1.0, v=[0.5, 0.6])], 2)
    assert matrix.names == ("judge:ab", "judge:ba", "rm:v")
    np.testing.assert_allclose(matrix.weights, [1.0, 1.0, 1.0])


def test_views_already_named_for_their_verifier_keep_their_name() -> None:
    matrix = build_view_matrix([soft("sc", sc=[0.1, 0.9]), soft("judge", **{"judge:ab": [0.3, 0.7]})], 2)
    assert matrix.names == ("sc", "judge:ab")


def test_missing_is_skipped_not_zero() -> None:
    # candidate 1 has no judge score; read as 0 it would lose, skipped it wins on the rm
    sel = select(texts("a", "b"), [soft("judge", v=[0.6, None]), soft("rm", v=[0.5, 0.9])])
    assert sel.utilities[1] == pytest.approx(0.9)
    assert sel.index == 1


def test_a_verifier_with_equal_scores_contributes_nothing_to_the_choice() -> None:
    base = [soft("rm", v=[0.3, 0.6, 0.5])]
    flat = base + [soft("judge", 5.0, v=[0.7, 0.7, 0.7])]
    assert select(texts("a", "b", "c"), flat).index == select(texts("a", "b", "c"), base).index == 1
    normalized = normalize_per_verifier(build_view_matrix(flat, 3))
    assert np.isnan(normalized[:, 1]).all()


def test_hard_constraint_disqualifies_zeros_unless_everyone_fails() -> None:
    results = [soft("rm", v=[0.9, 0.4, 0.6]), hard("schema", [0.0, 1.0, 1.0])]
    sel = select(texts("a", "b", "c"), results)
    assert sel.index == 2 and sel.utilities[0] == 0.0
    everyone_fails = [soft("rm", v=[0.9, 0.4, 0.6]), hard("schema", [0.0, 0.0, 0.0])]
    assert select(texts("a", "b", "c"), everyone_fails).index == 0
    unknown_gate = [soft("rm", v=[0.9, 0.4, 0.6]), hard("schema", [None, 0.0, 1.0])]
    assert select(texts("a", "b", "c"), unknown_gate).index == 0  # missing never disqualifies


def test_hard_views_are_gates_not_scores() -> None:
    matrix = build_view_matrix([soft("rm", v=[0.9, 0.4]), hard("schema", [1.0, 1.0])], 2)
    assert matrix.width == 1 and matrix.eligible.all()


def test_ties_go_to_consensus() -> None:
    candidates = texts("the answer is 5", "it is 7", "answer is 5", "the answer is 5 indeed")
    sel = select(candidates, [soft("rm", v=[0.5, 0.9, 0.9, 0.2])])
    assert sel.index == 2 and sel.tie_broken


def test_a_selection_keeps_what_it_chose_among_so_the_response_can_show_it() -> None:
    candidates = texts("the answer is 5", "it is 7", "answer is 5", "the answer is 5 indeed")
    tie = select(candidates, [soft("rm", v=[0.5, 0.9, 0.9, 0.2])])
    assert tie.ranked and tie.tied == (1, 2) and tie.support is not None
    assert tie.support[2] > tie.support[1]  # consensus broke the tie, and its numbers are kept
    clear = select(candidates, [soft("rm", v=[0.5, 0.9, 0.3, 0.2])])
    assert clear.tied == (1,) and clear.support is None
    unranked = select(texts("x is 3", "x is 4", "x is 3"), [])
    assert not unranked.ranked and unranked.tied == (0, 1, 2)


def test_no_verifier_falls_back_to_consensus() -> None:
    sel = select(texts("x is 3", "x is 4", "x is 3"), [])
    assert sel.index in (0, 2) and sel.selected_utility is None


def test_tool_call_ties_compare_canonical_arguments() -> None:
    candidates = [
        tool_candidate(0, "weather", {"city": "Paris", "unit": "C"}),
        tool_candidate(1, "weather", {"city": "Rome"}),
        tool_candidate(2, "weather", {"unit": "C", "city": "Paris"}),  # same call, other key order
    ]
    assert canonical_answer(candidates[0]) == canonical_answer(candidates[2])
    sel = select(candidates, [soft("rm", v=[0.5, 0.8, 0.8])])
    assert sel.index == 2


def test_ensemble_mean_all_missing_row_is_nan() -> None:
    out = ensemble_mean(np.array([[np.nan, np.nan], [0.2, np.nan]]), np.array([1.0, 2.0]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.2)


scores = st.lists(st.floats(0, 1), min_size=2, max_size=8)


@given(scores, st.data())
def test_selected_has_the_best_ranking_key(judge: list[float], data: st.DataObject) -> None:
    rm = data.draw(st.lists(st.floats(0, 1), min_size=len(judge), max_size=len(judge)))
    sel = select(texts(*[f"t{i}" for i in range(len(judge))]), [soft("judge", v=judge), soft("rm", v=rm)])
    ranking = sel.ranking[~np.isnan(sel.ranking)]
    if len(ranking):
        assert sel.ranking[sel.index] >= ranking.max() - 1e-9


@given(scores, st.floats(0.01, 1.0), st.floats(0.0, 0.5))
def test_choice_is_invariant_to_an_affine_rescaling_of_a_verifier(judge: list[float], scale: float, shift: float) -> None:
    shifted = [s * scale + shift for s in judge]
    assume(max(shifted) <= 1.0)
    cands = texts(*[f"t{i}" for i in range(len(judge))])
    assert select(cands, [soft("judge", v=judge)]).index == select(cands, [soft("judge", v=shifted)]).index


@given(scores)
def test_a_view_missing_everywhere_changes_nothing(judge: list[float]) -> None:
    cands = texts(*[f"t{i}" for i in range(len(judge))])
    with_gap = [soft("judge", v=judge), soft("broken", v=[None] * len(judge))]
    plain = [soft("judge", v=judge)]
    a, b = select(cands, with_gap), select(cands, plain)
    assert a.index == b.index
    np.testing.assert_allclose(a.utilities, b.utilities)


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=8), scores)
def test_a_disqualified_candidate_is_never_chosen_while_another_passes(gate: list[float], rm: list[float]) -> None:
    n = min(len(gate), len(rm))
    gate, rm = gate[:n], rm[:n]
    sel = select(texts(*[f"t{i}" for i in range(n)]), [soft("rm", v=rm), hard("schema", gate)])
    if any(g == 1.0 for g in gate):
        assert gate[sel.index] == 1.0


def test_an_unscored_candidate_never_beats_a_scored_one_when_scores_tie() -> None:
    # Seen on the embedded model: two candidates with the same vote share, six unextractable;
    # with no ordering among the scored, consensus over all eight picked an unscored one.
    texts = ["4 + 2 + 3", "2 + 3 = 5", "2 + 3", "2 + 3", "2 + 3", "the answer is 5", "2 + 3", "2 + 3"]
    candidates = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(texts)]
    views = {"v": [None, 1.0, None, None, None, 1.0, None, None]}
    chosen = select(candidates, [VerifierResult("sc", 1.0, Scored(views))])
    assert chosen.index in (1, 5)


def test_with_nothing_scored_consensus_still_chooses() -> None:
    candidates = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(["a", "b", "b"])]
    chosen = select(candidates, [VerifierResult("sc", 1.0, Scored({"v": [None, None, None]}))])
    assert chosen.index in (1, 2) and chosen.selected_utility is None
