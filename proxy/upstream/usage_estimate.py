"""Token counts for an answer whose upstream reported none.

Some OpenAI-compatible servers ignore `stream_options.include_usage` or leave `usage` out; the
proxy still charges keys and budgets in tokens, so it counts what it can see. litellm counted
with OpenAI's tokenizer, which is itself only a guess for any other model; without litellm (and
with no tokenizer file to fetch offline) the count is OpenAI's rule of thumb, about four
characters of English a token, rounded up, and at least one token for any text at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

CHARS_PER_TOKEN = 4

__all__ = ["CHARS_PER_TOKEN", "completion_chars", "prompt_tokens", "tokens"]


def tokens(chars: int) -> int:
    """Tokens for `chars` characters of text: ceil(chars / 4), 0 for none."""
    return -(-chars // CHARS_PER_TOKEN)


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's input as tokens: its messages' text (and tool calls), its prompt, or its input."""
    if "messages" in body:
        return sum(tokens(len(_message_text(m))) for m in body["messages"] if isinstance(m, dict))
    value = body.get("prompt", body.get("input"))
    if isinstance(value, str):
        return tokens(len(value))
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # token ids already
        return sum(tokens(len(v)) if isinstance(v, str) else len(v) if isinstance(v, list) else 0 for v in value)
    return 0


def completion_chars(choices: Iterable[Any]) -> int:
    """Characters of answer in one response's choices or one chunk's: content, text, refusals
    and tool-call arguments, for chat messages, chat deltas and text choices alike."""
    total = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            total += len(choice["text"])
        part = choice.get("delta") or choice.get("message")
        if isinstance(part, dict):
            total += len(_message_text(part))
    return total


def _message_text(message: dict[str, Any]) -> str:
    pieces: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        pieces.append(content)
    elif isinstance(content, list):
        pieces += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    for key in ("refusal", "reasoning_content"):
        if isinstance(message.get(key), str):
            pieces.append(message[key])
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            pieces += [v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)]
    if isinstance(message.get("function_call"), dict):
        pieces.append(json.dumps(message["function_call"]))
    return "".join(pieces)
