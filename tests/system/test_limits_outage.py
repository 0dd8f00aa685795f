"""Key limits fail safe through a Redis outage (issue: a key past its daily limit got 75 more
requests across a kill, an empty restart and a SIGSTOP; an `rpm: 30` key got 97 in one minute,
because each process counted from 0 while Redis was away and pushed nothing back).

Each `RedisState` here stands for one proxy process, against a real redis-server on loopback.
The clock is fixed at a minute's start, so no burst straddles two windows.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from proxy.access.auth import ClientKey
from proxy.access.limits import KeyLimits
from proxy.config.scale import KeySettings, StateSettings
from proxy.errors import RateLimited
from proxy.state.redis import RedisState
from tests.system.test_scale_out import RedisServer

RPM = 30
NOW = 29_000_000 * 60.0 + 1  # one second into a minute, every time the limits look


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.kill()


CLIENT = ClientKey("team", "digest-team", KeySettings(key="sk-team-0123456789", name="team", rpm=RPM))


async def process(redis: RedisServer) -> tuple[RedisState, KeyLimits]:
    """One proxy process's state and limits."""
    state = RedisState(StateSettings(backend="redis", url=redis.url, prefix="outage", timeout_s=0.2))
    await state.start()
    return state, KeyLimits(state, clock=lambda: NOW)


async def admitted(limits: KeyLimits, tries: int) -> int:
    count = 0
    for _ in range(tries):
        try:
            await limits.admit(CLIENT)
            count += 1
        except RateLimited:
            pass
    return count


async def until_up(*states: RedisState) -> None:
    deadline = time.monotonic() + 15
    while not all(state.up for state in states):
        assert time.monotonic() < deadline, "the state backend did not resync"
        await asyncio.sleep(0.1)


def window_total(redis: RedisServer) -> int:
    found = redis.command("KEYS", "outage:rl:*:rpm:*")
    assert found and len(found) == 1
    return int(redis.command("GET", found[0]))


def test_through_a_kill_and_an_empty_restart_the_key_keeps_its_count(redis: RedisServer) -> None:
    async def scenario() -> tuple[int, int, int]:
        a, limits_a = await process(redis)
        before = await admitted(limits_a, 20)
        redis.kill()
        during = await admitted(limits_a, 40)  # counts on from 20, not from 0
        assert not a.up
        redis.start()  # the same port, empty: a Redis restarted without persistence
        await until_up(a)
        b, limits_b = await process(redis)  # a process that never saw the key
        after = await admitted(limits_b, 5)
        await a.close()
        await b.close()
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert (before, during, after) == (20, RPM - 20, 0)
    assert window_total(redis) == RPM  # merged back by maximum


def test_counts_made_while_redis_was_unreachable_are_added_back(redis: RedisServer) -> None:
    async def scenario() -> tuple[int, int]:
        a, limits_a = await process(redis)
        b, limits_b = await process(redis)
        assert await admitted(limits_a, 10) == 10
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)  # unreachable, its data kept
        during = await admitted(limits_a, 5) + await admitted(limits_b, 5)
        assert not a.up and not b.up
        redis.process.send_signal(signal.SIGCONT)
        await until_up(a, b)
        c, limits_c = await process(redis)
        after = await admitted(limits_c, RPM)
        for state in (a, b, c):
            await state.close()
        return during, after

    during, after = asyncio.run(scenario())
    assert during == 10
    # Redis holds 10 plus what both processes counted meanwhile (a sum), plus at most the one
    # command each sent as Redis froze: it timed out, was counted locally, and ran on SIGCONT.
    assert RPM - 20 - 2 <= after <= RPM - 20
    assert window_total(redis) == RPM
