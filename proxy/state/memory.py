"""`server.state.backend: memory`: state kept in this process, as a single process needs.

It is also `RedisState`'s local copy, which serves every call while Redis does not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.state.base import Counter, SharedState


class MemoryState(SharedState):
    """In this process only. Values are stored as JSON text, so callers never share objects."""

    def __init__(self) -> None:
        self.json: dict[str, str] = {}
        self.totals: dict[str, dict[str, float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}  # key: (value, expires at, monotonic)

    async def get_json(self, key: str) -> Any:
        text = self.json.get(key)
        return None if text is None else json.loads(text)

    async def put_json(self, key: str, value: Any) -> None:
        self.json[key] = json.dumps(value)

    async def add_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        return dict(self.add_totals_now(key, deltas))

    def add_totals_now(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        totals = self.totals.setdefault(key, {})
        for field, delta in deltas.items():
            totals[field] = totals.get(field, 0.0) + delta
        return totals

    async def admit(self, counters: Sequence[Counter]) -> Counter | None:
        now = time.monotonic()
        for counter in counters:
            if self._value(counter.key, now) + max(counter.amount, 1) > counter.limit:
                return counter
        self._add(counters, now)
        return None

    async def add(self, counters: Sequence[Counter]) -> None:
        self._add(counters, time.monotonic())

    def mirror(self, key: str, value: int, ttl_s: int) -> None:
        """Take a counter's value as another store holds it (`RedisState`'s last-seen totals).

        Never lowered: a Redis that restarted empty answers from 0 until the epoch check notices
        (up to a second), and the mirror must still hold the total to merge back. The price is
        that reservations given back since are still counted here, which errs on the safe side.
        """
        now = time.monotonic()
        self._counters[key] = (max(value, self._value(key, now)), now + ttl_s)

    def counters(self) -> dict[str, tuple[int, int]]:
        """Every live counter: key -> (value, seconds left)."""
        now = time.monotonic()
        return {
            key: (value, max(1, int(expires - now)))
            for key, (value, expires) in self._counters.items()
            if expires > now
        }

    def _value(self, key: str, now: float) -> int:
        value, expires = self._counters.get(key, (0, now + 1))
        if expires <= now:
            del self._counters[key]
            return 0
        return value

    def _add(self, counters: Sequence[Counter], now: float) -> None:
        for counter in counters:
            if counter.amount:
                # A settled reservation gives back what it held; a window never counts below 0.
                value = max(0, self._value(counter.key, now) + counter.amount)
                self._counters[counter.key] = (value, now + counter.ttl_s)
        if len(self._counters) > 10_000:  # windows of keys that went quiet
            for key in [k for k, (_, expires) in self._counters.items() if expires <= now]:
                del self._counters[key]
