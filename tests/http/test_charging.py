"""Every upstream token is charged to the client key, however the request ends (issue: a client
that hangs up, times out or is cut must not spend tokens it is never charged for).

A real proxy on loopback in front of the stub upstream; the key's charge is read from the proxy's
own `rvr_key_tokens_total` and its `daily_tokens` limit must then refuse the key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

KEY = "sk-charging-team-0123456789"
PROMPT = "Name three colours of the rainbow, one per line, and nothing else."


@pytest.fixture(scope="module")
def slow_stub() -> Iterator[StubServer]:
    with StubServer(slow_s=4.0) as server:
        yield server


def _proxy(stub: StubServer, daily_tokens: int) -> ProxyProcess:
    best_of = {"name": "best_of_n", "max_n": 4, "adaptive": False}
    config: dict[str, Any] = {
        "server": {
            "keys": [{"key": "os.environ/TEAM_KEY", "name": "team", "daily_tokens": daily_tokens}],
            "request_timeout_s": 1.5,
        },
        "upstreams": [
            upstream("late-usage-echo", stub.api_base, retries=0),
            upstream("slow", stub.api_base, retries=0),
        ],
        "routes": [
            {"model": "late", "upstream": "late-usage-echo"},
            {"model": "best-slow", "upstream": "slow", "strategy": best_of},
        ],
    }
    return ProxyProcess(config, env={"UPSTREAM_KEY": "sk-upstream-charging", "TEAM_KEY": KEY})


@pytest.fixture
def proxy(slow_stub: StubServer) -> Iterator[ProxyProcess]:
    with _proxy(slow_stub, daily_tokens=1_000_000) as process:
        yield process


def charged(proxy: ProxyProcess) -> float:
    text = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    found = re.search(r'^rvr_key_tokens_total\{key_name="team"\} (\S+)$', text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def until_charged(proxy: ProxyProcess, above: float = 0.0, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while (value := charged(proxy)) <= above and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50, **extra}


HEADERS = {"authorization": f"Bearer {KEY}"}


def test_a_stream_read_to_its_end_then_dropped_before_the_usage_chunk_is_charged(proxy: ProxyProcess) -> None:
    answer = ""
    with httpx.stream(
        "POST", f"{proxy.base_url}/v1/chat/completions", headers=HEADERS, timeout=10,
        json=body("late", stream=True, stream_options={"include_usage": True}),
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = httpx.Response(200, content=line[6:]).json()
                for choice in chunk["choices"]:
                    answer += choice["delta"].get("content") or ""
                    finished = choice.get("finish_reason")
                if chunk["choices"] and finished:
                    break  # the whole answer is here; hang up before the usage chunk
    assert answer.startswith("echo 0:")
    tokens = until_charged(proxy)
    # The prompt and the answer streamed, estimated (the upstream never got to say): more than
    # the answer's words, less than the completion cap the request could have used.
    assert len(answer.split()) <= tokens < 4 * len(answer)


def test_a_best_of_n_request_whose_client_hangs_up_is_charged(proxy: ProxyProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=HEADERS, json=body("best-slow"), timeout=0.7)
    # Four candidates were asked for and never answered: each is charged its estimate.
    assert until_charged(proxy) >= 4 * 50


def test_a_best_of_n_request_that_hits_the_request_timeout_is_charged(proxy: ProxyProcess) -> None:
    response = httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=HEADERS, json=body("best-slow"), timeout=10)
    assert response.status_code == 504
    assert until_charged(proxy) >= 4 * 50


def test_tokens_spent_by_requests_that_never_finish_count_against_the_daily_limit(slow_stub: StubServer) -> None:
    with _proxy(slow_stub, daily_tokens=300) as proxy:
        statuses = []
        for _ in range(3):
            response = httpx.post(
                f"{proxy.base_url}/v1/chat/completions", headers=HEADERS, json=body("best-slow"), timeout=10
            )
            statuses.append(response.status_code)
        assert statuses[0] == 504  # it spent its candidates' estimate ...
        assert 429 in statuses  # ... so the key runs out, as if the answers had come
