"""`server.state.backend: redis`: state shared through Redis by every worker and instance.

If Redis fails, nothing fails for clients: `RedisState` serves every call from its local copy
(the last values it saw plus what this process did since), logs once, exports
`rvr_state_backend_up 0`, and retries every second. When Redis answers again it pushes what was
done meanwhile (totals added, JSON written, counters counted), and if Redis came back empty
(restarted without persistence) it pushes everything it knows.

Rate-limit counters fail safe: every counter Redis answers about is mirrored locally with the
value Redis returned, so during an outage a process counts on from the last total it saw for
that key and window, not from 0. When Redis returns, what each process counted meanwhile is
added back (a sum: the deltas are disjoint, so Redis then holds the exact total); if Redis came
back empty, each process's whole local value is merged in by maximum (a sum would count the
shared part seen before the outage once per process). What an operator can still lose is what
the processes admit without seeing each other: in one window, each of P processes may admit up
to (limit - the total it last saw), so at most P × limit where every process saw 0, and less
the busier the key was (docs/operations.md, "Key limits during a Redis outage").
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.config.scale import StateSettings
from proxy.state.base import Counter, SharedState
from proxy.state.memory import MemoryState
from proxy.telemetry import metrics

log = logging.getLogger("rvr_proxy")
RETRY_S = 1.0  # while Redis is down: how often to try it again; while up: how often to check it
EPOCH_KEY = "epoch"  # a random id written once per Redis data set: a new one means Redis lost its data


# Check every counter, then add to all of them, in one atomic step: two instances can never both
# take the last request of a window. ARGV holds (amount, limit, ttl) per key. Returns the index
# of the counter refused (0: none), then every counter's value after the step, for the mirror.
_ADMIT = """
local values = {}
local refused = 0
for i = 1, #KEYS do
  values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if refused == 0 and values[i] + math.max(tonumber(ARGV[3 * i - 2]), 1) > tonumber(ARGV[3 * i - 1]) then
    refused = i
  end
end
if refused == 0 then
  for i = 1, #KEYS do
    local amount = tonumber(ARGV[3 * i - 2])
    if amount > 0 then
      values[i] = redis.call('INCRBY', KEYS[i], amount)
      redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
    end
  end
end
table.insert(values, 1, refused)
return values
"""

# Add (amount, ttl) per key, where amounts may be negative (a settled reservation gives back what
# it held): a window never counts below 0. Returns the values after.
_ADD = """
local values = {}
for i = 1, #KEYS do
  local value = redis.call('INCRBY', KEYS[i], tonumber(ARGV[2 * i - 1]))
  if value < 0 then
    redis.call('SET', KEYS[i], 0)
    value = 0
  end
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i]))
  values[i] = value
end
return values
"""

# After Redis came back empty: (value, ttl) per key, kept where larger than what Redis holds now.
_MERGE_MAX = """
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tonumber(ARGV[2 * i - 1]) > value then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', tonumber(ARGV[2 * i]))
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
        self._add = self._redis.register_script(_ADD)
        self._merge_max = self._redis.register_script(_MERGE_MAX)
        self.local = MemoryState()
        self._pending: dict[str, dict[str, float]] = {}  # totals added while Redis was down
        self._counted: dict[str, tuple[int, int]] = {}  # counters added while Redis was down: (sum, ttl)
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
                refused, *values = await self._admit(keys=[self._prefix + c.key for c in counters], args=args)
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
            else:
                self._mirror(counters, values)
                return counters[int(refused) - 1] if int(refused) else None
        refused_here = await self.local.admit(counters)
        if refused_here is None:
            self._count_locally([c for c in counters if c.amount > 0])
        return refused_here

    async def add(self, counters: Sequence[Counter]) -> None:
        counters = [c for c in counters if c.amount]
        if not counters:
            return
        if self._up:
            try:
                await self._push_counters(counters)
                return
            except Exception as exc:  # noqa: BLE001
                self._down(exc)
        await self.local.add(counters)
        self._count_locally(counters)

    async def _push_counters(self, counters: Sequence[Counter]) -> None:
        args = [v for c in counters for v in (c.amount, c.ttl_s)]
        values = await self._add(keys=[self._prefix + c.key for c in counters], args=args)
        self._mirror(counters, values)

    def _mirror(self, counters: Sequence[Counter], values: Sequence[Any]) -> None:
        for counter, value in zip(counters, values, strict=True):
            self.local.mirror(counter.key, int(value), counter.ttl_s)

    def _count_locally(self, counters: Sequence[Counter]) -> None:
        for counter in counters:
            total, _ = self._counted.get(counter.key, (0, 0))
            self._counted[counter.key] = (total + counter.amount, counter.ttl_s)

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

    async def _merge_counters(self) -> None:
        """Redis lost its counters: give it every live local value, kept where larger."""
        self._counted = {}  # the whole values go out below, deltas included
        live = self.local.counters()
        if live:
            keys = [self._prefix + key for key in live]
            await self._merge_max(keys=keys, args=[v for value, ttl in live.values() for v in (value, ttl)])

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
            await self._merge_counters()
        self._epoch = epoch
        # Commands keep landing in _pending/_dirty while this awaits, so drain until both are empty;
        # nothing awaits between the last check and going up, so nothing is stranded.
        while self._pending or self._dirty or self._counted:
            pending, self._pending = self._pending, {}
            dirty, self._dirty = self._dirty, set()
            counted, self._counted = self._counted, {}
            try:
                if counted:
                    await self._push_counters([Counter(key, total, 0, ttl) for key, (total, ttl) in counted.items()])
                    counted = {}
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
                for key, (total, ttl) in counted.items():
                    mine, _ = self._counted.get(key, (0, 0))
                    self._counted[key] = (mine + total, ttl)
                raise
        was_down = self._reported_down
        self._up, self._reported_down = True, False
        metrics.STATE_BACKEND_UP.set(1)
        if was_down:
            log.info(json.dumps({"event": "state_backend_up", "effect": "shared state resumed"}))
