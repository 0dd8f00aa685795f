"""Past `server.drain_s`, requests still in flight end with the proxy's own answer (issue: they got
uvicorn's bare 500, cut streams got no error event, and all were logged as 499 "client
disconnected").

A real proxy on loopback, SIGTERM while slow upstream calls are in flight; the official openai
SDK as the client.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import openai

from tests.conftest import upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

DRAIN_S = 1.0


def test_requests_past_the_drain_time_get_a_503_and_streams_an_error_event() -> None:
    results: dict[str, Any] = {}
    with StubServer(slow_s=10.0) as stub:
        config = {
            "server": {"drain_s": DRAIN_S},
            "upstreams": [upstream("slow", stub.api_base, retries=0)],
            "routes": [
                {"model": "slow", "upstream": "slow"},
                {"model": "best-slow", "upstream": "slow", "strategy": {"name": "best_of_n", "max_n": 2}},
            ],
        }
        proxy = ProxyProcess(config, env={"UPSTREAM_KEY": "sk-upstream-drain"}).start()
        client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "take your time"}]

        def plain() -> None:
            try:
                client.chat.completions.create(model="best-slow", messages=messages)
            except openai.APIStatusError as exc:
                results["plain"] = exc

        def streamed(model: str) -> None:
            try:
                for _ in client.chat.completions.create(model=model, messages=messages, stream=True):
                    pass
            except openai.APIError as exc:
                results[model] = exc

        threads = [threading.Thread(target=plain)]
        threads += [threading.Thread(target=streamed, args=(model,)) for model in ("slow", "best-slow")]
        for thread in threads:
            thread.start()
        time.sleep(3.0)  # all wait on the upstream; the strategy stream has sent its first keep-alive
        try:
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(20)
            proxy.process.wait(20)
        finally:
            proxy.stop()
        log = proxy.log()

    plain_error = results["plain"]
    assert plain_error.status_code == 503
    assert plain_error.response.json()["error"]["code"] == "server_shutting_down"
    # The passthrough stream had not sent its first chunk: it gets its status too.
    relayed = results.get("slow")
    assert isinstance(relayed, openai.APIStatusError) and relayed.status_code == 503, results
    # The strategy stream had answered 200 (its keep-alive): it ends with the error as an event.
    replayed = results.get("best-slow")
    assert isinstance(replayed, openai.APIError) and not isinstance(replayed, openai.APIStatusError), results
    assert "shutting down" in replayed.message
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"status"' in line]
    requests = [line for line in lines if line.get("route") in ("slow", "best-slow")]
    assert len(requests) == 3, log
    assert all(line["status"] == 503 and line["error"] == "drain" for line in requests), requests
    assert '"status": 499' not in log
