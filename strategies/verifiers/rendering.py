"""How a request and its candidates are shown to a text-only verifier (a judge, a reward model).

Tool calls are shown as their function name and canonical JSON arguments, so a judge sees what
the candidate would do rather than an empty string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from strategies.answers import one_call_key
from strategies.contract import Candidate, Message


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                texts.append(f"[{part.get('type', 'attachment')}]")  # an image the judge cannot see
        return "\n".join(texts)
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False)


def tool_calls_text(tool_calls: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"[tool call] {one_call_key(call)}" for call in tool_calls)


def render_message(message: Message) -> str:
    role = str(message.get("role", "user"))
    parts = [content_text(message.get("content"))]
    if message.get("tool_calls"):
        parts.append(tool_calls_text(message["tool_calls"]))
    body = "\n".join(p for p in parts if p)
    if role == "tool":
        role = f"tool result ({message.get('tool_call_id', '')})"
    return f"[{role}]\n{body}"


def render_conversation(messages: Sequence[Message]) -> str:
    return "\n\n".join(render_message(m) for m in messages)


def render_candidate(candidate: Candidate) -> str:
    """The candidate's text, followed by its tool calls if it makes any."""
    parts = [candidate.text.strip()]
    if candidate.tool_calls:
        parts.append(tool_calls_text(candidate.tool_calls))
    return "\n".join(p for p in parts if p)
