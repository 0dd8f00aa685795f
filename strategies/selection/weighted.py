"""Combine verifier views into one choice (method §2: ŷ = argmax s̄).

Two numbers come out per candidate, on purpose:

* the *utility* `s̄_i`: the weighted mean of the raw view scores, which the verifier contract
  already puts in [0, 1]. It is the method's estimate of `U(x, y_i)`, so it is what AEU, Ê_k,
  the stop rules (ε, τ) and the verifier term are computed on. Per-request normalization would
  destroy it: after min-max the best candidate of every request scores 1, so "good enough"
  would always fire and every request would look equally risky.
* the *ranking key*: the weighted mean of per-verifier **min-max** normalized scores, used only
  to pick ŷ. Verifiers report on very different effective ranges (a vote share of 0.25/0.75, a
  reward model squashed into 0.48–0.52, a judge rubric over the full 0–1), and with raw means
  the widest one decides alone. Min-max makes a verifier's pull on the choice proportional to
  its configured weight. Min-max rather than rank normalization because it keeps margins: a
  judge's 0.50 vs 0.51 near-tie should not count as much as its 0.1 vs 0.9. A verifier whose
  scores are all equal in this request has no ordering to offer and is left out (its column is
  missing, not zero).

Hard-constraint verifiers (`Scored.hard`) are gates, not evidence of quality: they never enter
either mean; a candidate they score exactly 0 is disqualified (utility 0, never chosen) unless
that would disqualify every candidate. Missing scores (`None`) are skipped, never read as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.answers import tool_calls_key
from strategies.contract import Candidate, Scored
from strategies.selection.similarity import token_f1_matrix

TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class VerifierResult:
    """One verifier's verdict, tagged with what the ensemble needs to know about it."""

    name: str
    weight: float
    scored: Scored


@dataclass(frozen=True)
class ViewMatrix:
    """The soft views as an n×W matrix (NaN = missing), their weights and the hard gates.

    A verifier's weight is split evenly over its views, so adding a view (the other candidate
    order, another template) refines a verifier's opinion without multiplying its influence.
    """

    names: tuple[str, ...]  # `view_key` of each column of `scores`
    verifiers: tuple[str, ...]  # the verifier of each column
    scores: np.ndarray  # n×W, raw scores in [0, 1], NaN where missing
    weights: np.ndarray  # W, each > 0
    eligible: np.ndarray  # n bools: not disqualified by a hard constraint

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def width(self) -> int:
        return int(self.scores.shape[1])


@dataclass(frozen=True)
class Selection:
    index: int
    utilities: np.ndarray  # s̄ per candidate (0 if disqualified, NaN if no view scored it)
    ranking: np.ndarray  # normalized key per candidate (NaN if none)
    matrix: ViewMatrix
    tie_broken: bool  # the choice came from consensus among equals
    # What the choice was made among, kept so the response can show its own arithmetic
    # (strategies/selection/explain.py): the candidates at the top of the ranking key (or, when
    # no verifier ranked any, the pool consensus chose from), and, where consensus broke a tie,
    # every candidate's agreement with all the others.
    tied: tuple[int, ...] = ()
    support: np.ndarray | None = None
    ranked: bool = True  # some verifier ordered the admissible candidates: the ranking key chose

    @property
    def selected_utility(self) -> float | None:
        value = self.utilities[self.index]
        return None if np.isnan(value) else float(value)

    def utility_list(self) -> list[float | None]:
        return [None if np.isnan(u) else float(u) for u in self.utilities]


def _as_column(values: Sequence[float | None], n: int) -> np.ndarray:
    column = np.full(n, np.nan)
    for i, value in enumerate(list(values)[:n]):
        if value is not None and np.isfinite(value):
            column[i] = float(value)
    return column


def view_key(verifier: str, view: str) -> str:
    """A view's name across verifiers; verifiers that already qualify their views keep them."""
    if view == verifier or view.startswith(f"{verifier}:"):
        return view
    return f"{verifier}:{view}"


def build_view_matrix(results: Sequence[VerifierResult], n: int) -> ViewMatrix:
    """Lay every soft view out as a column and fold the hard views into an eligibility mask."""
    names: list[str] = []
    owners: list[str] = []
    columns: list[np.ndarray] = []
    weights: list[float] = []
    eligible = np.ones(n, dtype=bool)
    for result in results:
        views = result.scored.views
        if result.scored.hard:
            for values in views.values():
                eligible &= ~(_as_column(values, n) == 0.0)  # NaN compares False: kept
            continue
        if result.weight <= 0 or not views:
            continue
        share = result.weight / len(views)
        for view, values in views.items():
            names.append(view_key(result.name, view))
            owners.append(result.name)
            columns.append(_as_column(values, n))
            weights.append(share)
    if not eligible.any():  # everyone fails the constraint: it cannot discriminate
        eligible = np.ones(n, dtype=bool)
    scores = np.column_stack(columns) if columns else np.empty((n, 0))
    return ViewMatrix(tuple(names), tuple(owners), scores, np.asarray(weights, float), eligible)


def ensemble_mean(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the views present in each row; NaN where a row has none.

    Works on n×W or B×n×W arrays (the last axis is views), so the verifier term's bootstrap
    runs the very same aggregation on resampled views.
    """
    present = ~np.isnan(scores)
    w = np.broadcast_to(weights, scores.shape)
    total = np.where(present, w, 0.0).sum(axis=-1)
    weighted = np.where(present, scores * w, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)


def utilities(scores: np.ndarray, weights: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """s̄ per candidate; a disqualified answer is worth nothing to the client."""
    means = ensemble_mean(scores, weights)
    return np.where(eligible, means, np.where(np.isnan(means), np.nan, 0.0))


def normalize_per_verifier(matrix: ViewMatrix) -> np.ndarray:
    """Min-max each verifier's scores (all its views together) within this request."""
    normalized = np.full_like(matrix.scores, np.nan)
    owners = np.asarray(matrix.verifiers)
    for name in dict.fromkeys(matrix.verifiers):
        cols = owners == name
        block = matrix.scores[:, cols]
        if np.isnan(block).all():
            continue
        low, high = np.nanmin(block), np.nanmax(block)
        if high - low <= TIE_TOLERANCE:
            continue  # no ordering to offer: contributes nothing
        normalized[:, cols] = (block - low) / (high - low)
    return normalized


def canonical_answer(candidate: Candidate) -> str:
    """Text, or the tool calls' canonical key (`strategies.answers.tool_calls_key`), so equal
    calls compare equal whatever their order."""
    if candidate.tool_calls:
        return tool_calls_key(candidate.tool_calls)
    return candidate.text.strip()


def agreement(candidates: Sequence[Candidate]) -> np.ndarray:
    """Consensus of each candidate with the others: exact match for tool calls, token F1 else.

    On a panel (candidates from several upstreams) with the other models' candidates only: one
    model's wrong answers agree with each other in its own words, so agreement within a model is
    the very correlation a panel is there to outvote.
    """
    keys = [canonical_answer(c) for c in candidates]
    n = len(keys)
    if n < 2:
        return np.ones(n)
    if any(c.tool_calls for c in candidates):
        sim = np.array([[float(a == b) for b in keys] for a in keys])
    else:
        sim = token_f1_matrix(keys)
    models = [c.upstream for c in candidates]
    if len(set(models) - {None}) > 1:
        others = np.array([[models[j] != models[i] for j in range(n)] for i in range(n)])
        return (sim * others).sum(axis=1) / others.sum(axis=1)
    return (sim.sum(axis=1) - 1.0) / (n - 1)


def break_tie(candidates: Sequence[Candidate], tied: Sequence[int]) -> tuple[int, np.ndarray | None]:
    """The tied candidate that agrees most with the others (`agreement`), the earliest among
    those within `TIE_TOLERANCE` of the most; and every candidate's agreement (None when there
    was no tie to break). The tolerance matters: equal similarities summed in another order
    differ in the last bit, and that bit must not pick the answer."""
    if len(tied) == 1:
        return tied[0], None
    support = agreement(candidates)
    most = max(support[i] for i in tied)
    return next(i for i in tied if support[i] >= most - TIE_TOLERANCE), support


def select(candidates: Sequence[Candidate], results: Sequence[VerifierResult]) -> Selection:
    n = len(candidates)
    if n == 0:
        raise ValueError("select() needs at least one candidate")
    matrix = build_view_matrix(results, n)
    utility = utilities(matrix.scores, matrix.weights, matrix.eligible)
    ranking = ensemble_mean(normalize_per_verifier(matrix), matrix.weights)
    contenders = [i for i in range(n) if matrix.eligible[i] and not np.isnan(ranking[i])]
    if contenders:
        best = max(ranking[i] for i in contenders)
        tied = [i for i in contenders if ranking[i] >= best - TIE_TOLERANCE]
    else:  # nothing discriminates: consensus among the admissible answers a verifier scored
        admissible = [i for i in range(n) if matrix.eligible[i]]
        scored = [i for i in admissible if not np.isnan(utility[i])]
        # An empty or unextractable answer never beats a scored one; only when no answer was
        # scored at all does consensus pick among every admissible one (rvr.summary says so).
        tied = scored or admissible
    index, support = break_tie(candidates, tied)
    return Selection(index, utility, ranking, matrix, tie_broken=len(tied) > 1, tied=tuple(tied),
                     support=support, ranked=bool(contenders))
