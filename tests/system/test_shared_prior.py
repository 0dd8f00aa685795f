"""The vote prior (method §4.6) learned on one proxy is used by another, through a real Redis.

Instance A serves a route whose answers always agree (the stub's `math` model at p=1.0): the
Beta rule stops each request at four unanimous votes, and A's counts teach the route that two
agreeing votes settle it. Instance B has served nothing, yet its first request stops at two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer
from tests.system.test_scale_out import RedisServer

MIN_REQUESTS = 5


@pytest.fixture(scope="module")
def two_instances() -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    redis = RedisServer().start()
    try:
        with StubServer() as stub:
            config = {
                "server": {"state": {"backend": "redis", "url": "os.environ/REDIS_URL", "prefix": "rvrprior"}},
                "upstreams": [upstream("math", stub.api_base, retries=0)],
                "routes": [{"model": "sure", "upstream": "math", "strategy": {
                    "name": "best_of_n", "max_n": 16, "stop": {"prior": {"min_requests": MIN_REQUESTS}},
                }}],
            }
            env = {"UPSTREAM_KEY": UPSTREAM_KEY, "REDIS_URL": redis.url}
            with ProxyProcess(config, env=env) as a, ProxyProcess(config, env=env) as b:
                yield a, b
    finally:
        redis.kill()


def ask(proxy: ProxyProcess) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model="sure", messages=[{"role": "user", "content": "what is 6*7? p=1.0"}]
    )
    return response.model_dump()["rvr"]  # type: ignore[no-any-return]


def test_a_prior_learned_on_one_instance_stops_the_other_early(
    two_instances: tuple[ProxyProcess, ProxyProcess],
) -> None:
    a, b = two_instances
    learning = [ask(a) for _ in range(MIN_REQUESTS)]
    assert {(r["candidates"], r["stop_reason"]) for r in learning} == {(4, "vote_confident")}
    time.sleep(1.1)  # counts are exchanged at most once a second per route and process
    assert ask(a)["candidates"] == 2  # A has learned, and its exchange pushes what it learned
    first_on_b = ask(b)
    assert (first_on_b["candidates"], first_on_b["stop_reason"]) == (2, "vote_confident")
    assert first_on_b["cost"]["multiple"] == pytest.approx(2.0, rel=0.2)
