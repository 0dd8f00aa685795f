"""The safety gate of learned selection (method §10.6): serve the model only where the probes
show it no worse than weighted selection.

A model fitted on the probe clusters can lose to the plain weighted choice: its AUROC screen
keeps a signal that held on the probes by chance, a binary signal outweighs a 7/8 majority, the
probes are too few. Every fit therefore measures, per probe item and on held-out folds
(`HeldOut`, kept with the model), whether the model's top cluster was right where weighted
selection's was wrong, or the reverse. The route serves the model while the paired
90% interval of (learned − weighted) accuracy has its lower end at or above `−margin`: the
probes rule out a loss larger than the margin. Otherwise it serves weighted selection and
`rvr.selection.fallback_reason` says why.

The interval is Agresti & Min's (2005) for a difference of paired proportions: ½ added to each
cell of the 2×2 table, so it stays open when the two selectors agree on every item (and then
needs about 80 items to rule out a loss of 0.02).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from strategies.contract import finite
from strategies.risk.intervals import Z90

GateState = Literal["open", "closed", "no_model"]
GATE_STATES: tuple[GateState, ...] = ("open", "closed", "no_model")


def paired_difference(wins: float, losses: float, items: int, z: float = Z90) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of A − accuracy of B over `items` paired items, where A
    alone was right on `wins` and B alone on `losses`; Agresti–Min's adjusted interval. An item
    run several times counts once, with its runs' shares as fractional counts (which makes the
    interval, built for 0/1 differences, a little wider than it need be)."""
    b, c, n = wins + 0.5, losses + 0.5, items + 2.0
    difference = (b - c) / n
    half = z * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return (wins - losses) / items if items else 0.0, max(difference - half, -1.0), min(difference + half, 1.0)


@dataclass(frozen=True)
class SafetyGate:
    serves: bool
    margin: float
    items: int = 0
    learned: float | None = None  # held-out accuracy of the model's top cluster
    weighted: float | None = None  # weighted selection's accuracy on the same items
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    reason: str | None = None  # why weighted selection serves instead, in words for `rvr`

    @property
    def state(self) -> GateState:
        return "open" if self.serves else "closed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "serves": self.serves, "margin": self.margin, "items": self.items, "learned": self.learned,
            "weighted": self.weighted, "difference": self.difference,
            "ci90": None if self.low is None else [self.low, self.high], "reason": self.reason,
        }


@dataclass(frozen=True)
class HeldOut:
    """The model against weighted selection on the probe items, each predicted by a model fitted
    without it: `wins` where only the model's top cluster was right, `losses` where only
    weighted selection's was."""

    items: int
    wins: float  # summed over items: the share of an item's runs where only the model was right
    losses: float  # the same where only weighted selection was right
    learned: float  # accuracy of the model's top cluster (runs of an item averaged first)
    weighted: float  # accuracy of weighted selection's cluster

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "wins": self.wins, "losses": self.losses,
                "learned": self.learned, "weighted": self.weighted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOut:
        items = int(finite(data["items"], 1))
        return cls(items, finite(data["wins"], 0, items), finite(data["losses"], 0, items),
                   finite(data["learned"], 0, 1), finite(data["weighted"], 0, 1))


def safety_gate(held: HeldOut | None, margin: float) -> SafetyGate:
    """Whether a model may serve: its held-out accuracy is not below weighted selection's by
    more than `margin`, as far as the paired interval over the probe items can tell."""
    if held is None:
        return SafetyGate(False, margin, reason="learned selection has no held-out comparison with weighted "
                                                "selection yet (too few probe items to cross-fit)")
    difference, low, high = paired_difference(held.wins, held.losses, held.items)
    serves = low >= -margin
    reason = None if serves else (
        f"learned selection's held-out accuracy {held.learned:.3f} against weighted selection's "
        f"{held.weighted:.3f} on {held.items} probe items: the difference {difference:+.3f} "
        f"[{low:+.3f}, {high:+.3f}] (90%) does not rule out a loss of more than {margin:g}, so weighted "
        f"selection serves"
    )
    return SafetyGate(serves, margin, held.items, held.learned, held.weighted, difference, low, high, reason)
