"""The best-of-N route votes with answers that know the request's question (issue 25).

To "is 36 even?", candidates that only restate the question's number ("36", "36 is a prime
number") must neither win the vote nor stop the route early as a unanimous answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings
from strategies.contract import Batch, Message, Outcome, Sample, StopReason, StrategyRequest, Usage
from strategies.verifiers import build_verifiers


class ScriptedServices:
    """generate() hands out `texts` in order."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        taken, self.texts = self.texts[:n], self.texts[n:]
        return Batch([Sample({"role": "assistant", "content": t}, "stop") for t in taken], Usage(5, 5 * len(taken)))


def route() -> BestOfN:
    settings = BestOfNSettings.model_validate({
        "max_n": 8, "variants": ["original"], "verifiers": [{"type": "self_consistency"}],
        "stop": {"confidence": 0.95},
    })
    return BestOfN(settings, build_verifiers(settings.verifiers), [_Original()], rng=lambda: np.random.default_rng(0))


class _Original:
    name = "original"

    async def render(self, messages: Sequence[Message], services: object) -> tuple[list[Message], Usage]:
        return list(messages), Usage()


def ask(question: str, texts: Sequence[str]) -> Outcome:
    request = StrategyRequest([{"role": "user", "content": question}])
    return asyncio.run(route().run(request, ScriptedServices(texts)))  # type: ignore[arg-type]


def test_restated_numbers_lose_to_a_yes() -> None:
    texts = ["36", "36 is a prime number.", "Yes, 36 is even.", "36", "36 is divisible by 4", "Yes", "36", "No."]
    out = ask("is 36 even?", texts)
    assert out.chosen.text.startswith("Yes")
    answers = [c["answer"] for c in (out.selection or {})["clusters"]]
    assert "36" not in answers and "yes" in answers


def test_restated_numbers_do_not_stop_the_vote() -> None:
    texts = ["36", "36", "36 is a prime number.", "36", "Yes", "Yes, it is.", "Yes!", "No"]
    out = ask("is 36 even?", texts)
    assert len(out.candidates) == 8  # four "36" were no unanimous vote
    assert out.chosen.text.startswith("Yes")


def test_an_answer_may_repeat_a_number_of_the_question() -> None:
    out = ask("what is 5 times 1?", ["5", "5 times 1 =", "5", "5", "5 x 1 = 5", "6", "5", "5"])
    assert out.stop_reason is StopReason.VOTE_CONFIDENT and out.chosen.text in ("5", "5 x 1 = 5")


def test_each_candidate_names_its_kind_of_answer() -> None:
    texts = ["Yes, 36 is even.", "36", "Yes", "It can be split into two equal halves, with nothing left over at all", "No.", "yes"]
    out = ask("is 36 even?", texts)
    assert out.answer_types[:6] == ["yes_no", "none", "yes_no", "none", "yes_no", "yes_no"]
    assert out.answer_types[out.selected] == "yes_no"


def test_an_early_stop_waits_until_the_request_has_the_n_answers_it_asked_for() -> None:
    # Conformance: with the learned prior, two agreeing votes stopped a request that asked for
    # n=3, and it answered with 2 choices.
    settings = BestOfNSettings.model_validate({
        "max_n": 8, "initial_batch": 2, "later_batch": 1, "variants": ["original"],
        "verifiers": [{"type": "self_consistency"}], "stop": {"confidence": 0.8},
    })
    strategy = BestOfN(settings, build_verifiers(settings.verifiers), [_Original()], rng=lambda: np.random.default_rng(0))
    request = StrategyRequest([{"role": "user", "content": "What is 6 times 7?"}], n=3)
    out = asyncio.run(strategy.run(request, ScriptedServices(["42"] * 8)))  # type: ignore[arg-type]
    assert len(out.candidates) == 3 and out.stop_reason is StopReason.VOTE_CONFIDENT
