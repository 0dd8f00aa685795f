"""The route's selection mode applied to one request's candidates (method §10.4).

Every best_of_n request gets its answer clusters described (`strategies.selection.clusters`), in
either mode, so gold probes collect training rows for `learned` while a route still runs
`weighted`. With `learned` and a fitted model, the answer is the representative of the cluster
with the highest P(correct), and that P is the request's `confidence`; without a model, the
weighted choice stands and `fallback_reason` says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from strategies.contract import Candidate, Message
from strategies.selection.clusters import AnswerOf, Cluster, build_clusters
from strategies.selection.learned import SelectorState, rank_clusters
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import Selection

StateSource = Callable[[], SelectorState]


@dataclass(frozen=True)
class Choice:
    mode: str  # the mode that chose: `weighted` or `learned`
    clusters: list[Cluster]
    fallback_reason: str | None = None  # why `learned` was configured but `weighted` chose
    confidence: float | None = None  # the chosen cluster's P(correct); learned only
    probabilities: list[float] | None = None  # per cluster, in `clusters` order
    model: dict[str, Any] | None = None  # the model's public summary

    def report(self, selected: int) -> dict[str, Any]:
        """`rvr.selection` in details mode; cluster keys are the candidates' answers, so they
        appear only there, next to the candidate texts."""
        chosen = next((j for j, c in enumerate(self.clusters) if selected in c.members), None)
        return {
            "mode": self.mode,
            "fallback_reason": self.fallback_reason,
            "confidence": self.confidence,
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
        }

    def training_rows(self) -> list[dict[str, Any]]:
        """The answered clusters as the probe runner records them (labels are added there)."""
        return [
            {"representative": c.representative, "size": len(c.members),
             "features": {k: (None if math.isnan(v) else v) for k, v in c.features.items()}}
            for c in self.clusters if c.answered
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
    if settings.mode == "weighted":
        return selection, Choice("weighted", clusters)
    current = state() if state is not None else SelectorState(None, "no probe data source for this route")
    if current.model is None:
        return selection, Choice("weighted", clusters, fallback_reason=current.reason or "no fitted model")
    if not any(c.answered for c in clusters):
        return selection, Choice("weighted", clusters, fallback_reason="no candidate has an extractable answer",
                                 model=current.model.public())
    # A hard verifier's veto stands whatever the model says: a cluster none of whose members
    # passes is chosen only when no cluster passes (then the gate cannot discriminate).
    admissible = [c.answered and bool(selection.matrix.eligible[c.representative]) for c in clusters]
    best, probabilities = rank_clusters([c.features for c in clusters], admissible, current.model)
    index = clusters[best].representative
    chosen = replace(selection, index=index, tie_broken=False)
    return chosen, Choice("learned", clusters, confidence=probabilities[best], probabilities=probabilities,
                          model=current.model.public())
