"""The native client (proxy/upstream/native.py) behind `UpstreamClient`, over loopback in-process:
the stub upstream (tests/stub_upstream.py) in a thread, or a recording aiohttp server in the
test's own event loop where a test must see headers, connections or hand-made answers.

What it must do as litellm did: send the client's request with the operator's parameters, return
every field the upstream sent, map each HTTP failure as litellm maps it, retry, time out, hang up
on the upstream when a call or stream is abandoned, estimate usage where none came, and keep one
pool of connections; and a proxy of OpenAI-compatible upstreams must never import litellm.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.config.secrets import Redactor
from proxy.config.settings import ConfigError, UpstreamSettings, parse_config
from proxy.errors import UpstreamFailed, UpstreamRejected, UpstreamTimedOut
from proxy.upstream import native, usage_estimate
from proxy.upstream.client import UpstreamClient, litellm_pool
from proxy.upstream.error_mapping import classify
from proxy.upstream.native import NativeTransport
from proxy.upstream.native_errors import ConnectionLost, StatusError
from tests.stub_upstream import RICH_FINGERPRINT, RICH_SERVICE_TIER, StubServer

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "hello"}]
KEY = "sk-native-upstream-0123456789"
_names = itertools.count()


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(slow_s=3.0) as server:
        yield server


def native_client(api_base: str, behaviour: str = "echo", **extra: Any) -> UpstreamClient:
    """A native client for `behaviour` (the stub's model name) with a fresh metric name."""
    params = {"model": f"openai/{behaviour}", "api_base": api_base, "api_key": KEY, **extra.pop("params", {})}
    values: dict[str, Any] = {"name": f"native-{next(_names)}", "litellm_params": params, "retries": 0}
    settings = UpstreamSettings(**{**values, "retry_backoff_s": 0, **extra})
    client = UpstreamClient(settings, Redactor([KEY]))
    assert isinstance(client._transport, NativeTransport)
    return client


def run(work: Callable[[], Awaitable[Any]]) -> Any:
    """`work` inside the worker's pools, as serving runs every call."""

    async def pooled() -> Any:
        async with litellm_pool():
            return await work()

    return asyncio.run(pooled())


def outcomes(client: UpstreamClient) -> dict[str, float]:
    labels = ("success", "error", "rate_limited", "rejected", "timeout", "cancelled")
    counts = {o: REGISTRY.get_sample_value("rvr_upstream_requests_total", {"upstream": client.name, "outcome": o})
              for o in labels}
    return {o: c for o, c in counts.items() if c}


async def seen_within(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    """Whether `condition` came true within `seconds`, asked while the pool is still open (closing
    it closes every connection, which would hide one left open). The stub notices a hang-up
    within 50 ms."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return condition()


# ---- a recording server, for headers, connections and hand-made answers ---------------------------

Answer = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def recorder(answer: Answer) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback server in this event loop; yields its api_base and what it received."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"path": request.path, "headers": dict(request.headers), "body": body,
                     "connection": id(request.transport)})
        return await answer(request, body)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


def chat_answer(content: str = "hi") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


async def answer_json(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response(chat_answer())


def status_answer(status: int, payload: Any) -> Answer:
    async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if isinstance(payload, str):
            return web.Response(status=status, text=payload)
        return web.json_response(payload, status=status)

    return answer


# ---- which client serves an upstream -------------------------------------------------------------

@pytest.mark.parametrize(
    ("params", "client", "native_serves"),
    [
        ({"model": "openai/m", "api_base": "http://h/v1"}, "auto", True),
        ({"model": "openai/gpt-4o-mini"}, "auto", True),  # OpenAI itself, its default api_base
        ({"model": "text-completion-openai/gemma", "api_base": "http://h/v1", "api_key": "none"}, "auto", True),
        ({"model": "hosted_vllm/qwen", "api_base": "http://h/v1", "temperature": 0.2}, "auto", True),
        ({"model": "hosted_vllm/qwen"}, "auto", False),  # litellm reads HOSTED_VLLM_API_BASE
        ({"model": "anthropic/claude-3-5-haiku"}, "auto", False),
        ({"model": "gpt-4o-mini"}, "auto", False),  # litellm infers the provider: left to it
        ({"model": "openai/m", "api_base": "http://h/v1", "api_version": "1"}, "auto", False),
        ({"model": "openai/m", "api_base": "http://h/v1"}, "litellm", False),
        ({"model": "openai/m", "api_base": "http://h/v1"}, "native", True),
    ],
)
def test_auto_is_native_where_openais_protocol_is_spoken(
    params: dict[str, Any], client: str, native_serves: bool
) -> None:
    assert UpstreamSettings(name="u", litellm_params=params, client=client).native is native_serves


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"model": "anthropic/claude-3-5-haiku"}, "'anthropic/claude-3-5-haiku' is not one of openai/..."),
        ({"model": "openai/m", "drop_params": True}, "litellm_params.drop_params is litellm's own"),
        ({"model": "hosted_vllm/q"}, "hosted_vllm/ needs litellm_params.api_base"),
    ],
)
def test_client_native_refuses_an_upstream_it_cannot_serve(params: dict[str, Any], says: str) -> None:
    raw = {"upstreams": [{"name": "u", "litellm_params": params, "client": "native"}], "routes": []}
    with pytest.raises(ConfigError, match="upstreams.0: .*client: native cannot serve this upstream") as info:
        parse_config(raw)
    assert says in str(info.value)


# ---- requests ---------------------------------------------------------------------------------------

def test_the_request_is_the_clients_json_with_the_operators_parameters() -> None:
    async def work() -> list[dict[str, Any]]:
        async with recorder(answer_json) as (base, seen):
            client = native_client(base, "my-model", params={"temperature": 0.3, "extra_headers": {"X-Team": "a"}})
            params = {"max_tokens": 5, "seed": None, "extra_body": {"top_k": 4, "metadata": {"k": "v"}},
                      "model": "client/override", "api_key": "sk-client-own"}
            await client.chat(HELLO, params, 1)
            return seen

    (sent,) = run(work)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"  # the operator's key, never the client's
    assert sent["headers"]["X-Team"] == "a" and sent["headers"]["Content-Type"] == "application/json"
    # the model without litellm's prefix; no None, no transport settings; extra_body at the top level
    assert sent["body"] == {"model": "my-model", "messages": HELLO, "temperature": 0.3, "max_tokens": 5,
                            "top_k": 4, "metadata": {"k": "v"}}


def test_text_completions_and_embeddings_reach_their_endpoints(stub: StubServer) -> None:
    client = native_client(stub.api_base, "echo")
    text = run(lambda: client.complete("say this", {"echo": True, "suffix": "!"}, 1))
    assert text.choices[0]["text"] == "echo 0: say this"
    vectors, usage = run(lambda: client.embed(["a b", "c"]))
    assert len(vectors) == 2 and len(vectors[0]) == 32 and usage.prompt_tokens == 3
    paths = [r["_path"] for r in stub.state.requests[-2:]]
    assert paths == ["/v1/completions", "/v1/embeddings"]
    assert stub.state.requests[-2]["suffix"] == "!" and stub.state.requests[-2]["echo"] is True


def test_n_goes_upstream_once_where_it_works_and_is_learned_where_it_does_not(stub: StubServer) -> None:
    honours = native_client(stub.api_base, "echo")
    assert len(run(lambda: honours.chat(HELLO, {}, 3)).choices) == 3 and honours.n_works is True
    ignores = native_client(stub.api_base, "one")
    result = run(lambda: ignores.chat(HELLO, {}, 3))
    assert len(result.choices) == 3 and ignores.n_works is False and result.calls == 3


# ---- answers ----------------------------------------------------------------------------------------

def test_a_chat_answer_keeps_every_field_the_upstream_sent(stub: StubServer) -> None:
    client = native_client(stub.api_base, "rich")
    result = run(lambda: client.chat(HELLO, {"logprobs": True, "top_logprobs": 1}, 1))
    (choice,) = result.choices
    assert choice["message"]["annotations"] == [] and choice["message"]["refusal"] is None
    assert choice["logprobs"]["refusal"] is None and choice["logprobs"]["content"][0]["top_logprobs"]
    assert choice["response"] == {"system_fingerprint": RICH_FINGERPRINT, "service_tier": RICH_SERVICE_TIER}
    assert result.usage.details["completion_tokens_details"]["reasoning_tokens"] == 0


def test_an_answer_without_usage_is_estimated() -> None:
    async def no_usage(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({**chat_answer("twelve chars"), "usage": None})

    async def work() -> Any:
        async with recorder(no_usage) as (base, _):
            return await native_client(base).chat([{"role": "user", "content": "x" * 40}], {}, 1)

    usage = run(work).usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 3)  # 40 and 12 characters, 4 a token


# ---- failures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "payload", "error", "outcome", "retried", "code"),
    [
        (400, {"error": {"message": "bad temperature"}}, UpstreamRejected, "rejected", False, None),
        (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, UpstreamRejected, "rejected",
         False, "context_length_exceeded"),
        (400, {"error": {"message": "This model's maximum context length is 8 tokens"}}, UpstreamRejected,
         "rejected", False, "context_length_exceeded"),
        (422, {"detail": "bad field"}, UpstreamRejected, "rejected", False, None),
        (429, {"error": {"message": "slow down"}}, UpstreamFailed, "rate_limited", True, None),
        (500, {"error": {"message": "exploded"}}, UpstreamFailed, "error", True, None),
        (503, "overloaded", UpstreamFailed, "error", True, None),
        (504, "gateway timeout", UpstreamTimedOut, "timeout", False, None),
        (401, {"error": {"message": "bad key"}}, UpstreamFailed, "error", False, None),
        (404, {"error": {"message": "no such model"}}, UpstreamFailed, "error", False, None),
    ],
)
def test_http_failures_map_as_litellm_maps_them(
    status: int, payload: Any, error: type[Exception], outcome: str, retried: bool, code: str | None
) -> None:
    async def work() -> tuple[UpstreamClient, Any, int]:
        async with recorder(status_answer(status, payload)) as (base, seen):
            client = native_client(base, retries=1)
            with pytest.raises(error) as info:
                await client.chat(HELLO, {}, 1)
            return client, info.value, len(seen)

    client, raised, calls = run(work)
    assert calls == (2 if retried else 1)
    assert outcomes(client) == {outcome: calls}
    assert raised.code == (code or raised.code)
    if error is not UpstreamTimedOut:  # a timeout says no more than that, as litellm's did
        words = payload if isinstance(payload, str) else payload.get("detail") or payload["error"]["message"]
        verb = classify(StatusError(status, payload, "")).verb
        assert raised.message == f"upstream {client.name!r} {verb} with HTTP {status}: {words}"


def test_a_body_that_is_not_json_is_an_upstream_failure() -> None:
    async def work() -> BaseException:
        async with recorder(status_answer(200, "<html>proxy error</html>")) as (base, _):
            with pytest.raises(UpstreamFailed) as info:
                await native_client(base).chat(HELLO, {}, 1)
            return info.value

    assert "not a JSON object" in run(work).message


def test_a_lost_connection_is_retryable_and_claims_no_status() -> None:
    failure = classify(ConnectionLost("Server disconnected"))
    assert failure.retryable and not failure.has_status


def test_a_timeout_is_a_504_and_hangs_up_on_the_upstream(stub: StubServer) -> None:
    client = native_client(stub.api_base, "timeout", timeout_s=0.3)
    cancelled = stub.state.cancelled

    async def work() -> bool:
        with pytest.raises(UpstreamTimedOut):
            await client.chat(HELLO, {}, 1)
        return await seen_within(lambda: stub.state.cancelled > cancelled)

    assert run(work), "the upstream kept its connection"
    assert outcomes(client) == {"timeout": 1}


def test_a_cancelled_call_hangs_up_on_the_upstream(stub: StubServer) -> None:
    client = native_client(stub.api_base, "slow")
    cancelled, seen = stub.state.cancelled, len(stub.state.bodies("slow"))

    async def work() -> bool:
        call = asyncio.ensure_future(client.chat(HELLO, {}, 1))
        while len(stub.state.bodies("slow")) == seen:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return await seen_within(lambda: stub.state.cancelled > cancelled)

    assert run(work), "the upstream never saw the hang-up"
    assert outcomes(client) == {"cancelled": 1}


# ---- streams ----------------------------------------------------------------------------------------

def read(client: UpstreamClient, n: int = 1, params: dict[str, Any] | None = None, text: bool = False) -> Any:
    async def work() -> list[dict[str, Any]]:
        stream = client.stream_text("p", params or {}, n) if text else client.stream_chat(HELLO, params or {}, n)
        return [chunk async for chunk in stream]

    return run(work)


@pytest.mark.parametrize("text", [False, True])
def test_a_stream_is_the_upstreams_own_events(stub: StubServer, text: bool) -> None:
    client = native_client(stub.api_base, "rich", supports_n=True)
    params = {"logprobs": 2} if text else {"logprobs": True, "top_logprobs": 2}
    chunks = read(client, 2, params, text)
    path = "/completions" if text else "/chat/completions"
    body = {"model": "rich", "n": 2, "stream": True, "stream_options": {"include_usage": True}, **params,
            **({"prompt": "p"} if text else {"messages": HELLO})}
    direct = httpx.post(stub.api_base + path, json=body, timeout=10).text
    events = [json.loads(line[6:]) for line in direct.splitlines() if line.startswith("data: {")]
    assert chunks == events


def test_a_stream_without_usage_gets_an_estimate(stub: StubServer) -> None:
    chunks = read(native_client(stub.api_base, "no-usage-echo"))
    answer = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["choices"] == []
    completion = -(-len(answer) // usage_estimate.CHARS_PER_TOKEN)
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": completion,
                                   "total_tokens": 2 + completion}


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [("cut", "failed: "), ("ends-early", "ended its stream before the answer finished")],
)
def test_a_stream_cut_or_left_unfinished_is_an_upstream_error(stub: StubServer, behaviour: str, says: str) -> None:
    client = native_client(stub.api_base, behaviour)
    with pytest.raises(UpstreamFailed, match=says):
        read(client)


def test_an_error_event_fails_the_stream_with_the_upstreams_words() -> None:
    async def error_event(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"error": {"message": "model crashed", "type": "server_error"}}\n\n')
        await response.write_eof()
        return response

    async def work() -> BaseException:
        async with recorder(error_event) as (base, _):
            with pytest.raises(UpstreamFailed) as info:
                async for _chunk in native_client(base).stream_chat(HELLO, {}):
                    pass
            return info.value

    assert run(work).message.endswith("failed: model crashed")


def test_an_event_that_is_not_json_fails_the_stream_instead_of_leaving_a_gap() -> None:
    # bench/soak.py: a stream with a garbled event in the middle was relayed to its [DONE] with
    # that event's words missing, a 200 holding an incomplete answer.
    async def garbled(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "the answer"}, "finish_reason": None}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: {not json at all\n\n")
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def work() -> list[Any]:
        seen: list[Any] = []
        async with recorder(garbled) as (base, _):
            with pytest.raises(UpstreamFailed):
                async for chunk in native_client(base).stream_chat(HELLO, {}):
                    seen.append(chunk)
        return seen

    assert len(run(work)) <= 1


def test_a_stream_left_early_hangs_up_on_the_upstream(stub: StubServer) -> None:
    """`late-usage-echo` sends its usage 3 s after the answer: the reader leaves in between."""
    client = native_client(stub.api_base, "late-usage-echo")
    cancelled = stub.state.cancelled

    async def work() -> bool:
        stream = client.stream_chat(HELLO, {})
        async for chunk in stream:
            if any(c.get("finish_reason") for c in chunk["choices"]):
                break
        await stream.aclose()  # as the relay does when its client is gone
        return await seen_within(lambda: stub.state.cancelled > cancelled)

    assert run(work), "the upstream kept streaming to nobody"


def test_n_streams_where_one_fails_to_open_end_the_others_at_once() -> None:
    """An upstream that ignores `n` gets one stream per choice; when one of them fails, the
    others (still waiting for their answer here) are hung up on instead of left running."""
    calls = itertools.count()
    hung_up: list[int] = []

    async def first_fails(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        call = next(calls)
        if call == 0:
            return web.json_response({"error": {"message": "exploded"}}, status=500)
        for _ in range(150):  # 3 s unless the caller goes first
            if request.transport is None or request.transport.is_closing():
                hung_up.append(call)
                break
            await asyncio.sleep(0.02)
        return web.json_response(chat_answer())

    async def work() -> bool:
        async with recorder(first_fails) as (base, _):
            client = native_client(base, supports_n=False)
            with pytest.raises(UpstreamFailed, match="with HTTP 500: exploded"):
                async for _chunk in client.stream_chat(HELLO, {}, 3):
                    pass
            return await seen_within(lambda: len(hung_up) == 2)

    assert run(work), f"only {len(hung_up)} of the 2 other streams were hung up on"


# ---- the pool ---------------------------------------------------------------------------------------

def test_calls_and_streams_share_one_pooled_connection() -> None:
    async def sse(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not body.get("stream"):
            return web.json_response(chat_answer())
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def work() -> set[int]:
        async with recorder(sse) as (base, seen):
            client = native_client(base)
            for _ in range(3):
                await client.chat(HELLO, {}, 1)
                assert [c async for c in client.stream_chat(HELLO, {})]
            return {r["connection"] for r in seen}

    assert len(run(work)) == 1


def test_the_environments_proxy_carries_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY as httpx (and so litellm) honours it: the recorder plays the proxy here."""

    async def work() -> list[dict[str, Any]]:
        async with recorder(answer_json) as (proxy_base, seen):
            monkeypatch.setenv("HTTP_PROXY", proxy_base.removesuffix("/v1"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            native._env_proxy.cache_clear()
            try:
                await native_client("http://upstream.invalid/v1").chat(HELLO, {}, 1)
            finally:
                native._env_proxy.cache_clear()
            return seen

    (sent,) = run(work)
    assert sent["headers"]["Host"] == "upstream.invalid" and sent["path"] == "/v1/chat/completions"


def test_a_call_made_outside_the_pool_leaves_no_session_open() -> None:
    async def work() -> None:
        async with recorder(answer_json) as (base, _):
            await native_client(base).chat(HELLO, {}, 1)  # no `litellm_pool` here: a session of its own

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(work())
        gc.collect()  # an unclosed session warns when it is collected
    assert not [w for w in caught if "nclosed" in str(w.message)]


# ---- litellm stays unloaded --------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from proxy.config.settings import parse_config
    from proxy.server.app import create_app
    from proxy.upstream.client import litellm_pool

    config = parse_config(json.loads(sys.argv[1]))
    app = create_app(config)
    client = app.state.proxy.router.clients["first"]

    async def call() -> str:
        async with litellm_pool():
            try:
                await client.chat([{"role": "user", "content": "hi"}], {}, 1)
            except Exception as exc:  # the closed port: an error, mapped without litellm
                return type(exc).__name__
        return "answered"

    print(json.dumps({"called": asyncio.run(call()), "litellm": "litellm" in sys.modules}))
    """
)


def _probe(upstreams: list[dict[str, Any]]) -> dict[str, Any]:
    config = {"upstreams": upstreams, "routes": [{"model": u["name"], "upstream": u["name"]} for u in upstreams]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVR_")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_proxy_of_openai_compatible_upstreams_never_imports_litellm() -> None:
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, the call is refused
    upstreams = [
        {"name": "first", "litellm_params": {"model": "openai/m", "api_base": closed, "api_key": "none"}, "retries": 0},
        {"name": "base", "litellm_params": {"model": "text-completion-openai/g", "api_base": closed}},
        {"name": "vllm", "litellm_params": {"model": "hosted_vllm/q", "api_base": closed}},
    ]
    assert _probe(upstreams) == {"called": "UpstreamFailed", "litellm": False}


def test_one_upstream_on_litellm_imports_it() -> None:
    upstreams = [
        {"name": "first", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}, "retries": 0},
        {"name": "other", "litellm_params": {"model": "anthropic/claude-3-5-haiku", "api_key": "none"}},
    ]
    assert _probe(upstreams)["litellm"] is True


# ---- estimates ---------------------------------------------------------------------------------------

def test_usage_estimates_count_four_characters_a_token() -> None:
    assert usage_estimate.tokens(0) == 0 and usage_estimate.tokens(1) == 1 and usage_estimate.tokens(8) == 2
    messages = [{"role": "user", "content": [{"type": "text", "text": "abcd" * 3}]},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"function": {"name": "get", "arguments": '{"a":1}'}}]}]
    assert usage_estimate.prompt_tokens({"messages": messages}) == 3 + 3  # 12 characters; 3 + 7 characters
    assert usage_estimate.prompt_tokens({"prompt": ["abcd", [1, 2, 3]]}) == 1 + 3  # text, and token ids
    chunk = [{"index": 0, "delta": {"content": "ab", "tool_calls": [{"function": {"arguments": "cd"}}]}}]
    assert usage_estimate.completion_chars(chunk) == 4
    assert usage_estimate.completion_chars([{"text": "abc"}]) == 3
