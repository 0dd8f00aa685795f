"""The `Services` a strategy receives: the route's upstream, judges and reward models.

One instance per request, so nothing a request does leaks into another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx

from proxy.errors import UpstreamFailed
from proxy.upstream import Choices, UpstreamClient, token_logprobs
from strategies.contract import Batch, EmbedReply, Message, Reply, RewardReply, Sample, Usage
from strategies.settings import RewardEndpoint

Kind = Literal["chat", "text"]


class RequestServices:
    def __init__(
        self,
        upstream: UpstreamClient,
        clients: Mapping[str, UpstreamClient],
        params: dict[str, Any],
        kind: Kind,
        http: httpx.AsyncClient,
    ) -> None:
        self._upstream = upstream
        self._clients = clients
        self._params = params
        self._kind = kind
        self._http = http
        self.plain_usage: Usage | None = None  # one plain call's cost, for the cost multiplier

    async def generate(self, messages: Sequence[Message], n: int) -> Batch:
        if self._kind == "chat":
            result = await self._upstream.chat(messages, self._params, n)
        else:
            result = await self._upstream.complete(messages_to_prompt(messages), self._params, n)
        if self.plain_usage is None and result.choices:
            self.plain_usage = Usage(
                round(result.usage.prompt_tokens / max(result.calls, 1)),
                round(result.usage.completion_tokens / len(result.choices)),
            )
        return _batch(result)

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        result = await self._clients[upstream].chat(messages, params, 1)
        content = result.choices[0]["message"].get("content") if result.choices else None
        return Reply(content if isinstance(content, str) else "", result.usage)

    async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
        vectors, usage = await self._clients[upstream].embed(texts)
        return EmbedReply(vectors, usage)

    async def reward(
        self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        body = _reward_body(endpoint, messages, answers)
        try:
            response = await self._http.post(endpoint.url, json=body, headers=headers, timeout=endpoint.timeout_s)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamFailed(f"reward endpoint failed: {type(exc).__name__}") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt_tokens = int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
        return RewardReply(_reward_scores(endpoint, data, len(answers)), Usage(prompt_tokens, 0))


def messages_to_prompt(messages: Sequence[Message]) -> str:
    """A text-completion prompt from the message list a variant produced."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content:
            parts.append(str(content))
    return "\n\n".join(parts)


def _batch(result: Choices) -> Batch:
    samples = []
    for choice in result.choices:
        message = choice.get("message") or {"role": "assistant", "content": choice.get("text", "")}
        samples.append(
            Sample(message, choice.get("finish_reason"), token_logprobs(choice.get("logprobs")), choice.get("logprobs"))
        )
    return Batch(samples, result.usage, result.errors)


def _conversation(messages: Sequence[Message]) -> str:
    return "\n".join(f"{m.get('role')}: {messages_to_prompt([m])}" for m in messages)


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
