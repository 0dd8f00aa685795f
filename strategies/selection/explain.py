"""Why the served answer was chosen, in numbers a reader can check (`rvr.selection`).

`rvr.scores` are the utilities `s̄` (method §2.3), which the risk terms need; the answer is
chosen by something else: the per-verifier normalized ranking key, a consensus among equals, a
learned P(correct) per answer cluster, or a knockout tournament. Reported side by side without
saying which, `scores` [0.25, 0.625, 0.25, 0.625] with `selected: 0` reads as a contradiction
(it was a four-way tie on the ranking key, broken by consensus). So every best_of_n response
names its `rule` and gives the very numbers that rule compared:

* `compared[j]` per candidate (`over: candidates`) or per answer cluster (`over: clusters`,
  with `members`); null where an entry could not be chosen (disqualified by a hard verifier,
  unscored, not seeded);
* `chosen` is an index into `compared`, and `compared[chosen]` is its maximum (under `single`,
  where nothing was compared, it may be null: an unscored lone candidate). Where several
  entries are within `TIE_TOLERANCE` of it, `tie_break` lists them and the number that decided
  (`support`: consensus with all candidates, or a cluster's vote share), the earliest winning
  equal support;
* `higher_scores` lists the candidates whose `s̄` beats the served one's, and `why` says in
  words why they lost, so `scores` and `selected` never contradict each other unexplained.

`RULES` is the fixed vocabulary; `fusion` marks an answer a fuser wrote from the strongest
distinct answers (strategies/best_of_n/fusing.py `Fuser.fuse`), the other fields then telling
how the selection ranked them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from strategies.selection.choice import Choice
from strategies.selection.weighted import TIE_TOLERANCE, Selection, normalize_per_verifier

Rule = Literal["vote", "score", "consensus", "learned", "knockout", "fusion", "single", "abstain"]
RULES: tuple[Rule, ...] = ("vote", "score", "consensus", "learned", "knockout", "fusion", "single", "abstain")
Over = Literal["candidates", "clusters"]

KEYS: dict[str, str] = {
    "ranking": "ranking key: the weighted mean of each verifier's scores, min-max normalized within the request",
    "agreement": "agreement: each candidate's mean similarity to all the others (exact match for tool calls)",
    "utility": "score s̄ (null: unscored)",
    "p_correct": "P(correct) of each answer cluster under the route's learned model",
    "rounds": "knockout rounds each seeded cluster advanced (a bye counts); the winner advanced through all",
}


@dataclass(frozen=True)
class TieBreak:
    """How a tie at the top of `compared` was broken: the most `support`, then the earliest."""

    by: Literal["consensus", "vote_share", "position"]
    tied: tuple[int, ...]  # indices into `compared`
    support: tuple[float, ...] | None  # in `tied` order; None when only the position decided

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "tied": list(self.tied),
                "support": None if self.support is None else [float(s) for s in self.support]}


@dataclass(frozen=True)
class Explanation:
    rule: Rule
    over: Over
    key: str  # what the `compared` numbers are, in words
    compared: tuple[float | None, ...]
    chosen: int  # index into `compared`
    tie_break: TieBreak | None = None
    disqualified: tuple[int, ...] = ()  # candidates a hard verifier excluded
    members: tuple[tuple[int, ...], ...] | None = None  # per cluster, when `over` is clusters
    higher_scores: tuple[int, ...] = ()  # candidates whose s̄ beats the served one's
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "over": self.over,
            "key": self.key,
            "compared": list(self.compared),
            "chosen": self.chosen,
            "tie_break": None if self.tie_break is None else self.tie_break.as_dict(),
            "disqualified": list(self.disqualified),
            "members": None if self.members is None else [list(m) for m in self.members],
            "higher_scores": list(self.higher_scores),
            "why": self.why,
        }


# The keys `Explanation.as_dict` writes into `rvr.selection` (the proxy shows them without `details`).
EXPLANATION_FIELDS: tuple[str, ...] = (
    "rule", "over", "key", "compared", "chosen", "tie_break", "disqualified", "members", "higher_scores", "why",
)


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _top(compared: Sequence[float | None], exact: bool = False) -> tuple[int, ...]:
    """The entries at the maximum (within `TIE_TOLERANCE` unless `exact`), in order."""
    present = [v for v in compared if v is not None]
    if not present:
        return ()
    best = max(present)
    slack = 0.0 if exact else TIE_TOLERANCE
    return tuple(i for i, v in enumerate(compared) if v is not None and v >= best - slack)


def _listed(indices: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in indices)


def _higher_scores(selection: Selection) -> tuple[int, ...]:
    """Candidates whose utility beats the served one's (all scored ones if it has none)."""
    served = selection.utilities[selection.index]
    return tuple(
        i for i, u in enumerate(selection.utilities)
        if not np.isnan(u) and (np.isnan(served) or u > served + TIE_TOLERANCE)
    )


def _lost(selection: Selection, higher: Sequence[int], reason: str) -> str:
    """Why the candidates with a higher s̄ were not served: a hard verifier excluded them, or `reason`."""
    if not higher:
        return ""
    excluded = [i for i in higher if not selection.matrix.eligible[i]]
    others = [i for i in higher if selection.matrix.eligible[i]]
    parts = [f"{_listed(excluded)} score higher on s̄ but a hard verifier excluded them"] if excluded else []
    if others:
        parts.append(f"{_listed(others)} score higher on s̄, {reason}")
    return "; " + "; ".join(parts)


# Where one admissible candidate is left, only excluded ones can outscore it (`_lost` names them);
# this covers any other, so that no higher score ever goes without a reason.
_ALONE = "but it was the only candidate left to choose"


def _disqualified(selection: Selection) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(~selection.matrix.eligible))


def _deciders(selection: Selection) -> set[str]:
    """The verifiers that had a say in the ranking key: a column with an ordering to offer."""
    normalized = normalize_per_verifier(selection.matrix)
    return {name for j, name in enumerate(selection.matrix.verifiers) if not np.isnan(normalized[:, j]).all()}


def _weighted(selection: Selection, voters: Collection[str]) -> Explanation:
    """The §2.3 choice: the ranking key, ties and the unranked case going to consensus."""
    n = selection.matrix.n
    higher = _higher_scores(selection)
    disqualified = _disqualified(selection)
    if n == 1:
        return Explanation("single", "candidates", KEYS["utility"], (_number(selection.utilities[0]),), 0,
                           why="one candidate: nothing to compare")
    index, tied = selection.index, selection.tied or (selection.index,)
    if selection.ranked:
        compared = tuple(
            _number(selection.ranking[i]) if selection.matrix.eligible[i] else None for i in range(n)
        )
        deciders = _deciders(selection)
        rule: Rule = "vote" if deciders and deciders <= set(voters) else "score"
        why = "only the vote ordered the candidates: " if rule == "vote" else ""
        if len(tied) > 1:
            assert selection.support is not None  # a tie was broken, so agreement was measured
            tie = TieBreak("consensus", tied, tuple(float(selection.support[i]) for i in tied))
            why += (f"{_listed(tied)} tie on the ranking key ({compared[index]:.3f}); consensus chose #{index}, "
                    f"which agrees most with all candidates ({selection.support[index]:.3f})")
        else:
            tie = None
            why += f"#{index} has the highest ranking key ({compared[index]:.3f})"
        # The case a reader would otherwise take for a contradiction: s̄ is a raw mean, so the
        # verifier with the widest raw spread dominates it; the key gives each its weight.
        why += _lost(selection, higher, "the raw mean, where a verifier pulls by its raw spread; the key "
                     "normalizes each verifier so that it pulls by its configured weight")
        return Explanation(rule, "candidates", KEYS["ranking"], compared, index, tie, disqualified,
                           higher_scores=higher, why=why)
    # No verifier ordered the admissible candidates: consensus among `tied` (the scored ones, or
    # every admissible one when none was scored).
    if len(tied) == 1:
        compared = tuple(_number(u) if i == index else None for i, u in enumerate(selection.utilities))
        if compared[index] is None:  # the hard verifiers left only this one, and no one scored it
            why = f"#{index} is the only candidate no hard verifier excluded" + _lost(selection, higher, _ALONE)
            return Explanation("single", "candidates", KEYS["utility"], compared, index, None, disqualified,
                               higher_scores=higher, why=why)
        why = f"#{index} is the only admissible candidate a verifier scored" + _lost(selection, higher, _ALONE)
        return Explanation("score", "candidates", KEYS["utility"], compared, index, None, disqualified,
                           higher_scores=higher, why=why)
    assert selection.support is not None
    pool = set(tied)
    compared = tuple(float(selection.support[i]) if i in pool else None for i in range(n))
    top = _top(compared, exact=True)
    tie = TieBreak("position", top, None) if len(top) > 1 else None
    why = (f"no verifier ordered the {len(tied)} candidates it could choose from, so consensus chose "
           f"#{index}, which agrees most with all candidates ({compared[index]:.3f})")
    if tie is not None:
        why += ", the earliest of equals"
    why += _lost(selection, higher, "but every verifier gave all the candidates it scored one and the same "
                 "score, so none ordered them")
    return Explanation("consensus", "candidates", KEYS["agreement"], compared, index, tie, disqualified,
                       higher_scores=higher, why=why)


def _learned(selection: Selection, choice: Choice) -> Explanation:
    """§10.4: the most probable admissible cluster, ties to the larger vote share, then the earlier."""
    assert choice.probabilities is not None
    clusters = choice.clusters
    eligible = selection.matrix.eligible
    admissible = [c.answered and bool(eligible[c.representative]) for c in clusters]
    if not any(admissible):
        admissible = [True] * len(clusters)
    compared = tuple(float(p) if ok else None for p, ok in zip(choice.probabilities, admissible, strict=True))
    chosen = _cluster_of(choice, selection.index)
    top = _top(compared, exact=True)  # the model's ranking compares exactly, not within a tolerance
    tie = (TieBreak("vote_share", top, tuple(clusters[j].features.get("vote_share", 0.0) for j in top))
           if len(top) > 1 else None)
    why = (f"cluster {chosen} is the most probable to be right (P {compared[chosen]:.3f}); "
           f"#{selection.index} is its best-ranked member")
    if tie is not None:
        why += f" ({len(top)} clusters tie on P: the larger vote share, then the earlier cluster, won)"
    higher = _higher_scores(selection)
    why += _lost(selection, higher, "which the model weighs as one signal among several")
    return Explanation("learned", "clusters", KEYS["p_correct"], compared, chosen, tie, _disqualified(selection),
                       members=tuple(c.members for c in clusters), higher_scores=higher, why=why)


def knockout_rounds(seeds: int, matches: Sequence[Mapping[str, Any]]) -> list[int]:
    """Per seed position, the rounds it advanced (a bye counts): the winner advanced through all."""
    rounds = max((int(m["round"]) for m in matches), default=0)
    advanced = [rounds] * seeds
    for m in matches:
        loser = m["challenger"] if m["winner"] == m["holder"] else m["holder"]
        advanced[loser] = int(m["round"]) - 1
    return advanced


def _knockout(selection: Selection, choice: Choice, report: Mapping[str, Any]) -> Explanation:
    seeds: list[int] = list(report["seeds"])
    winner = int(report["winner_cluster"])
    compared: list[float | None] = [None] * len(choice.clusters)
    for position, advanced in enumerate(knockout_rounds(len(seeds), report["matches"])):
        compared[seeds[position]] = float(advanced)
    why = (f"cluster {winner} won the knockout among clusters {', '.join(map(str, seeds))}, judged pairwise "
           f"in both orders; #{selection.index} is its representative")
    higher = _higher_scores(selection)
    why += _lost(selection, higher, "but the judge's pairwise verdicts decide here")
    return Explanation("knockout", "clusters", KEYS["rounds"], tuple(compared), winner, None,
                       _disqualified(selection), members=tuple(c.members for c in choice.clusters),
                       higher_scores=higher, why=why)


def _cluster_of(choice: Choice, candidate: int) -> int:
    return next(j for j, c in enumerate(choice.clusters) if candidate in c.members)


def explain(
    selection: Selection, choice: Choice, knockout: Mapping[str, Any] | None, voters: Collection[str]
) -> Explanation:
    """The rule that chose `selection.index` and the numbers it compared.

    `voters` names the route's verifiers whose scores are vote shares (`Verifier.extracts_answers`):
    when only they ordered the candidates, the weighted choice is a vote.
    """
    if knockout is not None and knockout.get("played"):
        return _knockout(selection, choice, knockout)
    if choice.mode == "learned" and choice.probabilities is not None and selection.matrix.n > 1:
        return _learned(selection, choice)
    return _weighted(selection, voters)


def abstained(explanation: Mapping[str, Any], confidence: float, threshold: float) -> dict[str, Any]:
    """`rvr.selection` when `min_confidence` held the chosen answer back for the abstention message:
    the numbers of the rule that chose it stay, so a reader sees what fell short."""
    return {
        **explanation,
        "rule": "abstain",
        "why": (f"the answer chosen by {explanation.get('rule')} has P(correct) {confidence:.3f}, below "
                f"min_confidence {threshold}: the abstention message answered instead"),
    }

