"""Panels: one route's candidates drawn from several upstreams (models), split by weight.

A model's wrong answers agree with each other; another model's mostly do not, so a panel breaks
the correlation that more samples of one model cannot (method §4.10). The loop asks this module
which panelist draws each candidate, and records which panelists failed and why; everything else
(stopping, verifiers, selection, caps) works on the pooled candidates as on one model's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from strategies.best_of_n.counts import Clock, EpochCounts
from strategies.contract import MODEL_NAME_PATTERN, Candidate, StrictModel

# Why a panelist was dropped for a request: a metric label, so a fixed vocabulary.
DropReason = Literal["rate_limited", "timeout", "error", "no_candidates"]
DROP_REASONS: tuple[DropReason, ...] = ("rate_limited", "timeout", "error", "no_candidates")


class PanelistSettings(StrictModel):
    upstream: str = Field(pattern=MODEL_NAME_PATTERN)
    # Its share of every batch, relative to the others; `auto` learns it from the route's gold
    # (`PanelStats`): 1 until every auto panelist has `panel_min_items` gold draws.
    weight: Annotated[float, Field(gt=0, le=1000)] | Literal["auto"] = 1.0


def numeric_weight(panelist: PanelistSettings) -> float:
    assert panelist.weight != "auto", "auto weights are resolved per request (PanelStats.resolve)"
    return float(panelist.weight)


def drop_reason(error: BaseException) -> DropReason:
    """Why a panelist's call failed, in the panel's vocabulary. The proxy's errors carry an OpenAI
    `code` (strategies never import them); anything else is an error."""
    code = getattr(error, "code", None)
    if code in ("rate_limited", "rate_limit_exceeded"):
        return "rate_limited"
    if code == "upstream_timeout" or isinstance(error, TimeoutError):
        return "timeout"
    return "error"


def weighted_order(weights: Sequence[float], length: int) -> list[int]:
    """Panelist indices for `length` successive draws, each panelist's count as close to its
    weighted share as integers allow at every prefix (smooth weighted round robin, as nginx
    balances upstreams): weights 1 and 3 give 1, 0, 1, 1, 1, 0, 1, 1, ..."""
    total = sum(weights)
    credit = [0.0] * len(weights)
    order = []
    for _ in range(length):
        for i, weight in enumerate(weights):
            credit[i] += weight
        best = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[best] -= total
        order.append(best)
    return order


def split(start: int, size: int, variants: Sequence[str], panel: Sequence[PanelistSettings],
          dropped: set[str]) -> dict[tuple[str, str | None], int]:
    """How many of candidates start..start+size−1 each (variant, panelist) draws.

    Candidate i asks as variant i mod V, and is the (i div V)-th draw of the panel's weighted
    order: every variant reaches every panelist in its share, where assigning panelists by i
    alone would tie variant j to the same panelist whenever V and the panel size share a factor.
    Without a panel the upstream is None: the route's own.
    """
    active = [p for p in panel if p.upstream not in dropped]
    if panel and not active:
        return {}
    V = len(variants)
    last_round = (start + size - 1) // V + 1 if size > 0 else 0
    order = weighted_order([numeric_weight(p) for p in active], last_round) if active else []
    shares: dict[tuple[str, str | None], int] = {}
    for i in range(start, start + size):
        upstream = active[order[i // V]].upstream if active else None
        key = (variants[i % V], upstream)
        shares[key] = shares.get(key, 0) + 1
    return shares


@dataclass
class PanelRecord:
    """One request's panel: who drew how many candidates, who was dropped and why."""

    upstreams: list[str]
    min_panel: int
    drawn: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, DropReason] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # what each panelist's candidate calls cost
    weights: dict[str, float] = field(default_factory=dict)  # the weights the request split by

    def drop(self, upstream: str, reason: DropReason) -> None:
        self.dropped.setdefault(upstream, reason)  # the first cause is the one that dropped it

    @property
    def producing(self) -> list[str]:
        return [u for u in self.upstreams if self.drawn.get(u)]

    def report(self, candidates: Sequence[Candidate], selected: int) -> dict[str, Any]:
        """`rvr.panel`: the panelists, their candidates, who answered and who was dropped."""
        chosen = candidates[selected].upstream if 0 <= selected < len(candidates) else None
        return {
            "upstreams": list(self.upstreams),
            "candidates": {u: self.drawn.get(u, 0) for u in self.upstreams},
            "selected_upstream": chosen,
            "dropped": dict(self.dropped),
            "min_panel": self.min_panel,
            "weights": dict(self.weights),
        }


AUTO_MIN_SHARE = 0.1  # an auto panelist keeps at least this share, so its gold keeps being measured


class PanelStats:
    """What `weight: auto` learns, per panelist, in time buckets every process shares: the gold
    utility of its reference draws (probes) and the tokens per candidate it drew (requests).

    An auto panelist's weight is its gold accuracy per token, normalized over the auto panelists
    to a mean of 1 and floored at `AUTO_MIN_SHARE` of their total: a cheap model that is right
    half as often as a dear one at a fifth of the tokens draws more, and no panelist starves.
    """

    def __init__(self, min_items: int, window_s: float = 7 * 24 * 3600.0, clock: Clock = time.time) -> None:
        self.min_items = min_items
        self.counts = EpochCounts(window_s, clock)

    def observe_gold(self, upstream: str, utility: float) -> None:
        self.counts.add(f"gold|{upstream}", utility)
        self.counts.add(f"items|{upstream}", 1.0)

    def observe_tokens(self, upstream: str, tokens: int, candidates: int) -> None:
        if candidates > 0:
            self.counts.add(f"tokens|{upstream}", float(tokens))
            self.counts.add(f"drawn|{upstream}", float(candidates))

    def accuracy_per_token(self, upstream: str) -> float | None:
        totals = self.counts.totals()
        items, drawn = totals.get(f"items|{upstream}", 0.0), totals.get(f"drawn|{upstream}", 0.0)
        tokens = totals.get(f"tokens|{upstream}", 0.0)
        if items < self.min_items or drawn <= 0 or tokens <= 0:
            return None
        return (totals.get(f"gold|{upstream}", 0.0) / items) / (tokens / drawn)

    def resolve(self, panel: Sequence[PanelistSettings]) -> tuple[PanelistSettings, ...]:
        """The panel with every `auto` weight replaced by its learned one (1 while learning)."""
        auto = [p.upstream for p in panel if p.weight == "auto"]
        values = {u: self.accuracy_per_token(u) for u in auto}
        learned: dict[str, float] = dict.fromkeys(auto, 1.0)
        known = [v for v in values.values() if v is not None]
        if auto and len(known) == len(auto) and sum(known) > 0:
            shares = floored(known, min(AUTO_MIN_SHARE, 1.0 / len(auto)))
            learned = {u: len(auto) * share for u, share in zip(auto, shares, strict=True)}
        return tuple(
            PanelistSettings(upstream=p.upstream, weight=learned[p.upstream]) if p.weight == "auto" else p
            for p in panel
        )



def floored(values: Sequence[float], floor: float) -> list[float]:
    """Shares proportional to `values`, none below `floor`: the floored ones get exactly it and
    the rest share what is left in proportion."""
    pinned: set[int] = set()
    while True:
        free = [i for i in range(len(values)) if i not in pinned]
        left = 1.0 - floor * len(pinned)
        total = sum(values[i] for i in free)
        shares = {i: left * values[i] / total if total > 0 else left / len(free) for i in free}
        low = {i for i, share in shares.items() if share < floor}
        if not low:
            return [floor if i in pinned else shares[i] for i in range(len(values))]
        pinned |= low
