"""The one way the proxy reaches a model: litellm, with n-batching, retries, limits, fallback.

Every upstream call goes through `UpstreamClient._call`, so concurrency limits, timeouts,
retries, metrics and secret scrubbing hold for candidates, judges and paraphrases alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import litellm

from proxy import metrics
from proxy.chat_prompt import render_chat
from proxy.config import UpstreamSettings
from proxy.errors import ProxyError, UpstreamFailed, UpstreamRejected, UpstreamTimedOut
from proxy.secrets import Redactor
from strategies.contract import Message, Usage

# Set by the operator in `litellm_params`; a request never overrides these.
OPERATOR_KEYS = frozenset({"model", "api_base", "base_url", "api_key", "api_version", "custom_llm_provider"})
MESSAGE_KEYS = ("role", "content", "tool_calls", "function_call", "refusal", "audio")
_RETRYABLE = (
    litellm.RateLimitError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.APIConnectionError,
    litellm.BadGatewayError,
)


@dataclass
class Choices:
    """Normalized choices of one or more upstream calls: chat choices or text choices."""

    choices: list[dict[str, Any]]
    usage: Usage
    errors: int = 0
    calls: int = 1  # upstream calls that succeeded: prompt tokens are paid once per call


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, redact: Redactor, fallback: UpstreamClient | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self._redact = redact
        self.fallback = fallback
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

    async def chat(self, messages: Sequence[Message], params: dict[str, Any], n: int = 1) -> Choices:
        """`n` chat choices; a completion-mode upstream renders the chat for a base model."""
        if self.renders_chat:
            rendered = render_chat(messages)
            params = _merge_stop(params, rendered.stop)
            result = await self.complete(rendered.prompt, params, n)
            result.choices = [_text_to_chat(c) for c in result.choices]
            return result
        return await self._sample(lambda k: self._chat_once(messages, params, k), n)

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], Usage]:
        """Embedding vectors in input order, through the same limits, retries and metrics."""
        kwargs = self._kwargs({}, None)
        response = await self._call(lambda kw: litellm.aembedding(input=list(texts), **kw), kwargs)
        data = response.model_dump()
        items = sorted(data.get("data") or [], key=lambda item: item.get("index", 0))
        return [list(item["embedding"]) for item in items], _usage(data)

    async def complete(self, prompt: str | list[Any], params: dict[str, Any], n: int = 1) -> Choices:
        return await self._sample(lambda k: self._text_once(prompt, params, k), n)

    async def _sample(self, once: Callable[[int], Awaitable[Choices]], n: int) -> Choices:
        """One call with `n` where it works; otherwise (or for the shortfall) parallel single calls."""
        if n == 1 or self.n_works is False:
            return await self._parallel(once, n)
        try:
            first = await once(n)
        except UpstreamRejected:
            # Some providers reject `n` outright; a single call tells us whether that was it.
            result = await self._parallel(once, n)
            self.n_works = False
            return result
        got = len(first.choices)
        if got >= n:
            self.n_works = True
            first.choices = first.choices[:n]
            return first
        # llama.cpp's server and others silently return one choice: remember, and fill the rest.
        self.n_works = False
        rest = await self._parallel(once, n - got)
        return Choices(first.choices + rest.choices, first.usage + rest.usage, rest.errors, 1 + rest.calls)

    async def _parallel(self, once: Callable[[int], Awaitable[Choices]], n: int) -> Choices:
        results = await asyncio.gather(*(once(1) for _ in range(n)), return_exceptions=True)
        good = [r for r in results if isinstance(r, Choices)]
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if isinstance(failure, asyncio.CancelledError):
                raise failure
        if not good:
            raise failures[0]
        usage = sum((r.usage for r in good), Usage())
        return Choices([c for r in good for c in r.choices], usage, errors=len(failures), calls=len(good))

    async def _chat_once(self, messages: Sequence[Message], params: dict[str, Any], n: int) -> Choices:
        kwargs = self._kwargs(params, n)
        response = await self._call(lambda kw: litellm.acompletion(messages=list(messages), **kw), kwargs)
        data = response.model_dump()
        choices = [_clean_chat_choice(c) for c in data.get("choices") or []]
        return Choices(choices, _usage(data))

    async def _text_once(self, prompt: str | list[Any], params: dict[str, Any], n: int) -> Choices:
        kwargs = self._kwargs(params, n)
        response = await self._call(lambda kw: litellm.atext_completion(prompt=prompt, **kw), kwargs)
        data = response.model_dump()
        choices = [_clean_text_choice(c) for c in data.get("choices") or []]
        return Choices(choices, _usage(data))

    # ---- streaming (passthrough routes) ---------------------------------------------------

    async def stream_chat(self, messages: Sequence[Message], params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Upstream chunks as dicts; always asks for usage so accounting stays honest."""
        if self.renders_chat:
            rendered = render_chat(messages)
            async for chunk in self.stream_text(rendered.prompt, _merge_stop(params, rendered.stop)):
                yield _text_chunk_to_chat(chunk)
            return
        kwargs = self._kwargs({**params, "stream": True, "stream_options": {"include_usage": True}}, None)
        stream = await self._call(lambda kw: litellm.acompletion(messages=list(messages), **kw), kwargs)
        async for chunk in self._guard_stream(stream):
            yield chunk

    async def stream_text(self, prompt: str | list[Any], params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        kwargs = self._kwargs({**params, "stream": True, "stream_options": {"include_usage": True}}, None)
        stream = await self._call(lambda kw: litellm.atext_completion(prompt=prompt, **kw), kwargs)
        async for chunk in self._guard_stream(stream):
            yield chunk

    async def _guard_stream(self, stream: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in stream:
                yield chunk.model_dump(exclude_none=True)
        except ProxyError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a stream cut mid-answer is an error, never a clean end
            metrics.UPSTREAM_REQUESTS.labels(self.name, "error").inc()
            raise self._translate(exc) from None

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

    async def _call(self, make: Callable[[dict[str, Any]], Awaitable[Any]], kwargs: dict[str, Any]) -> Any:
        try:
            return await self._attempts(make, kwargs)
        except (UpstreamFailed, UpstreamTimedOut):
            if self.fallback is None:
                raise
            fallback_kwargs = {**kwargs, **{k: v for k, v in self.fallback._params.items() if k in OPERATOR_KEYS}}
            return await self.fallback._attempts(make, fallback_kwargs)

    async def _attempts(self, make: Callable[[dict[str, Any]], Awaitable[Any]], kwargs: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                async with self._limit():
                    result = await make(kwargs)
            except asyncio.CancelledError:
                metrics.UPSTREAM_REQUESTS.labels(self.name, "cancelled").inc()
                raise
            except Exception as exc:
                outcome = _outcome(exc)
                metrics.UPSTREAM_REQUESTS.labels(self.name, outcome).inc()
                metrics.UPSTREAM_LATENCY.labels(self.name).observe(time.perf_counter() - started)
                if isinstance(exc, _RETRYABLE) and attempt < self.settings.retries:
                    await asyncio.sleep(self.settings.retry_backoff_s * (2**attempt))
                    attempt += 1
                    continue
                raise self._translate(exc) from None
            metrics.UPSTREAM_REQUESTS.labels(self.name, "success").inc()
            metrics.UPSTREAM_LATENCY.labels(self.name).observe(time.perf_counter() - started)
            return result

    def _translate(self, exc: Exception) -> ProxyError:
        detail = self._redact(str(getattr(exc, "message", None) or exc))[:500]
        if isinstance(exc, litellm.Timeout) or isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimedOut(f"upstream {self.name!r} timed out")
        if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)) and not isinstance(
            exc, litellm.ContextWindowExceededError
        ):
            return UpstreamRejected(f"upstream {self.name!r} rejected the request: {detail}")
        if isinstance(exc, litellm.ContextWindowExceededError):
            return UpstreamRejected(f"upstream {self.name!r}: context window exceeded", code="context_length_exceeded")
        return UpstreamFailed(f"upstream {self.name!r} failed: {type(exc).__name__}: {detail}")


def _outcome(exc: Exception) -> str:
    if isinstance(exc, litellm.Timeout):
        return "timeout"
    if isinstance(exc, litellm.RateLimitError):
        return "rate_limited"
    if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)):
        return "rejected"
    return "error"


def _usage(data: dict[str, Any]) -> Usage:
    usage = data.get("usage") or {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _clean_chat_choice(choice: dict[str, Any]) -> dict[str, Any]:
    raw = choice.get("message") or {}
    message = {k: raw[k] for k in MESSAGE_KEYS if raw.get(k) is not None}
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    return {"message": message, "finish_reason": choice.get("finish_reason"), "logprobs": choice.get("logprobs")}


def _clean_text_choice(choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": choice.get("text") or "",
        "finish_reason": choice.get("finish_reason"),
        "logprobs": choice.get("logprobs"),
    }


def _text_to_chat(choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "message": {"role": "assistant", "content": choice["text"].strip()},
        "finish_reason": choice.get("finish_reason"),
        "logprobs": choice.get("logprobs"),
    }


def _text_chunk_to_chat(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for c in chunk.get("choices") or []:
        delta = {"content": c["text"]} if c.get("text") else {}
        choices.append({"index": c.get("index", 0), "delta": delta, "finish_reason": c.get("finish_reason")})
    return {**chunk, "object": "chat.completion.chunk", "choices": choices}


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
