"""Reading request bodies under a size cap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from proxy.errors import InvalidRequest, PayloadTooLarge

OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed in a worker thread


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body declares no length: count as it arrives
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) > OFF_LOOP_BYTES:  # parsing a large body would stall every other request
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    except RecursionError:  # JSON nested thousands deep: a client mistake, not a server error
        raise InvalidRequest("the request body is nested too deeply") from None
