"""Chat rendering for the embedded base model: pure text, no llama.cpp needed."""

from __future__ import annotations

from proxy.upstream.chat_prompt import FORMAT, RenderedPrompt, content_text, render_chat


def test_render_single_user() -> None:
    r = render_chat([{"role": "user", "content": "What is 2+3?"}])
    assert isinstance(r, RenderedPrompt)
    assert r.prompt == "Question: What is 2+3?\nAnswer:"
    assert "\nQuestion:" in r.stop


def test_render_system_multi_turn_and_parts() -> None:
    r = render_chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"},
        ]
    )
    assert r.prompt == "Be brief.\n\nQuestion: Hi\nthere\nAnswer: Hello.\nQuestion: 2+2?\nAnswer:"


def test_render_tools_and_prefill() -> None:
    r = render_chat(
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "w", "arguments": '{"c":"Oslo"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": "rain"},
            {"role": "assistant", "content": "It is"},
        ]
    )
    assert r.prompt == 'Question: Weather?\nAnswer: Call: w({"c":"Oslo"})\nResult: rain\nAnswer: It is'


def test_content_text_non_text_parts() -> None:
    assert content_text(None) == ""
    assert content_text([{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "hi"}]) == "[image_url]\nhi"


def test_stops_cover_every_label() -> None:
    stops = FORMAT.stops()
    for label in (FORMAT.user, FORMAT.assistant, FORMAT.tool, FORMAT.call):
        assert f"\n{label}:" in stops
