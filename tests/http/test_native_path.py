"""The real proxy on both upstream clients: what the native client (proxy/upstream/native.py) must
do as a user meets it, and what litellm must still do where an upstream asks for it.

A client that leaves a passthrough stream after the answer (before the usage chunk) must make
the proxy hang up on the upstream, which then stops: the stub's `late-usage-echo` waits before
its usage chunk and counts a caller that hangs up meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

CLIENTS = ["native", "litellm"]


@pytest.fixture(scope="module")
def late_stub() -> Iterator[StubServer]:
    with StubServer(slow_s=5.0) as server:
        yield server


@pytest.fixture(scope="module", params=CLIENTS)
def proxy(request: pytest.FixtureRequest, late_stub: StubServer) -> Iterator[ProxyProcess]:
    names = ["late-usage-echo", "echo"]
    config = {
        "upstreams": [{**upstream(name, late_stub.api_base, retries=0), "client": request.param} for name in names],
        "routes": [{"model": name, "upstream": name} for name in names],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-upstream-native-path"}) as process:
        process.client = request.param  # type: ignore[attr-defined]
        yield process


def test_a_client_leaving_a_stream_makes_the_proxy_hang_up_on_the_upstream(
    proxy: ProxyProcess, late_stub: StubServer
) -> None:
    cancelled = late_stub.state.cancelled
    body = {"model": "late-usage-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and any(c.get("finish_reason") for c in json.loads(line[6:])["choices"]):
                break  # the answer is in; hang up before the usage chunk the upstream still holds
    deadline = time.monotonic() + 3  # well before the stub's 5 s wait would end by itself
    while late_stub.state.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert late_stub.state.cancelled > cancelled, f"{proxy.client} kept the upstream streaming"  # type: ignore[attr-defined]


def test_the_same_answers_on_both_clients(proxy: ProxyProcess) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "same"}], "n": 2}
    answer = httpx.post(f"{proxy.base_url}/v1/chat/completions", json=body, timeout=10).json()
    assert [c["message"]["content"] for c in answer["choices"]] == ["echo 0: same", "echo 1: same"]
    assert answer["usage"] == {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}
