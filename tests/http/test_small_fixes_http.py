"""Issue 25's smaller items that show at the proxy's HTTP face: passthrough streams in the metrics,
and an upstream that refuses the connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

HELLO = [{"role": "user", "content": "hi"}]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


@pytest.fixture(scope="module")
def served(stub: StubServer) -> Iterator[ProxyProcess]:
    refused = upstream("refused", f"http://127.0.0.1:{_closed_port()}/v1", retries=0)
    config = {
        "upstreams": [upstream("echo", stub.api_base, retries=0), refused],
        "routes": [{"model": "plain", "upstream": "echo"}, {"model": "nobody-home", "upstream": "refused"}],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY}) as process:
        yield process


def _samples(proxy: ProxyProcess, route: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the route on GET /metrics, keyed by (name, other labels)."""
    text = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "route"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("route") == route
    }


def test_passthrough_streams_are_counted_like_whole_answers(served: ProxyProcess) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
    for _ in range(2):
        client.chat.completions.create(model="plain", messages=HELLO)
    for n in (1, 2):
        stream = client.chat.completions.create(model="plain", messages=HELLO, n=n, stream=True,
                                                stream_options={"include_usage": True})
        assert [chunk for chunk in stream]
    samples = _samples(served, "plain")
    requests = samples[("rvr_requests_total", (("status", "success"), ("strategy", "passthrough")))]
    assert requests == 4
    # issue 25: 44 requests against 42 candidates and stops, the two streamed ones missing
    assert samples[("rvr_candidates_count", ())] == requests
    assert samples[("rvr_candidates_sum", ())] == 1 + 1 + 1 + 2
    assert samples[("rvr_stop_total", (("reason", "passthrough"),))] == requests
    for kind in ("prompt", "completion"):  # a passthrough costs what a plain call costs: multiplier 1
        spent = samples[("rvr_tokens_total", (("kind", kind),))]
        assert spent > 0 and samples[("rvr_passthrough_equivalent_tokens_total", (("kind", kind),))] == spent


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_connection_is_an_openai_shaped_502_that_says_so(served: ProxyProcess, stream: bool) -> None:
    body = {"model": "nobody-home", "messages": HELLO, "stream": stream}
    response = httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    assert response.json() == {"error": {
        "message": "upstream 'refused' could not be reached (connection refused)",
        "type": "upstream_error", "param": None, "code": "upstream_error",
    }}
    # and no failed request counts a candidate
    assert ("rvr_candidates_count", ()) not in _samples(served, "nobody-home")
