"""An OpenAI-compatible loopback upstream that injects faults, for the soak test (bench/soak.py).

Raw asyncio HTTP/1.1 (uvloop when installed), so each fault is exactly the bytes on the wire we
mean: a reset is a TCP RST, a cut stream is a FIN in the middle of a chunked body, a clean end
is a well-formed terminating chunk. Serves `POST /v1/chat/completions` and `/v1/completions`,
streaming (SSE over chunked encoding, as real servers stream) and not.

Each generation call draws a fault with probability `--fault-rate`, uniformly among `FAULTS`:

* ``http_500``: a 500 with an OpenAI error body;
* ``http_429``: a 429 with ``Retry-After: 1``;
* ``timeout``: hangs until the caller hangs up (at most `--hang-cap` seconds); a streamed call
  hangs either before any byte or after the first chunk, chosen at random;
* ``reset``: reads the request, then resets the connection (RST, no response at all);
* ``cut``: stream: two content chunks, then the connection closes mid-body (FIN, no final chunk);
  plain: half of a Content-Length body, then FIN;
* ``clean_end``: stream: two content chunks, then a clean end of the chunked body, with no
  finish_reason and no ``[DONE]`` (tests/stub_upstream.py's ``ends-early``); plain: the first half of
  the JSON document as a complete chunked body;
* ``garbage``: 200 with a body that is not JSON; stream: the second content chunk is not JSON.

Otherwise the answer is ``Soak answer <id>: the answer is N.`` (N in 41..43, so a best-of-n
route has something to vote on), where ``<id>`` is the ``[soak-id=...]`` tag of the prompt: the
client can check it got the whole answer to its own request. Every faulted call is recorded
under that id, so the client can attribute what it saw to what the upstream did.

``GET /stats`` reports the generation calls in flight now (a call is in flight from its request
to its response's last byte or its connection's close), calls and faults by kind, and the faults
by soak id.

    python bench/fault_upstream.py --port 9300 --fault-rate 0.1      # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import struct
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, run_server

FAULTS = ("http_500", "http_429", "timeout", "reset", "cut", "clean_end", "garbage")
# Faults after which a relayed stream cannot have finished: a client that still sees [DONE]
# was told a truncated answer was whole. The tag is "<fault>/stream"; "timeout-mid" is a hang
# after the first chunk.
TRUNCATING = ("cut/stream", "clean_end/stream", "timeout-mid/stream")
SOAK_ID = re.compile(r"\[soak-id=([\w.-]+)\]")
ANSWER = "Soak answer {sid}: the answer is {n}."
LATENCY_S = (0.005, 0.04)  # per call, uniform: enough that calls overlap, small enough for load
CHUNK_GAP_S = 0.002  # between streamed chunks, so a stream spans several reads downstream
MAX_HEAD = 64 * 1024
MAX_BODY = 16 << 20


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class BadRequest(Exception):
    """A request this server cannot parse; the connection is closed after a 400."""


# ---- HTTP/1.1 plumbing -----------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a kept-alive connection; None when the peer closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BadRequest("truncated request head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(f"bad request line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1], headers, await _read_body(reader, headers))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from our clients
                return bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
            if len(body) > MAX_BODY:
                raise BadRequest("body too large")
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise BadRequest("body too large")
    return await reader.readexactly(length)


def response_head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status: str, data: Any, extra: dict[str, str] | None = None) -> bytes:
    body = json.dumps(data).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), **(extra or {})}
    return response_head(status, headers) + body


def chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def sse(data: dict[str, Any]) -> bytes:
    return chunk(b"data: " + json.dumps(data).encode() + b"\n\n")


LAST_CHUNK = b"0\r\n\r\n"
STREAM_HEAD = response_head("200 OK", {"content-type": "text/event-stream", "transfer-encoding": "chunked"})


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: SO_LINGER 0 drops the socket without the FIN handshake."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until_peer_closes(reader: asyncio.StreamReader, cap_s: float) -> None:
    """Hang like a stuck model server, but notice the caller giving up: an HTTP/1.1 client
    sends nothing more while it waits for our answer, so a read only returns on its close."""
    try:
        await asyncio.wait_for(reader.read(1), cap_s)
    except (asyncio.TimeoutError, ConnectionError):
        pass


# ---- OpenAI bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One generation call as the upstream sees it."""

    body: dict[str, Any]
    text_mode: bool  # /v1/completions rather than chat
    sid: str  # the client request it belongs to ("-" when the prompt carries no tag)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def n(self) -> int:
        return max(1, int(self.body.get("n") or 1))

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        obj = "text_completion" if self.text_mode else "chat.completion.chunk"
        return {"id": "soak-s", "object": obj, "created": int(time.time()), "model": self.model, "choices": [choice]}

    def piece(self, token: str, first: bool) -> dict[str, Any]:
        if self.text_mode:
            return self.chunk({"index": 0, "text": token, "finish_reason": None, "logprobs": None})
        delta = {"role": "assistant", "content": token} if first else {"content": token}
        return self.chunk({"index": 0, "delta": delta, "finish_reason": None})

    def final(self) -> dict[str, Any]:
        if self.text_mode:
            return self.chunk({"index": 0, "text": "", "finish_reason": "stop", "logprobs": None})
        return self.chunk({"index": 0, "delta": {}, "finish_reason": "stop"})

    def completion(self, texts: list[str]) -> dict[str, Any]:
        choices: list[dict[str, Any]]
        if self.text_mode:
            choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                        "logprobs": None} for i, t in enumerate(texts)]
        completion_tokens = sum(len(t.split()) for t in texts)
        return {"id": "soak-1", "object": "text_completion" if self.text_mode else "chat.completion",
                "created": int(time.time()), "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": 8, "completion_tokens": completion_tokens,
                          "total_tokens": 8 + completion_tokens}}

    def usage_chunk(self, text: str) -> dict[str, Any]:
        tokens = len(text.split())
        return {**self.chunk({}), "choices": [],
                "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}}


def prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
    return json.dumps(body.get("prompt"))


def tokens(text: str) -> list[str]:
    """Stream pieces that concatenate back to `text` exactly."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# ---- the server ------------------------------------------------------------------------------


class FaultUpstream:
    def __init__(self, fault_rate: float, faults: tuple[str, ...], seed: int, hang_cap_s: float) -> None:
        self.fault_rate = fault_rate
        self.faults = faults
        self.rng = random.Random(seed)
        self.hang_cap_s = hang_cap_s
        self.in_flight = 0
        self.calls: Counter[str] = Counter()  # "normal" and each fault tag
        self.by_sid: defaultdict[str, list[str]] = defaultdict(list)  # fault tags per soak id

    def stats(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "calls": dict(self.calls), "faults_by_id": dict(self.by_sid)}

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    writer.write(json_response("400 Bad Request", error_body(str(exc), "invalid_request_error"),
                                               {"connection": "close"}))
                    break
                if request is None or not await self.respond(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller hung up, or we reset the connection ourselves
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def respond(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be reused."""
        path = request.path.split("?", 1)[0].rstrip("/")
        if request.method == "GET" and path == "/stats":
            writer.write(json_response("200 OK", self.stats()))
        elif request.method == "GET" and path.endswith("/models"):
            writer.write(json_response("200 OK", {"object": "list", "data": [{"id": "soak", "object": "model"}]}))
        elif request.method == "POST" and path.endswith("/completions"):
            try:
                body = json.loads(request.body)
            except ValueError:
                writer.write(json_response("400 Bad Request", error_body("body is not JSON", "invalid_request_error")))
                return True
            call = Call(body, not path.endswith("/chat/completions"), _sid(body))
            self.in_flight += 1
            try:
                reusable = await self.generate(call, reader, writer)
            finally:
                self.in_flight -= 1  # also when the caller hangs up or we reset: it is over for us
            return reusable and request.headers.get("connection", "").lower() != "close"
        else:
            writer.write(json_response("404 Not Found", error_body("not found", "invalid_request_error")))
        await writer.drain()
        return request.headers.get("connection", "").lower() != "close"

    def draw(self, call: Call) -> str:
        """The fault (or "normal") for this call, recorded under its soak id."""
        if self.rng.random() >= self.fault_rate:
            self.calls["normal"] += 1
            return "normal"
        fault = self.rng.choice(self.faults)
        if fault == "timeout" and call.stream and self.rng.random() < 0.5:
            fault = "timeout-mid"
        tag = f"{fault}/{'stream' if call.stream else 'plain'}"
        self.calls[tag] += 1
        self.by_sid[call.sid].append(tag)
        return fault

    async def generate(self, call: Call, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        fault = self.draw(call)
        await asyncio.sleep(self.rng.uniform(*LATENCY_S))
        texts = [ANSWER.format(sid=call.sid, n=self.rng.choice((41, 42, 42, 43))) for _ in range(call.n)]
        if fault == "reset":
            reset(writer)
            return False
        if fault == "timeout":
            await until_peer_closes(reader, self.hang_cap_s)
            return False
        if fault in ("http_500", "http_429"):
            status, extra = ("500 Internal Server Error", {}) if fault == "http_500" else \
                ("429 Too Many Requests", {"retry-after": "1"})
            writer.write(json_response(status, error_body(f"injected {fault}", "server_error"), extra))
            await writer.drain()
            return True
        if call.stream:
            return await self.stream(call, texts[0], fault, reader, writer)
        return await self.plain(call, texts, fault, writer)

    async def plain(self, call: Call, texts: list[str], fault: str, writer: asyncio.StreamWriter) -> bool:
        document = json.dumps(call.completion(texts)).encode()
        if fault == "cut":  # promise the whole body, send half, hang up
            writer.write(response_head("200 OK", {"content-type": "application/json",
                                                  "content-length": str(len(document))}))
            writer.write(document[: len(document) // 2])
            await writer.drain()
            return False
        if fault == "clean_end":  # a well-framed body that holds half a document
            writer.write(response_head("200 OK", {"content-type": "application/json", "transfer-encoding": "chunked"}))
            writer.write(chunk(document[: len(document) // 2]) + LAST_CHUNK)
        elif fault == "garbage":
            bad = document.replace(b'"finish_reason": "stop"', b"finish_reason: stop")  # JSON-like, not JSON
            writer.write(response_head("200 OK", {"content-type": "application/json", "content-length": str(len(bad))}))
            writer.write(bad)
        else:
            writer.write(json_response("200 OK", call.completion(texts)))
        await writer.drain()
        return True

    async def stream(self, call: Call, text: str, fault: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        pieces = tokens(text)
        writer.write(STREAM_HEAD)
        for i, piece in enumerate(pieces):
            if fault == "garbage" and i == 1:
                writer.write(chunk(b'data: {"choices": [{"delta": {"content": ' + piece.encode() + b"}]}\n\n"))
            else:
                writer.write(sse(call.piece(piece, i == 0)))
            await writer.drain()
            if fault == "timeout-mid" and i == 0:
                await until_peer_closes(reader, self.hang_cap_s)
                return False
            if fault == "cut" and i == 1:
                writer.close()  # FIN in the middle of a chunked body: no final chunk
                return False
            if fault == "clean_end" and i == 1:
                writer.write(LAST_CHUNK)  # a clean end, with no finish_reason and no [DONE]
                await writer.drain()
                return True
            await asyncio.sleep(CHUNK_GAP_S)
        writer.write(sse(call.final()))
        if (call.body.get("stream_options") or {}).get("include_usage"):
            writer.write(sse(call.usage_chunk(text)))
        writer.write(chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
        await writer.drain()
        return True


def _sid(body: dict[str, Any]) -> str:
    found = SOAK_ID.search(prompt_text(body))
    return found.group(1) if found else "-"


async def serve(args: argparse.Namespace) -> None:
    faults = tuple(args.faults.split(",")) if args.faults else FAULTS
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults: {sorted(unknown)}; known: {', '.join(FAULTS)}")
    upstream = FaultUpstream(args.fault_rate, faults, args.seed, args.hang_cap)
    server = await asyncio.start_server(upstream.connection, args.host, args.port, backlog=2048,
                                        reuse_address=True, limit=MAX_HEAD)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of generation calls that get a fault")
    parser.add_argument("--faults", default="", help=f"comma-separated subset of {','.join(FAULTS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-cap", type=float, default=3600.0,
                        help="longest a 'timeout' call hangs when the caller never hangs up")
    run_server(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
