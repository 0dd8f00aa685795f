"""Render OpenAI chat messages to one plain-text prompt for a *base* (not instruction-tuned) model.

Why: the embedded Gemma 3 270M is a base model. Asked through llama.cpp's chat endpoint it
returns empty text, so chat requests are served by text completion on a rendered transcript.

The transcript format (chosen by measuring, see `FORMAT` below):

    <system text, if any>
    <blank line>
    Question: <user text>
    Answer: <assistant text>
    Question: <user text>
    Answer:

- System and developer messages go first, in order, joined by blank lines: a base model reads
  them as a preamble.
- `user` turns are rendered as "Question:", `assistant` turns as "Answer:". Tool results
  are shown as "Result:" lines and an assistant's tool calls as "Call: name(arguments)" lines,
  so nothing the client sent is silently dropped.
- The prompt ends with "Answer:" (no trailing space: the model's first token carries the
  space, which is how such text appears in training data).
- `stop` cuts generation where the model starts inventing the next turn, which a base model
  does almost immediately after answering.

Content-part lists (`[{"type": "text", "text": ...}, ...]`) are joined to text; non-text parts
(images, audio) are replaced by a short placeholder because this model cannot see them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from strategies.contract import content_text as message_content_text

__all__ = ["FORMAT", "RenderedPrompt", "TranscriptFormat", "content_text", "render_chat"]


@dataclass(frozen=True)
class RenderedPrompt:
    prompt: str
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TranscriptFormat:
    """Labels of one transcript style; kept as data so alternatives can be measured side by side."""

    user: str
    assistant: str
    tool: str = "Result"
    call: str = "Call"

    def stops(self) -> list[str]:
        # A newline followed by any turn label means the model has started a new turn. Tool and
        # call labels are included because a base model may hallucinate those too.
        labels = (self.user, self.assistant, self.tool, self.call)
        seen: list[str] = []
        for label in labels:
            stop = f"\n{label}:"
            if stop not in seen:
                seen.append(stop)
        return seen


# Measured with the embedded model on 30 random 1-digit additions ("What is a + b?"), greedy,
# max_tokens 16, answer = the number after "=" in the first line, else its first number:
#   Question/Answer 19/30, Q/A 9/30, User/Assistant 7/30, Human/AI 7/30 (no system message);
#   17, 15, 15, 14 of 30 with the system message "Answer the question correctly and briefly."
# The base model continues "Question:/Answer:" text most like an exam sheet, which is what
# short questions want.
FORMAT = TranscriptFormat(user="Question", assistant="Answer")


def content_text(content: Any) -> str:
    """The text a base model reads: attachments it cannot see are named, not dropped."""
    return message_content_text(content, mark_attachments=True)


def _tool_calls_text(message: Mapping[str, Any], fmt: TranscriptFormat) -> list[str]:
    lines: list[str] = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, Mapping) else {}
        name = function.get("name", "")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        lines.append(f"{fmt.call}: {name}({arguments})")
    legacy = message.get("function_call")  # pre-tools API
    if isinstance(legacy, Mapping):
        lines.append(f"{fmt.call}: {legacy.get('name', '')}({legacy.get('arguments', '')})")
    return lines


def render_chat(messages: Sequence[Mapping[str, Any]], fmt: TranscriptFormat = FORMAT) -> RenderedPrompt:
    """Render chat `messages` to a prompt ending with the assistant label, plus stop sequences.

    If the last message is an assistant message, it is treated as a prefix to continue
    (prefill): the prompt ends with its text instead of a fresh "Answer:".
    """
    preamble: list[str] = []
    turns: list[str] = []
    prefill: str | None = None
    for i, message in enumerate(messages):
        role = str(message.get("role", "user"))
        text = content_text(message.get("content")).strip()
        if role in ("system", "developer"):
            # System text anywhere goes to the preamble: a base model has no other way to
            # treat it as instructions, and mid-transcript system lines just confuse it.
            if text:
                preamble.append(text)
        elif role == "assistant":
            parts = [text] if text else []
            calls = _tool_calls_text(message, fmt)
            if i == len(messages) - 1 and not calls:
                prefill = text
                continue
            body = "\n".join(parts + calls)
            turns.append(f"{fmt.assistant}: {body}".rstrip())
        elif role in ("tool", "function"):
            turns.append(f"{fmt.tool}: {text}".rstrip())
        else:  # "user" and anything unknown: the client's words
            turns.append(f"{fmt.user}: {text}".rstrip())

    if prefill is not None:
        turns.append(f"{fmt.assistant}: {prefill}" if prefill else f"{fmt.assistant}:")
    else:
        turns.append(f"{fmt.assistant}:")

    prompt = "\n".join(turns)
    if preamble:
        prompt = "\n\n".join(preamble) + "\n\n" + prompt
    return RenderedPrompt(prompt=prompt, stop=fmt.stops())
