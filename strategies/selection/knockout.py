"""A knockout tournament among answer clusters, and the gold measurement that gates it.

Chen et al. (arXiv 2411.19477) bound the failure of a knockout by
(1 − p_gen)^N + ⌈log₂N⌉·e^{−2K(p_comp − 0.5)²}: it helps only where the judge beats chance on
(right, wrong) pairs (p_comp > 0.5), and judges often prefer a slot rather than an answer. So:

* every match is judged in both orders, and a challenger takes the place of the higher-ranked
  cluster only by winning both; a split or a tie keeps the higher-ranked one;
* gold probes measure p_comp per order on (right, wrong) pairs of the served clusters
  (`measure_pairs`), and the tournament runs only while both orders reach `min_accuracy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from strategies.contract import BudgetExhausted, Candidate, Usage, Verifier, VerifyContext


@dataclass(frozen=True)
class JudgeGate:
    """What the probes say of the judge: whether the tournament may run, and why (not)."""

    enabled: bool
    accuracy_ab: float | None  # right answer in slot A: share of pairs the judge picked it
    accuracy_ba: float | None  # right answer in slot B
    pairs: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "accuracy_ab": self.accuracy_ab, "accuracy_ba": self.accuracy_ba,
                "pairs": self.pairs, "reason": self.reason}


def gate(pairs: Sequence[Mapping[str, Any]], min_pairs: int, min_accuracy: float) -> JudgeGate:
    """A judge verdict that failed or did not parse counts as a miss: the tournament would get none either."""
    if len(pairs) < min_pairs:
        return JudgeGate(False, None, None, len(pairs), f"{len(pairs)} of {min_pairs} judged probe pairs so far")
    ab = sum(bool(p.get("ab")) for p in pairs) / len(pairs)
    ba = sum(bool(p.get("ba")) for p in pairs) / len(pairs)
    if min(ab, ba) < min_accuracy:
        return JudgeGate(False, ab, ba, len(pairs),
                         f"judge pairwise accuracy {ab:.2f} (right first) / {ba:.2f} (right second) is below {min_accuracy}")
    return JudgeGate(True, ab, ba, len(pairs))


async def measure_pairs(
    judge: Verifier, ctx: VerifyContext, right: Candidate, wrong: Sequence[Candidate]
) -> tuple[list[dict[str, bool]], Usage]:
    """Per (right, wrong) pair: did the judge pick the right one with it in slot A, and in slot B.

    A comparison the request's budget refused was never asked, so it is no miss: the pairs judged
    in both orders before it stand, and the rest are left out (the probe's budget ran out; a miss
    counted for it read as the judge's error, about one pair in a hundred near an hour's end).
    """
    usage = Usage()
    pairs = []
    for other in wrong:
        try:
            first, used_ab = await judge.compare(ctx, right, other)
            usage = usage + used_ab
            second, used_ba = await judge.compare(ctx, other, right)
            usage = usage + used_ba
        except BudgetExhausted:
            break
        pairs.append({"ab": first == "a", "ba": second == "b"})
    return pairs, usage


async def match(judge: Verifier, ctx: VerifyContext, holder: Candidate, challenger: Candidate) -> tuple[bool, Usage]:
    """Whether the challenger wins both orders against the (higher-ranked) holder; a match the
    request's budget cannot pay for is not played, and the holder keeps its place."""
    try:
        first, used_ab = await judge.compare(ctx, challenger, holder)
    except BudgetExhausted:
        return False, Usage()
    try:
        second, used_ba = await judge.compare(ctx, holder, challenger)
    except BudgetExhausted:
        return False, used_ab
    return first == "a" and second == "b", used_ab + used_ba


async def tournament(
    judge: Verifier, ctx: VerifyContext, seeds: Sequence[Candidate]
) -> tuple[int, list[dict[str, Any]], Usage]:
    """The winner's position in `seeds` (best-ranked first): rounds pair neighbours (1 v 2, 3 v 4,
    ...), a bye goes up unplayed; returns the matches played (numbered by round from 1) and what
    they cost."""
    alive = list(range(len(seeds)))
    matches: list[dict[str, Any]] = []
    usage = Usage()
    round_ = 0
    while len(alive) > 1:
        round_ += 1
        winners = []
        for k in range(0, len(alive), 2):
            if k + 1 == len(alive):
                winners.append(alive[k])
                continue
            holder, challenger = alive[k], alive[k + 1]
            upset, used = await match(judge, ctx, seeds[holder], seeds[challenger])
            usage = usage + used
            winner = challenger if upset else holder
            # the round lets a reader tell how far each seed went (`explain.knockout_rounds`)
            matches.append({"round": round_, "holder": holder, "challenger": challenger, "winner": winner})
            winners.append(winner)
        alive = winners
    return alive[0], matches, usage
