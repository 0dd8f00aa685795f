"""The stream tap: server-sent events parsed from bytes however they are split, and a transport that
tees exactly the responses it should, leaving the bytes its client reads untouched.

The transport is exercised with a real `httpx.AsyncClient` over httpx's in-memory `MockTransport`
(a loopback upstream adds nothing to what is tested here); the whole path, litellm included, is
tests/system/test_conformance.py's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from proxy.upstream.stream_tap import ACTIVE, EventTooLarge, Tap, TappingTransport

CHUNKS = [
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "héllo ✓"}}]},
    {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
]


def sse(events: list[dict[str, Any]], end: str = "\n") -> bytes:
    text = "".join(f"data: {json.dumps(e, ensure_ascii=False)}{end}{end}" for e in events) + f"data: [DONE]{end}{end}"
    return text.encode()


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_survive_any_split_of_the_bytes(end: str, size: int) -> None:
    """Reads split lines, "\\r\\n" pairs and multi-byte characters anywhere: the events are the same."""
    raw = sse(CHUNKS, end)
    tap = Tap()
    for i in range(0, len(raw), size):
        tap.feed(raw[i : i + size])
    assert tap.take() == CHUNKS
    assert tap.done
    assert tap.take() == []  # taken once


def test_fields_other_than_data_and_bad_json_carry_no_chunk() -> None:
    tap = Tap()
    tap.feed(b": keep-alive\n\nevent: message\nid: 7\nretry: 10\ndata: {\"a\": 1}\n\n")
    tap.feed(b"data: not json\n\ndata: [1, 2]\n\ndata:{\"b\":\ndata: 2}\n\n")
    assert tap.take() == [{"a": 1}, {"b": 2}]  # data lines of one event are joined with "\n"
    assert not tap.done


def test_an_event_without_its_blank_line_is_not_dispatched() -> None:
    tap = Tap()
    tap.feed(b'data: {"a": 1}\n')
    assert tap.take() == []
    tap.feed(b"\n")
    assert tap.take() == [{"a": 1}]


def test_a_detached_tap_keeps_nothing() -> None:
    tap = Tap()
    tap.feed(b'data: {"a": 1}\n\n')
    tap.detach()
    tap.feed(b'data: {"b": 2}\n\n')
    assert tap.take() == []


def _upstream(status: int = 200, content_type: str = "text/event-stream", encoding: str | None = None) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type}
        if encoding is not None:
            headers["content-encoding"] = encoding
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(sse(CHUNKS)))  # unread, as on a wire

    return handle


def _read(handler: Any, tap: Tap | None, requests: int = 1) -> list[bytes]:
    """The bodies a client reads through the tapping transport, with `tap` active."""

    async def run() -> list[bytes]:
        transport = TappingTransport(httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=transport) as client:
            active = ACTIVE.set(tap)
            try:
                bodies = []
                for _ in range(requests):
                    async with client.stream("POST", "http://upstream.invalid/v1/chat/completions") as response:
                        bodies.append(b"".join([part async for part in response.aiter_raw()]))
                return bodies
            finally:
                ACTIVE.reset(active)

    return asyncio.run(run())


def test_an_event_stream_is_teed_and_its_bytes_are_untouched() -> None:
    tap = Tap()
    assert _read(_upstream(), tap) == [sse(CHUNKS)]
    assert tap.attached and tap.take() == CHUNKS and tap.done


def test_only_the_first_stream_of_a_tap_is_teed() -> None:
    tap = Tap()
    _read(_upstream(), tap, requests=2)
    assert tap.take() == CHUNKS


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(_upstream(status=500), id="error-status"),
        pytest.param(_upstream(content_type="application/json"), id="not-an-event-stream"),
        pytest.param(_upstream(encoding="gzip"), id="compressed"),
    ],
)
def test_other_responses_are_not_teed(upstream: Any) -> None:
    tap = Tap()
    _read(upstream, tap)
    assert not tap.attached and tap.take() == []


def test_nothing_is_teed_without_an_active_tap() -> None:
    assert _read(_upstream(), None) == [sse(CHUNKS)]


def test_a_line_arriving_in_many_pieces_is_one_event() -> None:
    tap = Tap()
    body = b'data: {"choices": [], "usage": {"total_tokens": 3}, "pad": "' + b"y" * 100_000 + b'"}\n\n'
    for i in range(0, len(body), 7):  # an upstream dribbling bytes
        tap.feed(body[i : i + 7])
    (event,) = tap.take()
    assert event["usage"] == {"total_tokens": 3} and len(event["pad"]) == 100_000


def test_a_line_past_the_cap_stops_the_read_even_without_a_newline() -> None:
    tap = Tap(max_event_bytes=1000)
    tap.feed(b"data: {" + b"z" * 500)
    with pytest.raises(EventTooLarge):
        tap.feed(b"z" * 600)
    assert tap.too_large == 1107 and tap.take() == []


def test_an_event_of_many_small_data_lines_past_the_cap_stops_the_read() -> None:
    tap = Tap(max_event_bytes=1000)
    with pytest.raises(EventTooLarge):
        tap.feed(b"data: 0123456789\n" * 200)
    assert tap.too_large is not None and tap.too_large > 1000
