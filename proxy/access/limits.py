"""Per-key limits (`server.keys`), held across workers and instances by the state backend.

Windows are fixed and aligned to the clock (each UTC minute; each UTC day for `daily_tokens`),
so every instance counts into the same Redis counter without talking to the others.

- `rpm` is checked and counted in one atomic step when a request arrives, so the request past
  the limit gets 429 whichever instance serves it. A key whose token or candidate window is
  already full is refused then too, before its body is read.
- Tokens (`tpm`, `daily_tokens`) and candidates (`max_candidates_per_min`) are reserved once the
  request is parsed, at its estimate (`proxy.upstream.allowance.request_estimate`: every
  candidate it may draw, at its prompt plus its completion cap, or the route's token budget), in
  the same atomic check-and-add: a request that does not fit beside what is spent and reserved
  gets 429. When the request ends, however it ends (a hang-up, a timeout and a cut stream
  included), the reservation is settled at what it cost: what the upstreams reported, or an
  estimate where they could not (`RequestAllowance.charged`).

So concurrency cannot add up to an overshoot: at any moment a window holds what was spent plus
every in-flight estimate. A limit is passed only by (a) one request whose estimate alone is
larger than the whole limit, admitted into an empty window (a request must be able to run at
all), and (b) requests that cost more than their estimate: an answer without a `max_tokens`
(its completion is estimated at `COMPLETION_GUESS` tokens), or judge calls on a route without
`max_tokens_budget`. docs/operations.md gives the measured bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from proxy.access.auth import ClientKey
from proxy.errors import RateLimited
from proxy.state.base import Counter, SharedState
from proxy.telemetry import metrics
from proxy.upstream.allowance import Estimate, RequestAllowance

MINUTE_S = 60
DAY_S = 86_400
MARGIN_S = 5  # a counter outlives its window a little, for instances whose clocks differ slightly


class _Window:
    def __init__(self, now: float, length: int) -> None:
        self.index = int(now // length)
        self.left_s = max(1, math.ceil((self.index + 1) * length - now))


@dataclass(frozen=True)
class Reservation:
    """Counters a request's estimate was added to; settling adds (cost - estimate) to each."""

    tokens: tuple[Counter, ...]
    candidates: tuple[Counter, ...]
    estimate: Estimate


@dataclass
class Bill:
    """Who pays for a request, and what it has spent and reserved so far."""

    key: ClientKey | None
    allowance: RequestAllowance | None = None
    reservation: Reservation | None = None

    def cost(self, reported_tokens: int, candidates: int | None) -> tuple[int, int]:
        """(tokens, candidates) the request cost: the larger of the usage it reported and what
        its allowance saw spent (cut calls at their estimate). `candidates` None: the request
        ended without an outcome to count them in; if it called upstream, the work it started is
        charged at its estimate, as cut calls are."""
        spent = self.allowance.charged if self.allowance is not None else 0
        if candidates is None:
            started = self.allowance is not None and self.allowance.calls > 0
            candidates = self.reservation.estimate.candidates if started and self.reservation is not None else 0
        return max(reported_tokens, spent), candidates


class _Check(NamedTuple):
    counter: Counter
    counts: str  # "requests", "tokens" or "candidates"
    what: str  # for the 429's message
    window: _Window


class KeyLimits:
    def __init__(self, state: SharedState, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock

    async def admit(self, key: ClientKey | None) -> None:
        """Count this request against `key`'s rpm, and refuse a key whose windows are already full."""
        if key is not None and key.limits is not None:
            await self._admit(key, self._checks(key, requests=1, tokens=0, candidates=0))

    async def reserve(self, key: ClientKey | None, estimate: Estimate) -> Reservation | None:
        """Hold `estimate` in `key`'s token and candidate windows; raises `RateLimited` when it
        does not fit beside what is spent and reserved there."""
        if key is None or key.limits is None:
            return None
        checks = self._checks(key, requests=0, tokens=estimate.tokens, candidates=estimate.candidates)
        # An estimate larger than the whole limit is held at the limit: it fits an empty window
        # only, so such a request can still run, alone.
        checks = [check._replace(counter=replace(check.counter, amount=min(check.counter.amount, check.counter.limit)))
                  for check in checks]
        await self._admit(key, checks)
        return Reservation(
            tuple(check.counter for check in checks if check.counts == "tokens"),
            tuple(check.counter for check in checks if check.counts == "candidates"),
            estimate,
        )

    async def charge(self, bill: Bill, reported_tokens: int, candidates: int | None) -> None:
        """What a request cost, however it ended; counted for the metrics whether or not limits are set."""
        key = bill.key
        if key is None:
            return
        tokens, candidates = bill.cost(reported_tokens, candidates)
        if tokens > 0:
            metrics.KEY_TOKENS.labels(key.name).inc(tokens)
        if key.limits is None:
            return
        reservation = bill.reservation
        if reservation is not None:  # settle in the windows the estimate went to
            counters = [replace(c, amount=tokens - c.amount) for c in reservation.tokens]
            counters += [replace(c, amount=candidates - c.amount) for c in reservation.candidates]
        else:  # refused or failed before it reserved: what it spent goes to the current windows
            counters = [check.counter for check in self._checks(key, requests=0, tokens=tokens, candidates=candidates)]
        await self._state.add(counters)

    def _checks(self, key: ClientKey, *, requests: int, tokens: int, candidates: int) -> list[_Check]:
        """A check per limit `key` has (rpm only when `requests` counts toward it)."""
        limits = key.limits
        assert limits is not None
        now = self._clock()
        minute, day = _Window(now, MINUTE_S), _Window(now, DAY_S)
        wanted = [
            ("rpm", limits.rpm if requests else None, requests, "requests", "requests per minute", minute),
            ("tpm", limits.tpm, tokens, "tokens", "tokens per minute", minute),
            ("tpd", limits.daily_tokens, tokens, "tokens", "tokens per day (UTC)", day),
            ("cpm", limits.max_candidates_per_min, candidates, "candidates", "candidates per minute", minute),
        ]
        return [
            _Check(self._counter(key, kind, window, amount, limit), counts, what, window)
            for kind, limit, amount, counts, what, window in wanted
            if limit is not None
        ]

    async def _admit(self, key: ClientKey, checks: list[_Check]) -> None:
        if not checks:
            return
        refused = await self._state.admit([check.counter for check in checks])
        if refused is None:
            return
        check = next(check for check in checks if check.counter is refused)
        wait_s = check.window.left_s
        raise RateLimited(
            f"rate limit reached for key {key.name!r}: {refused.limit} {check.what}; try again in {wait_s}s",
            retry_after_s=wait_s, kind="tokens" if check.counts == "tokens" else "requests",
        )

    @staticmethod
    def _counter(key: ClientKey, kind: str, window: _Window, amount: int, limit: int) -> Counter:
        # The braces are a Redis Cluster hash tag: one key's counters share a slot, as the
        # admit script (several keys at once) needs.
        return Counter(f"rl:{{{key.digest}}}:{kind}:{window.index}", amount, limit, window.left_s + MARGIN_S)
