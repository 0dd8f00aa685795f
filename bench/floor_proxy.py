"""The floor under any Python proxy, for bench/overhead.py: a request relayed and nothing else.

uvicorn with its fastest parts (httptools, uvloop) in front of one pooled aiohttp session: each
request goes to `--upstream` with the same method, path and body, and its answer comes back as
it arrives, streams included. No auth, no validation, no metrics, no logs. What rvr-proxy (or the
LiteLLM proxy) adds beyond this is what a proxy in Python does on top of the relay itself.

    python bench/floor_proxy.py --upstream http://127.0.0.1:9100 --port 9200
    python bench/floor_proxy.py --smoke     # relays through itself to a fast upstream, and times it
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

import aiohttp
import httpx
import uvicorn

from bench.common import Child, HelpFormatter, add_smoke, free_port, markdown_table, start_server_script

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


SMOKE_REQUESTS = 20
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def smoke() -> None:
    """The relay in its own process between bench/fast_upstream.py and a client: every answer must
    come back whole, and the table shows one request's median time with and without it."""
    with tempfile.TemporaryDirectory(prefix="rvr-floor-") as directory:
        workdir = Path(directory)
        upstream, upstream_base = start_server_script("fast_upstream", "fast_upstream.py", [], workdir)
        port = free_port()
        relay = Child("floor_proxy", [sys.executable, __file__, "--upstream", upstream_base, "--port", str(port)],
                      workdir)
        try:
            relay_base = f"http://127.0.0.1:{port}"
            relay.wait_ready(f"{relay_base}/v1/models")
            rows = []
            for name, base in (("upstream alone", upstream_base), ("through the floor relay", relay_base)):
                with httpx.Client(base_url=base, timeout=10) as client:
                    times = []
                    for _ in range(SMOKE_REQUESTS):
                        started = time.perf_counter()
                        answer = client.post("/v1/chat/completions", json=BODY)
                        times.append((time.perf_counter() - started) * 1000)
                        answer.raise_for_status()
                        assert answer.json()["choices"], "the relay lost the answer"
                rows.append([name, str(SMOKE_REQUESTS), f"{statistics.median(times):.2f}"])
            print(markdown_table(["path", "requests", "median ms"], rows, "lrr"))
        finally:
            relay.stop()
            upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--upstream", help="the upstream's origin, e.g. http://127.0.0.1:9100")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    add_smoke(parser, f"{SMOKE_REQUESTS} requests through the relay to bench/fast_upstream.py")
    args = parser.parse_args()
    if args.smoke:
        smoke()
        return
    if args.upstream is None or args.port is None:
        parser.error("--upstream and --port are required (or --smoke)")
    uvicorn.run(Relay(args.upstream), host=args.host, port=args.port, http="httptools", loop="uvloop",
                access_log=False, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
