"""Prompt variants: other ways of asking the same question (the prompt term of the method, §3).

Every variant is a deterministic rewrite of the client's chat messages that keeps their meaning.
Only the text of the last user message (and, for some, the system message) is rewritten: images
and other content parts, tool messages and assistant tool calls pass through untouched, because
agent clients stall when tool structure is lost (optillm #312).

Variants are built once per route and shared by concurrent requests, so they hold no per-request
state; the sampling loop should render each variant once per request and reuse the messages.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from strategies.best_of_n.settings import VariantTemplate
from strategies.contract import Message, Services, Usage, content_text, shot_pairs

STEP_BY_STEP = "{prompt}\n\nLet's think step by step."
REREAD = "{prompt}\n\nRead the question again: {prompt}"
FORMAT_REMINDER = (
    "{prompt}\n\nWhen you are done, end your reply with a final line of the form "
    '"The answer is X", where X is your final answer.'
)
EXPERT_SYSTEM = (
    "You are a world-class expert in the subject of the user's request. Reason carefully, "
    "check your work, and give an accurate, complete answer."
)
PARAPHRASE_SYSTEM = (
    "Rewrite the user's text so that it asks exactly the same thing in different words. Keep "
    "every fact, number, name, constraint and required output format. Do not answer it, do not "
    "add or drop anything, and do not add commentary: reply with the rewritten text only."
)

BUILTIN_VARIANTS: tuple[str, ...] = (
    "original",
    "step_by_step",
    "reread",
    "expert",
    "format_reminder",
    "paraphrase",
)

PROMPT = "{prompt}"
# `shuffle_shots`, `shuffle_shots_2`, ...: the request's few-shot examples reordered;
# `resample_shots[_N]`: reordered, and one example left out when there are at least three.
FEW_SHOT_VARIANT = re.compile(r"^(shuffle|resample)_shots(?:_\d{1,3})?$")


class Variant(Protocol):
    @property
    def name(self) -> str: ...

    async def render(
        self, messages: Sequence[Message], services: Services
    ) -> tuple[list[Message], Usage]: ...


@dataclass(frozen=True)
class TemplateVariant:
    """Rewrites the last user message with a `{prompt}` template and/or adds a system prompt.

    All built-in deterministic variants are instances of this, so they share one tested path.
    """

    name: str
    template: str | None = None
    system: str | None = None

    async def render(
        self, messages: Sequence[Message], services: Services
    ) -> tuple[list[Message], Usage]:
        return self.apply(messages), Usage()

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        out = copy.deepcopy(list(messages))
        if self.template is not None:
            _rewrite_last_user(out, self.template)
        if self.system is not None:
            out = _merge_system(out, self.system)
        return out


@dataclass(frozen=True)
class ParaphraseVariant:
    """The last user message reworded by an LLM at temperature 0.

    A failed or empty paraphrase falls back to the original messages: a variant must never cost
    the client an answer. The call's usage is returned either way, because it was spent.
    """

    upstream: str
    name: str = "paraphrase"

    async def render(
        self, messages: Sequence[Message], services: Services
    ) -> tuple[list[Message], Usage]:
        out = copy.deepcopy(list(messages))
        index = _last_user_index(out)
        if index is None:
            return out, Usage()
        text = content_text(out[index].get("content"))
        if not text.strip():
            return out, Usage()
        request = [
            {"role": "system", "content": PARAPHRASE_SYSTEM},
            {"role": "user", "content": text},
        ]
        try:
            reply = await services.chat(self.upstream, request, temperature=0)
        except Exception:  # noqa: BLE001 - any upstream failure means "use the original"
            return out, Usage()
        paraphrased = _clean_paraphrase(reply.text)
        if not paraphrased:
            return out, reply.usage
        out[index] = {
            **out[index],
            "content": _replace_text(out[index].get("content"), paraphrased),
        }
        return out, reply.usage


@dataclass(frozen=True)
class FewShotVariant:
    """The request's own few-shot examples (user/assistant pairs before the question) in
    another order, or with one left out; everything else as sent.

    A small model often copies a few-shot answer (the last one most). Across variants that
    see the examples in different orders, a copied answer changes, so it splits into several
    small clusters, while the right answer, which does not depend on the order, stays one.
    The order is fixed by the variant's name (a hash of it seeds the shuffle), so the same
    request renders the same way every time. A chat with fewer than two examples is left as is.
    """

    name: str
    drop_one: bool = False

    async def render(self, messages: Sequence[Message], services: Services) -> tuple[list[Message], Usage]:
        return self.apply(messages), Usage()

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        out = copy.deepcopy(list(messages))
        slots = shot_pairs(out)
        if len(slots) < 2:
            return out
        rng = random.Random(int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "big"))
        order = list(range(len(slots)))
        rng.shuffle(order)
        if order == sorted(order):  # a variant that changes nothing would be wasted samples
            order = order[1:] + order[:1]
        if self.drop_one and len(order) >= 3:
            order.pop(rng.randrange(len(order)))
        sources = [slots[j] for j in order]
        placed = {u: [out[su], out[sa]] for (u, _), (su, sa) in zip(slots, sources, strict=False)}
        in_slots = {i for slot in slots for i in slot}
        rebuilt: list[Message] = []
        for i, message in enumerate(out):
            if i not in in_slots:
                rebuilt.append(message)
            else:  # an example's turns: its slot's new pair, or nothing past the kept examples
                rebuilt.extend(placed.get(i, []))
        return rebuilt


def build_variants(
    specs: Sequence[str | VariantTemplate | dict[str, Any]], paraphrase_upstream: str | None
) -> list[Variant]:
    """Variants for a route's config, in config order. Raises ValueError naming a bad entry."""
    variants: list[Variant] = []
    seen: set[str] = set()
    for position, spec in enumerate(specs):
        variant = _build_one(spec, position, paraphrase_upstream)
        if variant.name in seen:
            raise ValueError(f"variants[{position}]: duplicate variant name {variant.name!r}")
        seen.add(variant.name)
        variants.append(variant)
    return variants


def _build_one(
    spec: str | VariantTemplate | dict[str, Any], position: int, paraphrase_upstream: str | None
) -> Variant:
    if isinstance(spec, dict):
        spec = VariantTemplate.model_validate(spec)
    if isinstance(spec, VariantTemplate):
        if spec.name in BUILTIN_VARIANTS or FEW_SHOT_VARIANT.match(spec.name):
            raise ValueError(
                f"variants[{position}]: template name {spec.name!r} is a built-in variant name"
            )
        return TemplateVariant(spec.name, spec.template, spec.system)
    if not isinstance(spec, str):
        raise ValueError(f"variants[{position}]: expected a name or a template, got {spec!r}")
    if spec == "original":
        return TemplateVariant("original")
    if spec == "step_by_step":
        return TemplateVariant("step_by_step", template=STEP_BY_STEP)
    if spec == "reread":
        return TemplateVariant("reread", template=REREAD)
    if spec == "expert":
        return TemplateVariant("expert", system=EXPERT_SYSTEM)
    if spec == "format_reminder":
        return TemplateVariant("format_reminder", template=FORMAT_REMINDER)
    shots = FEW_SHOT_VARIANT.match(spec)
    if shots:
        return FewShotVariant(spec, drop_one=shots.group(1) == "resample")
    if spec == "paraphrase":
        if not paraphrase_upstream:
            raise ValueError(
                f"variants[{position}]: 'paraphrase' needs `paraphrase_upstream` to be set"
            )
        return ParaphraseVariant(paraphrase_upstream)
    raise ValueError(
        f"variants[{position}]: unknown variant {spec!r}; known: {', '.join(BUILTIN_VARIANTS)}, "
        "shuffle_shots[_N], resample_shots[_N]"
    )


def _last_user_index(messages: Sequence[Message]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return None


def _rewrite_last_user(messages: list[Message], template: str) -> None:
    index = _last_user_index(messages)
    if index is None:
        return
    message = messages[index]
    content = message.get("content")
    text = content_text(content)
    if isinstance(content, list):
        # Put the template's text around the existing parts instead of flattening them, so
        # images keep their place; any later {prompt} is the joined text of the message.
        prefix, _, rest = template.partition(PROMPT)
        suffix = rest.replace(PROMPT, text)
        parts = list(content)
        if prefix:
            parts.insert(0, {"type": "text", "text": prefix})
        if suffix:
            parts.append({"type": "text", "text": suffix})
        messages[index] = {**message, "content": parts}
    else:
        # str.replace, not str.format: user text and templates may contain braces (JSON, code).
        messages[index] = {**message, "content": template.replace(PROMPT, text)}


def _merge_system(messages: list[Message], system: str) -> list[Message]:
    """Add `system` to the leading system/developer message, or insert one; never twice."""
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        content = first.get("content")
        if system in content_text(content):
            return messages
        if isinstance(content, list):
            merged: Any = [*content, {"type": "text", "text": system}]
        elif content:
            merged = f"{content}\n\n{system}"
        else:
            merged = system
        return [{**first, "content": merged}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def _replace_text(content: Any, text: str) -> Any:
    """Content with its text replaced; non-text parts keep their order."""
    if not isinstance(content, list):
        return text
    parts: list[Any] = []
    placed = False
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            if not placed:
                parts.append({**part, "text": text})
                placed = True
            continue
        parts.append(part)
    if not placed:
        parts.append({"type": "text", "text": text})
    return parts


def _clean_paraphrase(text: str) -> str:
    cleaned = (text or "").strip()
    if len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in "\"'":
        cleaned = cleaned[1:-1].strip()
    return cleaned
