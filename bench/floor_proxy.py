"""The floor under any Python proxy, for bench/overhead.py: a request relayed and nothing else.

uvicorn with its fastest parts (httptools, uvloop) in front of one pooled aiohttp session: each
request goes to `--upstream` with the same method, path and body, and its answer comes back as
it arrives, streams included. No auth, no validation, no metrics, no logs. What rvr-proxy (or the
LiteLLM proxy) adds beyond this is what a proxy in Python does on top of the relay itself.

    python bench/floor_proxy.py --upstream http://127.0.0.1:9100 --port 9200
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

import aiohttp
import uvicorn

from bench.common import HelpFormatter

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Relay:
    """The ASGI app: one session for the process, opened and closed by the lifespan."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._relay(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.session is not None
        headers = {"content-type": "application/json"}
        async with self.session.request(scope["method"], self.upstream + scope["path"], data=body,
                                        headers=headers) as answer:
            content_type = answer.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-type", content_type)]})
            async for piece in answer.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9100")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(Relay(args.upstream), host=args.host, port=args.port, http="httptools", loop="uvloop",
                access_log=False, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
