"""What an upstream streams is checked before it is relayed: a choice index the client never
asked for, or one event past the tap's size cap, fails the stream with the proxy's own error."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer


@pytest.fixture(scope="module")
def proxy(stub: StubServer) -> Iterator[ProxyProcess]:
    names = ["bad-index", "huge-event", "echo"]
    config = {
        "upstreams": [upstream(name, stub.api_base, retries=0) for name in names],
        "routes": [{"model": name, "upstream": name} for name in names],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-upstream-limits"}) as process:
        yield process


def stream(proxy: ProxyProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return httpx.post(f"{proxy.base_url}/v1/chat/completions", json=body, timeout=30)


@pytest.mark.parametrize(
    ("model", "says"),
    [("bad-index", "choice index outside the 1 asked for"), ("huge-event", "more than 1048576 bytes")],
)
def test_a_hostile_stream_fails_with_the_proxys_error_before_anything_is_relayed(
    proxy: ProxyProcess, model: str, says: str
) -> None:
    response = stream(proxy, model)
    assert response.status_code == 502  # nothing was sent yet, so the failure keeps its status
    assert says in response.json()["error"]["message"]
    assert "seven" not in response.text and "xxxx" not in response.text


def test_an_honest_stream_still_flows(proxy: ProxyProcess) -> None:
    response = stream(proxy, "echo")
    assert response.status_code == 200 and "data: [DONE]" in response.text
