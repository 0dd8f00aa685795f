"""Server-sent events in OpenAI's chunk format.

Passthrough routes stream the upstream's chunks as they come. Strategy routes cannot stream
before a candidate is chosen, so they keep the connection alive with SSE comments and then
stream the chosen answer. A stream cut mid-answer ends with an error event, never `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from proxy.errors import ProxyError, internal_error
from proxy.recording import RequestRecord
from proxy.responses import returned, usage_body
from strategies.contract import Candidate, Outcome, Usage

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
CONTENT_PIECE = 64  # characters per content chunk when replaying a chosen answer


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_event(exc: Exception) -> bytes:
    error = exc if isinstance(exc, ProxyError) else internal_error()
    return event(error.body())


async def relay(
    chunks: AsyncIterator[dict[str, Any]],
    *,
    route: str,
    stream_id: str,
    include_usage: bool,
    record: RequestRecord,
    on_error: Callable[[Exception], None],
) -> AsyncIterator[bytes]:
    """Re-emit upstream chunks under the route's name, keeping the usage for accounting."""
    created = int(time.time())
    try:
        async for chunk in chunks:
            usage = chunk.pop("usage", None)
            if usage:
                record.usage = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            chunk.update(id=stream_id, model=route, created=created)
            # litellm hangs an empty choice on the usage chunk; OpenAI's has `choices: []`.
            chunk["choices"] = [_complete_choice(c) for c in chunk.get("choices") or [] if not _empty(c)]
            if chunk["choices"]:
                yield event(chunk)
            elif usage and include_usage:
                yield event({**chunk, "choices": [], "usage": usage_body(record.usage)})
        yield DONE
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        on_error(exc)
        yield error_event(exc)


async def replay(
    work: Awaitable[Outcome],
    *,
    route: str,
    stream_id: str,
    obj: str,
    n: int,
    include_usage: bool,
    rvr: Callable[[Outcome], dict[str, Any] | None],
    keepalive_s: float,
    on_error: Callable[[Exception], None],
) -> AsyncIterator[bytes]:
    """Keep-alives while the strategy works, then the chosen answer as ordinary chunks."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if done:
                break
            yield KEEPALIVE
        outcome = task.result()
    except asyncio.CancelledError:
        task.cancel()
        raise
    except Exception as exc:
        on_error(exc)
        yield error_event(exc)
        return
    created = int(time.time())
    base = {"id": stream_id, "object": obj, "created": created, "model": route}
    for index, candidate in enumerate(returned(outcome, n)):
        for piece in _pieces(candidate, index, obj):
            yield event({**base, "choices": [piece]})
        final: dict[str, Any] = {"index": index, "finish_reason": candidate.finish_reason or "stop"}
        if obj == "text_completion":
            final["text"] = ""
        else:
            final["delta"] = {}
        yield event({**base, "choices": [final]})
    extension = rvr(outcome)
    if include_usage or extension is not None:
        tail: dict[str, Any] = {**base, "choices": []}
        if include_usage:
            tail["usage"] = usage_body(outcome.usage)
        if extension is not None:
            tail["rvr"] = extension
        yield event(tail)
    yield DONE


def _empty(choice: dict[str, Any]) -> bool:
    return not choice.get("delta") and not choice.get("text") and choice.get("finish_reason") is None


def _complete_choice(choice: dict[str, Any]) -> dict[str, Any]:
    choice.setdefault("finish_reason", None)
    if "delta" not in choice:
        choice.setdefault("text", "")
    return choice


def _pieces(candidate: Candidate, index: int, obj: str) -> list[dict[str, Any]]:
    text = candidate.text
    if obj == "text_completion":
        return [
            {"index": index, "text": text[i : i + CONTENT_PIECE], "finish_reason": None}
            for i in range(0, len(text), CONTENT_PIECE)
        ]
    pieces = [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    pieces += [
        {"index": index, "delta": {"content": text[i : i + CONTENT_PIECE]}, "finish_reason": None}
        for i in range(0, len(text), CONTENT_PIECE)
    ]
    calls = candidate.tool_calls
    if calls:  # tool calls stay structured: one delta with every call, indexed as OpenAI does
        pieces.append(
            {
                "index": index,
                "delta": {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]},
                "finish_reason": None,
            }
        )
    return pieces
