"""N from measured gain (method §4.8): the gold accuracy of each n, and the n a route serves.

Each gold probe item draws `K` reference candidates per prompt variant (method §9.1). Cut into
disjoint groups of n, taken round-robin over the variants as the loop takes them, each group is
an independent draw of what a request capped at n would have been offered; the route's own
verifiers and selection pick one answer per group, and the checker scores it. The mean over the
groups is the item's gold accuracy at n (n = 1 is one sample of the first prompt). Routes whose
verifiers call nothing outside the request (self-consistency, regexes, schemas, logprobs) use
every group; a route that pays for each verification (judges, reward models, embeddings) uses
one group per n, so a probe item costs at most one extra verification per n.

`GainCurve` keeps, per item and n, the sum and count of those accuracies in time buckets that
processes share (`counts.EpochCounts`), so every worker and instance decides from the same gold.
`choose` compares n with the best n *paired by probe item* (each item's mean over its records,
so an item probed twice is not two items; a 90% normal interval over items).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from strategies.best_of_n.counts import Clock, EpochCounts
from strategies.best_of_n.settings import AdaptNSettings
from strategies.contract import Candidate

Z90 = 1.6448536269514722
GAIN_WINDOW_S = 7 * 24 * 3600.0  # gold accrues slowly (probe budgets): a week, then the next
Select = Callable[[list[Candidate]], Awaitable[int]]
Utility = Callable[[Candidate], "float | None"]


def measured_ns(max_n: int) -> list[int]:
    """The n a probe measures: 1, 2, 4, … below `max_n`, and `max_n` itself."""
    ns, n = [], 1
    while n < max_n:
        ns.append(n)
        n *= 2
    return [*ns, max_n]


def _shares(n: int, variants: Sequence[str]) -> dict[str, int]:
    """How many of n candidates each variant supplies, candidate i from variant i mod V."""
    out = dict.fromkeys(variants, 0)
    for i in range(n):
        out[variants[i % len(variants)]] += 1
    return {name: k for name, k in out.items() if k}


def groups(reference: Sequence[Candidate], variants: Sequence[str], n: int) -> list[list[Candidate]]:
    """Disjoint groups of n reference candidates, each ordered as the loop would sample them."""
    pools = {v: [c for c in reference if c.variant == v] for v in variants}
    shares = _shares(n, variants)
    count = min(len(pools[v]) // k for v, k in shares.items())
    out = []
    for g in range(count):
        taken = dict.fromkeys(shares, 0)
        group = []
        for i in range(n):
            name = variants[i % len(variants)]
            group.append(replace(pools[name][g * shares[name] + taken[name]], index=i))
            taken[name] += 1
        out.append(group)
    return out


async def accuracy_by_n(
    reference: Sequence[Candidate], variants: Sequence[str], ns: Sequence[int],
    select: Select, utility: Utility, *, every_group: bool,
) -> dict[int, float]:
    """Gold accuracy of selecting among n candidates, per n the reference draws can supply."""
    out: dict[int, float] = {}
    for n in ns:
        chosen = groups(reference, variants, n)
        if not every_group:
            chosen = chosen[:1]
        values = []
        for group in chosen:
            index = 0 if n == 1 else await select(group)
            value = utility(group[index])
            if value is not None:  # a candidate the checker cannot score is left out, never 0
                values.append(value)
        if values:
            out[n] = sum(values) / len(values)
    return out


# ---- the shared curve ----------------------------------------------------------------------


def _field(n: int, kind: str, item: str) -> str:
    return f"{n}|{kind}|{item}"


class GainCurve:
    """Per probe item and n, the gold accuracies its records measured (sum and count).

    `settings` is the route's `adapt_n` (None: the route keeps its cap, and the curve only says
    what that cap buys).
    """

    def __init__(self, settings: AdaptNSettings | None = None, clock: Clock = time.time) -> None:
        self.settings = settings
        self.counts = EpochCounts(settings.window_s if settings is not None else GAIN_WINDOW_S, clock)
        self._cached: dict[int, tuple[int, Gain | None]] = {}  # max_n → (counts version, gain)

    def add(self, item: str, accuracy: Mapping[int, float]) -> None:
        for n, value in accuracy.items():
            self.counts.add(_field(n, "sum", item), value)
            self.counts.add(_field(n, "count", item), 1.0)

    def gain(self, max_n: int) -> Gain | None:
        """What the route serves at cap `max_n` buys over one sample, with `adapt_n` the cap it
        should serve instead; None without enough gold. Cached until new gold arrives."""
        version = self.counts.version
        hit = self._cached.get(max_n)
        if hit is not None and hit[0] == version:
            return hit[1]
        table = self.table()
        settings = self.settings
        if settings is not None:
            gain = choose(table, max_n, settings.min_gain, settings.min_items)
        else:
            gain = measured_gain(table, max_n, AdaptNSettings().min_items)
        self._cached[max_n] = (version, gain)
        return gain

    def table(self) -> dict[int, dict[str, float]]:
        """n → probe item → the item's mean gold accuracy at n."""
        sums: dict[tuple[int, str], float] = {}
        counts: dict[tuple[int, str], float] = {}
        for field, value in self.counts.totals().items():
            parts = field.split("|", 2)
            if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("sum", "count"):
                continue
            key = (int(parts[0]), parts[2])
            (sums if parts[1] == "sum" else counts)[key] = value
        out: dict[int, dict[str, float]] = {}
        for (n, item), count in counts.items():
            if count > 0 and (n, item) in sums:
                out.setdefault(n, {})[item] = min(1.0, max(0.0, sums[(n, item)] / count))
        return out


# ---- the decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """mean over items of (accuracy at n − accuracy at m), with its 90% interval."""

    estimate: float
    low: float
    high: float
    items: int


def paired(table: Mapping[int, Mapping[str, float]], n: int, m: int, items: set[str]) -> Paired:
    diffs = [table[n][i] - table[m][i] for i in sorted(items)]
    k = len(diffs)
    mean = sum(diffs) / k
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (k - 1)) if k > 1 else math.inf
    half = Z90 * sd / math.sqrt(k)
    return Paired(mean, mean - half, mean + half, k)


@dataclass(frozen=True)
class Gain:
    """What the served n buys over one sample on the route's gold probes."""

    n: int  # the candidate cap it is measured at
    versus_one: Paired
    best_n: int  # the measured n with the highest gold accuracy
    adapted: bool  # `adapt_n` chose the cap (else it is the route's max_n)

    def as_dict(self) -> dict[str, Any]:
        gain = self.versus_one
        return {"n": self.n, "estimate": gain.estimate, "ci90": [gain.low, gain.high], "items": gain.items,
                "best_n": self.best_n, "adapted": self.adapted}


def _usable(table: Mapping[int, Mapping[str, float]], max_n: int, min_items: int) -> tuple[list[int], set[str]]:
    """The measured n ≤ max_n and the probe items measured at every one of them (at least
    `min_items`), growing n while enough items remain; ([], ∅) without gold at n = 1."""
    if len(table.get(1, {})) < min_items:
        return [], set()
    ns, items = [1], set(table[1])
    for n in sorted(k for k in table if 1 < k <= max_n):
        shared = items & set(table[n])
        if len(shared) >= min_items:
            ns.append(n)
            items = shared
    return ns, items


def choose(table: Mapping[int, Mapping[str, float]], max_n: int, min_gain: float, min_items: int) -> Gain | None:
    """The smallest n whose shortfall against the best measured n is not shown (90%, paired by
    item) to exceed `min_gain`; so 1 unless some n > 1 beats one sample by more. None without
    enough gold: the route serves as configured."""
    ns, items = _usable(table, max_n, min_items)
    if not ns:
        return None
    mean = {n: sum(table[n][i] for i in items) / len(items) for n in ns}
    best = max(ns, key=lambda n: (mean[n], -n))
    chosen = next(n for n in ns if paired(table, best, n, items).low <= min_gain)
    return Gain(chosen, paired(table, chosen, 1, items), best, adapted=True)


def measured_gain(table: Mapping[int, Mapping[str, float]], max_n: int, min_items: int) -> Gain | None:
    """The gain of the largest measured n ≤ `max_n` over one sample: what the route's
    configured cap buys, for routes that do not adapt n."""
    ns, items = _usable(table, max_n, min_items)
    if len(ns) < 2:
        return None
    mean = {n: sum(table[n][i] for i in items) / len(items) for n in ns}
    return Gain(ns[-1], paired(table, ns[-1], 1, items), max(ns, key=lambda n: (mean[n], -n)), adapted=False)
