"""Candidates grouped by their extracted answer, with the weak signals a learned selector reads.

Selection by agreement is capped by the wrong cluster's share: when a small model repeats a
wrong answer (often one it copied from the request's own few-shot examples), no amount of
voting finds the right one. Scoring *clusters* with several weak signals, weighted from gold
labels (Weaver, arXiv 2506.18203), can. This module only describes the clusters; the weights
come from `strategies.selection.learned`.

Every feature is a number in [0, 1] or NaN (not measured for this request, e.g. no logprobs),
named from a fixed vocabulary plus the route's verifier names, so names are safe metric labels:

* `vote_share`: the cluster's share of the candidates;
* `variant_support`: the share of the request's prompt variants that produced it (an answer
  stable across ways of asking is less likely prompt-induced);
* `copied_shot`: 1 when the answer equals one of the request's own few-shot assistant answers;
* `conf_mean`, `conf_low`: DeepConf's token confidence (arXiv 2508.15260) from the sampled
  tokens' logprobs, as a probability: exp(mean logprob) over the answer, and exp of the lowest
  mean over a sliding window of `CONF_WINDOW` tokens, averaged over the cluster's members;
* `format_ok`: the share of members no hard verifier disqualified (1 without hard verifiers);
* `v:<verifier>`: each soft verifier's mean raw score over its views and the cluster's members
  (the contract already puts them in [0, 1]; a judge's P(yes) stays a probability, which a
  per-request min-max would destroy, and the selector is fitted across requests).

Candidates without an extractable answer form one cluster keyed `NO_ANSWER`; it is described
like the others but a selector never chooses it while an answered cluster exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.contract import Candidate, Message, content_text, shot_pairs
from strategies.selection.weighted import ViewMatrix

NO_ANSWER = ""
CONF_WINDOW = 8  # tokens; DeepConf uses larger groups for long traces, answers here are short
BASE_FEATURES = ("vote_share", "variant_support", "copied_shot", "conf_mean", "conf_low", "format_ok")
VERIFIER_PREFIX = "v:"
PANEL_PREFIX = "m:"  # per panelist (model): the share of its own candidates in the cluster

AnswerOf = Callable[[Candidate], "str | None"]


@dataclass(frozen=True)
class Cluster:
    key: str  # the extracted answer (`NO_ANSWER` for the unanswered); request content, never a label
    members: tuple[int, ...]  # candidate indices, in sampling order
    representative: int  # the member that would be served: best by the request's ranking key
    features: dict[str, float]

    @property
    def answered(self) -> bool:
        return self.key != NO_ANSWER


def shot_answers(messages: Sequence[Message], answer_of: AnswerOf) -> set[str]:
    """The extracted answers of the request's few-shot assistant turns (`strategies.contract.shot_pairs`)."""
    keys = set()
    for _, i in shot_pairs(messages):
        text = content_text(messages[i].get("content"))
        key = answer_of(Candidate(-1, "shot", {"role": "assistant", "content": text}))
        if key:
            keys.add(key)
    return keys


def token_confidence(token_logprobs: Sequence[float] | None, window: int = CONF_WINDOW) -> tuple[float, float]:
    """(mean, lowest-window) confidence of one answer as probabilities; NaN without logprobs."""
    # One conversion in numpy, not a Python loop: this runs for every candidate each round, and
    # reasoning traces carry thousands of tokens. A missing logprob (None) becomes NaN and is dropped.
    values = np.array(token_logprobs or (), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    mean = float(np.exp(values.mean()))
    w = min(window, values.size)
    sums = np.convolve(values, np.ones(w), mode="valid") / w
    return mean, float(np.exp(sums.min()))


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def build_clusters(
    candidates: Sequence[Candidate],
    answer_of: AnswerOf,
    matrix: ViewMatrix,
    ranking: np.ndarray,
    messages: Sequence[Message] = (),
) -> list[Cluster]:
    """The request's answer clusters, largest first (ties: first sampled first).

    `matrix` and `ranking` are the request's `Selection`: soft views, hard-verifier eligibility
    and the weighted ranking key.
    """
    n = len(candidates)
    keys = [answer_of(c) or NO_ANSWER for c in candidates]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    variants = {c.variant for c in candidates}
    shots = shot_answers(messages, answer_of)
    confidence = [token_confidence(c.token_logprobs) for c in candidates]
    passes = matrix.eligible.astype(float)
    owners = np.asarray(matrix.verifiers)
    drawn: dict[str, int] = {}  # panel routes: candidates per panelist that drew any
    for c in candidates:
        if c.upstream is not None:
            drawn[c.upstream] = drawn.get(c.upstream, 0) + 1
    clusters = []
    for key, members in groups.items():
        features = {
            "vote_share": len(members) / n,
            "variant_support": len({candidates[i].variant for i in members}) / len(variants),
            "copied_shot": 1.0 if key != NO_ANSWER and key in shots else 0.0,
            "conf_mean": _nanmean([confidence[i][0] for i in members]),
            "conf_low": _nanmean([confidence[i][1] for i in members]),
            "format_ok": float(passes[members].mean()),
        }
        if drawn:  # agreement across models is evidence that agreement within one is not
            by_model = [candidates[i].upstream for i in members]
            features["panel_support"] = len(set(by_model) & drawn.keys()) / len(drawn)
            for upstream, count in drawn.items():
                features[PANEL_PREFIX + upstream] = by_model.count(upstream) / count
        for name in dict.fromkeys(matrix.verifiers):
            block = matrix.scores[np.ix_(members, owners == name)]
            features[VERIFIER_PREFIX + name] = float(np.nanmean(block)) if not np.isnan(block).all() else math.nan
        # served: an admissible member first, then the best ranking key, then the first sampled
        rank = [(not matrix.eligible[i], -ranking[i] if not np.isnan(ranking[i]) else math.inf, i) for i in members]
        clusters.append(Cluster(key, tuple(members), min(rank)[2], features))
    clusters.sort(key=lambda c: (not c.answered, -len(c.members), c.members[0]))
    return clusters
