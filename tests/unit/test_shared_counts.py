"""A route's learned counts (vote prior, gold gain curve) shared between processes (method §12),
here two `SharedLearning`s over one store standing in for Redis; tests/system/test_shared_prior.py
does it with two proxies and a real Redis."""

from __future__ import annotations

import asyncio

import pytest

import proxy.state.learning as learning
from proxy.config.settings import parse_config
from proxy.routing import Route, Router
from proxy.state.learning import SharedLearning
from proxy.state.memory import MemoryState
from strategies.best_of_n.loop import BestOfN

CONFIG = {
    "upstreams": [{"name": "up", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9"}}],
    "routes": [{"model": "r", "upstream": "up", "strategy": {
        "name": "best_of_n", "max_n": 8, "stop": {"prior": {"min_requests": 3}}, "adapt_n": {"min_items": 2},
    }}],
}


class OneStore(MemoryState):
    """What Redis is to two processes: one store both see."""

    shared = True


def worker(store: OneStore) -> tuple[SharedLearning, Route, BestOfN]:
    router = Router(parse_config(CONFIG))
    route = router.routes["r"]
    assert isinstance(route.strategy, BestOfN)
    return SharedLearning(router, store), route, route.strategy


@pytest.fixture(autouse=True)
def every_request_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning, "COUNTS_EVERY_S", 0.0)


def test_a_prior_learned_by_one_worker_is_used_by_the_other() -> None:
    store = OneStore()
    (shared_a, route_a, a), (shared_b, route_b, b) = worker(store), worker(store)
    assert a.prior is not None and b.prior is not None

    async def scenario() -> None:
        for _ in range(3):
            a.prior.observe(["42"] * 4)
        await shared_a.after(route_a)
        assert b.prior.posterior((2, 0, 0)) is None  # nothing learned here yet
        await shared_b.before(route_b)
        assert b.prior.histogram() == {(4, 0, 0): 3.0}
        learned = b.prior.posterior((2, 0, 0))
        assert learned is not None and learned > 0.99

        b.prior.observe(["42", "41"])  # and back: counted once on each side, never twice
        await shared_b.after(route_b)
        await shared_a.before(route_a)
        await shared_a.after(route_a)
        await shared_b.before(route_b)
        assert a.prior.histogram() == b.prior.histogram() == {(4, 0, 0): 3.0, (1, 1, 0): 1.0}

    asyncio.run(scenario())


def test_gold_gain_measured_by_the_probing_worker_reaches_the_other_at_once() -> None:
    store = OneStore()
    (shared_a, route_a, a), (shared_b, route_b, b) = worker(store), worker(store)

    async def scenario() -> None:
        a.gain.add("q1", {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0})
        a.gain.add("q2", {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0})
        await shared_a.share_counts(route_a)  # what the probe runner calls after an item
        await shared_b.before(route_b)
        gain = b.gain.gain(8)
        assert gain is not None and gain.n == 1  # no gain anywhere: one sample

    asyncio.run(scenario())


def test_with_the_memory_backend_nothing_is_exchanged() -> None:
    store = MemoryState()
    (shared_a, route_a, a), (shared_b, route_b, b) = worker(store), worker(store)  # type: ignore[arg-type]
    assert a.prior is not None and b.prior is not None
    a.prior.observe(["42"] * 4)

    async def scenario() -> None:
        await shared_a.after(route_a)
        await shared_b.before(route_b)

    asyncio.run(scenario())
    assert b.prior.histogram() == {} and store.totals == {}
