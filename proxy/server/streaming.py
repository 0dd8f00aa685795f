"""Server-sent events in OpenAI's chunk format.

Passthrough routes stream the upstream's chunks as they come. Strategy routes cannot stream
before a candidate is chosen, so they keep the connection alive with SSE comments and then
stream the chosen answer. A stream cut mid-answer ends with an error event, never `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from proxy.errors import ProxyError, internal_error
from proxy.pipeline.endpoints import Endpoint
from proxy.server.responses import returned, usage_body
from proxy.telemetry.recording import RequestRecord
from strategies.contract import Candidate, Outcome, Usage

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


END: Any = object()  # what `anext(chunks, END)` returns for a stream that is already over


async def resumed(first: Any, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A stream whose first chunk was read ahead, whole again."""
    if first is END:
        return
    yield first
    async for chunk in rest:
        yield chunk


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
    tail: dict[str, Any] | None = None  # the usage chunk, sent once at the end
    reported: list[dict[str, Any]] = []  # the usage objects the stream carried
    try:
        async for chunk in chunks:
            usage = chunk.pop("usage", None)
            if usage:
                # Several streams (n > 1 where the upstream ignores n) each report usage: sum them.
                record.usage += Usage.from_openai(usage)
                reported.append(usage)
            chunk.update(id=stream_id, model=route, created=created)
            # litellm hangs an empty choice on the usage chunk; OpenAI's has `choices: []`.
            chunk["choices"] = [_complete_choice(c) for c in chunk.get("choices") or [] if not _empty(c)]
            if chunk["choices"]:
                yield event(chunk)
            elif usage:
                tail = chunk
        if include_usage and tail is not None:
            # One stream's usage goes out as the upstream sent it, details and all.
            usage = reported[0] if len(reported) == 1 else usage_body(record.usage)
            yield event({**tail, "choices": [], "usage": usage})
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
    endpoint: Endpoint,
    n: int,
    include_usage: bool,
    rvr: Callable[[Outcome], dict[str, Any] | None],
    keepalive_s: float,
    on_error: Callable[[Exception], None],
    due: bool = False,
) -> AsyncIterator[bytes]:
    """Keep-alives while the strategy works, then the chosen answer as ordinary chunks.

    `due`: the caller already waited a keep-alive interval (holding the headers), so the first
    keep-alive goes out at once.
    """
    task = asyncio.ensure_future(work)
    try:
        async for keepalive in _waiting(task, keepalive_s, due):
            yield keepalive
        outcome = task.result()
    except asyncio.CancelledError:
        task.cancel()
        raise
    except Exception as exc:
        on_error(exc)
        yield error_event(exc)
        return
    base = {"id": stream_id, "object": endpoint.chunk_object, "created": int(time.time()), "model": route}
    if outcome.fusion_stream is not None:
        fused: list[Outcome] = []
        # aclosing: a client that hangs up closes this generator, and with it the fuser's stream
        async with contextlib.aclosing(_fused(outcome, base, endpoint, keepalive_s, fused, on_error)) as fusing:
            async for data in fusing:
                yield data
        if not fused:  # cut mid-answer: the error event went out
            return
        outcome = fused[0]
        if _was_fused(outcome):
            yield event({**base, "choices": [{**endpoint.final_piece(outcome.chosen, 0), "logprobs": None}]})
            async for data in _tail(outcome, base, include_usage, rvr):
                yield data
            return
        # the fuser failed before its first piece: the selected answer streams as it would have
    chosen = returned(outcome, n)
    base.update(chosen[0].response_fields if chosen else {})  # system_fingerprint, ... as the upstream sent
    for index, candidate in enumerate(chosen):
        pieces, final = endpoint.pieces(candidate, index), endpoint.final_piece(candidate, index)
        for choice in _with_logprobs(candidate, pieces, final):
            yield event({**base, "choices": [choice]})
    async for data in _tail(outcome, base, include_usage, rvr):
        yield data


async def _waiting(task: asyncio.Future[Any], keepalive_s: float, due: bool) -> AsyncIterator[bytes]:
    """Keep-alives until `task` is done (`due`: one at once)."""
    if due and not task.done():
        yield KEEPALIVE
    while True:
        done, _ = await asyncio.wait({task}, timeout=keepalive_s)
        if done:
            return
        yield KEEPALIVE


def _was_fused(outcome: Outcome) -> bool:
    return bool(outcome.fusion and outcome.fusion.get("fused"))


async def _fused(
    outcome: Outcome, base: dict[str, Any], endpoint: Endpoint, keepalive_s: float, into: list[Outcome],
    on_error: Callable[[Exception], None],
) -> AsyncIterator[bytes]:
    """The fuser's answer as it is written (keep-alives until its first piece), then the finished
    outcome in `into`. A fuser that fails before its first piece leaves the selected answer to
    stream instead; one that fails mid-answer ends the stream with an error event (`into` empty).
    However it ends (a client that hangs up included), the fuser's stream is closed at once, so
    its upstream call stops and what it cost is charged to the request."""
    stream = outcome.fusion_stream
    assert stream is not None
    outcome.fusion_stream = None
    pieces = stream.pieces
    first = asyncio.ensure_future(anext(pieces, END))
    try:
        try:
            async for keepalive in _waiting(first, keepalive_s, due=False):
                yield keepalive
            piece = first.result()
        except Exception as exc:  # noqa: BLE001 - nothing was sent: the selected answer stands in
            into.append(await stream.finish(None, exc))
            return
        if piece is END:
            into.append(await stream.finish(None, None))
            return
        written: list[str] = []
        chat_role = endpoint.pieces(Candidate(0, "", {"role": "assistant", "content": ""}), 0)
        for choice in chat_role:  # a chat stream opens with the role
            yield event({**base, "choices": [{**choice, "logprobs": None}]})
        try:
            while piece is not END:
                written.append(piece)
                yield event({**base, "choices": [{**endpoint.text_piece(piece, 0), "logprobs": None}]})
                piece = await anext(pieces, END)
            into.append(await stream.finish("".join(written), None))
        except Exception as exc:
            on_error(exc)
            yield error_event(exc)
    finally:
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
        with contextlib.suppress(BaseException):
            await pieces.aclose()


async def _tail(
    outcome: Outcome, base: dict[str, Any], include_usage: bool, rvr: Callable[[Outcome], dict[str, Any] | None]
) -> AsyncIterator[bytes]:
    """The usage and `rvr` chunk, then `[DONE]`."""
    extension = rvr(outcome)
    if include_usage or extension is not None:
        tail: dict[str, Any] = {**base, "choices": []}
        if include_usage:
            tail["usage"] = usage_body(outcome.usage)
        if extension is not None:
            tail["rvr"] = extension
        yield event(tail)
    yield DONE


def _with_logprobs(
    candidate: Candidate, pieces: list[dict[str, Any]], final: dict[str, Any]
) -> list[dict[str, Any]]:
    """The pieces of a replayed answer with `logprobs` on each, as OpenAI sends them: the
    candidate's whole logprobs object on the first piece (clients concatenate the token lists
    across chunks), null on the rest."""
    choices = [*pieces, final]
    for choice in choices:
        choice["logprobs"] = None
    choices[0]["logprobs"] = candidate.logprobs
    return choices


def _empty(choice: dict[str, Any]) -> bool:
    return not choice.get("delta") and not choice.get("text") and choice.get("finish_reason") is None


def _complete_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A chunk's choice with the fields OpenAI always sends, null where the upstream sent none."""
    choice.setdefault("finish_reason", None)
    choice.setdefault("logprobs", None)
    if "delta" not in choice:
        choice.setdefault("text", "")
    return choice
