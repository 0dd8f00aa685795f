"""Hostile input and cost ceilings, each defect reproduced against the real proxy on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.config.settings import DEFAULT_MAX_TOKENS, ConfigError, parse_config
from tests.conftest import upstream
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

KEY = "sk-hardening-proxy-key-0001"
HEADER_SECRET = "hdr-canary-7f3a9c1e2b"
URL_PASSWORD = "pw-canary-55d1e0"
PROMPT_CANARY = "prompt-canary-do-not-log-91c2"
HELLO = [{"role": "user", "content": "hello"}]
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def hardened(stub: StubServer) -> Iterator[ProxyProcess]:
    base = stub.api_base
    ups = [
        upstream("echo", base, retries=0),
        upstream("ends-early", base, retries=0),
        {
            "name": "echo-fail",
            "retries": 0,
            "litellm_params": {
                "model": "openai/echo-fail",
                "api_base": base,
                "api_key": "os.environ/UPSTREAM_KEY",
                "extra_headers": {"X-Api-Token": "os.environ/HEADER_SECRET", "X-Title": "rvr tests"},
            },
        },
    ]
    # an upstream whose URL carries a password: unreachable that way, but a secret wherever it goes
    ups.append({"name": "pw", "retries": 0, "litellm_params": {
        "model": "openai/echo", "api_base": base.replace("http://", f"http://user:{URL_PASSWORD}@"),
        "api_key": "os.environ/UPSTREAM_KEY"}})
    config = {
        "server": {"api_keys": ["os.environ/RVR_KEY"], "metrics_auth": True},
        "upstreams": ups,
        "routes": [
            {"model": "open", "upstream": "echo", "limits": {"max_n": 8}},
            {"model": "capped", "upstream": "echo", "limits": {"max_n": 2, "max_tokens": 256}},
            {"model": "ends-early", "upstream": "ends-early"},
            {"model": "echo-fail", "upstream": "echo-fail"},
            {"model": "pw", "upstream": "pw"},
            {"model": "echo-fail-best", "upstream": "echo-fail", "strategy": {"name": "best_of_n", "max_n": 2}},
        ],
    }
    env = {"UPSTREAM_KEY": "sk-upstream-canary-4410", "HEADER_SECRET": HEADER_SECRET, "RVR_KEY": KEY}
    with ProxyProcess(config, env=env) as process:
        yield process


def call(proxy: ProxyProcess, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}{path}", json=body, headers=AUTH, timeout=30, **kwargs)


# --- 6: both token fields are capped, and every route has a cap -----------------------------


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("capped", {"max_completion_tokens": 1, "max_tokens": 1_000_000_000}, "max_tokens"),
        ("capped", {"max_tokens": 1, "max_completion_tokens": 257}, "max_completion_tokens"),
        ("open", {"max_tokens": DEFAULT_MAX_TOKENS + 1}, "max_tokens"),
        ("open", {"max_completion_tokens": 10**9}, "max_completion_tokens"),
    ],
)
def test_no_token_field_passes_the_cap(
    hardened: ProxyProcess, stub: StubServer, route: str, fields: dict[str, int], param: str
) -> None:
    before = len(stub.state.bodies("echo"))
    response = call(hardened, "/v1/chat/completions", {"model": route, "messages": HELLO, **fields})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert len(stub.state.bodies("echo")) == before  # nothing reached the upstream


def test_asks_within_the_cap_pass(hardened: ProxyProcess, stub: StubServer) -> None:
    response = call(hardened, "/v1/chat/completions", {"model": "capped", "messages": HELLO, "max_tokens": 256})
    assert response.status_code == 200
    assert stub.state.bodies("echo")[-1]["max_tokens"] == 256


# --- 7: a prompt array counts as that many requests ------------------------------------------


@pytest.mark.parametrize(("prompts", "n"), [(10_000, 4), (9, 1), (3, 3)])
def test_prompt_arrays_count_against_max_n(hardened: ProxyProcess, stub: StubServer, prompts: int, n: int) -> None:
    before = len(stub.state.bodies("echo"))
    body = {"model": "open", "prompt": [f"p{i}" for i in range(prompts)], "n": n}
    response = call(hardened, "/v1/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    assert len(stub.state.bodies("echo")) == before


def test_a_small_prompt_array_is_served(hardened: ProxyProcess) -> None:
    response = call(hardened, "/v1/completions", {"model": "open", "prompt": ["a", "b"], "n": 2})
    assert response.status_code == 200


def test_token_ids_are_one_prompt(hardened: ProxyProcess) -> None:
    response = call(hardened, "/v1/completions", {"model": "capped", "prompt": list(range(50)), "n": 2})
    assert response.status_code == 200


# --- 3: a stream that ended upstream without finishing never ends with [DONE] -------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_stream_that_did_not_finish_upstream_ends_with_an_error(hardened: ProxyProcess, path: str) -> None:
    body: dict[str, Any] = {"model": "ends-early", "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": HELLO} if "chat" in path else {"prompt": "hello"})
    with httpx.stream("POST", f"{hardened.base_url}{path}", json=body, headers=AUTH, timeout=30) as response:
        text = response.read().decode()
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1]) if events else response.json()
    assert last["error"]["type"] == "upstream_error"
    assert not any('"finish_reason":"stop"' in e.replace(" ", "") for e in events)


def test_a_stream_that_finished_still_ends_with_done(hardened: ProxyProcess) -> None:
    body = {"model": "open", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{hardened.base_url}/v1/chat/completions", json=body, headers=AUTH) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


# --- 11: configured secrets and prompts stay out of bodies and logs --------------------------


def test_secrets_an_upstream_echoes_are_redacted(hardened: ProxyProcess) -> None:
    body = {"model": "echo-fail", "messages": [{"role": "user", "content": PROMPT_CANARY}]}
    response = call(hardened, "/v1/chat/completions", body)
    assert response.status_code == 502
    text = response.text
    for secret in (HEADER_SECRET, "sk-upstream-canary-4410"):
        assert secret not in text
    log = hardened.log()
    for secret in (HEADER_SECRET, "sk-upstream-canary-4410", KEY):
        assert secret not in log
    assert PROMPT_CANARY not in log  # log_prompts is off: an echo of the prompt is not logged either
    assert "[redacted]" in text  # the echo happened, and was scrubbed


def test_every_environment_value_and_url_password_is_a_secret() -> None:
    raw = {
        "upstreams": [
            upstream_settings(extra_headers={"X-Api-Token": "os.environ/TOKEN"}),
            {"name": "pw", "litellm_params": {"model": "openai/m", "api_base": f"https://u:{URL_PASSWORD}@h.test/v1"}},
        ]
    }
    secrets = parse_config(raw, environ={"TOKEN": HEADER_SECRET}).secrets()
    assert HEADER_SECRET in secrets and URL_PASSWORD in secrets


# --- 15: no redirects, and 405 says what is allowed --------------------------------------------


def test_a_trailing_slash_is_not_redirected(hardened: ProxyProcess) -> None:
    response = httpx.post(
        f"{hardened.base_url}/v1/chat/completions/", json={}, headers={"host": "evil.example"}, timeout=10
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


def test_method_not_allowed_carries_allow(hardened: ProxyProcess) -> None:
    response = httpx.get(f"{hardened.base_url}/v1/chat/completions", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- 16: /metrics can be put behind the key ----------------------------------------------------


def test_metrics_behind_the_key_when_configured(hardened: ProxyProcess) -> None:
    assert httpx.get(f"{hardened.base_url}/metrics", timeout=10).status_code == 401
    wrong = httpx.get(f"{hardened.base_url}/metrics", headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    right = httpx.get(f"{hardened.base_url}/metrics", headers=AUTH, timeout=10)
    assert right.status_code == 200 and "rvr_requests_total" in right.text


def test_metrics_auth_needs_keys() -> None:
    with pytest.raises(ConfigError, match="metrics_auth"):
        parse_config({"server": {"metrics_auth": True}, "upstreams": [upstream_settings()]}, environ={})


# --- 14: check-config refuses secrets in the file ----------------------------------------------


def upstream_settings(**params: Any) -> dict[str, Any]:
    return {"name": "up", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1", **params}}


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"server": {"api_keys": ["sk-in-the-file"]}, "upstreams": [upstream_settings()]}, "server.api_keys.0"),
        ({"upstreams": [upstream_settings(api_key="sk-live-123")]}, "upstreams.0.litellm_params.api_key"),
        (
            {"upstreams": [upstream_settings(extra_headers={"Authorization": "Bearer abc"})]},
            "upstreams.0.litellm_params.extra_headers.Authorization",
        ),
        (
            {"upstreams": [upstream_settings(extra_headers={"x-api-key": "abc"})]},
            "upstreams.0.litellm_params.extra_headers.x-api-key",
        ),
        (
            {
                "upstreams": [upstream_settings()],
                "routes": [{"model": "r", "upstream": "up", "strategy": {"name": "best_of_n", "verifiers": [
                    {"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/s", "api_key": "rm-key"}}]}}],
            },
            "routes.0.strategy.verifiers.0.endpoint.api_key",
        ),
    ],
)
def test_plain_text_secrets_are_refused(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert path in str(info.value)
    assert "os.environ/" in str(info.value)


def test_what_is_not_a_secret_stays_allowed() -> None:
    raw = {"upstreams": [upstream_settings(api_key="none", extra_headers={"X-Title": "my app"})]}
    assert parse_config(raw, environ={}).upstreams[0].litellm_params["api_key"] == "none"


def test_empty_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="RVR_KEY is empty"):
        parse_config({"server": {"api_keys": ["os.environ/RVR_KEY"]}, "upstreams": [upstream_settings()]},
                     environ={"RVR_KEY": ""})


def test_check_config_names_the_plain_text_secret(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump({"upstreams": [upstream_settings(api_key="sk-live-123")]}))
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(file)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "upstreams.0.litellm_params.api_key" in result.stderr
    assert "sk-live-123" not in result.stderr + result.stdout


# --- 8 and 9: message caps, and the request timeout holds for streams too -------------------


@pytest.fixture(scope="module")
def impatient(stub: StubServer) -> Iterator[ProxyProcess]:
    config = {
        "server": {"request_timeout_s": 1.5, "max_messages": 50, "read_timeout_s": 1.0, "max_header_bytes": 8192},
        "upstreams": [upstream("slow", stub.api_base, retries=0), upstream("echo", stub.api_base, retries=0)],
        "routes": [
            {"model": "slow", "upstream": "slow"},
            {"model": "slow-best", "upstream": "slow", "strategy": {"name": "best_of_n", "max_n": 2}},
            {"model": "echo", "upstream": "echo"},
        ],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-x-000000"}) as process:
        yield process


def test_a_strategy_stream_that_times_out_before_its_first_keepalive_gets_504(impatient: ProxyProcess) -> None:
    # Its headers wait for the first keep-alive (2 s), and the timeout (1.5 s) comes first.
    body = {"model": "slow-best", "messages": HELLO, "stream": True}
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_a_stream_past_the_request_timeout_ends_with_an_error(stub: StubServer) -> None:
    # A strategy route has sent its headers and keep-alives: the timeout ends the stream.
    config = {
        "server": {"request_timeout_s": 3.0},
        "upstreams": [upstream("slow", stub.api_base, retries=0)],
        "routes": [{"model": "slow-best", "upstream": "slow", "strategy": {"name": "best_of_n", "max_n": 2}}],
    }
    body = {"model": "slow-best", "messages": HELLO, "stream": True}
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-x-000000"}) as patient, httpx.stream(
        "POST", f"{patient.base_url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ") or line.startswith(":")]
    assert lines and lines[0].startswith(":")  # a keep-alive went out before the timeout
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout"


def test_a_stream_that_times_out_before_its_first_byte_gets_504(impatient: ProxyProcess) -> None:
    body = {"model": "slow", "messages": HELLO, "stream": True}
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_stream_whose_upstream_fails_at_once_gets_502(proxy: ProxyProcess, path: str) -> None:
    body: dict[str, Any] = {"model": "fail", "stream": True}
    body.update({"messages": HELLO} if "chat" in path else {"prompt": "hello"})
    response = httpx.post(f"{proxy.base_url}{path}", json=body, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_a_strategy_stream_whose_upstream_fails_before_the_first_keepalive_gets_502(hardened: ProxyProcess) -> None:
    # A strategy streams only once it has chosen; a failure before the first keep-alive is due
    # keeps its own status, as a passthrough stream's does (official clients then raise it).
    response = call(hardened, "/v1/chat/completions", {"model": "echo-fail-best", "messages": HELLO, "stream": True})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_too_many_messages_are_refused_before_any_work(impatient: ProxyProcess, stub: StubServer) -> None:
    before = len(stub.state.bodies("echo"))
    messages = [{"role": "user", "content": "x"}] * 51
    response = httpx.post(
        f"{impatient.base_url}/v1/chat/completions", json={"model": "echo", "messages": messages}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert len(stub.state.bodies("echo")) == before
    ok = [{"role": "user", "content": "x"}] * 50
    assert httpx.post(f"{impatient.base_url}/v1/chat/completions", json={"model": "echo", "messages": ok}).is_success


def test_json_nested_very_deep_is_a_client_error(impatient: ProxyProcess) -> None:
    depth = 100_000
    raw = '{"model": "echo", "messages": ' + "[" * depth + "]" * depth + "}"
    response = httpx.post(
        f"{impatient.base_url}/v1/chat/completions",
        content=raw.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- 4: a client hang-up cancels a strategy's upstream calls too -------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_best_of_n_calls(proxy: ProxyProcess, stub: StubServer, stream: bool) -> None:
    cancelled, seen = stub.state.cancelled, len(stub.state.bodies("slow"))
    body = json.dumps({"model": "slow-best", "messages": HELLO, "stream": stream}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
        conn.sendall(head.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while len(stub.state.bodies("slow")) == seen and time.monotonic() < deadline:
            time.sleep(0.02)  # hang up only once the candidate calls are upstream
        assert len(stub.state.bodies("slow")) > seen
    deadline = time.monotonic() + 4  # well before the stub's 5 s sleep would end by itself
    while stub.state.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub.state.cancelled > cancelled
    time.sleep(0.2)
    assert "Traceback" not in proxy.log()  # a hang-up is a logged 499, not a server error
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    assert any(line.get("route") == "slow-best" and line["status"] == 499 for line in lines)


# --- 5: one request's upstream cost has a ceiling nothing a client sends can lift -------------


@pytest.fixture(scope="module")
def budgeted(stub: StubServer) -> Iterator[ProxyProcess]:
    base = stub.api_base
    config = {
        "upstreams": [
            upstream("math", base, retries=0),
            upstream("one", base, retries=0),
            upstream("fail", base, retries=3, retry_backoff_s=0),
        ],
        "routes": [
            {"model": "budget", "upstream": "math", "strategy": {
                "name": "best_of_n", "max_n": 16, "max_tokens_budget": 20_000, "stop": {"min_gain": 0.0}}},
            {"model": "tight", "upstream": "math", "strategy": {
                "name": "best_of_n", "max_n": 16, "adaptive": False, "max_tokens_budget": 150}},
            {"model": "failing-judge", "upstream": "math", "strategy": {
                "name": "best_of_n", "max_n": 8, "adaptive": False,
                "verifiers": [{"type": "llm_judge", "upstream": "fail", "templates": ["rubric_10", "likert_5"]}]}},
            {"model": "three-calls", "upstream": "one", "strategy": {
                "name": "best_of_n", "max_n": 8, "adaptive": False, "max_upstream_calls": 3}},
        ],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-x-000000"}) as process:
        yield process


def upstream_calls(stub: StubServer) -> int:
    with stub.state.lock:
        return len(stub.state.requests)


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_prompt_larger_than_the_budget_spends_nothing(
    budgeted: ProxyProcess, stub: StubServer, adaptive: bool
) -> None:
    before = upstream_calls(stub)
    big = "What is 2 + 2? " + "x" * 250_000
    response = httpx.post(
        f"{budgeted.base_url}/v1/chat/completions",
        json={"model": "budget", "messages": [{"role": "user", "content": big}], "rvr": {"adaptive": adaptive}},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "token_budget_exceeded"
    assert upstream_calls(stub) == before


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_budget_bounds_every_upstream_token(budgeted: ProxyProcess, adaptive: bool) -> None:
    response = httpx.post(
        f"{budgeted.base_url}/v1/chat/completions",
        json={"model": "tight", "messages": [{"role": "user", "content": "p=0.5 What is 6 x 7?"}],
              "max_tokens": 20, "rvr": {"adaptive": adaptive}},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["usage"]["total_tokens"] <= 150  # usage counts every upstream token of the request
    assert 1 <= body["rvr"]["candidates"] < 16
    if not adaptive:  # a fixed 16 cannot fit: the budget is what stops it (adaptive may stop sooner)
        assert body["rvr"]["stop_reason"] == "token_budget"


def test_failing_judge_calls_do_not_multiply(budgeted: ProxyProcess, stub: StubServer) -> None:
    before, fails = upstream_calls(stub), len(stub.state.bodies("fail"))
    response = httpx.post(
        f"{budgeted.base_url}/v1/chat/completions",
        json={"model": "failing-judge", "messages": [{"role": "user", "content": "What is 6 x 7?"}]},
        timeout=60,
    )
    assert response.status_code == 200
    judge_calls = len(stub.state.bodies("fail")) - fails
    # After 3 failures no judge call starts; up to 8 (its concurrency) were already in flight,
    # each tried 1 + 3 times. It was 353 calls when every round redid every failed call.
    assert judge_calls <= (3 + 8 - 1) * 4
    assert upstream_calls(stub) - before <= 8 + judge_calls


def test_an_explicit_call_ceiling_holds(budgeted: ProxyProcess, stub: StubServer) -> None:
    before = upstream_calls(stub)
    response = httpx.post(
        f"{budgeted.base_url}/v1/chat/completions",
        json={"model": "three-calls", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200  # the upstream ignores n: 8 candidates would be 8 calls
    assert upstream_calls(stub) - before == 3
    assert response.json()["rvr"]["candidates"] == 3


def test_check_config_prints_each_routes_ceiling(tmp_path: Path) -> None:
    config = {
        "upstreams": [
            upstream_settings(),
            {"name": "judge", "retries": 1, "litellm_params": {"model": "openai/j", "api_base": "http://127.0.0.1:9"}},
        ],
        "routes": [
            {"model": "plain", "upstream": "up", "limits": {"max_n": 4}},
            {"model": "best", "upstream": "up", "strategy": {
                "name": "best_of_n", "max_n": 8, "audit_max_n": 8, "max_tokens_budget": 5000,
                "verifiers": [{"type": "llm_judge", "upstream": "judge", "templates": ["rubric_10"]}]}},
        ],
    }
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(file)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # plain: 4 choices x (1 + 2 default retries); best: (8 candidates + 8 judge calls) x (1 + 2)
    assert "route plain: at most 12 upstream calls per request" in result.stdout
    assert "route best: at most 48 upstream calls per request, at most 5000 upstream tokens" in result.stdout


# --- 10: header size and read time are bounded before authentication --------------------------


def closed_within(conn: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it stayed open."""
    conn.settimeout(seconds)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    return received


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: "])
def test_a_connection_slow_to_send_its_headers_is_closed(impatient: ProxyProcess, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port)) as conn:
        conn.sendall(sent)
        assert closed_within(conn, 5) is not None  # read_timeout_s is 1 s


def test_a_kept_alive_connection_gets_the_same_deadline(impatient: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.2)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # the next request never finishes
        received = closed_within(conn, 5)
        assert received is not None and received.startswith(b"HTTP/1.1 200")


def test_a_body_trickling_in_gets_408(impatient: ProxyProcess, stub: StubServer) -> None:
    before = len(stub.state.bodies("echo"))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", impatient.port)) as conn:
        conn.sendall(head + b"content-length: 200\r\n\r\n" + b'{"model": "echo", ')
        received = closed_within(conn, 5) or b""
    assert received.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in received.replace(b" ", b"")
    assert len(stub.state.bodies("echo")) == before


def test_oversized_headers_are_refused_and_the_server_lives_on(impatient: ProxyProcess) -> None:
    response = httpx.get(f"{impatient.base_url}/healthz", headers={"x-big": "a" * 20_000}, timeout=5)
    assert response.status_code == 431 and response.json()["error"]["code"] == "headers_too_large"
    with socket.create_connection(("127.0.0.1", impatient.port)) as conn:  # and headers that never end
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20_000)
        received = closed_within(conn, 5)
    assert received is not None and received.startswith(b"HTTP/1.1 400")  # closed at the 8 KiB cap
    assert httpx.get(f"{impatient.base_url}/healthz", timeout=5).status_code == 200


# --- 13: the log is one JSON object per line, and nothing else ---------------------------------


def test_a_body_cut_short_is_a_499_not_a_500(impatient: ProxyProcess) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", impatient.port)) as conn:
        conn.sendall(head + b"content-length: 200\r\n\r\n" + b'{"model": "echo", ')
        time.sleep(0.2)
    time.sleep(0.3)
    lines = [json.loads(line) for line in impatient.log().splitlines() if line.strip()]
    assert any(line.get("status") == 499 for line in lines)
    assert not any(line.get("status") == 500 for line in lines)


@pytest.mark.parametrize("name", ["hardened", "impatient", "budgeted"])
def test_every_log_line_is_one_json_object(name: str, request: pytest.FixtureRequest) -> None:
    process: ProxyProcess = request.getfixturevalue(name)  # after the tests above used it hard
    lines = [line for line in process.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert "Traceback" not in process.log()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_streams_are_retried_like_every_other_call(proxy: ProxyProcess, stub: StubServer, path: str) -> None:
    # litellm sends a text stream only at its first read: that read must be inside the retries
    prompt = f"flaky stream {path} {time.monotonic()}"
    body: dict[str, Any] = {"model": "flaky", "stream": True}
    body.update({"messages": [{"role": "user", "content": prompt}]} if "chat" in path else {"prompt": prompt})
    with httpx.stream("POST", f"{proxy.base_url}{path}", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert sum(1 for r in stub.state.bodies("flaky") if prompt in json.dumps(r)) == 2  # failed once, retried



def test_no_canary_leaks_into_bodies_logs_or_metrics(hardened: ProxyProcess) -> None:
    secrets = (KEY, HEADER_SECRET, URL_PASSWORD, "sk-upstream-canary-4410")
    prompt = [{"role": "user", "content": PROMPT_CANARY}]
    bodies: list[str] = []
    for model in ("open", "echo-fail", "echo-fail-best", "pw", "nope"):
        for stream in (False, True):
            body = {"model": model, "messages": prompt, "stream": stream}
            bodies.append(call(hardened, "/v1/chat/completions", body).text)
    bodies.append(call(hardened, "/v1/completions", {"model": "echo-fail", "prompt": PROMPT_CANARY}).text)
    bodies.append(call(hardened, "/v1/chat/completions", {"model": "open", "messages": prompt, "n": 99}).text)
    bodies.append(httpx.post(f"{hardened.base_url}/v1/chat/completions", json={}, timeout=10).text)  # no key
    bodies.append(httpx.get(f"{hardened.base_url}/v1/models", headers=AUTH, timeout=10).text)
    metrics = httpx.get(f"{hardened.base_url}/metrics", headers=AUTH, timeout=10).text
    time.sleep(0.3)
    log = hardened.log()
    for secret in secrets:
        assert not any(secret in body for body in bodies), secret
        assert secret not in log and secret not in metrics, secret
    assert PROMPT_CANARY not in log and PROMPT_CANARY not in metrics  # prompts are not logged by default


def test_text_completions_reuse_one_connection_pool(hardened: ProxyProcess) -> None:
    for _ in range(10):  # litellm made (and leaked) a client session per text completion
        assert call(hardened, "/v1/completions", {"model": "open", "prompt": "hi"}).status_code == 200
    time.sleep(0.5)
    assert "nclosed" not in hardened.log()  # asyncio's "Unclosed client session / connector"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "developer"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "assistant"}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "foo"}]}], "messages[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0].image_url"),
        ([{"role": "user", "content": [{"type": "refusal", "refusal": ""}]}], "messages[0].content[0].type"),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         "messages[0].content[0].type"),
    ],
)
def test_messages_litellm_would_refuse_are_400s_found_by_fuzzing(
    hardened: ProxyProcess, stub: StubServer, messages: list[dict[str, Any]], param: str
) -> None:
    before = len(stub.state.bodies("echo"))
    response = call(hardened, "/v1/chat/completions", {"model": "open", "messages": messages})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert len(stub.state.bodies("echo")) == before
