"""Refuses requests whose headers are larger than the server allows, before any other work.

uvicorn's h11 buffer cap (`h11_max_incomplete_event_size`) stops headers that never finish;
this stops finished ones that are merely huge, with an OpenAI-shaped 431.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import HeadersTooLarge


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + sum(len(k) + len(v) for k, v in scope["headers"])
            if size > self.max_bytes:
                error = HeadersTooLarge(f"request headers exceed the limit of {self.max_bytes} bytes")
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
