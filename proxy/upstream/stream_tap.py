"""What an upstream's stream really said: its server-sent events, read as litellm reads them.

litellm's stream wrapper rebuilds every chunk it relays, and in doing so drops fields the
upstream sent (`delta.refusal: null`, `choices[].logprobs: null`, a text chunk's `logprobs` and
`system_fingerprint`) and loses the choice indexes of one stream that carries `n > 1` choices.
litellm still makes every upstream call and reads every stream (its errors, its retries-free
failure mapping, its logging): the proxy only listens in on the bytes, below litellm, in the
connection pool litellm is given (`litellm.aclient_session`).

`TappingTransport` wraps that pool's transport. While a `Tap` is set in `ACTIVE` (the proxy
sets one around the opening of each passthrough stream), the first successful `text/event-stream`
response of that context is teed into it: every byte litellm's client reads is also parsed here
into events, in order. The events are the upstream's chunks exactly as sent.

A stream that was not tapped (litellm built its own client, the provider speaks another
protocol, a proxy mount, a compressed body) leaves the tap empty: the caller then relays
litellm's own chunks, as before.

The native client (proxy/upstream/native.py) reads its streams itself, with no litellm below to
listen in on: it feeds the bytes it reads into a `Tap` of its own, the same parser with the same cap.

Parsing is linear in the bytes (an unfinished line is kept in pieces, joined once it ends), and
no event may exceed `MAX_EVENT_BYTES`: a tapped stream that sends a longer line or event fails
with the proxy's error (`Tap.too_large`) instead of being buffered, parsed and relayed whole.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import httpx

DONE = "[DONE]"
MAX_EVENT_BYTES = 1 << 20  # a chat chunk is a few hundred bytes; a megabyte is no answer's delta


class EventTooLarge(Exception):
    """An upstream stream line or event past `MAX_EVENT_BYTES`: reading it stops here."""


class Tap:
    """The events of one upstream stream, parsed from its bytes as they are read."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.attached = False  # a response was teed in: the events are the upstream's own
        self._keeping = True
        self.done = False  # the upstream sent `data: [DONE]`
        self.too_large: int | None = None  # bytes of the line or event that broke the cap
        self.malformed = 0  # `data:` events that were not a JSON object
        self._max = max_event_bytes
        self._events: list[dict[str, Any]] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line: list[str] = []  # the pieces of an unfinished line
        self._line_bytes = 0  # raw bytes since the last line end, kept or not
        self._data: list[str] = []  # the `data:` lines of the event being read
        self._data_size = 0
        self._cr = False  # the last character fed was "\r": a following "\n" ends nothing new

    def feed(self, raw: bytes) -> None:
        """Read `raw`; raises EventTooLarge (and sets `too_large`) once a line or event is too long."""
        end = max(raw.rfind(b"\n"), raw.rfind(b"\r"))
        self._line_bytes = len(raw) - end - 1 if end >= 0 else self._line_bytes + len(raw)
        if self._line_bytes > self._max:
            self._fail(self._line_bytes)
        if self._keeping:
            self._text(self._decoder.decode(raw))

    def _fail(self, size: int) -> None:
        self.too_large = size
        self.detach()
        raise EventTooLarge(f"a stream event of more than {self._max} bytes")

    def detach(self) -> None:
        """Stop keeping events: the caller relays litellm's chunks instead."""
        self._keeping = False
        self._events = []

    def take(self) -> list[dict[str, Any]]:
        """The events parsed since the last `take`, in order."""
        events, self._events = self._events, []
        return events

    def _text(self, text: str) -> None:
        if not text:
            return  # half a character: the rest comes with the next read
        # SSE lines end in "\r\n", "\n" or "\r"; a "\r\n" split across two reads is one end.
        if self._cr and text.startswith("\n"):
            text = text[1:]
        self._cr = text.endswith("\r")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if len(lines) == 1:  # no line ended: keep the piece, join nothing yet
            self._line.append(lines[0])
            return
        lines[0] = "".join([*self._line, lines[0]])
        self._line = [lines.pop()]
        for line in lines:
            self._read_line(line)

    def _read_line(self, line: str) -> None:
        if not line:
            self._dispatch()
            return
        field, _, value = line.partition(":")
        if field == "data":  # comments (":..."), `event:`, `id:`, `retry:` carry no chunk
            self._data.append(value[1:] if value.startswith(" ") else value)
            self._data_size += len(value)
            if self._data_size > self._max:
                self._fail(self._data_size)

    def _dispatch(self) -> None:
        if not self._data:
            return
        data, self._data, self._data_size = "\n".join(self._data), [], 0
        if data.strip() == DONE:
            self.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            event = None  # litellm's client fails on it; the native client reads `malformed`
        if isinstance(event, dict):
            self._events.append(event)
        else:
            self.malformed += 1


ACTIVE: ContextVar[Tap | None] = ContextVar("rvr_stream_tap", default=None)


class TappingTransport(httpx.AsyncBaseTransport):
    """`inner`, whose event-stream responses are also read into the context's `Tap`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        tap = ACTIVE.get()
        if tap is None or tap.attached or not _tappable(response):
            return response
        tap.attached = True
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)  # a transport's response always is
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(stream, tap),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def _tappable(response: httpx.Response) -> bool:
    """A successful event stream whose bytes are its text: error bodies and compressed bodies
    are litellm's alone (compressed bytes at this layer are not yet the events)."""
    content_type = response.headers.get("content-type", "")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return (
        response.status_code == 200
        and content_type.split(";")[0].strip().lower() == "text/event-stream"
        and encoding in ("", "identity")
    )


class _Tee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, tap: Tap) -> None:
        self._inner = inner
        self._tap = tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            self._tap.feed(part)
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


def connection_pool(limits: httpx.Limits) -> httpx.AsyncClient:
    """The one client litellm sends through, with its event streams tapped."""
    return httpx.AsyncClient(
        transport=TappingTransport(httpx.AsyncHTTPTransport(limits=limits)), follow_redirects=False
    )
