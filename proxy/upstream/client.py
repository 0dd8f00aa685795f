"""The one way the proxy reaches a model, with n-batching, retries, limits, fallback.

Every upstream call goes through `UpstreamClient._call`, so concurrency limits, timeouts,
retries, metrics and secret scrubbing hold for candidates, judges and paraphrases alike.
A failure is classified once, by `proxy.upstream.error_mapping.classify`, into the client's error,
the metric label and whether a retry may help.

Below that, a `Transport` makes the call: the native client (proxy/upstream/native.py) for an
upstream that speaks OpenAI's protocol, litellm for every other provider (and wherever an
upstream says `client: litellm`). Both take litellm's keyword arguments. Tests replace them with
a fake `Transport`, as httpx tests use `MockTransport`:

    client = UpstreamClient(settings, Redactor([]), transport=FakeTransport(...))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from proxy.config.secrets import Redactor
from proxy.config.settings import UpstreamSettings
from proxy.errors import CallCeilingReached, ProxyError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut
from proxy.telemetry import metrics
from proxy.upstream.allowance import CURRENT
from proxy.upstream.chat_prompt import render_chat
from proxy.upstream.error_mapping import translate
from proxy.upstream.litellm_transport import litellm_module, litellm_session
from proxy.upstream.native import NativeStream, NativeTransport, native_pool
from proxy.upstream.stream_tap import ACTIVE, MAX_EVENT_BYTES, Tap, connection_pool
from strategies.contract import Message, Usage

# Set by the operator in `litellm_params`; a request never overrides these.
OPERATOR_KEYS = frozenset({"model", "api_base", "base_url", "api_key", "api_version", "custom_llm_provider"})
# Response-level fields an upstream may send that belong to the answer, passed on as sent.
RESPONSE_FIELDS = ("system_fingerprint", "service_tier")


# One pool per worker for every upstream call, never one per call: litellm builds a fresh
# client for each text completion unless given one, and leaks its session (10,856
# unclosed-session warnings in a 10-minute soak).
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=256)


@asynccontextmanager
async def litellm_pool(limits: httpx.Limits = POOL_LIMITS) -> AsyncIterator[httpx.AsyncClient]:
    """A worker's connection pools, for every upstream call while this is open: the native
    client's session (proxy/upstream/native.py), and the httpx pool that litellm sends through
    (it reads the module-level `aclient_session`) and that the pipeline's own HTTP calls (reward
    models) use. litellm's event streams are tapped (proxy.upstream.stream_tap), so a passthrough
    stream relays the upstream's own chunks. litellm itself is not imported here (see
    proxy/upstream/litellm_transport.py)."""
    async with connection_pool(limits) as http, native_pool():
        with litellm_session(http):
            yield http


class Transport(Protocol):
    """What `UpstreamClient` needs of a client: litellm's three calls, with litellm's keyword
    arguments. The `litellm` module itself qualifies, and so does `NativeTransport`.

    Read-only properties, so that both a module's functions and an object's methods qualify.
    """

    @property
    def acompletion(self) -> Callable[..., Awaitable[Any]]: ...

    @property
    def atext_completion(self) -> Callable[..., Awaitable[Any]]: ...

    @property
    def aembedding(self) -> Callable[..., Awaitable[Any]]: ...


Call = Callable[[Transport, dict[str, Any]], Awaitable[Any]]  # one upstream call, given the transport


@dataclass
class Choices:
    """Normalized choices of one or more upstream calls: chat choices or text choices."""

    choices: list[dict[str, Any]]
    usage: Usage
    errors: int = 0
    calls: int = 1  # upstream calls that succeeded: prompt tokens are paid once per call


Sample = Callable[[int, int], Awaitable[Choices]]  # `n` choices as the `draw`-th samples of a request


class UpstreamClient:
    def __init__(
        self,
        settings: UpstreamSettings,
        redact: Redactor,
        fallback: UpstreamClient | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._redact = redact
        self.fallback = fallback
        # litellm's module, not its functions: a call looks the function up when made. It is
        # imported here, at start-up, and only for an upstream that needs it.
        if transport is None:
            transport = NativeTransport(settings) if settings.native else litellm_module()
        self._transport: Transport = transport
        self._params = dict(settings.litellm_params)
        self._params.setdefault("timeout", settings.timeout_s)
        # litellm would retry on its own too; one retry policy, ours, keeps attempts countable.
        self._params.setdefault("max_retries", 0)
        self._semaphore: asyncio.Semaphore | None = None
        self.n_works: bool | None = settings.supports_n

    @property
    def renders_chat(self) -> bool:
        return self.settings.mode == "completion"

    # ---- sampling -------------------------------------------------------------------------

    async def chat(self, messages: Sequence[Message], params: dict[str, Any], n: int = 1, draw: int = 0) -> Choices:
        """`n` chat choices; a completion-mode upstream renders the chat for a base model.

        `draw`: how many samples of this request came before. A `seed` (the client's, or the
        operator's in `litellm_params`) is offset by it and by each parallel call's place, so
        seeded best-of-N stays reproducible without drawing the same sample N times.
        """
        if self.renders_chat:
            rendered = render_chat(messages)
            params = _merge_stop(params, rendered.stop)
            result = await self.complete(rendered.prompt, params, n, draw)
            result.choices = [_text_to_chat(c) for c in result.choices]
            return result
        return await self._sample(lambda k, offset: self._chat_once(messages, params, k, offset), n, draw)

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], Usage]:
        """Embedding vectors in input order, through the same limits, retries and metrics."""
        kwargs = self._kwargs({}, None)
        response = await self._call(lambda t, kw: t.aembedding(input=list(texts), **kw), kwargs)
        data = _plain(response)
        items = sorted(data.get("data") or [], key=lambda item: item.get("index", 0))
        return [list(item["embedding"]) for item in items], Usage.from_openai(data.get("usage"))

    async def complete(self, prompt: str | list[Any], params: dict[str, Any], n: int = 1, draw: int = 0) -> Choices:
        return await self._sample(lambda k, offset: self._text_once(prompt, params, k, offset), n, draw)

    async def _sample(self, once: Sample, n: int, draw: int = 0) -> Choices:
        """One call with `n` where it works; otherwise (or for the shortfall) parallel single calls."""
        if n == 1 or self.n_works is False:
            return await self._parallel(once, n, draw)
        try:
            first = await once(n, draw)
        except UpstreamRejected:
            # Some providers reject `n` outright; a single call tells us whether that was it.
            result = await self._parallel(once, n, draw)
            self.n_works = False
            return result
        got = len(first.choices)
        if got >= n:
            self.n_works = True
            first.choices = first.choices[:n]
            return first
        # llama.cpp's server and others silently return one choice: remember, and fill the rest.
        self.n_works = False
        rest = await self._parallel(once, n - got, draw + got)
        return Choices(first.choices + rest.choices, first.usage + rest.usage, rest.errors, 1 + rest.calls)

    async def _parallel(self, once: Sample, n: int, draw: int = 0) -> Choices:
        results = await asyncio.gather(*(once(1, draw + i) for i in range(n)), return_exceptions=True)
        good = [r for r in results if isinstance(r, Choices)]
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure
        if not good:
            raise failures[0]
        usage = sum((r.usage for r in good), Usage())
        return Choices([c for r in good for c in r.choices], usage, errors=len(failures), calls=len(good))

    async def _chat_once(self, messages: Sequence[Message], params: dict[str, Any], n: int, draw: int = 0) -> Choices:
        kwargs = _seeded(self._kwargs(params, n), draw)
        response = await self._call(lambda t, kw: t.acompletion(messages=list(messages), **kw), kwargs)
        data = _plain(response)
        fields = _response_fields(data)
        choices = [{**_clean_chat_choice(c), "response": fields} for c in data.get("choices") or []]
        return Choices(choices, Usage.from_openai(data.get("usage")))

    async def _text_once(self, prompt: str | list[Any], params: dict[str, Any], n: int, draw: int = 0) -> Choices:
        kwargs = _seeded(self._kwargs(params, n), draw)
        response = await self._call(lambda t, kw: t.atext_completion(prompt=prompt, **kw), kwargs)
        data = _plain(response)
        fields = _response_fields(data)
        choices = [{**_clean_text_choice(c), "response": fields} for c in data.get("choices") or []]
        return Choices(choices, Usage.from_openai(data.get("usage")))

    # ---- streaming (passthrough routes) ---------------------------------------------------

    async def stream_chat(
        self, messages: Sequence[Message], params: dict[str, Any], n: int = 1
    ) -> AsyncIterator[dict[str, Any]]:
        """Upstream chunks as dicts; always asks for usage so accounting stays honest."""
        if self.renders_chat:
            rendered = render_chat(messages)
            async for chunk in self.stream_text(rendered.prompt, _merge_stop(params, rendered.stop), n):
                yield _text_chunk_to_chat(chunk)
            return
        async for chunk in self._stream(lambda t, kw: t.acompletion(messages=list(messages), **kw), params, n):
            yield chunk

    async def stream_text(
        self, prompt: str | list[Any], params: dict[str, Any], n: int = 1
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._stream(lambda t, kw: t.atext_completion(prompt=prompt, **kw), params, n):
            yield chunk

    async def _stream(self, make: Call, params: dict[str, Any], n: int) -> AsyncIterator[dict[str, Any]]:
        """`n` choices in one stream where the upstream is known to honour `n`; otherwise `n`
        streams at once, their chunks merged as they come under choice indexes 0..n-1."""
        streamed = {**params, "stream": True, "stream_options": {"include_usage": True}}
        if n == 1 or self.n_works is True:
            opened = await self._call(lambda t, kw: _open(make(t, kw)), self._kwargs(streamed, n))
            async for chunk in self._guard_stream(opened, n):
                yield chunk
            return
        streams = await self._open_all(make, self._kwargs(streamed, None), n)
        async for chunk in _merged([self._guard_stream(opened, 1) for opened in streams]):
            yield chunk

    async def _open_all(self, make: Call, kwargs: dict[str, Any], n: int) -> list[_OpenStream]:
        """`n` streams opened at once. The first that fails ends the others: those still opening
        are cancelled and those open are hung up on, so no upstream keeps generating for nobody."""
        tasks = [
            asyncio.ensure_future(self._call(lambda t, kw: _open(make(t, kw)), _seeded(kwargs, i))) for i in range(n)
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            failed = [t for t in tasks if not t.done() or t.cancelled() or t.exception() is not None]
            if failed:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                opened = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
                await asyncio.gather(*(stream.close() for stream in opened), return_exceptions=True)
        if failed:
            raise next(t.exception() for t in tasks if not t.cancelled() and t.exception() is not None)
        return [task.result() for task in tasks]

    async def _guard_stream(self, opened: _OpenStream, choices: int) -> AsyncIterator[dict[str, Any]]:
        try:
            if isinstance(opened.stream, NativeStream):  # the upstream's own events already
                chunks = self._upstream_chunks(_native_events(opened), choices, opened.stream.usage_estimate)
            else:
                first = opened.tap.take() if opened.tap.attached else []
                if opened.tap.attached and all(_is_chunk(event) for event in first):
                    counted: list[Any] = [None]  # litellm's usage, for an upstream that sends none
                    chunks = self._upstream_chunks(_tapped_events(opened, first, counted), choices, lambda: counted[0])
                else:  # not tapped, or not OpenAI's protocol underneath: litellm's chunks it is
                    opened.tap.detach()
                    chunks = self._litellm_chunks(opened)
            async for chunk in chunks:
                yield chunk
        except ProxyError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a stream cut mid-answer is an error, never a clean end
            if opened.tap.too_large is not None:  # the tap stopped the read: say why, not litellm
                metrics.UPSTREAM_REQUESTS.labels(self.name, "error").inc()
                raise UpstreamFailed(
                    f"upstream {self.name!r} sent a stream event of more than {MAX_EVENT_BYTES} bytes"
                ) from None
            error, failure = translate(exc, self.name, self._redact)
            metrics.UPSTREAM_REQUESTS.labels(self.name, failure.outcome).inc()
            raise error from None
        finally:
            await opened.close()  # a stream left early (client gone, error) hangs up on the upstream

    async def _upstream_chunks(
        self, events: AsyncIterator[dict[str, Any]], choices: int, counted: Callable[[], Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """The upstream's chunks as it sent them, checked before each is relayed.

        A choice index outside the `choices` asked for is an error, and so is a stream that
        ends with a choice unfinished (what litellm would invent at the end of a stream cut short
        never comes through). `counted()` stands in for the usage of an upstream that sent none
        (one that ignores `include_usage`): litellm's count, or the native client's estimate.
        """
        started: set[int] = set()
        finished: set[int] = set()
        upstream_counted = False
        async for event in events:
            chunk = _as_chunk(event)
            if chunk is None:
                continue
            upstream_counted = upstream_counted or bool(chunk.get("usage"))
            if len(chunk["choices"]) > choices or not all(_index_in(c, choices) for c in chunk["choices"]):
                metrics.UPSTREAM_REQUESTS.labels(self.name, "error").inc()
                raise UpstreamFailed(f"upstream {self.name!r} streamed a choice index outside the {choices} asked for")
            for choice in chunk["choices"]:
                started.add(choice.get("index", 0))
                if choice.get("finish_reason"):
                    finished.add(choice.get("index", 0))
            yield chunk
        if not started or started - finished:
            metrics.UPSTREAM_REQUESTS.labels(self.name, "error").inc()
            raise UpstreamFailed(f"upstream {self.name!r} ended its stream before the answer finished")
        usage = None if upstream_counted else counted()
        if usage:
            yield {"choices": [], "usage": _counts(usage)}

    async def _litellm_chunks(self, opened: _OpenStream) -> AsyncIterator[dict[str, Any]]:
        chunk = opened.first
        while chunk is not _END:
            data = _plain(chunk, exclude_none=True)
            if _invented_finish(opened.stream, data):
                metrics.UPSTREAM_REQUESTS.labels(self.name, "error").inc()
                raise UpstreamFailed(f"upstream {self.name!r} ended its stream before the answer finished")
            if data.get("usage"):  # litellm's own usage object may carry its estimates: counts only
                data["usage"] = _counts(data["usage"])
            yield data
            chunk = await anext(opened.chunks, _END)

    # ---- the single call path -------------------------------------------------------------

    def _kwargs(self, params: dict[str, Any], n: int | None) -> dict[str, Any]:
        kwargs = {**self._params, **{k: v for k, v in params.items() if k not in OPERATOR_KEYS}}
        if n is not None and n > 1:
            kwargs["n"] = n
        else:
            kwargs.pop("n", None)
        return kwargs

    def _limit(self) -> asyncio.Semaphore:
        if self._semaphore is None:  # created lazily: it must belong to the serving event loop
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        return self._semaphore

    async def _call(self, make: Call, kwargs: dict[str, Any]) -> Any:
        try:
            return await self._attempts(make, kwargs)
        except (UpstreamFailed, UpstreamTimedOut):
            if self.fallback is None:
                raise
            # The fallback's endpoint and key replace the primary's whole: none of the primary's
            # may leak through, such as its api_key sent to the fallback's provider.
            request = {k: v for k, v in kwargs.items() if k not in OPERATOR_KEYS}
            operator = {k: v for k, v in self.fallback._params.items() if k in OPERATOR_KEYS}
            return await self.fallback._attempts(make, {**request, **operator})

    async def _attempts(self, make: Call, kwargs: dict[str, Any]) -> Any:
        attempt = 0
        allowance = CURRENT.get()  # the request's ceiling: every attempt counts, retries too
        while True:
            if allowance is not None:
                try:
                    allowance.take_call(self.name)
                except CallCeilingReached:
                    metrics.UPSTREAM_REQUESTS.labels(self.name, "ceiling").inc()
                    raise
            started = time.perf_counter()
            try:
                async with self._limit():
                    result = await make(self._transport, kwargs)
            except asyncio.CancelledError:
                metrics.UPSTREAM_REQUESTS.labels(self.name, "cancelled").inc()
                raise
            except Exception as exc:
                error, failure = translate(exc, self.name, self._redact)
                metrics.UPSTREAM_REQUESTS.labels(self.name, failure.outcome).inc()
                metrics.UPSTREAM_LATENCY.labels(self.name).observe(time.perf_counter() - started)
                if failure.retryable and attempt < self.settings.retries:
                    await asyncio.sleep(self.settings.retry_backoff_s * (2**attempt))
                    attempt += 1
                    continue
                raise error from None
            metrics.UPSTREAM_REQUESTS.labels(self.name, "success").inc()
            metrics.UPSTREAM_LATENCY.labels(self.name).observe(time.perf_counter() - started)
            return result


async def _merged(streams: Sequence[AsyncIterator[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    """Chunks of several one-choice streams as one stream: stream i's choices get index i.

    Each stream is read by a task of its own, so a slow one never holds up the others; the
    first error ends the merged stream (the others are cancelled), as a cut would.
    """
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, _END))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                for choice in item.get("choices") or []:
                    choice["index"] = index
                yield item
    finally:
        for task in tasks:
            task.cancel()


_END: Any = object()  # a stream's end, told apart from any chunk


@dataclass
class _OpenStream:
    """A stream whose first chunk has arrived: the request is really sent and answered."""

    stream: Any
    chunks: AsyncIterator[Any]
    first: Any  # a chunk, or _END for a stream that ended at once
    tap: Tap  # the upstream's own events, where its bytes could be read (see proxy.upstream.stream_tap)

    async def close(self) -> None:
        """Hang up on the upstream unless the stream was read to its end (the native client's
        streams; litellm's close themselves as their wrappers end or are collected)."""
        if isinstance(self.stream, NativeStream):
            await self.stream.aclose()


async def _open(pending: Awaitable[Any]) -> _OpenStream:
    """Start a stream and wait for its first chunk, inside the attempt that retries it.

    litellm returns some streams (text completions) before it has sent anything, so a failure
    to connect would surface only at the first read, past the retries, the fallback, the
    concurrency limit and the latency metric that every upstream call goes through. The
    request goes out here, chat or text, so here is where its response is tapped.
    """
    tap = Tap()
    active = ACTIVE.set(tap)
    try:
        stream = await pending
        if isinstance(stream, NativeStream):
            tap = stream.tap  # the native client parses its stream with a tap of its own
        chunks = aiter(stream)
        first = await anext(chunks, _END)
    finally:
        ACTIVE.reset(active)
    return _OpenStream(stream, chunks, first, tap)


async def _native_events(opened: _OpenStream) -> AsyncIterator[dict[str, Any]]:
    """A native stream's events: the first, read when it opened, then the rest as they come."""
    if opened.first is not _END:
        yield opened.first
    async for event in opened.chunks:
        yield event


async def _tapped_events(opened: _OpenStream, first: list[dict[str, Any]], counted: list[Any]
                         ) -> AsyncIterator[dict[str, Any]]:
    """The events the tap read below litellm, while litellm still drives the stream: each of its
    chunks lets the upstream's events it has read through, its errors end the stream, and its
    usage is kept in `counted[0]` (used only where the upstream sent none)."""
    events, item = first, opened.first
    while True:
        if item is not _END:
            counted[0] = _plain(item).get("usage") or counted[0]
        for event in events:
            yield event
        if item is _END:
            return
        item = await anext(opened.chunks, _END)
        events = opened.tap.take()


def _counts(usage: Any) -> dict[str, int]:
    """A usage object as its three token counts."""
    counted = Usage.from_openai(usage)
    return {
        "prompt_tokens": counted.prompt_tokens,
        "completion_tokens": counted.completion_tokens,
        "total_tokens": counted.total_tokens,
    }


def _index_in(choice: Any, choices: int) -> bool:
    """A streamed choice's index is one of the `choices` asked for (a missing index is 0)."""
    index = choice.get("index", 0) if isinstance(choice, dict) else None
    return type(index) is int and 0 <= index < choices


def _is_chunk(event: dict[str, Any]) -> bool:
    """Whether an event of the upstream's stream is an OpenAI chunk (other protocols' are not)."""
    return isinstance(event.get("choices"), list)


def _as_chunk(event: dict[str, Any]) -> dict[str, Any] | None:
    """An upstream event as a chunk to relay, or None: an error event is litellm's to raise."""
    if "error" in event:
        return None
    if _is_chunk(event):
        return {**event, "choices": [c for c in event["choices"] if isinstance(c, dict)]}
    if event.get("usage"):  # a usage event without `choices: []`
        return {**event, "choices": []}
    return None


def _plain(obj: Any, exclude_none: bool = False) -> dict[str, Any]:
    """A litellm response (pydantic) or a fake transport's plain dict, as a dict."""
    if isinstance(obj, Mapping):
        return {k: v for k, v in obj.items() if not (exclude_none and v is None)}
    return obj.model_dump(exclude_none=exclude_none)


def _response_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data[key] for key in RESPONSE_FIELDS if data.get(key) is not None}


def _clean_chat_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """The upstream's message as it sent it, less litellm's additions.

    litellm moves fields it does not model (`refusal`, `annotations`, ...) into
    `provider_specific_fields` and adds its own keys as null; the client gets them back in
    place, with the fields OpenAI requires (`content`, `refusal`) as null where absent.
    """
    raw = dict(choice.get("message") or {})
    moved = raw.pop("provider_specific_fields", None) or {}
    message = {key: value for key, value in raw.items() if value is not None}
    message.update({key: value for key, value in moved.items() if value is not None and key not in message})
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    message.setdefault("refusal", None)
    return {"message": message, "finish_reason": choice.get("finish_reason"), "logprobs": choice.get("logprobs")}


def _clean_text_choice(choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": choice.get("text") or "",
        "finish_reason": choice.get("finish_reason"),
        "logprobs": choice.get("logprobs"),
    }


def _text_to_chat(choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "message": {"role": "assistant", "content": choice["text"].strip(), "refusal": None},
        "finish_reason": choice.get("finish_reason"),
        "logprobs": choice.get("logprobs"),
        "response": choice.get("response") or {},
    }


def _text_chunk_to_chat(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for c in chunk.get("choices") or []:
        delta = {"content": c["text"]} if c.get("text") else {}
        choices.append({"index": c.get("index", 0), "delta": delta, "finish_reason": c.get("finish_reason")})
    return {**chunk, "object": "chat.completion.chunk", "choices": choices}


def _seeded(kwargs: dict[str, Any], draw: int) -> dict[str, Any]:
    """`kwargs` for the `draw`-th sample of a request: an integer `seed` moves by `draw`, else
    every call of a seeded request would return the first sample again."""
    seed = kwargs.get("seed")
    if draw and isinstance(seed, int) and not isinstance(seed, bool):
        return {**kwargs, "seed": seed + draw}
    return kwargs


def _merge_stop(params: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    stop = params.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    merged = stops + [s for s in extra if s not in stops]
    return {**params, "stop": merged[:4] if stops else merged}


def token_logprobs(logprobs: Any) -> list[float] | None:
    """Per-token logprobs from a chat (`content[].logprob`) or text (`token_logprobs`) object."""
    if not isinstance(logprobs, dict):
        return None
    if isinstance(logprobs.get("content"), list):
        values = [t.get("logprob") for t in logprobs["content"] if isinstance(t, dict)]
    else:
        values = list(logprobs.get("token_logprobs") or [])
    floats = [float(v) for v in values if isinstance(v, (int, float))]
    return floats or None


def _invented_finish(stream: Any, chunk: dict[str, Any]) -> bool:
    """Whether `chunk` is litellm's made-up end of a stream the upstream never finished.

    Asked only of streams the proxy could not tap (a tapped one shows the finish reasons the
    upstream really sent). When an upstream's body ends without a `finish_reason` (and without `[DONE]`), litellm's
    stream wrapper closes it with `finish_reason: "stop"` and estimated usage, while its own
    record of the finish reason the upstream sent stays empty.
    """
    if not any(choice.get("finish_reason") for choice in chunk.get("choices") or []):
        return False
    wrapper = _stream_wrapper(stream)
    if wrapper is None:
        return False  # not litellm's wrapper (a test transport): nothing was invented
    return wrapper.received_finish_reason is None and getattr(wrapper, "intermittent_finish_reason", None) is None


def _stream_wrapper(stream: Any, depth: int = 4) -> Any:
    """litellm's chat stream wrapper inside `stream`, which keeps what the upstream sent.

    Text completions nest it: their wrapper's `completion_stream` is an async generator whose
    frame holds another generator, whose frame holds the wrapper. litellm exposes no other way
    to ask; the test of a stream that ends early (tests/http/test_hardening.py) checks this search
    against the installed litellm for chat and text alike.
    """
    level = [stream]
    for _ in range(depth):
        found = next((obj for obj in level if hasattr(obj, "received_finish_reason")), None)
        if found is not None:
            return found
        deeper: list[Any] = []
        for obj in level:
            if getattr(obj, "completion_stream", None) is not None:
                deeper.append(obj.completion_stream)
            frame = getattr(obj, "ag_frame", None)
            if frame is not None:
                deeper += [v for v in frame.f_locals.values() if hasattr(v, "received_finish_reason")]
                deeper += [v for v in frame.f_locals.values() if hasattr(v, "ag_frame")]
        level = deeper
    return None
