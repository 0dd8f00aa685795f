"""A fast OpenAI-compatible loopback upstream for overhead benchmarks.

Raw asyncio HTTP/1.1 (uvloop when installed), keep-alive, one fixed small chat completion for
every POST, a fixed model list for GET. It parses just enough HTTP for real clients (httpx,
aiohttp): Content-Length and chunked request bodies, pipelined requests, `Connection: close`.
A POST whose body asks `"stream": true` gets the same answer as OpenAI streams it (server-sent
events, chunked, usage and `[DONE]` at the end), all of it at once. Run it in its own process so
it never shares a GIL with the load generator:

    python bench/fast_upstream.py --port 9100     # prints "READY <port>" once listening
    python bench/fast_upstream.py --delay-ms 500  # every POST answered 500 ms after it arrived

Started by bench/overhead.py and bench/scale.py (`bench.common.start_fast_upstream`), and by
bench/limits.py with `--delay-ms`, so that the calls of a burst overlap. With a delay, a
connection's answers still leave in the order its requests came.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, run_server

CHAT = json.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": "fast",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model", "created": 0, "owned_by": "bench"}]}).encode()


_CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": "fast"}
EVENTS = [
    {**_CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    *({**_CHUNK, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
      for piece in ("Hello!", " How can I", " help you today?")),
    {**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {**_CHUNK, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}},
]
STREAM = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in EVENTS) + b"data: [DONE]\n\n"
ASKS_STREAM = re.compile(rb'"stream"\s*:\s*true')


def _response(status: bytes, body: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


def _stream(close: bool) -> bytes:
    """The stream as one chunk of a chunked body, then the body's end."""
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
            + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n"
            + f"{len(STREAM):x}\r\n".encode() + STREAM + b"\r\n0\r\n\r\n")


RESPONSES = {(close, kind): _response(b"200 OK", body, close)
             for close in (False, True) for kind, body in (("chat", CHAT), ("models", MODELS))}
RESPONSES.update({(close, "stream"): _stream(close) for close in (False, True)})
NOT_FOUND = _response(b"404 Not Found", b'{"error": {"message": "not found"}}', True)
DELAY_S = 0.0  # --delay-ms: how long each POST waits for its answer; 0 answers at once


class HttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # With a delay: answers waiting for their time, (when, bytes, close), in request order.
        self.outbox: collections.deque[tuple[float, bytes, bool]] = collections.deque()
        self.closing = False  # a `Connection: close` request waits in the outbox: read no further

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.closing:
            consumed = self._one_request()
            if consumed is None:
                return

    def _one_request(self) -> int | None:
        """Answer one complete request at the front of the buffer; None when it is not complete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        method, path = (lines[0].split(" ") + ["", ""])[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            pos = start
            while True:
                eol = self.buffer.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buffer[pos:eol]).split(b";")[0], 16)
                pos = eol + 2 + size + 2
                if pos > len(self.buffer):
                    return None
                if size == 0:
                    break
            total = pos
        else:
            total = start + int(headers.get("content-length") or 0)
            if len(self.buffer) < total:
                return None
        kind = "stream" if method == "POST" and ASKS_STREAM.search(self.buffer, start, total) else "chat"
        del self.buffer[:total]
        close = headers.get("connection", "").lower() == "close"
        assert self.transport is not None
        if DELAY_S > 0:
            self._later(method, path, close, kind)
            return total
        if method == "POST":
            self.transport.write(RESPONSES[(close, kind)])
        elif method == "GET" and path.rstrip("/").endswith("/models"):
            self.transport.write(RESPONSES[(close, "models")])
        else:
            self.transport.write(NOT_FOUND)
            close = True
        if close:
            self.transport.close()
            self.transport = None
        return total

    def _later(self, method: str, path: str, close: bool, kind: str) -> None:
        """Queue the answer: a POST's DELAY_S from now, anything else with no delay of its own,
        but never before an answer queued ahead of it on this connection (HTTP/1.1 order)."""
        if method == "POST":
            answer, delay = RESPONSES[(close, kind)], DELAY_S
        elif method == "GET" and path.rstrip("/").endswith("/models"):
            answer, delay = RESPONSES[(close, "models")], 0.0
        else:
            answer, delay, close = NOT_FOUND, 0.0, True
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self.outbox:
            when = max(when, self.outbox[-1][0])
        else:
            loop.call_at(when, self._flush)
        self.outbox.append((when, answer, close))
        if close:
            self.closing = True

    def _flush(self) -> None:
        """Send every queued answer whose time has come; wake again for the next one."""
        loop = asyncio.get_running_loop()
        while self.outbox and self.outbox[0][0] <= loop.time() + 0.001:
            _, answer, close = self.outbox.popleft()
            if self.transport is None:  # the client went away
                self.outbox.clear()
                return
            self.transport.write(answer)
            if close:
                self.transport.close()
                self.transport = None
                self.outbox.clear()
                return
        if self.outbox:
            loop.call_at(self.outbox[0][0], self._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, host, port, backlog=1024, reuse_address=True)
    actual = server.sockets[0].getsockname()[1]
    print(f"READY {actual}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="answer each POST this long after it arrived, all concurrently (default: 0, at once)")
    args = parser.parse_args()
    global DELAY_S
    DELAY_S = max(args.delay_ms, 0.0) / 1000
    run_server(serve(args.host, args.port))


if __name__ == "__main__":
    main()
