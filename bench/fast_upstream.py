"""A fast OpenAI-compatible loopback upstream for overhead benchmarks.

Raw asyncio HTTP/1.1 (uvloop when installed), keep-alive, one fixed small chat completion for
every POST, a fixed model list for GET. It parses just enough HTTP for real clients (httpx,
aiohttp): Content-Length and chunked request bodies, pipelined requests, `Connection: close`.
No streaming. Run it in its own process so it never shares a GIL with the load generator:

    python bench/fast_upstream.py --port 9100     # prints "READY <port>" once listening

Started by bench/overhead.py and bench/scale.py (`bench.common.start_fast_upstream`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def _response(status: bytes, body: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


RESPONSES = {(close, kind): _response(b"200 OK", body, close)
             for close in (False, True) for kind, body in (("chat", CHAT), ("models", MODELS))}
NOT_FOUND = _response(b"404 Not Found", b'{"error": {"message": "not found"}}', True)


class HttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
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
        del self.buffer[:total]
        close = headers.get("connection", "").lower() == "close"
        assert self.transport is not None
        if method == "POST":
            self.transport.write(RESPONSES[(close, "chat")])
        elif method == "GET" and path.rstrip("/").endswith("/models"):
            self.transport.write(RESPONSES[(close, "models")])
        else:
            self.transport.write(NOT_FOUND)
            close = True
        if close:
            self.transport.close()
            self.transport = None
        return total

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
    args = parser.parse_args()
    run_server(serve(args.host, args.port))


if __name__ == "__main__":
    main()
