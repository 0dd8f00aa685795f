"""`rvr.selection` explains the choice: the rule, the numbers it compared, and why a higher `s̄` lost.

Issue 25: with a judge beside the vote, `scores` [0.25, 0.625, 0.25, 0.625] came with `selected: 0`
and nothing said why. The properties below hold for every rule: the chosen entry is the maximum of
what the rule says it compared, a tie names the support that decided it, and every candidate whose
`s̄` beats the served one is named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.server.responses import rvr_body
from strategies.answers import answer_key
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings
from strategies.contract import (
    Batch,
    Candidate,
    Message,
    Outcome,
    Sample,
    Scored,
    StopReason,
    StrategyRequest,
    Usage,
    Verifier,
    VerifyContext,
)
from strategies.selection.choice import Choice, choose
from strategies.selection.explain import EXPLANATION_FIELDS, RULES, abstained, explain, knockout_rounds
from strategies.selection.knockout import tournament
from strategies.selection.learned import LearnedSelector, SelectorState
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import TIE_TOLERANCE, Selection, VerifierResult, select

MESSAGES: list[Message] = [{"role": "user", "content": "What is 6 * 7?"}]
EXACT_RULES = ("consensus", "learned", "knockout")  # compare exactly; the ranking key within TIE_TOLERANCE


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(i, "original", {"role": "assistant", "content": t}, "stop") for i, t in enumerate(texts)]


def soft(name: str, weight: float = 1.0, **views: Sequence[float | None]) -> VerifierResult:
    return VerifierResult(name, weight, Scored(views={k: list(v) for k, v in views.items()}))


def assert_explains(explanation: Mapping[str, Any], selected: int, scores: Sequence[float | None]) -> None:
    """What a reader of `rvr` can check with the numbers alone."""
    assert set(EXPLANATION_FIELDS) <= set(explanation) and explanation["rule"] in RULES
    # `scores` and `selected` never contradict unexplained: every candidate with a higher s̄ is named.
    served = scores[selected]
    higher = [i for i, s in enumerate(scores) if s is not None and (served is None or s > served + TIE_TOLERANCE)]
    assert explanation["higher_scores"] == higher
    for i in higher:
        assert f"#{i}" in explanation["why"]
    compared, chosen, tie = explanation["compared"], explanation["chosen"], explanation["tie_break"]
    if explanation["rule"] == "single":  # nothing to compare: the one candidate, or the one no gate excluded
        assert compared[chosen] == scores[selected] and tie is None and chosen == selected
        assert all(v is None for i, v in enumerate(compared) if i != chosen)
        assert len(scores) == 1 or len(explanation["disqualified"]) == len(scores) - 1
        return
    assert compared[chosen] is not None
    present = [v for v in compared if v is not None]
    slack = 0.0 if explanation["rule"] in EXACT_RULES else TIE_TOLERANCE
    top = [i for i, v in enumerate(compared) if v is not None and v >= max(present) - slack]
    assert chosen in top  # the chosen entry is the maximum of what was compared
    if tie is None:
        assert top == [chosen]
    else:
        assert tie["tied"] == top
        support = tie["support"]
        if support is None:  # position alone: the earliest
            assert chosen == top[0]
        else:  # the most support, then the earliest
            assert chosen == max(top, key=lambda i: (support[top.index(i)], -i))
    if explanation["over"] == "candidates":
        assert chosen == selected and explanation["members"] is None
    else:
        assert selected in explanation["members"][chosen]
        assert sorted(m for ms in explanation["members"] for m in ms) == list(range(len(scores)))
    assert selected not in explanation["disqualified"] or len(explanation["disqualified"]) == len(scores)


# ---- the case of issue 25 ------------------------------------------------------------------------

ISSUE_TEXTS = ("The answer is 42.", "The answer is 41.", "The answer is 42.", "The answer is 40.")
ISSUE_VIEWS = [  # a vote (shares 2/4, 1/4) and a judge that prefers the two lone answers, in two templates
    soft("self_consistency", self_consistency=[0.5, 0.25, 0.5, 0.25]),
    soft("llm_judge", **{f"llm_judge:{t}": [0.0, 1.0, 0.0, 1.0] for t in ("rubric_10", "correctness_yesno")}),
]


def test_the_issue_case_says_the_key_tied_and_consensus_chose() -> None:
    cands = candidates(*ISSUE_TEXTS)
    selection = select(cands, ISSUE_VIEWS)
    # The report of issue 25, reproduced: s̄ favours #1 and #3, the served answer is #0.
    assert selection.utility_list() == [0.25, 0.625, 0.25, 0.625] and selection.index == 0
    choice = Choice("weighted", [])
    explanation = explain(selection, choice, None, ["self_consistency"]).as_dict()
    assert explanation["rule"] == "score"  # the judge had a say too: not a vote
    assert explanation["compared"] == [0.5, 0.5, 0.5, 0.5]  # per verifier min-max: each pulls by its weight
    assert explanation["tie_break"]["by"] == "consensus" and explanation["tie_break"]["tied"] == [0, 1, 2, 3]
    support = explanation["tie_break"]["support"]
    assert support[0] == support[2] > support[1] == support[3]  # the two alike answers agree most
    assert explanation["higher_scores"] == [1, 3]
    assert "tie on the ranking key" in explanation["why"] and "consensus chose #0" in explanation["why"]
    assert_explains(explanation, selection.index, selection.utility_list())


@dataclass
class Votes(Verifier):
    """Vote shares by final number, like self-consistency."""

    name: str = "self_consistency"
    extracts_answers: bool = True

    def answer_of(self, candidate: Candidate, question: str | None = None) -> str | None:
        return candidate.text.split()[-1].strip(".")

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        answers = [self.answer_of(c) for c in candidates]
        return Scored({self.name: [answers.count(a) / len(answers) for a in answers]})


@dataclass
class Judge(Verifier):
    """A judge that dislikes 42, in two templates."""

    name: str = "llm_judge"

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        values: list[float | None] = [0.0 if "42" in c.text else 1.0 for c in candidates]
        return Scored({f"{self.name}:rubric_10": values, f"{self.name}:correctness_yesno": list(values)})


class Script:
    """generate() answers the issue's four candidates in order."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts, self.next = list(texts), 0

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        samples = [Sample({"role": "assistant", "content": self.texts[self.next + k]}, "stop") for k in range(n)]
        self.next += n
        return Batch(samples, Usage(n, n))


def test_the_issue_case_through_the_loop_and_the_response() -> None:
    settings = BestOfNSettings(max_n=4, adaptive=False)
    strategy = BestOfN(settings, [Votes(), Judge()], BestOfN.build(settings).variants,
                       rng=lambda: np.random.default_rng(0))
    outcome = asyncio.run(strategy.run(StrategyRequest(MESSAGES), Script(ISSUE_TEXTS)))  # type: ignore[arg-type]
    assert outcome.scores == [0.25, 0.625, 0.25, 0.625] and outcome.selected == 0
    assert outcome.selection is not None
    for details in (False, True):  # the explanation needs no candidate texts
        rvr = rvr_body(outcome, "judged", details)
        shown = rvr["selection"]
        assert {k: shown[k] for k in EXPLANATION_FIELDS} == {k: outcome.selection[k] for k in EXPLANATION_FIELDS}
        assert_explains(shown, rvr["selected"], rvr["scores"])
        assert shown["rule"] == "score" and shown["higher_scores"] == [1, 3]
        assert ("clusters" in shown) is details  # the answers stay behind `details`
        assert "#0 chosen by score (a tie broken by consensus)" in rvr["summary"]


def test_only_the_vote_ordering_the_candidates_is_a_vote() -> None:
    cands = candidates(*ISSUE_TEXTS)
    flat_judge = soft("llm_judge", v=[0.7, 0.7, 0.7, 0.7])  # no ordering to offer: left out of the key
    selection = select(cands, [ISSUE_VIEWS[0], flat_judge])
    explanation = explain(selection, Choice("weighted", []), None, ["self_consistency"]).as_dict()
    assert explanation["rule"] == "vote" and explanation["compared"] == [1.0, 0.0, 1.0, 0.0]
    assert explanation["tie_break"]["tied"] == [0, 2]  # the two members of the largest cluster
    assert explanation["higher_scores"] == []
    assert_explains(explanation, selection.index, selection.utility_list())


def test_one_candidate_is_single() -> None:
    selection = select(candidates("42"), [soft("rm", v=[0.3])])
    explanation = explain(selection, Choice("weighted", []), None, []).as_dict()
    assert explanation["rule"] == "single" and explanation["compared"] == [0.3] and explanation["chosen"] == 0


def test_with_nothing_ordering_the_candidates_consensus_says_so() -> None:
    selection = select(candidates("x is 3", "x is 4", "x is 3"), [])
    explanation = explain(selection, Choice("weighted", []), None, []).as_dict()
    assert explanation["rule"] == "consensus" and explanation["compared"][1] < explanation["compared"][0]
    assert explanation["tie_break"] == {"by": "position", "tied": [0, 2], "support": None}
    assert_explains(explanation, selection.index, selection.utility_list())


def test_a_disqualified_candidate_is_not_compared() -> None:
    gate = VerifierResult("schema", 1.0, Scored({"check": [0.0, 1.0, 1.0]}, hard=True))
    results = [soft("rm", v=[0.9, 0.4, 0.6]), gate]
    selection = select(candidates("a", "b", "c"), results)
    explanation = explain(selection, Choice("weighted", []), None, []).as_dict()
    assert explanation["compared"][0] is None and explanation["disqualified"] == [0] and explanation["chosen"] == 2
    assert_explains(explanation, selection.index, selection.utility_list())


def test_an_abstention_keeps_the_numbers_and_says_what_fell_short() -> None:
    explanation = explain(select(candidates(*ISSUE_TEXTS), ISSUE_VIEWS), Choice("weighted", []), None, []).as_dict()
    held = abstained(explanation, 0.31, 0.5)
    assert held["rule"] == "abstain" and held["compared"] == explanation["compared"]
    assert "0.310, below min_confidence 0.5" in held["why"] and "chosen by score" in held["why"]
    outcome = Outcome(candidates(*ISSUE_TEXTS), 0, StopReason.MAX_N, Usage(), "best_of_n", scores=[0.25] * 4,
                      selection={"mode": "learned", "fallback_reason": None, "confidence": 0.31, **explanation})
    outcome.abstention = Candidate(4, "abstain", {"role": "assistant", "content": "Not sure."}, "stop")
    outcome.low_confidence = {"confidence": 0.31, "min_confidence": 0.5, "action": "abstain"}
    assert rvr_body(outcome, "careful", False)["selection"]["rule"] == "abstain"


# ---- properties: each rule's choice is the maximum of what it says it compared ---------------------

ANSWERS = st.sampled_from(["4", "5", "7", "the answer is 4", "it is 5"])
MAYBE = st.one_of(st.none(), st.floats(0, 1), st.sampled_from([0.0, 0.25, 0.5, 1.0]))


@st.composite
def requests(draw: st.DrawFn, min_size: int = 1) -> tuple[list[Candidate], list[VerifierResult], list[str]]:
    """Candidates, 0-3 soft verifiers (one of them maybe a vote) and maybe a hard gate."""
    texts = draw(st.lists(ANSWERS, min_size=min_size, max_size=8))
    n = len(texts)
    results: list[VerifierResult] = []
    voters: list[str] = []
    if draw(st.booleans()):  # a vote: the share of each candidate's answer
        results.append(soft("votes", draw(st.floats(0.1, 3)), votes=[texts.count(t) / n for t in texts]))
        voters.append("votes")
    for k in range(draw(st.integers(0, 2))):
        views = {f"v{j}": draw(st.lists(MAYBE, min_size=n, max_size=n)) for j in range(draw(st.integers(1, 2)))}
        results.append(soft(f"judge{k}", draw(st.floats(0.1, 3)), **views))
    if draw(st.booleans()):
        gate = draw(st.lists(st.sampled_from([0.0, 1.0, None]), min_size=n, max_size=n))
        results.append(VerifierResult("gate", 1.0, Scored({"check": gate}, hard=True)))
    return candidates(*texts), results, voters


@given(requests())
@settings(max_examples=300, deadline=None)
def test_the_weighted_choice_is_the_maximum_of_what_it_compared(
    request: tuple[list[Candidate], list[VerifierResult], list[str]],
) -> None:
    cands, results, voters = request
    selection = select(cands, results)
    explanation = explain(selection, Choice("weighted", []), None, voters).as_dict()
    assert explanation["rule"] in ("vote", "score", "consensus", "single")
    assert_explains(explanation, selection.index, selection.utility_list())


def model(weight: float, bias: float) -> LearnedSelector:
    return LearnedSelector(
        signals=("vote_share",), center=(0.5,), scale=(0.25,), weights=(weight,), bias=bias, l2=1.0,
        auroc={"vote_share": 0.5}, n_items=50, n_clusters=100, cv_log_loss=0.5,
    )


@given(requests(min_size=2), st.sampled_from([-3.0, 0.0, 2.0]), st.floats(-2, 2))
@settings(max_examples=200, deadline=None)
def test_the_learned_choice_is_the_most_probable_cluster_it_compared(
    request: tuple[list[Candidate], list[VerifierResult], list[str]], weight: float, bias: float,
) -> None:
    cands, results, voters = request
    selection, choice = choose(cands, select(cands, results), MESSAGES, answer_key, SelectionSettings(mode="learned"),
                               lambda: SelectorState(model(weight, bias)))
    explanation = explain(selection, choice, None, voters).as_dict()
    assert explanation["rule"] == ("learned" if choice.mode == "learned" else explanation["rule"])
    assert_explains(explanation, selection.index, selection.utility_list())
    if choice.mode == "learned" and weight == 0.0 and len(choice.clusters) > 1:
        admissible = [v for v in explanation["compared"] if v is not None]
        if len(admissible) > 1:  # every P equal: the vote share decides, and the explanation says so
            assert explanation["tie_break"]["by"] == "vote_share"


@dataclass
class ScriptedJudge(Verifier):
    """Pairwise verdicts from a list, in order ('a', 'b', 'tie' or None)."""

    verdicts: list[str | None]
    name: str = "judge"
    judges_pairs: bool = True

    async def compare(self, ctx: VerifyContext, first: Candidate, second: Candidate) -> tuple[str | None, Usage]:
        return (self.verdicts.pop(0) if self.verdicts else None), Usage()


@given(requests(min_size=2), st.lists(st.sampled_from(["a", "b", "tie", None]), max_size=16))
@settings(max_examples=200, deadline=None)
def test_the_knockout_winner_is_the_only_seed_that_advanced_through_every_round(
    request: tuple[list[Candidate], list[VerifierResult], list[str]], verdicts: list[str | None],
) -> None:
    cands, results, voters = request
    selection, choice = choose(cands, select(cands, results), MESSAGES, answer_key, SelectionSettings(), None)
    eligible = selection.matrix.eligible  # as the loop seeds: answered clusters no gate excluded
    seeds = [j for j, c in enumerate(choice.clusters) if c.answered and eligible[c.representative]][:4]
    if len(seeds) < 2:
        return
    ctx = VerifyContext(MESSAGES, None)  # type: ignore[arg-type]
    reps = [cands[choice.clusters[j].representative] for j in seeds]
    winner, matches, _ = asyncio.run(tournament(ScriptedJudge(list(verdicts)), ctx, reps))
    report = {"played": True, "seeds": seeds, "matches": matches, "winner_cluster": seeds[winner]}
    served: Selection = replace(selection, index=choice.clusters[seeds[winner]].representative)
    explanation = explain(served, choice, report, voters).as_dict()
    assert explanation["rule"] == "knockout" and explanation["chosen"] == seeds[winner]
    assert_explains(explanation, served.index, served.utility_list())


@pytest.mark.parametrize(("seeds", "verdicts", "rounds"), [
    (2, ["a", "b"], [0, 1]),  # the challenger wins both orders
    (3, ["a", "a", "a", "b"], [1, 0, 2]),  # a split keeps seed 0; seed 2 advances on a bye, then wins
    (4, [None] * 6, [2, 0, 1, 0]),  # failed verdicts: the higher seeds hold
])
def test_knockout_rounds_count_byes_and_stop_at_the_loss(
    seeds: int, verdicts: list[str | None], rounds: list[int],
) -> None:
    cands = candidates(*[str(i) for i in range(seeds)])
    ctx = VerifyContext(MESSAGES, None)  # type: ignore[arg-type]
    _, matches, _ = asyncio.run(tournament(ScriptedJudge(list(verdicts)), ctx, cands))
    assert knockout_rounds(seeds, matches) == rounds
