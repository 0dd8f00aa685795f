"""The serving shell as a client meets it: real uvicorn, loopback stub upstream, the openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import API_KEY, UPSTREAM_KEY, main_config
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

HELLO = [{"role": "user", "content": "hello there"}]


def post(proxy: ProxyProcess, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    kwargs.setdefault("timeout", 30)
    return httpx.post(f"{proxy.base_url}{path}", content=content, headers=headers, **kwargs)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert "Traceback" not in response.text and UPSTREAM_KEY not in response.text
    assert response.headers.get("x-request-id")
    return error


# ---- happy paths --------------------------------------------------------------------------


def test_chat_completion_is_a_valid_openai_object(client: openai.OpenAI, stub: StubServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=HELLO)
    completion = raw.parse()
    assert raw.headers["x-request-id"]
    assert completion.model == "echo"
    assert completion.choices[0].message.content == "echo 0: hello there"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 6


def test_text_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="echo", prompt="once upon a time")
    assert completion.model == "echo"
    assert completion.choices[0].text == "echo 0: once upon a time"
    assert completion.usage is not None and completion.usage.prompt_tokens == 4


def test_streaming_chat_ends_with_done_and_reports_usage(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    stream = client.chat.completions.create(
        model="echo", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo 0: hello there"
    assert all(c.model == "echo" for c in chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage.prompt_tokens == 2
    raw = post(proxy, "/v1/chat/completions", {"model": "echo", "messages": HELLO, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in events)  # not asked for, not sent


def test_streaming_text_completion(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="echo", prompt="a b", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo 0: a b"


def test_stream_cut_mid_answer_is_an_error_not_a_clean_end(proxy: ProxyProcess) -> None:
    raw = post(proxy, "/v1/chat/completions", {"model": "cut", "messages": HELLO, "stream": True})
    events = [line for line in raw.text.split("\n\n") if line]
    assert "data: [DONE]" not in events
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "upstream_error"


# ---- n: honoured, ignored, rejected ---------------------------------------------------------


def test_n_honoured_in_one_call(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("echo"))
    completion = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "n honoured"}], n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    sent = stub.state.bodies("echo")[before:]
    assert [b.get("n") for b in sent] == [3]


@pytest.mark.parametrize("route", ["one", "reject-n"])
def test_n_ignored_or_rejected_is_filled_with_parallel_calls(
    client: openai.OpenAI, stub: StubServer, route: str
) -> None:
    before = len(stub.state.bodies(route))
    completion = client.chat.completions.create(model=route, messages=HELLO, n=3)
    assert len(completion.choices) == 3
    assert len({c.index for c in completion.choices}) == 3
    first = stub.state.bodies(route)[before:]
    assert first[0].get("n") == 3 and all("n" not in b for b in first[1:])
    # Learned: the next request goes straight to single calls.
    again = len(stub.state.bodies(route))
    assert len(client.chat.completions.create(model=route, messages=HELLO, n=2).choices) == 2
    assert [b.get("n") for b in stub.state.bodies(route)[again:]] == [None, None]
    assert completion.usage is not None and completion.usage.prompt_tokens >= 2 * 2


# ---- passthrough fidelity -------------------------------------------------------------------


def test_tool_calls_and_params_pass_through_untouched(client: openai.OpenAI, stub: StubServer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    before = len(stub.state.bodies("tools"))
    completion = client.chat.completions.create(
        model="tools",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
        seed=7,
        stop=["\n\n"],
        max_tokens=33,
        logprobs=True,
        response_format={"type": "json_object"},
        extra_body={"top_k": 5},
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    sent = stub.state.bodies("tools")[before]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert sent["seed"] == 7 and sent["stop"] == ["\n\n"] and sent["max_tokens"] == 33
    assert sent["logprobs"] is True and sent["response_format"] == {"type": "json_object"}
    assert sent["top_k"] == 5


def test_proxy_invents_no_limits(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("echo"))
    client.chat.completions.create(model="echo", messages=HELLO)
    sent = stub.state.bodies("echo")[before]
    assert not {"max_tokens", "temperature", "stop", "max_completion_tokens"} & set(sent)


def test_retries_with_backoff_on_503(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("flaky"))
    completion = client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "retry me"}])
    assert completion.choices[0].message.content == "echo 0: retry me"
    assert len(stub.state.bodies("flaky")) - before == 2  # one 503, one retry


def test_per_upstream_concurrency_limit(client: openai.OpenAI, stub: StubServer) -> None:
    with ThreadPoolExecutor(6) as pool:
        done = list(
            pool.map(
                lambda i: client.chat.completions.create(model="busy", messages=[{"role": "user", "content": f"b{i}"}]),
                range(6),
            )
        )
    assert len(done) == 6
    assert stub.state.max_in_flight == 2


def test_fallback_upstream_serves_when_the_primary_fails(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="fails-over", messages=HELLO)
    assert completion.choices[0].message.content == "echo 0: hello there"
    assert completion.model == "fails-over"


# ---- caps -----------------------------------------------------------------------------------


def test_caps_cannot_be_raised_by_the_client(proxy: ProxyProcess, stub: StubServer) -> None:
    error = assert_openai_error(
        post(proxy, "/v1/chat/completions", {"model": "capped", "messages": HELLO, "n": 3}), 400
    )
    assert error["param"] == "n"
    error = assert_openai_error(
        post(proxy, "/v1/chat/completions", {"model": "capped", "messages": HELLO, "max_tokens": 51}), 400
    )
    assert error["param"] == "max_tokens"
    error = assert_openai_error(post(proxy, "/v1/completions", {"model": "capped", "prompt": "x", "best_of": 5}), 400)
    assert error["param"] == "best_of"
    before = len(stub.state.bodies("echo"))
    assert post(proxy, "/v1/chat/completions", {"model": "capped", "messages": HELLO}).status_code == 200
    assert stub.state.bodies("echo")[before]["max_tokens"] == 50  # the operator's cap applies


# ---- errors ---------------------------------------------------------------------------------


def test_malformed_json_is_400(proxy: ProxyProcess) -> None:
    assert_openai_error(post(proxy, "/v1/chat/completions", b"{not json"), 400)
    assert_openai_error(post(proxy, "/v1/chat/completions", b"[1, 2]"), 400)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": HELLO, "n": 0}, "n"),
        ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": HELLO}, "model"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(proxy: ProxyProcess, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(post(proxy, "/v1/chat/completions", body), 400)
    assert error["param"] == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found"


def test_body_over_limit_is_413(proxy: ProxyProcess) -> None:
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    assert_openai_error(post(proxy, "/v1/chat/completions", big), 413)

    def chunked() -> Any:
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(1100):
            yield b"y" * 1024
        yield b'"}]}'

    response = httpx.post(f"{proxy.base_url}/v1/chat/completions", content=chunked(), timeout=30)
    assert_openai_error(response, 413)


def test_upstream_failure_is_502_and_timeout_504(proxy: ProxyProcess) -> None:
    error = assert_openai_error(post(proxy, "/v1/chat/completions", {"model": "fail", "messages": HELLO}), 502)
    assert error["type"] == "upstream_error"
    error = assert_openai_error(post(proxy, "/v1/chat/completions", {"model": "timeout", "messages": HELLO}), 504)
    assert error["code"] == "upstream_timeout"


def test_unknown_endpoint_and_method_have_openai_errors(proxy: ProxyProcess) -> None:
    assert_openai_error(httpx.get(f"{proxy.base_url}/v1/nothing"), 404)
    assert_openai_error(httpx.get(f"{proxy.base_url}/v1/chat/completions"), 405)


def test_no_secret_or_traceback_in_the_log(proxy: ProxyProcess) -> None:
    post(proxy, "/v1/chat/completions", {"model": "fail", "messages": [{"role": "user", "content": "private words"}]})
    time.sleep(0.2)
    log = proxy.log()
    assert UPSTREAM_KEY not in log and "Traceback" not in log
    assert "private words" not in log  # prompts stay out unless the config enables them


def test_one_structured_log_line_per_request(proxy: ProxyProcess) -> None:
    response = post(
        proxy, "/v1/chat/completions", {"model": "echo", "messages": HELLO}, headers={"x-request-id": "trace-abc-1"}
    )
    assert response.headers["x-request-id"] == "trace-abc-1"
    time.sleep(0.2)
    lines = [json.loads(line) for line in proxy.log().splitlines() if "trace-abc-1" in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "echo" and line["status"] == 200 and line["latency_ms"] > 0
    assert line["prompt_tokens"] == 2 and line["completion_tokens"] == 4


# ---- disconnects and concurrency ------------------------------------------------------------


def test_client_disconnect_cancels_the_upstream_call(proxy: ProxyProcess, stub: StubServer) -> None:
    cancelled = stub.state.cancelled
    with pytest.raises(httpx.ReadTimeout):
        post(proxy, "/v1/chat/completions", {"model": "slow", "messages": HELLO}, timeout=0.5)
    deadline = time.monotonic() + 4  # well before the stub's 5 s sleep would end by itself
    while stub.state.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.state.cancelled == cancelled + 1


def test_client_disconnect_cancels_a_stream(proxy: ProxyProcess, stub: StubServer) -> None:
    cancelled = stub.state.cancelled
    with pytest.raises(httpx.ReadTimeout):
        post(proxy, "/v1/chat/completions", {"model": "slow", "messages": HELLO, "stream": True}, timeout=0.5)
    deadline = time.monotonic() + 4
    while stub.state.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.state.cancelled == cancelled + 1


def test_concurrent_requests_do_not_share_state(client: openai.OpenAI) -> None:
    def ask(i: int) -> tuple[int, str, int]:
        completion = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"request {i}"}], n=1 + i % 3
        )
        return i, completion.choices[0].message.content or "", len(completion.choices)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(48)))
    for i, content, count in results:
        assert content == f"echo 0: request {i}"
        assert count == 1 + i % 3


# ---- discovery, health, metrics -------------------------------------------------------------


def test_models_health_and_metrics(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"echo", "math", "capped"} <= ids
    assert httpx.get(f"{proxy.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{proxy.base_url}/readyz").status_code == 200
    client.chat.completions.create(model="echo", messages=HELLO)
    text = httpx.get(f"{proxy.base_url}/metrics").text
    assert 'rvr_requests_total{route="echo",status="success",strategy="passthrough"}' in text
    assert 'rvr_upstream_requests_total{outcome="success",upstream="echo"}' in text
    assert "hello" not in text  # no label comes from request content


# ---- auth -----------------------------------------------------------------------------------


def test_auth_required_when_keys_are_configured(stub: StubServer) -> None:
    config = main_config(stub.api_base)
    config["server"] = {"api_keys": ["os.environ/RVR_KEY"]}
    with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY, "RVR_KEY": API_KEY}) as proxy:
        url = f"{proxy.base_url}/v1"
        bad = openai.OpenAI(base_url=url, api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="echo", messages=HELLO)
        assert_openai_error(post(proxy, "/v1/chat/completions", {"model": "echo", "messages": HELLO}), 401)
        assert_openai_error(
            post(
                proxy,
                "/v1/chat/completions",
                {"model": "echo", "messages": HELLO},
                headers={"authorization": "Basic abc"},
            ),
            401,
        )
        good = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
        assert good.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content
        assert {m.id for m in good.models.list()} >= {"echo"}
        assert httpx.get(f"{proxy.base_url}/healthz").status_code == 200
        assert API_KEY not in proxy.log()


# ---- config and CLI -------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin", "UPSTREAM_KEY": "k"},
    )


def test_check_config_names_the_bad_key_path(tmp_path: Path, stub: StubServer) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(main_config(stub.api_base)))
    assert _cli("check-config", str(good)).returncode == 0
    bad_config = main_config(stub.api_base)
    bad_config["routes"][1]["strategy"] = {"name": "best_of_n", "max_n": 0}
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(bad_config))
    result = _cli("check-config", str(bad))
    assert result.returncode != 0
    assert "routes.1.strategy.max_n" in result.stderr
    bad_config["routes"][1] = {"model": "x", "upstream": "nowhere"}
    bad.write_text(json.dumps(bad_config))
    assert "routes.1.upstream" in _cli("check-config", str(bad)).stderr


def test_serve_with_invalid_config_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: []\n")
    result = _cli("serve", "--config", str(bad), "--port", "1")
    assert result.returncode != 0 and "upstreams" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_upstream_serves_unknown_models_under_one_label(stub: StubServer) -> None:
    config = main_config(stub.api_base)
    config["server"] = {"default_upstream": "echo"}
    with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY}) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model="whatever-the-client-says", messages=HELLO)
        assert completion.choices[0].message.content == "echo 0: hello there"
        metrics = httpx.get(f"{proxy.base_url}/metrics").text
        assert 'route="default"' in metrics and "whatever-the-client-says" not in metrics


def test_upstream_from_environment_without_a_config_file(stub: StubServer) -> None:
    env = {"RVR_UPSTREAM_API_BASE": stub.api_base, "RVR_UPSTREAM_MODEL": "openai/echo", "RVR_UPSTREAM_API_KEY": "k"}
    with ProxyProcess(None, env=env) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"echo", "echo-best"}
        assert client.chat.completions.create(model="echo", messages=HELLO).choices[0].message.content
        best = client.chat.completions.create(model="echo-best", messages=HELLO)
        assert best.model_extra["rvr"]["strategy"] == "best_of_n"
