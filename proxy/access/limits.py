"""Per-key limits (`server.keys`), held across workers and instances by the state backend.

Windows are fixed and aligned to the clock (each UTC minute; each UTC day for `daily_tokens`),
so every instance counts into the same Redis counter without talking to the others.

- `rpm` is checked and counted in one atomic step when a request arrives, so the request past
  the limit gets 429 whichever instance serves it.
- Tokens (`tpm`, `daily_tokens`) and candidates (`max_candidates_per_min`) are known only when a
  request is done, however it ends (a hang-up, a timeout and a cut stream included): they are
  charged then, with what the upstreams reported or, where they could not, an estimate
  (`proxy.upstream.allowance`), and a key whose window is already at its limit gets 429 for its
  next request. One request may overshoot a token limit, by what it cost; the next one is
  refused. Refusing up front would need an estimate of an answer not yet written, which either
  refuses requests that would have fit or lets through ones that do not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from proxy.access.auth import ClientKey
from proxy.errors import RateLimited
from proxy.state.base import Counter, SharedState
from proxy.telemetry import metrics

MINUTE_S = 60
DAY_S = 86_400
MARGIN_S = 5  # a counter outlives its window a little, for instances whose clocks differ slightly


class _Window:
    def __init__(self, now: float, length: int) -> None:
        self.index = int(now // length)
        self.left_s = max(1, math.ceil((self.index + 1) * length - now))


class KeyLimits:
    def __init__(self, state: SharedState, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock

    async def admit(self, key: ClientKey | None) -> None:
        """Count this request against `key`'s limits; raises `RateLimited` (429) when over one."""
        limits = key.limits if key is not None else None
        if key is None or limits is None:
            return
        now = self._clock()
        minute, day = _Window(now, MINUTE_S), _Window(now, DAY_S)
        checks: list[tuple[Counter, str, str, _Window]] = []
        if limits.rpm is not None:
            checks.append((self._counter(key, "rpm", minute, 1, limits.rpm), "requests per minute", "requests", minute))
        if limits.tpm is not None:
            checks.append((self._counter(key, "tpm", minute, 0, limits.tpm), "tokens per minute", "tokens", minute))
        if limits.daily_tokens is not None:
            counter = self._counter(key, "tpd", day, 0, limits.daily_tokens)
            checks.append((counter, "tokens per day (UTC)", "tokens", day))
        if limits.max_candidates_per_min is not None:
            counter = self._counter(key, "cpm", minute, 0, limits.max_candidates_per_min)
            checks.append((counter, "candidates per minute", "requests", minute))
        if not checks:
            return
        refused = await self._state.admit([check[0] for check in checks])
        if refused is None:
            return
        _, what, kind, window = next(check for check in checks if check[0] is refused)
        raise RateLimited(
            f"rate limit reached for key {key.name!r}: {refused.limit} {what}; try again in {window.left_s}s",
            retry_after_s=window.left_s, kind=kind,
        )

    async def charge(self, key: ClientKey | None, tokens: int, candidates: int) -> None:
        """What a request cost, however it ended; counted for the metrics whether or not limits are set."""
        if key is None:
            return
        if tokens > 0:
            metrics.KEY_TOKENS.labels(key.name).inc(tokens)
        limits = key.limits
        if limits is None:
            return
        now = self._clock()
        minute, day = _Window(now, MINUTE_S), _Window(now, DAY_S)
        counters = []
        if limits.tpm is not None and tokens > 0:
            counters.append(self._counter(key, "tpm", minute, tokens, limits.tpm))
        if limits.daily_tokens is not None and tokens > 0:
            counters.append(self._counter(key, "tpd", day, tokens, limits.daily_tokens))
        if limits.max_candidates_per_min is not None and candidates > 0:
            counters.append(self._counter(key, "cpm", minute, candidates, limits.max_candidates_per_min))
        if counters:
            await self._state.add(counters)

    @staticmethod
    def _counter(key: ClientKey, kind: str, window: _Window, amount: int, limit: int) -> Counter:
        # The braces are a Redis Cluster hash tag: one key's counters share a slot, as the
        # admit script (several keys at once) needs.
        return Counter(f"rl:{{{key.digest}}}:{kind}:{window.index}", amount, limit, window.left_s + MARGIN_S)
