"""The `Services` a strategy receives: the route's upstream, judges and reward models.

One instance per request, so nothing a request does leaks into another.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from proxy.errors import UpstreamFailed, UpstreamTimedOut
from proxy.pipeline.endpoints import Endpoint
from proxy.upstream.allowance import BYTES_PER_TOKEN, RequestAllowance, completion_cap, estimate_tokens
from proxy.upstream.client import Choices, UpstreamClient, token_logprobs
from strategies.contract import (
    Batch,
    EmbedReply,
    Message,
    Reply,
    RewardEndpoint,
    RewardReply,
    Sample,
    StreamEnd,
    Usage,
    content_text,
)

T = TypeVar("T")


class RequestServices:
    def __init__(
        self,
        upstream: UpstreamClient,
        clients: Mapping[str, UpstreamClient],
        params: dict[str, Any],
        endpoint: Endpoint,
        http: httpx.AsyncClient,
        client_input: Any = None,
        allowance: RequestAllowance | None = None,
        spent: dict[str, Usage] | None = None,
    ) -> None:
        self._upstream = upstream
        self._clients = clients
        self._params = params
        self._endpoint = endpoint
        self._http = http
        self.client_input = client_input  # the client's messages or prompt, as sent
        self._allowance = allowance if allowance is not None else RequestAllowance()
        self._completion = completion_cap(params)
        self.plain_usage: Usage | None = None  # one plain call's cost, for the cost multiplier
        # What each upstream (by config name; `reward_model` for reward endpoints) was paid for this
        # request, shared with `for_upstream` copies: `rvr.cost.by_upstream`.
        self.spent: dict[str, Usage] = spent if spent is not None else {}
        self._drawn = 0  # samples this request asked for so far: where a seeded sample's seed moves to

    def for_upstream(self, upstream: UpstreamClient) -> RequestServices:
        """The same request (parameters, input, allowance) sent to another route's upstream."""
        return RequestServices(
            upstream, self._clients, dict(self._params), self._endpoint, self._http, self.client_input,
            self._allowance, self.spent,
        )

    async def _metered(
        self, estimate: int, call: Callable[[], Awaitable[T]], usage: Callable[[T], Usage], upstream: str
    ) -> T:
        """Run one call against the request's token budget (see `proxy.upstream.allowance`)."""
        held = self._allowance.reserve(estimate)
        try:
            result = await call()
        except (asyncio.CancelledError, UpstreamTimedOut):
            self._allowance.settle(held, None, cut=True)  # the upstream may have spent it all
            raise
        except BaseException:
            self._allowance.settle(held, None)
            raise
        self._spend(upstream, usage(result))
        self._allowance.settle(held, usage(result))
        return result

    def _spend(self, upstream: str, usage: Usage) -> None:
        self.spent[upstream] = self.spent.get(upstream, Usage()) + usage

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        client = self._upstream if upstream is None else self._clients[upstream]
        sent = self._endpoint.upstream_input(messages)
        each = estimate_tokens(sent) + self._completion
        n = self._allowance.affordable(each, n)  # fewer samples, rather than none, near the budget
        draw, self._drawn = self._drawn, self._drawn + n
        result = await self._metered(
            n * each,
            lambda: self._endpoint.call(client, sent, self._params, n, draw),
            lambda r: r.usage,
            client.name,
        )
        if self.plain_usage is None and result.choices:
            self.plain_usage = Usage(
                round(result.usage.prompt_tokens / max(result.calls, 1)),
                round(result.usage.completion_tokens / len(result.choices)),
            )
        return _batch(result)

    async def forward(self, n: int) -> Batch:
        result = await self._metered(
            n * (estimate_tokens(self.client_input) + self._completion),
            lambda: self._endpoint.call(self._upstream, self.client_input, self._params, n),
            lambda r: r.usage,
            self._upstream.name,
        )
        return _batch(result)

    async def forward_stream(self, n: int) -> AsyncIterator[dict[str, Any]]:
        """The client's request streamed as sent, metered like every call: at the usage the
        stream reports, or, when it reports none (cut off, or an upstream that never does), at
        the prompt's estimate plus the text streamed so far."""
        prompt = estimate_tokens(self.client_input)
        held = self._allowance.reserve(n * (prompt + self._completion))
        reported, streamed = Usage(), 0
        try:
            async for chunk in self._endpoint.stream(self._upstream, self.client_input, self._params, n):
                if chunk.get("usage"):
                    reported += Usage.from_openai(chunk["usage"])
                streamed += sum(_streamed_bytes(choice) for choice in chunk.get("choices") or [])
                yield chunk
        finally:
            spent = reported if reported.total_tokens else Usage(prompt, math.ceil(streamed / BYTES_PER_TOKEN))
            self._spend(self._upstream.name, spent)
            self._allowance.settle(held, spent)

    async def chat_stream(self, upstream: str, messages: Sequence[Message]) -> AsyncIterator[str | StreamEnd]:
        """One answer from `upstream` with the client's parameters, as text pieces while they
        arrive, then how it ended; charged at the usage it reported, or else at its estimate."""
        client = self._clients[upstream]
        sent = self._endpoint.upstream_input(messages)
        prompt = estimate_tokens(sent)
        held = self._allowance.reserve(prompt + self._completion)
        reported, streamed, finish = Usage(), 0, None
        try:
            async with contextlib.aclosing(self._endpoint.stream(client, sent, self._params, 1)) as chunks:
                async for chunk in chunks:
                    if chunk.get("usage"):
                        reported += Usage.from_openai(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        if isinstance(choice, Mapping) and choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
                        piece = _piece_text(choice)
                        if piece:
                            streamed += len(piece.encode("utf-8", "replace"))
                            yield piece
        finally:
            spent = reported if reported.total_tokens else Usage(prompt, math.ceil(streamed / BYTES_PER_TOKEN))
            self._spend(upstream, spent)
            self._allowance.settle(held, spent)
        yield StreamEnd(spent, finish)  # last, so the strategy counts what it cost in the request's usage

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        result = await self._metered(
            estimate_tokens(messages) + completion_cap(params),
            lambda: self._clients[upstream].chat(messages, params, 1),
            lambda r: r.usage,
            upstream,
        )
        content = result.choices[0]["message"].get("content") if result.choices else None
        return Reply(content if isinstance(content, str) else "", result.usage)

    async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
        vectors, usage = await self._metered(
            estimate_tokens(list(texts)), lambda: self._clients[upstream].embed(texts), lambda r: r[1], upstream
        )
        return EmbedReply(vectors, usage)

    async def reward(
        self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        body = _reward_body(endpoint, messages, answers)
        return await self._metered(
            estimate_tokens(body), lambda: self._score(endpoint, body, len(answers)), lambda r: r.usage, "reward_model"
        )

    async def _score(self, endpoint: RewardEndpoint, body: dict[str, Any], count: int) -> RewardReply:
        self._allowance.take_call("reward_model")  # not through UpstreamClient, so counted here
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        try:
            response = await self._http.post(endpoint.url, json=body, headers=headers, timeout=endpoint.timeout_s)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamFailed(f"reward endpoint failed: {type(exc).__name__}") from None
        usage = Usage.from_openai(data.get("usage") if isinstance(data, dict) else None)
        return RewardReply(_reward_scores(endpoint, data, count), Usage(usage.prompt_tokens, 0))


def _batch(result: Choices) -> Batch:
    samples = []
    for choice in result.choices:
        message = choice.get("message") or {"role": "assistant", "content": choice.get("text", "")}
        samples.append(
            Sample(
                message,
                choice.get("finish_reason"),
                token_logprobs(choice.get("logprobs")),
                choice.get("logprobs"),
                choice.get("response") or {},
            )
        )
    return Batch(samples, result.usage, result.errors)


def _piece_text(choice: Any) -> str:
    """The text a streamed choice adds: a chat delta's content, or a text completion's text."""
    if not isinstance(choice, Mapping):
        return ""
    delta = choice.get("delta")
    value = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
    return value if isinstance(value, str) else ""


def _conversation(messages: Sequence[Message]) -> str:
    return "\n".join(f"{m.get('role')}: {content_text(m.get('content'))}" for m in messages)


_NOT_TEXT = frozenset({"index", "finish_reason", "role", "type", "id", "logprobs"})


def _streamed_bytes(value: Any) -> int:
    """The UTF-8 size of the text a stream chunk's choice carries (content, tool arguments, ...)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return sum(_streamed_bytes(v) for k, v in value.items() if k not in _NOT_TEXT)
    if isinstance(value, list):
        return sum(_streamed_bytes(v) for v in value)
    return 0


def _reward_body(endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]) -> dict[str, Any]:
    query = _conversation(messages)
    if endpoint.api == "vllm_score":  # vLLM /score: one query against many documents
        body: dict[str, Any] = {"text_1": query, "text_2": list(answers)}
    elif endpoint.api == "vllm_reward":  # vLLM /pooling on a reward model: one text per answer
        body = {"input": [f"{query}\nassistant: {a}" for a in answers]}
    else:
        body = {"messages": list(messages), "responses": list(answers)}
    if endpoint.model:
        body["model"] = endpoint.model
    return body


def _reward_scores(endpoint: RewardEndpoint, data: Any, count: int) -> list[float | None]:
    scores: list[float | None] = [None] * count
    if endpoint.api == "generic":
        raw = data.get("scores") if isinstance(data, dict) else None
        for i, value in enumerate((raw or [])[:count]):
            scores[i] = _number(value)
        return scores
    for position, item in enumerate((data.get("data") if isinstance(data, dict) else None) or []):
        if not isinstance(item, dict):
            continue
        index = item.get("index", position)
        value = item.get("score", item.get("data"))
        if isinstance(index, int) and 0 <= index < count:
            scores[index] = _number(value)
    return scores


def _number(value: Any) -> float | None:
    while isinstance(value, list) and value:  # pooling outputs nest: take the last (reward) value
        value = value[-1]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
