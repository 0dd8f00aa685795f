"""Reading request bodies under a size cap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from proxy.errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, RequestTimedOut

OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed in a worker thread


async def read_json(request: Request, limit: int, timeout_s: float) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    try:  # a body trickled in byte by byte would otherwise hold the connection forever
        raw = await asyncio.wait_for(_read(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimedOut(f"the request body did not arrive within {timeout_s:g} s") from None
    if len(raw) > OFF_LOOP_BYTES:  # parsing a large body would stall every other request
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


async def _read(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked body declares no length: count as it arrives
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client left mid-body: a 499 in the log, not a server error
        raise ClientDisconnected("client disconnected while sending the body") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    except RecursionError:  # JSON nested thousands deep: a client mistake, not a server error
        raise InvalidRequest("the request body is nested too deeply") from None
