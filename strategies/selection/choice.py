"""The route's selection mode applied to one request's candidates (method §10.4).

Every best_of_n request gets its answer clusters described (`strategies.selection.clusters`), in
either mode, so gold probes collect training rows for `learned` while a route still runs
`weighted`. With `learned` and a fitted model, the answer is the representative of the cluster
with the highest P(correct), and the request's `confidence` is that cluster's share of one
distribution over the request's answered clusters and "none of them is right"
(strategies/selection/confidence.py): P(the served answer is right); without a model, or while
the safety gate (strategies/selection/safety.py) holds the model back, the weighted choice
stands and `fallback_reason` says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from strategies.contract import Candidate, Message
from strategies.selection.clusters import AnswerOf, Cluster, build_clusters
from strategies.selection.learned import LearnedSelector, SelectorState, rank_clusters
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import Selection

StateSource = Callable[[], SelectorState]


@dataclass(frozen=True)
class Choice:
    mode: str  # the mode that chose: `weighted` or `learned`
    clusters: list[Cluster]
    fallback_reason: str | None = None  # why `learned` was configured but `weighted` chose
    confidence: float | None = None  # P(the served answer is right); learned only
    probabilities: list[float] | None = None  # per cluster, in `clusters` order (0: outside the distribution)
    p_none: float | None = None  # P(no cluster is right): with `probabilities`, sums to 1
    model: dict[str, Any] | None = None  # the model's public summary
    weighted_cluster: int | None = None  # the cluster of weighted selection's choice, in `clusters` order
    gate: dict[str, Any] | None = None  # the safety gate's numbers, where it was checked

    def report(self, selected: int) -> dict[str, Any]:
        """`rvr.selection` in details mode; cluster keys are the candidates' answers, so they
        appear only there, next to the candidate texts."""
        chosen = next((j for j, c in enumerate(self.clusters) if selected in c.members), None)
        return {
            "mode": self.mode,
            "fallback_reason": self.fallback_reason,
            "confidence": self.confidence,
            "p_none": self.p_none,
            "chosen_cluster": chosen,
            "clusters": [
                {
                    "answer": c.key,
                    "members": list(c.members),
                    "features": {k: (None if math.isnan(v) else round(v, 4)) for k, v in c.features.items()},
                    "p_correct": None if self.probabilities is None else round(self.probabilities[j], 4),
                }
                for j, c in enumerate(self.clusters)
            ],
            **({"model": self.model} if self.model is not None else {}),
            **({"gate": self.gate} if self.gate is not None else {}),
        }

    def training_rows(self) -> list[dict[str, Any]]:
        """The answered clusters as the probe runner records them (labels are added there);
        `weighted` marks the one weighted selection chose, what the safety gate compares with."""
        return [
            {"representative": c.representative, "size": len(c.members),
             "features": {k: (None if math.isnan(v) else v) for k, v in c.features.items()},
             **({"weighted": True} if j == self.weighted_cluster else {})}
            for j, c in enumerate(self.clusters) if c.answered
        ]


def choose(
    candidates: Sequence[Candidate],
    selection: Selection,
    messages: Sequence[Message],
    answer_of: AnswerOf,
    settings: SelectionSettings,
    state: StateSource | None,
) -> tuple[Selection, Choice]:
    clusters = build_clusters(candidates, answer_of, selection.matrix, selection.ranking, messages)
    weighted = next(j for j, c in enumerate(clusters) if selection.index in c.members)
    if settings.mode == "weighted":
        return selection, Choice("weighted", clusters, weighted_cluster=weighted)
    current = state() if state is not None else SelectorState(None, "no probe data source for this route")
    if current.model is None:
        return selection, Choice("weighted", clusters, fallback_reason=current.reason or "no fitted model",
                                 weighted_cluster=weighted)
    gate = current.safety.as_dict() if current.safety is not None else None
    if current.safety is not None and not current.safety.serves:
        return selection, Choice("weighted", clusters, fallback_reason=current.safety.reason,
                                 model=current.model.public(), weighted_cluster=weighted, gate=gate)
    if not any(c.answered for c in clusters):
        return selection, Choice("weighted", clusters, fallback_reason="no candidate has an extractable answer",
                                 model=current.model.public(), weighted_cluster=weighted, gate=gate)
    # A hard verifier's veto stands whatever the model says: a cluster none of whose members
    # passes is chosen only when no cluster passes (then the gate cannot discriminate).
    admissible = [c.answered and bool(selection.matrix.eligible[c.representative]) for c in clusters]
    best, _ = rank_clusters([c.features for c in clusters], admissible, current.model)
    index = clusters[best].representative
    chosen = replace(selection, index=index, tie_broken=False)
    probabilities, p_none = _distribution(clusters, best, current.model)
    return chosen, Choice("learned", clusters, confidence=probabilities[best], probabilities=probabilities,
                          p_none=p_none, model=current.model.public(), weighted_cluster=weighted, gate=gate)


def ranked_clusters(choice: Choice, selection: Selection) -> list[int]:
    """The admissible answered clusters, strongest first: the current choice, then by the learned
    probability where there is one, else by the weighted ranking key of the representative."""
    eligible = selection.matrix.eligible
    ranked = [j for j, c in enumerate(choice.clusters) if c.answered and eligible[c.representative]]

    def strength(j: int) -> tuple[bool, float]:
        chosen = selection.index in choice.clusters[j].members  # the current choice defends first
        if choice.probabilities is not None:
            return chosen, choice.probabilities[j]
        rank = selection.ranking[choice.clusters[j].representative]
        return chosen, float(rank) if not math.isnan(rank) else -1.0

    return sorted(ranked, key=strength, reverse=True)


def _distribution(clusters: Sequence[Cluster], best: int, model: LearnedSelector) -> tuple[list[float], float | None]:
    """The model's distribution over the answered clusters (what it was fitted on); over all
    clusters where the chosen one has no answer (no answered cluster was admissible)."""
    if clusters[best].answered:
        inside = [j for j, c in enumerate(clusters) if c.answered]
    else:
        inside = list(range(len(clusters)))
    probabilities, p_none = model.distribution([clusters[j].features for j in inside])
    full = [0.0] * len(clusters)
    for j, p in zip(inside, probabilities, strict=True):
        full[j] = p
    return full, p_none
