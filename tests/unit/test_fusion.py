"""Fusion (issue 23): a fuser writes the answer from the top clusters, scored like a candidate,
measured against selection on gold, and never trusted blindly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings
from strategies.contract import Batch, Candidate, Message, Outcome, Sample, StrategyRequest, StreamEnd, Usage
from strategies.selection.fusion import FusionGain, fusion_messages, shown_answers
from strategies.selection.settings import FusionSettings
from strategies.verifiers import build_verifiers

QUESTION = "What is 6 times 7?"


class FusionServices:
    """Candidates hand out `texts` in order; the fuser (any call naming an upstream) answers `fused`."""

    def __init__(self, texts: Sequence[str], fused: str | Exception = "The answer is 42.") -> None:
        self.texts = list(texts)
        self.fused = fused
        self.fuser_prompts: list[list[Message]] = []

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        if upstream == "fuse":
            self.fuser_prompts.append(list(messages))
            if isinstance(self.fused, Exception):
                raise self.fused
            return Batch([Sample({"role": "assistant", "content": self.fused}, "stop")], Usage(50, 7))
        taken, self.texts = self.texts[:n], self.texts[n:]
        return Batch([Sample({"role": "assistant", "content": t}, "stop") for t in taken], Usage(5, len(taken)))

    async def chat_stream(self, upstream: str, messages: Sequence[Message]) -> AsyncIterator[str | StreamEnd]:
        self.fuser_prompts.append(list(messages))
        assert isinstance(self.fused, str)
        for word in self.fused.split(" "):
            yield word + " "
        yield StreamEnd(Usage(50, 7), "length")


class _Original:
    name = "original"

    async def render(self, messages: Sequence[Message], services: object) -> tuple[list[Message], Usage]:
        return list(messages), Usage()


def route(fusion: dict[str, Any] | None = None, **settings: Any) -> BestOfN:
    parsed = BestOfNSettings.model_validate({
        "max_n": 4, "adaptive": False, "verifiers": [{"type": "self_consistency"}],
        "selection": {"fusion": {"fuser": "fuse", "when": "always", **(fusion or {})}}, **settings,
    })
    return BestOfN(parsed, build_verifiers(parsed.verifiers), [_Original()], rng=lambda: np.random.default_rng(3))


def ask(strategy: BestOfN, services: FusionServices, **request: Any) -> Outcome:
    work = StrategyRequest([{"role": "user", "content": QUESTION}], **request)
    return asyncio.run(strategy.run(work, services))  # type: ignore[arg-type]


def test_the_fuser_reads_the_question_and_numbered_answers_with_braces_kept() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "format {x}?"}]
    prompt = fusion_messages(messages, ['{"a": 1}', "b"], None)
    assert prompt[0] == {"role": "system", "content": "be brief"}
    text = prompt[-1]["content"]
    assert text.startswith("format {x}?") and 'Candidate 1:\n{"a": 1}' in text and "Candidate 2:\nb" in text
    tricky = fusion_messages([{"role": "user", "content": "say {answers}"}], ["x"], None)[-1]["content"]
    assert tricky.startswith("say {answers}\n") and tricky.count("Candidate 1:") == 1  # the question stays as asked
    custom = fusion_messages(messages, ["b"], "Q: {question}\n{answers}\nBest?")
    assert custom[-1]["content"] == "Q: format {x}?\nCandidate 1:\nb\nBest?"
    with pytest.raises(ValidationError, match="answers"):
        FusionSettings(fuser="fuse", template="no placeholder")


def test_the_shown_order_is_shuffled_reproducibly_and_tool_calls_are_left_out() -> None:
    def shown(words: Sequence[str]) -> list[int]:
        candidates = [Candidate(i, "original", {"role": "assistant", "content": w}) for i, w in enumerate(words)]
        candidates[2].message["tool_calls"] = [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        return shown_answers(candidates, [0, 1, 2, 3, 4], 4)

    orders = [shown([f"answer {k}.{i}" for i in range(6)]) for k in range(20)]
    assert all(sorted(order) == [0, 1, 3, 4] for order in orders)  # the top 4 without the tool call
    assert len({tuple(order) for order in orders}) > 1  # the strongest is not always shown first
    assert shown([f"answer 3.{i}" for i in range(6)]) == orders[3]  # the same answers, the same order


def test_a_fused_answer_is_served_scored_and_compared_with_the_selection() -> None:
    services = FusionServices(["41", "43", "41", "42"])
    out = ask(route(), services)
    assert out.chosen.text == "The answer is 42." and out.chosen.upstream == "fuse" and out.chosen.variant == "fusion"
    fusion = out.fusion
    assert fusion is not None and fusion["fused"] is True and fusion["answers"] == 3
    assert fusion["agrees"] is False  # the selection chose the 41 cluster
    assert fusion["score"] == out.scores[out.selected] and len(out.scores) == len(out.candidates) == 5
    assert out.selection is not None and out.selection["rule"] == "fusion"
    assert out.usage.total_tokens == (5 + 4) + (50 + 7)  # the candidates' one call and the fuser
    prompt = services.fuser_prompts[0][-1]["content"]
    assert prompt.startswith(QUESTION) and all(f"\n{a}" in prompt for a in ("41", "42", "43"))
    assert "original" not in prompt and "fuse" not in prompt  # anonymized: no variant, no model


def test_fusion_is_skipped_when_the_answers_agree_or_n_is_above_one() -> None:
    unanimous = ask(route(), FusionServices(["42"] * 4))
    assert unanimous.fusion is not None and unanimous.fusion["fused"] is False
    assert "min_clusters" in unanimous.fusion["skipped"] and unanimous.chosen.upstream is None
    several = ask(route(), FusionServices(["41", "42", "43", "44"]), n=2)
    assert several.fusion is not None and "n > 1" in several.fusion["skipped"]
    always = ask(route({"min_clusters": 1}), FusionServices(["42"] * 4))
    assert always.fusion is not None and always.fusion["fused"] is True


def test_a_failing_fuser_leaves_the_selected_answer_and_says_why() -> None:
    out = ask(route(), FusionServices(["41", "43", "41", "42"], fused=TimeoutError()))
    assert out.chosen.text == "41" and out.fusion is not None and out.fusion["fused"] is False
    assert out.fusion["error"] == "TimeoutError"
    assert out.selection is not None and "fuser failed" in out.selection["fallback_reason"]


def test_a_streaming_client_gets_the_fusers_pieces_then_the_finished_outcome() -> None:
    services = FusionServices(["41", "43", "41", "42"])

    async def scenario() -> tuple[list[str], Outcome]:
        out = await route().run(StrategyRequest([{"role": "user", "content": QUESTION}], stream=True), services)  # type: ignore[arg-type]
        assert out.fusion_stream is not None and out.chosen.text == "41"  # nothing fused yet
        pieces = [piece async for piece in out.fusion_stream.pieces]
        return pieces, await out.fusion_stream.finish("".join(pieces), None)

    pieces, out = asyncio.run(scenario())
    assert pieces == ["The ", "answer ", "is ", "42. "]
    assert out.chosen.text == "The answer is 42. " and out.fusion is not None and out.fusion["fused"] is True
    assert out.chosen.finish_reason == "length" and "fuse" in out.timings  # as the fuser's stream ended
    assert out.usage.total_tokens == (5 + 4) + (50 + 7)


def test_measured_better_fuses_only_while_gold_shows_fusion_ahead() -> None:
    gain = FusionGain(FusionSettings(fuser="fuse", when="measured_better", min_items=10))
    assert gain.fuses()[0] is False and "waits" in str(gain.fuses()[1])
    for i in range(12):  # fusion right on 9 items selection missed, wrong on 1 it got
        gain.add(f"item{i}", fused=1.0 if i < 10 else 0.0, selected=1.0 if i >= 9 else 0.0)
    assert gain.gain() is not None and gain.gain().low > 0 and gain.fuses() == (True, None)  # type: ignore[union-attr]
    worse = FusionGain(FusionSettings(fuser="fuse", when="measured_better", min_items=10))
    for i in range(12):
        worse.add(f"item{i}", fused=0.0 if i < 3 else 1.0, selected=1.0)
    assert worse.fuses()[0] is False and "does not show" in str(worse.fuses()[1])


def test_gold_probes_measure_fused_against_selected_on_the_same_item() -> None:
    strategy = route({"when": "measured_better", "min_items": 4})
    services = FusionServices([], fused="42")
    reference = [Candidate(i, "original", {"role": "assistant", "content": t}) for i, t in enumerate(["41", "41", "42", "43"])]
    request = StrategyRequest([{"role": "user", "content": QUESTION}])

    def right(c: Candidate) -> float:
        return 1.0 if c.text.strip().endswith("42") or c.text == "42" else 0.0

    for item in range(5):
        asyncio.run(strategy.learn_from_gold(request, services, reference, right, f"q{item}"))  # type: ignore[arg-type]
    table = strategy.fusion_gain.table() if strategy.fusion_gain is not None else {}
    assert table[1] == {f"q{i}": 1.0 for i in range(5)} and table[0] == {f"q{i}": 0.0 for i in range(5)}
    out = ask(strategy, FusionServices(["41", "43", "41", "42"]))
    assert out.fusion is not None and out.fusion["fused"] is True and out.fusion["gain"]["items"] == 5


def test_a_fusion_routes_reservation_includes_the_fusers_call() -> None:
    from proxy.upstream.allowance import estimate_tokens, request_estimate

    prompt = [{"role": "user", "content": "x" * 300}]
    plain = request_estimate(prompt, {"max_tokens": 100}, 4, None)
    fused = request_estimate(prompt, {"max_tokens": 100}, 4, None, route().settings.answers_rewritten())
    # the fuser reads the question and the top 4 answers, and writes one more
    assert fused.tokens - plain.tokens == estimate_tokens(prompt) + 5 * 100 and fused.candidates == plain.candidates


def test_the_call_ceiling_counts_the_fuser_and_nothing_more_without_fusion() -> None:
    plain = BestOfNSettings.model_validate({"max_n": 8})
    fused = BestOfNSettings.model_validate({"max_n": 8, "selection": {"fusion": {"fuser": "fuse"}}})
    # one fused answer served, one fused on a gold probe; self-consistency calls nothing
    assert fused.upstream_calls(1) - plain.upstream_calls(1) == 2
    judged = {"verifiers": [{"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"]}]}
    with_judge = BestOfNSettings.model_validate({"max_n": 8, **judged})
    fused_judge = BestOfNSettings.model_validate({"max_n": 8, **judged, "selection": {"fusion": {"fuser": "f"}}})
    assert fused_judge.upstream_calls(1) > with_judge.upstream_calls(1) + 2  # the judge also scores the fused answer


@pytest.mark.parametrize(("fused", "why"), [
    ("   ", "empty answer"),
    ("Candidate 5: I am not sure what", "none the route can read"),
])
def test_an_empty_or_unreadable_fused_answer_leaves_the_selected_one(fused: str, why: str) -> None:
    out = ask(route(), FusionServices(["41", "43", "41", "42"], fused=fused))
    assert out.chosen.text == "41" and out.fusion is not None and out.fusion["fused"] is False
    assert why in out.fusion["error"] and len(out.candidates) == 4


def test_a_client_that_hangs_up_mid_fusion_closes_the_fusers_stream() -> None:
    """The streamed fusion's upstream call must stop, and be charged, when nobody reads on: the
    fuser's stream (here the scripted `chat_stream`) is closed as soon as the client's is."""
    from proxy.pipeline.endpoints import CHAT
    from proxy.server.streaming import replay

    closed: list[bool] = []

    class Closing(FusionServices):
        async def chat_stream(self, upstream: str, messages: Sequence[Message]) -> AsyncIterator[str | StreamEnd]:
            try:
                for word in ("The", " answer", " is", " 42."):
                    yield word
                    await asyncio.sleep(0)
            finally:
                closed.append(True)

    async def scenario() -> list[bytes]:
        work = StrategyRequest([{"role": "user", "content": QUESTION}], stream=True)
        events = replay(route().run(work, Closing(["41", "43", "41", "42"])), route="r", stream_id="chatcmpl-x",  # type: ignore[arg-type]
                        endpoint=CHAT, n=1, include_usage=False, rvr=lambda o: None, keepalive_s=5.0,
                        on_error=lambda exc: None)
        got = [await anext(events), await anext(events)]  # the role, then the fuser's first piece
        await events.aclose()  # the client went away
        assert closed == [True]  # at once, not when the event loop shuts down
        return got

    got = asyncio.run(scenario())
    assert b'"content":"The"' in got[1]
