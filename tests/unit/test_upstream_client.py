"""UpstreamClient in-process: retries, fallback, n-batching, limits and error mapping over a fake
transport (no server, no network). The loopback tests in test_service.py cover the real litellm path."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import litellm
import pytest
from litellm import exceptions as litellm_exceptions
from prometheus_client import REGISTRY

from proxy.config.secrets import Redactor
from proxy.config.settings import UpstreamSettings
from proxy.errors import ProxyError, UpstreamError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut
from proxy.upstream.client import Choices, UpstreamClient
from proxy.upstream.error_mapping import classify, translate
from proxy.upstream.native import NativeTransport
from proxy.upstream.stream_tap import ACTIVE
from strategies.contract import Usage
from tests.fake_transport import Call, FakeTransport, chat_reply, chunks, script, text_reply

SECRET = "sk-upstream-secret-abcdef"
HELLO = [{"role": "user", "content": "hello"}]
_names = itertools.count()


def settings(**extra: Any) -> UpstreamSettings:
    """An upstream with a fresh name, so its metric counters start at zero in every test."""
    params = {"model": "openai/m", "api_base": "http://primary.test/v1", "api_key": SECRET}
    values: dict[str, Any] = {"name": f"up-{next(_names)}", "litellm_params": params, "retry_backoff_s": 0}
    return UpstreamSettings(**{**values, **extra})


def client_for(transport: FakeTransport, **extra: Any) -> UpstreamClient:
    return UpstreamClient(settings(**extra), Redactor([SECRET]), transport=transport)


def outcomes(client: UpstreamClient) -> dict[str, float]:
    labels = ("success", "error", "rate_limited", "rejected", "timeout", "cancelled")
    counts = {o: REGISTRY.get_sample_value("rvr_upstream_requests_total", {"upstream": client.name, "outcome": o})
              for o in labels}
    return {o: c for o, c in counts.items() if c}


def chat(client: UpstreamClient, n: int = 1, params: dict[str, Any] | None = None) -> Choices:
    return asyncio.run(client.chat(HELLO, params or {}, n))


def contents(result: Choices) -> list[str]:
    return [c["message"]["content"] for c in result.choices]


# ---- litellm's exceptions, built as litellm builds them -----------------------------------------

def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://primary.test/v1/chat/completions"))


def internal(message: str = "model overloaded") -> Exception:
    return litellm.InternalServerError(message=message, llm_provider="openai", model="m")


def rate_limited() -> Exception:
    return litellm.RateLimitError(message="slow down", llm_provider="openai", model="m")


def unavailable() -> Exception:
    return litellm.ServiceUnavailableError(message="try later", llm_provider="openai", model="m")


def bad_gateway() -> Exception:
    return litellm.BadGatewayError(message="bad gateway", llm_provider="openai", model="m")


def unreachable() -> Exception:
    return litellm.APIConnectionError(message="Connection error.", llm_provider="openai", model="m")


def bad_request(message: str = "n must be 1") -> Exception:
    return litellm.BadRequestError(message=message, model="m", llm_provider="openai")


def unprocessable() -> Exception:
    return litellm.UnprocessableEntityError(message="bad field", model="m", llm_provider="openai",
                                            response=_response(422))


def context_window() -> Exception:
    return litellm.ContextWindowExceededError(message="too long", model="m", llm_provider="openai")


def cut_mid_stream() -> Exception:
    """What litellm raises when a stream breaks: a 'fallback' wrapper with a made-up status."""
    original = litellm.APIConnectionError(
        message="OpenAIException - Response payload is not completed", llm_provider="openai", model="m"
    )
    return litellm_exceptions.MidStreamFallbackError(
        message=f"{original.message} Original exception: APIConnectionError: {original.message}",
        model="m",
        llm_provider="openai",
        original_exception=original,
    )


def timeout() -> Exception:
    return litellm.Timeout(message="Request timed out.", model="m", llm_provider="openai")


def unauthorized() -> Exception:
    return litellm.AuthenticationError(message="bad key", llm_provider="openai", model="m")


def not_found() -> Exception:
    return litellm.NotFoundError(message="no such model", model="m", llm_provider="openai")


RETRYABLE = [internal, rate_limited, unavailable, bad_gateway, unreachable, cut_mid_stream]
NOT_RETRYABLE = [bad_request, unprocessable, context_window, timeout, unauthorized, not_found]


# ---- retries ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", RETRYABLE)
def test_retryable_errors_are_retried_up_to_retries_then_fail(make: Callable[[], Exception]) -> None:
    transport = FakeTransport(script(make()))
    client = client_for(transport, retries=2)
    with pytest.raises(UpstreamFailed) as info:
        chat(client)
    assert len(transport.calls) == 3  # the first attempt and two retries
    assert info.value.status == 502
    assert sum(outcomes(client).values()) == 3


def test_a_retry_that_succeeds_returns_the_answer() -> None:
    transport = FakeTransport(script(internal(), rate_limited(), chat_reply("third time")))
    client = client_for(transport, retries=2)
    assert contents(chat(client)) == ["third time"]
    assert len(transport.calls) == 3
    assert outcomes(client) == {"error": 1, "rate_limited": 1, "success": 1}


@pytest.mark.parametrize("make", NOT_RETRYABLE)
def test_rejections_timeouts_and_auth_errors_are_not_retried(make: Callable[[], Exception]) -> None:
    transport = FakeTransport(script(make(), chat_reply("never")))
    client = client_for(transport, retries=3)
    with pytest.raises(UpstreamError):
        chat(client)
    assert len(transport.calls) == 1


# ---- fallback -----------------------------------------------------------------------------------

def test_fallback_serves_after_failure_with_its_own_endpoint_and_key() -> None:
    primary = FakeTransport(script(internal()))
    backup = FakeTransport(script(chat_reply("from backup")))
    backup_settings = settings(litellm_params={"model": "openai/b", "api_base": "http://backup.test/v1"})
    fallback = UpstreamClient(backup_settings, Redactor([SECRET]), transport=backup)
    client = UpstreamClient(settings(retries=1), Redactor([SECRET]), fallback=fallback, transport=primary)

    assert contents(chat(client, params={"temperature": 0.5, "api_base": "http://client.test"})) == ["from backup"]
    assert len(primary.calls) == 2  # the primary's own retries come first
    sent = backup.calls[0].kwargs
    assert sent["model"] == "openai/b" and sent["api_base"] == "http://backup.test/v1"
    assert "api_key" not in sent  # the primary's key never reaches the fallback's provider
    assert sent["temperature"] == 0.5 and sent["messages"] == HELLO
    assert outcomes(client) == {"error": 2} and outcomes(fallback) == {"success": 1}


def test_fallback_is_not_used_for_a_rejected_request() -> None:
    backup = FakeTransport(script(chat_reply("from backup")))
    fallback = UpstreamClient(settings(), Redactor([]), transport=backup)
    client = UpstreamClient(settings(), Redactor([]), fallback=fallback, transport=FakeTransport(script(bad_request())))
    with pytest.raises(UpstreamRejected):
        chat(client)
    assert backup.calls == []


def test_failing_fallback_reports_its_own_failure() -> None:
    backup = FakeTransport(script(timeout()))
    fallback = UpstreamClient(settings(name="backup", retries=0), Redactor([]), transport=backup)
    client = UpstreamClient(settings(retries=0), Redactor([]), fallback=fallback,
                            transport=FakeTransport(script(internal())))
    with pytest.raises(UpstreamTimedOut, match="upstream 'backup' timed out"):
        chat(client)


# ---- n-batching ---------------------------------------------------------------------------------

def test_n_is_sent_in_one_call_when_the_upstream_honours_it() -> None:
    transport = FakeTransport(lambda call: chat_reply(*(f"c{i}" for i in range(call.n))))
    client = client_for(transport)
    result = chat(client, n=3)
    assert contents(result) == ["c0", "c1", "c2"]
    assert [c.n for c in transport.calls] == [3]
    assert client.n_works is True
    assert result.calls == 1 and result.usage == Usage(10, 6)


def test_fewer_choices_than_n_are_remembered_and_filled_by_single_calls() -> None:
    transport = FakeTransport(lambda call: chat_reply("one"))  # ignores n, as llama.cpp's server does
    client = client_for(transport)
    result = chat(client, n=3)
    assert len(result.choices) == 3
    assert [c.n for c in transport.calls] == [3, 1, 1]
    assert all("n" not in c.kwargs for c in transport.calls[1:])
    assert client.n_works is False
    assert result.calls == 3 and result.errors == 0
    assert result.usage == Usage(30, 6)  # each call pays its prompt once

    transport.calls.clear()
    chat(client, n=2)
    assert [c.n for c in transport.calls] == [1, 1]  # no second try with n


def test_an_upstream_rejecting_n_gets_parallel_single_calls() -> None:
    transport = FakeTransport(lambda call: bad_request("'n' is not supported") if call.n > 1 else chat_reply("x"))
    client = client_for(transport)
    result = chat(client, n=3)
    assert contents(result) == ["x", "x", "x"]
    assert [c.n for c in transport.calls] == [3, 1, 1, 1]
    assert client.n_works is False
    assert result.usage == Usage(30, 6) and result.errors == 0
    assert outcomes(client) == {"rejected": 1, "success": 3}


def test_declared_supports_n_false_never_sends_n() -> None:
    transport = FakeTransport(lambda call: chat_reply("x"))
    client = client_for(transport, supports_n=False)
    assert len(chat(client, n=4).choices) == 4
    assert [c.n for c in transport.calls] == [1, 1, 1, 1]


def test_partial_failure_is_counted_and_the_rest_returned() -> None:
    counter = itertools.count()
    transport = FakeTransport(lambda call: internal() if next(counter) == 1 else chat_reply("ok"))
    client = client_for(transport, supports_n=False, retries=0)
    result = chat(client, n=4)
    assert contents(result) == ["ok", "ok", "ok"]
    assert result.errors == 1 and result.calls == 3
    assert result.usage == Usage(30, 6)


def test_all_calls_failing_raises_the_upstream_error() -> None:
    client = client_for(FakeTransport(script(internal())), supports_n=False, retries=0)
    with pytest.raises(UpstreamFailed):
        chat(client, n=3)


# ---- usage --------------------------------------------------------------------------------------

def test_missing_or_malformed_usage_counts_zero() -> None:
    transport = FakeTransport(script(text_reply("a", usage=None), text_reply("b", usage={"prompt_tokens": "many"})))
    client = client_for(transport)
    assert asyncio.run(client.complete("p", {}, 1)).usage == Usage()
    assert asyncio.run(client.complete("p", {}, 1)).usage == Usage()


def test_embeddings_come_back_in_input_order_with_usage() -> None:
    reply = {"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
             "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    transport = FakeTransport(script(reply))
    vectors, usage = asyncio.run(client_for(transport).embed(["a", "b"]))
    assert vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert usage == Usage(4, 0)
    assert transport.calls[0].kind == "embed" and transport.calls[0].kwargs["input"] == ["a", "b"]


def test_real_litellm_response_objects_are_read_too() -> None:
    reply = litellm.ModelResponse(**chat_reply("typed", prompt_tokens=7, completion_tokens=3))
    result = chat(client_for(FakeTransport(script(reply))))
    assert contents(result) == ["typed"] and result.usage == Usage(7, 3)


# ---- concurrency --------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [1, 2, 5])
def test_max_concurrency_bounds_calls_in_flight(limit: int) -> None:
    transport = FakeTransport(lambda call: chat_reply("x"), turns=5)
    client = client_for(transport, supports_n=False, max_concurrency=limit)
    assert len(chat(client, n=8).choices) == 8
    assert transport.max_in_flight == limit  # reached, never exceeded


def test_retries_wait_for_a_free_slot_too() -> None:
    counter = itertools.count()
    transport = FakeTransport(lambda call: internal() if next(counter) < 2 else chat_reply("x"), turns=3)
    client = client_for(transport, supports_n=False, max_concurrency=2, retries=1)
    assert len(chat(client, n=6).choices) == 6
    assert len(transport.calls) == 8 and transport.max_in_flight == 2


# ---- streaming ----------------------------------------------------------------------------------

def test_stream_cut_mid_answer_is_an_upstream_error() -> None:
    transport = FakeTransport(script(chunks(["a", "b"], cut=cut_mid_stream())))
    client = client_for(transport, name="local")
    received: list[dict[str, Any]] = []

    async def read() -> None:
        async for chunk in client.stream_chat(HELLO, {}):
            received.append(chunk)

    with pytest.raises(UpstreamFailed) as info:
        asyncio.run(read())
    assert [c["choices"][0]["delta"]["content"] for c in received] == ["a", "b"]
    assert info.value.message == "upstream 'local' failed: Response payload is not completed"
    assert transport.calls[0].kwargs["stream"] is True
    assert transport.calls[0].kwargs["stream_options"] == {"include_usage": True}
    assert outcomes(client) == {"success": 1, "error": 1}


def tapped(events: list[dict[str, Any]], litellm_view: list[str]) -> Any:
    """A stream whose bytes the proxy read below litellm (as `TappingTransport` does in the
    connection pool), holding `events`, while litellm makes chunks of `litellm_view`."""

    def handle(call: Call) -> Any:
        tap = ACTIVE.get()
        assert tap is not None, "the stream was opened outside a tap"
        tap.attached = True
        tap.feed("".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n")
        return chunks(litellm_view)

    return handle


UPSTREAM_CHUNKS: list[dict[str, Any]] = [
    {"object": "chat.completion.chunk", "system_fingerprint": "fp",
     "choices": [{"index": k, "delta": {"content": f"c{k}", "refusal": None}, "logprobs": None, "finish_reason": None}
                 for k in range(2)]},
    {"object": "chat.completion.chunk",
     "choices": [{"index": k, "delta": {}, "finish_reason": "stop"} for k in range(2)]},
    {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
]


def read_stream(client: UpstreamClient, n: int = 1) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return [chunk async for chunk in client.stream_chat(HELLO, {}, n)]

    return asyncio.run(read())


def test_a_tapped_stream_relays_the_upstreams_own_chunks() -> None:
    client = client_for(FakeTransport(tapped(UPSTREAM_CHUNKS, ["litellm's", "view"])), supports_n=True)
    assert read_stream(client, n=2) == UPSTREAM_CHUNKS


def test_a_tapped_stream_of_another_protocol_relays_litellms_chunks() -> None:
    """An upstream speaking its own protocol (no `choices`) is litellm's to translate."""
    events: list[dict[str, Any]] = [{"type": "message_start"}, {"type": "content_block_delta", "delta": {"text": "hi"}}]
    client = client_for(FakeTransport(tapped(events, ["litellm's", "view"])))
    assert [c["choices"][0]["delta"]["content"] for c in read_stream(client)] == ["litellm's", "view"]


def test_a_tapped_stream_with_an_unfinished_choice_is_an_upstream_error() -> None:
    only_one = {"object": "chat.completion.chunk", "choices": [{"index": 0, "finish_reason": "stop"}]}
    cut_short = [UPSTREAM_CHUNKS[0], only_one]  # choice 1 never finished
    client = client_for(FakeTransport(tapped(cut_short, ["x"])), supports_n=True, name="short")
    with pytest.raises(UpstreamFailed, match="upstream 'short' ended its stream before the answer finished"):
        read_stream(client, n=2)


def test_a_tapped_stream_without_usage_gets_litellms_count() -> None:
    def litellm_view() -> Any:
        async def stream() -> Any:
            yield {"choices": [{"index": 0, "delta": {"content": "x"}}]}
            yield {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "prompt_tokens_details": {}}}

        return stream()

    events = [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}]
    handler = tapped(events, [])
    client = client_for(FakeTransport(lambda call: (handler(call), litellm_view())[1]))
    assert read_stream(client) == [
        *events,
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}},
    ]


# ---- classification, once -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("make", "error", "status", "outcome", "retryable"),
    [
        (internal, UpstreamFailed, 502, "error", True),
        (unavailable, UpstreamFailed, 502, "error", True),
        (bad_gateway, UpstreamFailed, 502, "error", True),
        (unreachable, UpstreamFailed, 502, "error", True),
        (cut_mid_stream, UpstreamFailed, 502, "error", True),  # classified as what it wraps
        (rate_limited, UpstreamFailed, 502, "rate_limited", True),
        (bad_request, UpstreamRejected, 400, "rejected", False),
        (unprocessable, UpstreamRejected, 400, "rejected", False),
        (context_window, UpstreamRejected, 400, "rejected", False),
        (timeout, UpstreamTimedOut, 504, "timeout", False),
        (lambda: asyncio.TimeoutError(), UpstreamTimedOut, 504, "timeout", False),
        (unauthorized, UpstreamFailed, 502, "error", False),
        (not_found, UpstreamFailed, 502, "error", False),
        (lambda: ValueError("odd"), UpstreamFailed, 502, "error", False),
    ],
)
def test_each_exception_is_classified_once(
    make: Callable[[], Exception], error: type[UpstreamError], status: int, outcome: str, retryable: bool
) -> None:
    exc = make()
    failure = classify(exc)
    assert (failure.error, failure.outcome, failure.retryable) == (error, outcome, retryable)
    mapped, _ = translate(exc, "local", Redactor([]))
    assert type(mapped) is error and mapped.status == status

    client = client_for(FakeTransport(script(exc)), retries=0)
    with pytest.raises(error):
        chat(client)
    assert outcomes(client) == {outcome: 1}


def test_upstream_errors_share_a_base_and_keep_their_statuses_and_codes() -> None:
    shapes = {cls: (cls.status, cls.type, cls.code) for cls in (UpstreamFailed, UpstreamTimedOut, UpstreamRejected)}
    assert shapes == {
        UpstreamFailed: (502, "upstream_error", "upstream_error"),
        UpstreamTimedOut: (504, "upstream_error", "upstream_timeout"),
        UpstreamRejected: (400, "invalid_request_error", "upstream_rejected"),
    }
    assert all(issubclass(cls, UpstreamError) and issubclass(cls, ProxyError) for cls in shapes)


def test_context_window_keeps_openais_code() -> None:
    mapped, _ = translate(context_window(), "local", Redactor([]))
    assert mapped.code == "context_length_exceeded" and mapped.body()["error"]["type"] == "invalid_request_error"


# ---- messages in the proxy's words --------------------------------------------------------------

def message_for(exc: Exception, secrets: list[str] | None = None) -> str:
    client = client_for(FakeTransport(script(exc)), retries=0, name="local")
    client._redact = Redactor(secrets or [SECRET])
    with pytest.raises(UpstreamError) as info:
        chat(client)
    return info.value.message


def test_failure_message_names_the_upstream_status_and_its_own_words() -> None:
    assert message_for(internal("model overloaded")) == "upstream 'local' failed with HTTP 500: model overloaded"


def test_summary_leaves_out_the_upstreams_words_which_may_echo_the_prompt() -> None:
    mapped, _ = translate(internal("cannot serve 'my private prompt'"), "local", Redactor([]))
    assert mapped.message == "upstream 'local' failed with HTTP 500: cannot serve 'my private prompt'"
    assert mapped.summary == "upstream 'local' failed with HTTP 500"
    assert UpstreamFailed("plain").summary == "plain"


def test_message_takes_error_message_from_a_json_body() -> None:
    # what litellm makes of an OpenAI-compatible server's JSON error: the openai SDK's text, wrapped
    body = "Error code: 500 - {'error': {'message': 'upstream exploded', 'type': 'server_error'}}"
    wrapped = internal(f"OpenAIException - {body}")
    assert message_for(wrapped) == "upstream 'local' failed with HTTP 500: upstream exploded"
    json_body = '{"error": {"message": "bad temperature", "type": "invalid_request_error"}}'
    assert message_for(bad_request(json_body)) == "upstream 'local' rejected the request with HTTP 400: bad temperature"


@pytest.mark.parametrize("make", RETRYABLE + NOT_RETRYABLE)
def test_messages_never_expose_litellms_exception_chain(make: Callable[[], Exception]) -> None:
    message = message_for(make())
    exc_names = {cls.__name__ for cls in type(make()).__mro__}
    assert message.startswith("upstream 'local' ")
    assert "litellm" not in message.lower()
    assert "Exception" not in message
    assert not any(name in message for name in exc_names if name != "object")
    assert "Original exception" not in message


def test_connection_errors_and_timeouts_claim_no_http_status() -> None:
    assert message_for(unreachable()) == "upstream 'local' failed: Connection error."
    assert message_for(timeout()) == "upstream 'local' timed out"


def test_litellm_prefixes_anywhere_are_dropped_but_links_kept() -> None:
    text = "litellm.APIError: APIError: Hosted_vllmException - see https://docs.litellm.ai/docs/providers"
    exc = litellm.APIError(status_code=503, message=text, llm_provider="hosted_vllm", model="m")
    assert message_for(exc) == "upstream 'local' failed with HTTP 503: see https://docs.litellm.ai/docs/providers"


def test_messages_redact_secrets_and_are_truncated() -> None:
    message = message_for(internal(f"key {SECRET} refused by http://user:{SECRET}@host"))
    assert SECRET not in message and message.count("[redacted]") == 2
    long = message_for(internal("x" * 5000))
    assert 500 <= len(long) < 600 and long.endswith("…")


def test_a_secret_is_redacted_before_truncation() -> None:
    # a secret straddling the cut must not leave its first half behind
    message = message_for(internal("y" * 495 + SECRET))
    assert message.endswith("y[red…") and "sk-" not in message


def test_default_transport_is_native_for_openai_and_litellm_when_asked() -> None:
    assert isinstance(UpstreamClient(settings(), Redactor([]))._transport, NativeTransport)
    assert UpstreamClient(settings(client="litellm"), Redactor([]))._transport is litellm
    other = {"model": "anthropic/claude", "api_key": SECRET}
    assert UpstreamClient(settings(litellm_params=other), Redactor([]))._transport is litellm


def test_fake_transport_records_the_kwargs_litellm_would_get() -> None:
    transport = FakeTransport(script(chat_reply("x")))
    chat(client_for(transport, timeout_s=7), params={"temperature": 0.1, "model": "client/override"})
    call: Call = transport.calls[0]
    assert call.kwargs["model"] == "openai/m"  # operator keys are never the client's
    assert call.kwargs["timeout"] == 7 and call.kwargs["max_retries"] == 0
    assert call.kwargs["temperature"] == 0.1
