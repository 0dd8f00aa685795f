"""A scripted stand-in for litellm behind `UpstreamClient`, as httpx's `MockTransport` is for a client.

    transport = FakeTransport(lambda call: chat_reply("hi"))
    client = UpstreamClient(settings, Redactor([]), transport=transport)

The handler sees each call (its kind and the kwargs litellm would get) and returns the response
(a plain OpenAI-shaped dict) or an exception, which the transport raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    kind: str  # "chat", "text" or "embed"
    kwargs: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.kwargs.get("n") or 1)


Handler = Callable[[Call], Any]


@dataclass
class FakeTransport:
    handler: Handler
    turns: int = 0  # event-loop turns each call holds, so that parallel calls overlap
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def acompletion(self, **kwargs: Any) -> Any:
        return await self._call("chat", kwargs)

    async def atext_completion(self, **kwargs: Any) -> Any:
        return await self._call("text", kwargs)

    async def aembedding(self, **kwargs: Any) -> Any:
        return await self._call("embed", kwargs)

    async def _call(self, kind: str, kwargs: dict[str, Any]) -> Any:
        call = Call(kind, kwargs)
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(self.turns):
                await asyncio.sleep(0)
            result = self.handler(call)
        finally:
            self.in_flight -= 1
        if isinstance(result, BaseException):
            raise result
        return result


def script(*steps: Any) -> Handler:
    """A handler answering the k-th call with `steps[k]` (the last step repeats)."""
    remaining = list(steps)

    def handle(call: Call) -> Any:
        step = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return step(call) if callable(step) else step

    return handle


def chat_reply(*contents: str, prompt_tokens: int = 10, completion_tokens: int = 2) -> dict[str, Any]:
    """A chat completion with one choice per content; usage as an upstream would report it."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * len(contents)},
    }


def text_reply(*texts: str, usage: Any = None) -> dict[str, Any]:
    return {"choices": [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)], "usage": usage}


def chunks(contents: Iterable[str], cut: BaseException | None = None) -> Any:
    """A streamed chat answer, one chunk per piece; `cut` is raised instead of the end."""

    async def stream() -> Any:
        for piece in contents:
            yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
        if cut is not None:
            raise cut

    return stream()
