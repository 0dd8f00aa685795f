"""State every worker and every instance must agree on: one small async interface, two backends.

`server.state.backend: memory` (the default) keeps it in the process, as a single process needs;
`redis` shares it through Redis, so N workers and M instances behind a load balancer learn as one.
The proxy builds one per worker (`Proxy.state`, started and closed by the app's lifespan):

    state = build_state(settings)                 # MemoryState or RedisState
    await state.put_json("probe/llm", {...})      # any JSON value; the last writer wins
    await state.get_json("probe/llm")             # the value, or None if never written
    await state.add_totals("risk/chat", {"candidate.sum": 0.25, "candidate.count": 1.0})
                                                  # adds atomically, returns every field's total
    await state.admit([Counter(...)])             # rate limits: None, or the first counter refused
    await state.add([Counter(...)])               # charge counters after the fact

Keys are short paths made of config names (`probe/<upstream>`, `risk/<route>`); the backend adds
`<prefix>:`. Never put a client's key or request content in one: hash it (`proxy.access.limits`).

If Redis fails, nothing fails for clients: `RedisState` serves every call from its local copy
(the last values it saw plus what this process did since), logs once, exports
`rvr_state_backend_up 0`, and retries every second. When Redis answers again it pushes what was
done meanwhile (totals added, JSON written), and if Redis came back empty (restarted without
persistence) it pushes everything it knows. Rate-limit counters are then per process until
Redis returns: limits still hold, only no longer across processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.telemetry import metrics
from proxy.config.scale import StateSettings

log = logging.getLogger("rvr_proxy")
RETRY_S = 1.0  # while Redis is down: how often to try it again; while up: how often to check it
EPOCH_KEY = "epoch"  # a random id written once per Redis data set: a new one means Redis lost its data


@dataclass(frozen=True)
class Counter:
    """A windowed counter: `key` names the window (e.g. `rl:{ab12}:rpm:29012345`)."""

    key: str
    amount: int  # added when admitted (`admit`) or charged (`add`)
    limit: int  # `admit` refuses when value + max(amount, 1) > limit; a value at the limit refuses all
    ttl_s: int  # kept this long after its last change: at least to its window's end


class SharedState:
    """The interface; `shared` says whether other processes see what this one writes."""

    shared = False

    @property
    def up(self) -> bool:
        return True

    async def start(self) -> None:
        metrics.STATE_BACKEND_UP.set(1)

    async def close(self) -> None:
        pass

    async def get_json(self, key: str) -> Any:
        raise NotImplementedError

    async def put_json(self, key: str, value: Any) -> None:
        raise NotImplementedError

    async def add_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    async def admit(self, counters: Sequence[Counter]) -> Counter | None:
        raise NotImplementedError

    async def add(self, counters: Sequence[Counter]) -> None:
        raise NotImplementedError


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

    def _value(self, key: str, now: float) -> int:
        value, expires = self._counters.get(key, (0, now + 1))
        if expires <= now:
            del self._counters[key]
            return 0
        return value

    def _add(self, counters: Sequence[Counter], now: float) -> None:
        for counter in counters:
            if counter.amount > 0:
                value = self._value(counter.key, now)
                self._counters[counter.key] = (value + counter.amount, now + counter.ttl_s)
        if len(self._counters) > 10_000:  # windows of keys that went quiet
            for key in [k for k, (_, expires) in self._counters.items() if expires <= now]:
                del self._counters[key]


# Check every counter, then add to all of them, in one atomic step: two instances can never both
# take the last request of a window. ARGV holds (amount, limit, ttl) per key.
_ADMIT = """
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = tonumber(ARGV[3 * i - 2])
  if value + math.max(amount, 1) > tonumber(ARGV[3 * i - 1]) then return i end
end
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 * i - 2])
  if amount > 0 then
    redis.call('INCRBY', KEYS[i], amount)
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
  end
end
return 0
"""


class RedisState(SharedState):
    """Redis, with a local copy that serves while Redis does not (see the module docstring)."""

    shared = True

    def __init__(self, settings: StateSettings) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert settings.url is not None
        self._prefix = settings.prefix + ":"
        # No retries inside redis-py: a failed command falls back to local state at once, and the
        # reconnect loop below decides when Redis is back (and resyncs it).
        self._redis = Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._admit = self._redis.register_script(_ADMIT)
        self.local = MemoryState()
        self._pending: dict[str, dict[str, float]] = {}  # totals added while Redis was down
        self._dirty: set[str] = set()  # JSON written while Redis was down
        self._epoch: str | None = None
        self._up = False
        self._reported_down = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        metrics.STATE_BACKEND_UP.set(0)
        try:
            await self._resync()
        except Exception as exc:  # noqa: BLE001 - any failure means: serve from memory for now
            self._down(exc, starting=True)
        self._watch = asyncio.ensure_future(self._watch_redis())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self._redis.aclose()

    # ---- the interface ---------------------------------------------------------------------

    async def get_json(self, key: str) -> Any:
        if self._up:
            try:
                text = await self._redis.get(self._prefix + key)
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
            else:
                if text is not None:
                    self.local.json[key] = str(text)
                    return json.loads(text)
        return await self.local.get_json(key)

    async def put_json(self, key: str, value: Any) -> None:
        await self.local.put_json(key, value)
        if self._up:
            try:
                await self._redis.set(self._prefix + key, self.local.json[key])
                return
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
        self._dirty.add(key)

    async def add_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        if self._up:
            try:
                totals = await self._push_totals(key, deltas)
            except Exception as exc:  # noqa: BLE001 - counted as not applied: it goes out again later
                self._down(exc)
            else:
                self.local.totals[key] = totals
                return dict(totals)
        pending = self._pending.setdefault(key, {})
        for field, delta in deltas.items():
            pending[field] = pending.get(field, 0.0) + delta
        return dict(self.local.add_totals_now(key, deltas))

    async def admit(self, counters: Sequence[Counter]) -> Counter | None:
        if self._up:
            try:
                args = [v for c in counters for v in (c.amount, c.limit, c.ttl_s)]
                refused = int(await self._admit(keys=[self._prefix + c.key for c in counters], args=args))
                return counters[refused - 1] if refused else None
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
        return await self.local.admit(counters)

    async def add(self, counters: Sequence[Counter]) -> None:
        if self._up:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for c in counters:
                        if c.amount > 0:
                            pipe.incrby(self._prefix + c.key, c.amount)
                            pipe.expire(self._prefix + c.key, c.ttl_s)
                    await pipe.execute()
                return
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
        await self.local.add(counters)

    # ---- outages ---------------------------------------------------------------------------

    async def _push_totals(self, key: str, deltas: Mapping[str, float]) -> dict[str, float]:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            for field, delta in deltas.items():
                if delta:
                    pipe.hincrbyfloat(name, field, delta)
            pipe.hgetall(name)
            results = await pipe.execute()
        return {field: float(value) for field, value in results[-1].items()}

    def _down(self, exc: BaseException, starting: bool = False) -> None:
        self._up = False
        metrics.STATE_BACKEND_UP.set(0)
        if not self._reported_down:  # once per outage, not once per request
            self._reported_down = True
            event = "state_backend_unreachable_at_start" if starting else "state_backend_down"
            log.warning(json.dumps({
                "event": event, "error": type(exc).__name__,
                "effect": "serving from this process's own state until Redis answers",
            }))

    async def _watch_redis(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            try:
                if not self._up:
                    await self._resync()
                elif await self._redis.get(self._prefix + EPOCH_KEY) != self._epoch:
                    self._up = False  # Redis lost its data between two of our commands
                    await self._resync()
            except Exception as exc:  # noqa: BLE001
                self._down(exc)

    async def _resync(self) -> None:
        """Make Redis hold what this process knows, then serve from Redis again."""
        epoch_key = self._prefix + EPOCH_KEY
        await self._redis.set(epoch_key, uuid.uuid4().hex, nx=True)
        epoch = await self._redis.get(epoch_key)  # decode_responses: a str
        epoch = None if epoch is None else str(epoch)
        if self._epoch is not None and epoch != self._epoch:
            # A fresh Redis: give it everything this process has (its view includes what others
            # had pushed before, so shared sums may count some observations more than once; the
            # running means, which are what is used, stay where they were).
            self._pending = {key: dict(totals) for key, totals in self.local.totals.items()}
            self._dirty = set(self.local.json)
        self._epoch = epoch
        # Commands keep landing in _pending/_dirty while this awaits, so drain until both are empty;
        # nothing awaits between the last check and going up, so nothing is stranded.
        while self._pending or self._dirty:
            pending, self._pending = self._pending, {}
            dirty, self._dirty = self._dirty, set()
            try:
                for key in list(pending):
                    self.local.totals[key] = await self._push_totals(key, pending[key])
                    del pending[key]
                for key in list(dirty):
                    await self._redis.set(self._prefix + key, self.local.json[key])
                    dirty.discard(key)
            except BaseException:
                for key, deltas in pending.items():  # not pushed, or not known to be: keep them
                    target = self._pending.setdefault(key, {})
                    for field, delta in deltas.items():
                        target[field] = target.get(field, 0.0) + delta
                self._dirty |= dirty
                raise
        was_down = self._reported_down
        self._up, self._reported_down = True, False
        metrics.STATE_BACKEND_UP.set(1)
        if was_down:
            log.info(json.dumps({"event": "state_backend_up", "effect": "shared state resumed"}))


def build_state(settings: StateSettings) -> SharedState:
    return RedisState(settings) if settings.backend == "redis" else MemoryState()
