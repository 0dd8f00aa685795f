"""The two OpenAI generation endpoints as data: what differs between chat and text completion.

Everything else in the proxy is written once against `Endpoint`: the request model and the
parameters litellm takes by name, the object and chunk names, the id prefix, how the client's
input reaches the upstream, and how a chosen candidate is rendered as a choice or as chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from proxy.pipeline.requests import CHAT_PARAMS, TEXT_PARAMS, ChatRequest, CompletionRequest, RequestBody
from proxy.upstream.client import Choices, UpstreamClient
from strategies.contract import Candidate, Message, content_text

CONTENT_PIECE = 64  # characters per content chunk when replaying a chosen answer


@dataclass(frozen=True)
class Endpoint:
    name: str  # the log line's `endpoint`
    path: str
    request_model: type[RequestBody]
    params: frozenset[str]  # parameters litellm takes by name; the rest ride in `extra_body`
    object: str
    chunk_object: str
    id_prefix: str
    logprobs_on: ClassVar[Any]  # the parameter value that asks the upstream for logprobs

    def messages(self, body: Any) -> list[Message]:
        """The client's input as a conversation, the form every strategy works on."""
        raise NotImplementedError

    def client_input(self, body: Any) -> Any:
        """The client's input exactly as sent: what passthrough forwards, and what may be logged."""
        raise NotImplementedError

    def single_input(self, body: Any) -> bool:
        """Whether the input is one conversation or one prompt (not a batch of prompts)."""
        return self.input_count(body) == 1

    def input_count(self, body: Any) -> int:
        """How many independent inputs the body holds; each gets `n` choices upstream."""
        return 1

    async def call(self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int, draw: int = 0) -> Choices:
        """`n` choices; `draw` samples of this request came before (a seed moves by it)."""
        raise NotImplementedError

    def stream(
        self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int
    ) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    def upstream_input(self, messages: Sequence[Message]) -> Any:
        """What `call` sends for a (possibly rewritten) conversation."""
        raise NotImplementedError

    def choice(self, candidate: Candidate) -> dict[str, Any]:
        """The part of a non-streamed choice that carries the answer."""
        raise NotImplementedError

    def pieces(self, candidate: Candidate, index: int) -> list[dict[str, Any]]:
        """A chosen answer as streamed choices, before the final one."""
        raise NotImplementedError

    def final_piece(self, candidate: Candidate, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def text_piece(self, text: str, index: int) -> dict[str, Any]:
        """One streamed choice adding `text` to the answer."""
        raise NotImplementedError


def _slices(text: str) -> list[str]:
    return [text[i : i + CONTENT_PIECE] for i in range(0, len(text), CONTENT_PIECE)]


class ChatEndpoint(Endpoint):
    logprobs_on = True

    def messages(self, body: ChatRequest) -> list[Message]:
        return cast(list[Message], body.messages)  # validated TypedDicts are the plain dicts

    def client_input(self, body: ChatRequest) -> Any:
        return body.messages

    async def call(self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int, draw: int = 0) -> Choices:
        return await upstream.chat(input, params, n, draw)

    def stream(
        self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int
    ) -> AsyncIterator[dict[str, Any]]:
        return upstream.stream_chat(input, params, n)

    def upstream_input(self, messages: Sequence[Message]) -> Any:
        return messages

    def choice(self, candidate: Candidate) -> dict[str, Any]:
        # A message the proxy wrote (a fused answer, an abstention) gets the fields OpenAI always
        # sends, as the upstream client gives an upstream's (`proxy.upstream.client._clean_chat_choice`).
        return {"message": {"role": "assistant", "content": None, "refusal": None} | candidate.message}

    def pieces(self, candidate: Candidate, index: int) -> list[dict[str, Any]]:
        pieces = [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        pieces += [self.text_piece(piece, index) for piece in _slices(candidate.text)]
        calls = candidate.tool_calls
        if calls:  # tool calls stay structured: one delta with every call, indexed as OpenAI does
            deltas = [{"index": k, **call} for k, call in enumerate(calls)]
            pieces.append({"index": index, "delta": {"tool_calls": deltas}, "finish_reason": None})
        return pieces

    def final_piece(self, candidate: Candidate, index: int) -> dict[str, Any]:
        return {"index": index, "delta": {}, "finish_reason": candidate.finish_reason or "stop"}

    def text_piece(self, text: str, index: int) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "finish_reason": None}


class TextEndpoint(Endpoint):
    logprobs_on = 1

    def messages(self, body: CompletionRequest) -> list[Message]:
        return [{"role": "user", "content": body.prompt}] if isinstance(body.prompt, str) else []

    def client_input(self, body: CompletionRequest) -> Any:
        return body.prompt

    def input_count(self, body: CompletionRequest) -> int:
        prompt = body.prompt
        # A list of strings (or of token arrays) is a batch; a flat list of token ids is one prompt.
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return len(prompt)
        return 1

    async def call(self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int, draw: int = 0) -> Choices:
        return await upstream.complete(input, params, n, draw)

    def stream(
        self, upstream: UpstreamClient, input: Any, params: dict[str, Any], n: int
    ) -> AsyncIterator[dict[str, Any]]:
        return upstream.stream_text(input, params, n)

    def upstream_input(self, messages: Sequence[Message]) -> Any:
        # A variant may add a system message or rewrite the prompt: the text model reads them
        # all, in order, as paragraphs.
        return "\n\n".join(text for m in messages if (text := content_text(m.get("content"))))

    def choice(self, candidate: Candidate) -> dict[str, Any]:
        return {"text": candidate.text}

    def pieces(self, candidate: Candidate, index: int) -> list[dict[str, Any]]:
        return [self.text_piece(piece, index) for piece in _slices(candidate.text)]

    def final_piece(self, candidate: Candidate, index: int) -> dict[str, Any]:
        return {"index": index, "text": "", "finish_reason": candidate.finish_reason or "stop"}

    def text_piece(self, text: str, index: int) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": None}


CHAT = ChatEndpoint(
    name="chat",
    path="/v1/chat/completions",
    request_model=ChatRequest,
    params=CHAT_PARAMS,
    object="chat.completion",
    chunk_object="chat.completion.chunk",
    id_prefix="chatcmpl",
)
TEXT = TextEndpoint(
    name="text",
    path="/v1/completions",
    request_model=CompletionRequest,
    params=TEXT_PARAMS,
    object="text_completion",
    chunk_object="text_completion",
    id_prefix="cmpl",
)
ENDPOINTS = (CHAT, TEXT)
