"""Prompt variants: same meaning, other wording; structure and input never damaged."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

import pytest

from strategies.best_of_n.settings import VariantTemplate
from strategies.best_of_n.variants import BUILTIN_VARIANTS, EXPERT_SYSTEM, build_variants
from strategies.contract import Batch, Message, Reply, RewardReply, Usage


class FakeServices:
    """Scripted services: `chat` returns the queued replies in order (or raises them)."""

    def __init__(self, replies: Sequence[Reply | Exception] = ()) -> None:
        self.replies = list(replies)
        self.chat_calls: list[tuple[str, list[Message], dict[str, Any]]] = []

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        raise AssertionError("variants never generate")

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        self.chat_calls.append((upstream, list(messages), params))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def reward(
        self, endpoint: Any, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        raise AssertionError("variants never call a reward model")


def render(
    name: str | VariantTemplate,
    messages: list[Message],
    services: FakeServices | None = None,
    paraphrase_upstream: str | None = None,
) -> tuple[list[Message], Usage]:
    (variant,) = build_variants([name], paraphrase_upstream)
    return asyncio.run(variant.render(messages, services or FakeServices()))


TOOL_CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "lookup", "arguments": '{"q": "x"}'},
}


def conversation() -> list[Message]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"result": 4}'},
        {"role": "user", "content": 'And 3+3? Reply as {"n": N}.'},
    ]


def test_builtin_names() -> None:
    assert set(BUILTIN_VARIANTS) == {
        "original",
        "step_by_step",
        "reread",
        "expert",
        "format_reminder",
        "paraphrase",
    }


def test_original_is_an_equal_copy() -> None:
    messages = conversation()
    out, usage = render("original", messages)
    assert out == messages and out is not messages and out[1] is not messages[1]
    assert usage == Usage()


@pytest.mark.parametrize("name", ["step_by_step", "reread", "format_reminder", "expert"])
def test_never_mutates_input_and_keeps_tool_structure(name: str) -> None:
    messages = conversation()
    before = copy.deepcopy(messages)
    out, _ = render(name, messages)
    assert messages == before
    # the assistant tool call and the tool result pass through exactly
    tool_turns = [m for m in out if m["role"] in ("tool", "assistant")]
    assert tool_turns == [before[2], before[3]]


def test_step_by_step_appends_to_last_user_only() -> None:
    out, _ = render("step_by_step", conversation())
    assert out[1]["content"] == "What is 2+2?"
    assert out[-1]["content"].startswith(
        'And 3+3? Reply as {"n": N}.'
    )  # braces survive (no str.format)
    assert out[-1]["content"].endswith("Let's think step by step.")


def test_reread_repeats_the_question() -> None:
    out, _ = render("reread", [{"role": "user", "content": "Q?"}])
    assert out == [{"role": "user", "content": "Q?\n\nRead the question again: Q?"}]


def test_format_reminder_asks_for_the_answer_line() -> None:
    out, _ = render("format_reminder", [{"role": "user", "content": "Q?"}])
    assert out[0]["content"].startswith("Q?") and "The answer is X" in out[0]["content"]


def test_expert_merges_into_existing_system_without_duplicating() -> None:
    out, _ = render("expert", conversation())
    systems = [m for m in out if m["role"] == "system"]
    assert len(systems) == 1 and out[0]["role"] == "system"
    assert systems[0]["content"].startswith("Be brief.") and EXPERT_SYSTEM in systems[0]["content"]
    again, _ = render("expert", out)
    assert again == out  # applying twice adds nothing


def test_expert_inserts_system_when_absent_and_merges_with_list_content() -> None:
    out, _ = render("expert", [{"role": "user", "content": "hi"}])
    assert out == [{"role": "system", "content": EXPERT_SYSTEM}, {"role": "user", "content": "hi"}]
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
        {"role": "user", "content": "hi"},
    ]
    out, _ = render("expert", parts)
    assert out[0]["role"] == "developer"
    assert out[0]["content"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": EXPERT_SYSTEM},
    ]


def test_content_parts_keep_images_in_place() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is shown?"}, image]}]
    out, _ = render("reread", messages)
    parts = out[0]["content"]
    assert parts[:2] == messages[0]["content"]
    assert parts[2] == {"type": "text", "text": "\n\nRead the question again: What is shown?"}
    assert messages[0]["content"] == [{"type": "text", "text": "What is shown?"}, image]


def test_user_template_with_prefix_on_content_parts() -> None:
    template = VariantTemplate(name="exam", template="Exam question:\n{prompt}\nBe exact.")
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    out, _ = render(
        template, [{"role": "user", "content": [image, {"type": "text", "text": "Count."}]}]
    )
    assert out[0]["content"] == [
        {"type": "text", "text": "Exam question:\n"},
        image,
        {"type": "text", "text": "Count."},
        {"type": "text", "text": "\nBe exact."},
    ]


def test_user_template_string_and_system() -> None:
    template = VariantTemplate(name="tutor", template="Solve: {prompt}", system="You are a tutor.")
    out, usage = render(template, [{"role": "user", "content": "x={y}"}])
    assert out == [
        {"role": "system", "content": "You are a tutor."},
        {"role": "user", "content": "Solve: x={y}"},
    ]
    assert usage == Usage()
    (variant,) = build_variants([template], None)
    assert variant.name == "tutor"


def test_system_only_template_leaves_user_text() -> None:
    out, _ = render(
        VariantTemplate(name="calm", system="Stay calm."), [{"role": "user", "content": "Q"}]
    )
    assert out == [{"role": "system", "content": "Stay calm."}, {"role": "user", "content": "Q"}]


def test_no_user_message_is_left_alone() -> None:
    messages = [{"role": "system", "content": "s"}]
    assert render("step_by_step", messages)[0] == messages


def test_template_dict_is_validated() -> None:
    (variant,) = build_variants([{"name": "d", "template": "{prompt}!"}], None)
    assert variant.name == "d"


# --- paraphrase -----------------------------------------------------------------------------


def test_paraphrase_calls_the_upstream_at_temperature_zero_and_returns_usage() -> None:
    services = FakeServices([Reply('"What is three plus three?"', Usage(20, 7))])
    messages = conversation()
    before = copy.deepcopy(messages)
    out, usage = render("paraphrase", messages, services, paraphrase_upstream="para")
    assert usage == Usage(20, 7)
    assert out[-1]["content"] == "What is three plus three?"
    assert out[:-1] == before[:-1] and messages == before
    ((upstream, sent, params),) = services.chat_calls
    assert upstream == "para" and params == {"temperature": 0}
    assert sent[-1]["content"] == before[-1]["content"]


@pytest.mark.parametrize("reply", [Reply("   ", Usage(5, 1)), RuntimeError("upstream down")])
def test_failed_or_empty_paraphrase_falls_back_to_original(reply: Reply | Exception) -> None:
    messages = conversation()
    out, usage = render("paraphrase", messages, FakeServices([reply]), paraphrase_upstream="para")
    assert out == messages
    assert usage == (Usage(5, 1) if isinstance(reply, Reply) else Usage())


def test_paraphrase_replaces_only_text_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                image,
                {"type": "text", "text": "briefly"},
            ],
        }
    ]
    services = FakeServices([Reply("Give a short description", Usage(3, 4))])
    out, _ = render("paraphrase", messages, services, paraphrase_upstream="p")
    assert out[0]["content"] == [{"type": "text", "text": "Give a short description"}, image]
    assert services.chat_calls[0][1][-1]["content"] == "Describe\nbriefly"


# --- build errors ---------------------------------------------------------------------------


def test_unknown_variant_is_named() -> None:
    with pytest.raises(ValueError, match=r"variants\[1\].*'shout'"):
        build_variants(["original", "shout"], None)


def test_paraphrase_without_upstream_is_refused() -> None:
    with pytest.raises(ValueError, match="paraphrase_upstream"):
        build_variants(["paraphrase"], None)


def test_duplicates_and_builtin_name_clashes_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        build_variants(["reread", "reread"], None)
    with pytest.raises(ValueError, match="built-in"):
        build_variants([VariantTemplate(name="original", template="{prompt}")], None)


def test_build_keeps_config_order() -> None:
    names = [v.name for v in build_variants(list(BUILTIN_VARIANTS), "p")]
    assert names == list(BUILTIN_VARIANTS)
