"""Additive counts in time buckets: what a route learns from its recent traffic, in a form that
processes can add up.

A count is a sum, and sums of several processes add (`proxy/state/learning.py` pushes each
process's increments and takes back the total). Forgetting does not add up that way, so
recency comes from buckets instead: each count lands in the bucket of its wall-clock window
(`window_s` long), and the current and the previous bucket are what a reader sees, i.e. between
one and two windows of traffic. Older buckets are dropped here; the shared copy of a bucket is
never read again once its window has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

Clock = Callable[[], float]


class EpochCounts:
    """Counts by field name in the current and the previous `window_s` bucket.

    `version` changes whenever the counts do, so a reader can cache what it derives from them.
    Not thread-safe: one per route per event loop, like the route's other running estimates.
    """

    def __init__(self, window_s: float, clock: Clock = time.time) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._buckets: dict[int, dict[str, float]] = {}
        self._version = 0

    @property
    def version(self) -> int:
        self._live()  # a window that passed changes the counts too
        return self._version

    def _epoch(self) -> int:
        return int(self._clock() // self.window_s)

    def _live(self) -> tuple[int, int]:
        """The current and the previous epoch; drops every older bucket."""
        now = self._epoch()
        for old in [e for e in self._buckets if e < now - 1]:
            del self._buckets[old]
            self._version += 1
        return now - 1, now

    def add(self, field: str, amount: float = 1.0) -> None:
        _, now = self._live()
        bucket = self._buckets.setdefault(now, {})
        bucket[field] = bucket.get(field, 0.0) + amount
        self._version += 1

    def total(self) -> float:
        """All counts of the live buckets together."""
        return sum(self.totals().values())

    def totals(self) -> dict[str, float]:
        """Every field summed over the live buckets."""
        merged: dict[str, float] = {}
        for epoch in self._live():
            for field, value in self._buckets.get(epoch, {}).items():
                merged[field] = merged.get(field, 0.0) + value
        return merged

    # ---- what processes exchange (strategies.contract.SharedCounts) --------------------

    def buckets(self) -> dict[str, dict[str, float]]:
        """The live buckets by name (the epoch), empty ones included, so a process that has
        seen nothing yet still reads what others counted."""
        return {str(epoch): dict(self._buckets.get(epoch, {})) for epoch in self._live()}

    def restore(self, bucket: str, totals: Mapping[str, float]) -> None:
        """Replace a bucket's counts by `totals` (every process's, merged); a bucket that is no
        longer live is ignored."""
        epoch = int(bucket)
        if epoch not in self._live():
            return
        fresh = {field: float(value) for field, value in totals.items() if value}
        if fresh != self._buckets.get(epoch, {}):
            self._buckets[epoch] = fresh
            self._version += 1
