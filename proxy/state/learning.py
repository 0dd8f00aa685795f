"""What one process learns that every process should use: route risk estimates, the counts a
strategy learns (`Strategy.shared_counts`: the vote prior and the gold gain curve), and `n` support.

Each route's `RouteRiskState` (strategies/risk/estimators.py) stays a plain in-process object that the
strategy reads and feeds without I/O; here, around each request, the process pushes what it
observed since its last sync and takes back the totals of every process (`add_totals`, one
atomic Redis step). A strategy's shared counts travel the same way, one shared hash per bucket
(`<name>/<route>/<bucket>`), at most once a second per route: they move slowly, and each bucket
costs a Redis round trip. An upstream's learned "`n` is ignored or rejected" memo is published once
learned and read by processes that do not know it yet. With the memory backend all of this is
skipped: the process's own state is the whole state.
"""

from __future__ import annotations

import asyncio
import time

from proxy.routing import Route, Router
from proxy.state.base import SharedState
from proxy.upstream.client import UpstreamClient
from strategies.contract import SharedCounts
from strategies.risk.estimators import TERMS, RouteRiskState

ASK_AGAIN_S = 1.0  # an upstream nobody has learned about yet is looked up at most this often
COUNTS_EVERY_S = 1.0  # a route's shared counts are exchanged at most this often per process


class _RiskSync:
    def __init__(self, key: str, state: RouteRiskState) -> None:
        self.key = key
        self.state = state
        self._synced = state.totals()  # the totals as last set from the shared ones
        self._lock = asyncio.Lock()  # two syncs at once would push the same observations twice

    async def sync(self, shared: SharedState) -> None:
        async with self._lock:
            before = self.state.totals()
            deltas: dict[str, float] = {}
            for term, (total, count) in before.items():
                synced_total, synced_count = self._synced[term]
                if count != synced_count:
                    deltas[f"{term}.sum"] = total - synced_total
                    deltas[f"{term}.count"] = float(count - synced_count)
            shared_totals = await shared.add_totals(self.key, deltas)
            after = self.state.totals()  # requests of this process may have observed meanwhile
            merged: dict[str, tuple[float, int]] = {}
            synced: dict[str, tuple[float, int]] = {}
            for term in TERMS:
                total = shared_totals.get(f"{term}.sum", 0.0)
                count = round(shared_totals.get(f"{term}.count", 0.0))
                synced[term] = (total, count)
                merged[term] = (total + after[term][0] - before[term][0], count + after[term][1] - before[term][1])
            self.state.restore(merged)
            self._synced = synced


class _CountsSync:
    """One strategy's named counts for one route: per bucket, push this process's increments
    since the last exchange and take back every process's totals, as `_RiskSync` does."""

    def __init__(self, key: str, counts: SharedCounts) -> None:
        self.key = key
        self.counts = counts
        self._synced: dict[str, dict[str, float]] = {}  # bucket → the totals last taken
        self._lock = asyncio.Lock()
        self._last = -COUNTS_EVERY_S

    async def sync(self, shared: SharedState, now: float, force: bool = False) -> None:
        if (now - self._last < COUNTS_EVERY_S and not force) or self._lock.locked():
            return  # a sync in flight will carry this request's counts too, or the next one will
        self._last = now
        async with self._lock:
            synced: dict[str, dict[str, float]] = {}
            for bucket, before in self.counts.buckets().items():
                taken = self._synced.get(bucket, {})
                deltas = {f: v - taken.get(f, 0.0) for f, v in before.items() if v != taken.get(f, 0.0)}
                totals = await shared.add_totals(f"{self.key}/{bucket}", deltas)
                after = self.counts.buckets().get(bucket, {})  # counted meanwhile by this process
                merged = dict(totals)
                for field in set(after) | set(before):
                    merged[field] = merged.get(field, 0.0) + after.get(field, 0.0) - before.get(field, 0.0)
                self.counts.restore(bucket, merged)
                synced[bucket] = totals
            self._synced = synced  # buckets past their window are dropped with it


class SharedLearning:
    def __init__(self, router: Router, state: SharedState) -> None:
        self._state = state
        self._risk: dict[str, _RiskSync] = {}
        self._counts: dict[str, list[_CountsSync]] = {}
        for name, route in router.routes.items():
            if route.strategy.state is not None:
                self._risk[name] = _RiskSync(f"risk/{name}", route.strategy.state)
            self._counts[name] = [
                _CountsSync(f"{kind}/{name}", counts) for kind, counts in route.strategy.shared_counts.items()
            ]
        self._clients = router.clients
        self._published: dict[str, bool | None] = {name: c.n_works for name, c in router.clients.items()}
        self._asked: dict[str, float] = {}

    @property
    def state(self) -> SharedState:
        """The backend this process shares through; gold probes keep their budget there too."""
        return self._state

    async def before(self, route: Route) -> None:
        """Take in what other processes learned, before `route` serves a request."""
        if not self._state.shared:
            return
        await asyncio.gather(self._read_n_support(route.upstream), self._sync_risk(route))

    async def after(self, route: Route) -> None:
        """Share what this request taught, before its answer leaves: the next request, on any
        instance, can use it."""
        if not self._state.shared:
            return
        await asyncio.gather(self._publish_n_support(), self._sync_risk(route))

    async def share_counts(self, route: Route) -> None:
        """Push `route`'s counts now, whenever they last went: a gold probe item's are worth
        more than a request's, and the next item may be minutes away."""
        if not self._state.shared:
            return
        for counts in self._counts.get(route.name, ()):
            await counts.sync(self._state, time.monotonic(), force=True)

    async def _sync_risk(self, route: Route) -> None:
        sync = self._risk.get(route.name)
        if sync is not None:
            await sync.sync(self._state)
        now = time.monotonic()
        for counts in self._counts.get(route.name, ()):
            await counts.sync(self._state, now)

    async def _read_n_support(self, client: UpstreamClient) -> None:
        if client.n_works is not None:
            return
        now = time.monotonic()
        if now - self._asked.get(client.name, -ASK_AGAIN_S) < ASK_AGAIN_S:
            return
        self._asked[client.name] = now
        value = await self._state.get_json(f"n_support/{client.name}")
        if isinstance(value, bool) and client.n_works is None:
            client.n_works = value
            self._published[client.name] = value

    async def _publish_n_support(self) -> None:
        for name, client in self._clients.items():
            if client.n_works is not None and client.n_works != self._published.get(name):
                self._published[name] = client.n_works
                await self._state.put_json(f"n_support/{name}", client.n_works)
