"""How a request and its candidates are shown to a text-only verifier (a judge, a reward model).

Tool calls are shown as their function name and canonical JSON arguments, so a judge sees what
the candidate would do rather than an empty string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strategies.answers import one_call_key
from strategies.contract import Candidate, Message, content_text


def tool_calls_text(tool_calls: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"[tool call] {one_call_key(call)}" for call in tool_calls)


def render_message(message: Message) -> str:
    role = str(message.get("role", "user"))
    parts = [content_text(message.get("content"), mark_attachments=True)]  # an image the judge cannot see
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
