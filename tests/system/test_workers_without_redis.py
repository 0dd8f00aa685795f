"""`rvr-proxy serve --workers N` without Redis: the workers of one instance share one SQLite file
(proxy/state/local.py), so a key's limit holds across them, as in one process. Before, each
worker admitted up to the limit on its own: N times the limit could pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

KEY = "sk-workers-limited-0123456789"
RPM = 10


@pytest.fixture(scope="module")
def two_workers() -> Iterator[ProxyProcess]:
    with StubServer() as stub:
        config = {
            "server": {"keys": [{"key": "os.environ/LIMITED_KEY", "name": "limited", "rpm": RPM}]},
            "upstreams": [upstream("echo", stub.api_base, retries=0)],
            "routes": [{"model": "echo", "upstream": "echo"}],
        }
        env = {"UPSTREAM_KEY": UPSTREAM_KEY, "LIMITED_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        with ProxyProcess(config, workers=2, env=env) as proxy:
            yield proxy


def ask(proxy: ProxyProcess, i: int) -> int:
    # A fresh connection each time, so the kernel spreads the requests over both workers.
    with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
        return client.post(
            "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
            json={"model": "echo", "messages": [{"role": "user", "content": f"hello {i}"}]},
        ).status_code


def test_a_keys_rpm_holds_across_the_workers_of_one_instance(two_workers: ProxyProcess) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda i: ask(two_workers, i), range(3 * RPM)))
    assert statuses.count(200) == RPM and statuses.count(429) == 2 * RPM
    # Both workers served some (each request's log line names its process), or this proved nothing.
    lines = [json.loads(line) for line in two_workers.log().splitlines() if line.startswith('{"request_id"')]
    assert len(lines) == 3 * RPM and len({line["pid"] for line in lines}) == 2
