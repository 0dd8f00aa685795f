"""Panels: one route's candidates drawn from several upstreams (models), split by weight.

A model's wrong answers agree with each other; another model's mostly do not, so a panel breaks
the correlation that more samples of one model cannot (method §4.10). The loop asks this module
which panelist draws each candidate, and records which panelists failed and why; everything else
(stopping, verifiers, selection, caps) works on the pooled candidates as on one model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from strategies.contract import MODEL_NAME_PATTERN, Candidate, StrictModel

# Why a panelist was dropped for a request: a metric label, so a fixed vocabulary.
DropReason = Literal["rate_limited", "timeout", "error", "no_candidates"]
DROP_REASONS: tuple[DropReason, ...] = ("rate_limited", "timeout", "error", "no_candidates")


class PanelistSettings(StrictModel):
    upstream: str = Field(pattern=MODEL_NAME_PATTERN)
    weight: float = Field(1.0, gt=0, le=1000)  # its share of every batch, relative to the others


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
    order = weighted_order([p.weight for p in active], last_round) if active else []
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
        }

