"""Verifier kinds and their registry, against scripted judges and reward endpoints."""

from __future__ import annotations

import asyncio
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from strategies.contract import (
    Batch,
    Candidate,
    EmbedReply,
    Message,
    Reply,
    RewardEndpoint,
    RewardReply,
    Scored,
    Usage,
    VerifyContext,
)
from strategies.verifiers import (
    REGISTRY,
    VerifierConfigError,
    build_verifier,
    build_verifiers,
    needs_logprobs,
    referenced_upstreams,
)
from strategies.verifiers.llm_judge import parse_pairwise, parse_yesno
from strategies.verifiers.reward_model import sigmoid

QUESTION: list[Message] = [{"role": "user", "content": "What is 6*7?"}]


class FakeServices:
    """A scripted judge (`judge(messages) -> text`, or an exception) and reward endpoint."""

    def __init__(
        self,
        judge: Callable[[list[Message]], str | Exception] | None = None,
        reward: Callable[[Sequence[str]], list[float | None] | Exception] | None = None,
        judge_usage: Usage | None = None,
    ) -> None:
        self.judge = judge
        self.reward_fn = reward
        self.judge_usage = judge_usage or Usage(10, 2)
        self.chat_calls: list[tuple[str, list[Message], dict[str, Any]]] = []
        self.reward_calls: list[tuple[RewardEndpoint, list[Message], list[str]]] = []
        self.embed_calls: list[tuple[str, list[str]]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        raise AssertionError("verifiers never generate")

    async def chat(self, upstream: str, messages: Sequence[Message], **params: Any) -> Reply:
        self.chat_calls.append((upstream, list(messages), params))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # let concurrent calls overlap
            assert self.judge is not None
            result = self.judge(list(messages))
        finally:
            self.in_flight -= 1
        if isinstance(result, Exception):
            raise result
        return Reply(result, self.judge_usage)

    async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
        self.embed_calls.append((upstream, list(texts)))
        # Two directions: texts mentioning 42 agree with each other, the rest with each other.
        return EmbedReply([[1.0, 0.0] if "42" in t else [0.0, 1.0] for t in texts], Usage(len(texts), 0))

    async def reward(
        self, endpoint: RewardEndpoint, messages: Sequence[Message], answers: Sequence[str]
    ) -> RewardReply:
        self.reward_calls.append((endpoint, list(messages), list(answers)))
        assert self.reward_fn is not None
        result = self.reward_fn(answers)
        if isinstance(result, Exception):
            raise result
        return RewardReply(result, Usage(len(answers) * 5, 0))


def cand(index: int, content: str | None, **extra: Any) -> Candidate:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    tool_calls = extra.pop("tool_calls", None)
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return Candidate(index=index, variant="original", message=message, **extra)


def ctx_for(
    services: FakeServices | None = None, response_format: dict | None = None
) -> VerifyContext:
    return VerifyContext(
        messages=QUESTION, services=services or FakeServices(), response_format=response_format
    )


def score(
    spec: dict[str, Any], candidates: Sequence[Candidate], ctx: VerifyContext | None = None
) -> Scored:
    verifier = build_verifier(spec, 0)
    return asyncio.run(verifier.score(ctx or ctx_for(), candidates))


def response_of(messages: list[Message]) -> str:
    """The response a pointwise judge prompt shows."""
    return messages[-1]["content"].split("# Response to grade\n", 1)[1].split("\n\n", 1)[0]


def pair_of(messages: list[Message]) -> tuple[str, str]:
    text = messages[-1]["content"]
    a = text.split("# Response A\n", 1)[1].split("\n\n# Response B", 1)[0]
    b = text.split("# Response B\n", 1)[1].split("\n\n", 1)[0]
    return a, b


# --- registry -----------------------------------------------------------------------------

MINIMAL_SPECS: dict[str, dict[str, Any]] = {
    "self_consistency": {"type": "self_consistency"},
    "mbr": {"type": "mbr"},
    "llm_judge": {"type": "llm_judge", "upstream": "judge-model"},
    "reward_model": {"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/score"}},
    "logprob": {"type": "logprob"},
    "regex": {"type": "regex", "pattern": "x"},
    "json_schema": {"type": "json_schema"},
    "plugin": {"type": "plugin", "function": "math:isfinite"},
}


def test_every_registered_kind_builds_with_common_defaults() -> None:
    assert set(REGISTRY) == set(MINIMAL_SPECS)
    for kind, spec in MINIMAL_SPECS.items():
        verifier = build_verifier(spec, 0)
        assert verifier.name == kind and verifier.weight == 1.0
        named = build_verifier({**spec, "name": "v.2_a-b", "weight": 0}, 0)
        assert named.name == "v.2_a-b" and named.weight == 0.0


@pytest.mark.parametrize("kind", sorted(MINIMAL_SPECS))
def test_every_kind_forbids_unknown_fields(kind: str) -> None:
    with pytest.raises(VerifierConfigError, match=r"verifiers\[4\].*typo_field"):
        build_verifier({**MINIMAL_SPECS[kind], "typo_field": 1}, 4)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "nope"}, r"verifiers\[0\]\.type.*'nope'"),
        ({}, r"verifiers\[0\]\.type"),
        ({"type": "llm_judge"}, "upstream"),
        ({"type": "llm_judge", "upstream": "j", "templates": ["rubric_100"]}, "templates"),
        ({"type": "llm_judge", "upstream": "j", "templates": []}, "template"),
        ({"type": "mbr", "name": "has space"}, "name"),
        ({"type": "mbr", "weight": -0.5}, "weight"),
        ({"type": "regex", "pattern": "(open"}, "pattern"),
        ({"type": "regex"}, "pattern"),
        ({"type": "self_consistency", "patterns": ["[bad"]}, "patterns"),
        ({"type": "json_schema", "schema": {"type": 12}}, "schema"),
        ({"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/s", "api": "other"}}, "endpoint.api"),
        ({"type": "reward_model", "endpoint": {"url": "file:///etc/passwd"}}, "endpoint.url"),
        ({"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/s"}, "squash": "tanh"}, "squash"),
        ({"type": "plugin", "function": "no_such_module_xyz:f"}, "function.*no_such_module_xyz"),
        ({"type": "plugin", "function": "math:no_such_function"}, "function.*no_such_function"),
        ({"type": "plugin", "function": "not a path"}, "function"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_verifier(spec, 0)


def test_names_must_be_unique_per_route() -> None:
    with pytest.raises(VerifierConfigError, match=r"verifiers\[1\]\.name.*'mbr'"):
        build_verifiers([{"type": "mbr"}, {"type": "mbr"}])
    built = build_verifiers([{"type": "mbr"}, {"type": "mbr", "name": "mbr2"}])
    assert [v.name for v in built] == ["mbr", "mbr2"]


def test_needs_logprobs_and_upstreams() -> None:
    verifiers = build_verifiers(
        [
            {"type": "llm_judge", "upstream": "judge-a"},
            {"type": "llm_judge", "name": "j2", "upstream": "judge-b"},
            {"type": "llm_judge", "name": "j3", "upstream": "judge-a"},
            {"type": "self_consistency"},
        ]
    )
    assert referenced_upstreams(verifiers) == ("judge-a", "judge-b")
    assert not needs_logprobs(verifiers)
    assert needs_logprobs([*verifiers, build_verifier({"type": "logprob"}, 4)])


# --- self-consistency -----------------------------------------------------------------------


def test_self_consistency_vote_share_and_missing() -> None:
    candidates = [
        cand(0, "6*7 = 42. The answer is 42."),
        cand(1, "#### 42"),
        cand(2, r"\boxed{41}"),
        cand(3, "I cannot compute that."),
    ]
    scored = score({"type": "self_consistency"}, candidates)
    # Shares of every candidate: the one that cannot compute keeps its place in the denominator.
    assert scored.views == {"self_consistency": [2 / 4, 2 / 4, 1 / 4, None]}
    assert not scored.hard and scored.usage == Usage()


def test_self_consistency_answer_of_and_votes_for_the_stop_rule() -> None:
    verifier = build_verifier({"type": "self_consistency", "patterns": [r"ANS<(\w+)>"]}, 0)
    assert verifier.answer_of(cand(0, "ANS<blue> but #### 3")) == "blue"
    assert verifier.answer_of(cand(1, "#### 3")) == "3"
    assert verifier.answer_of(cand(2, "I don't know.")) is None
    assert verifier.votes([cand(0, "#### 3"), cand(1, "The answer is 3.0"), cand(2, "2 + 3")]) == {
        "3": 2
    }
    strict = build_verifier(
        {"type": "self_consistency", "patterns": [r"ANS<(\w+)>"], "default_patterns": False}, 0
    )
    assert strict.answer_of(cand(1, "#### 3")) is None


def test_self_consistency_votes_on_tool_calls() -> None:
    def call(args: str, call_id: str) -> dict:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "lookup", "arguments": args},
        }

    candidates = [
        cand(0, None, tool_calls=[call('{"q": "a", "n": 1}', "x1")]),
        cand(1, None, tool_calls=[call('{"n":1,"q":"a"}', "x2")]),
        cand(2, None, tool_calls=[call('{"q": "b", "n": 1}', "x3")]),
    ]
    scored = score({"type": "self_consistency", "name": "sc"}, candidates)
    assert scored.views == {"sc": [2 / 3, 2 / 3, 1 / 3]}


def test_self_consistency_knows_the_question() -> None:
    """To "is 36 even?", "36" restates the question: no vote for it, not even as prose."""
    candidates = [
        cand(0, "36 is a prime number."),
        cand(1, "Yes, 36 is an even number."),
        cand(2, "36"),
        cand(3, "Yes\nIs 36 even?"),
        cand(4, "* 36 is a prime number"),
        cand(5, "No."),
    ]
    asked = VerifyContext(messages=[{"role": "user", "content": "is 36 even?"}], services=FakeServices())
    scored = score({"type": "self_consistency"}, candidates, asked)
    assert scored.views["self_consistency"] == [None, 2 / 6, None, 2 / 6, None, 1 / 6]
    # Without the question, the restated number is the largest cluster.
    assert score({"type": "self_consistency"}, candidates).views["self_consistency"][0] == 3 / 6
    verifier = build_verifier({"type": "self_consistency"}, 0)
    assert verifier.answer_of(candidates[0], "is 36 even?") is None
    assert verifier.answer_of(candidates[0]) == "36"
    assert verifier.votes(candidates, "is 36 even?") == {"yes": 2, "no": 1}


def test_self_consistency_keeps_an_answer_that_repeats_a_number_of_the_question() -> None:
    candidates = [cand(0, "5"), cand(1, "5 x 1 = 5"), cand(2, "5 times 1 ="), cand(3, "6")]
    asked = VerifyContext(messages=[{"role": "user", "content": "what is 5 times 1?"}], services=FakeServices())
    assert score({"type": "self_consistency"}, candidates, asked).views["self_consistency"] == [
        2 / 4, 2 / 4, None, 1 / 4
    ]


def test_self_consistency_never_merges_different_numbers() -> None:
    scored = score(
        {"type": "self_consistency"}, [cand(0, "The answer is 21."), cand(1, "The answer is 24.")]
    )
    assert scored.views["self_consistency"] == [0.5, 0.5]


# --- MBR ------------------------------------------------------------------------------------


def test_mbr_prefers_the_consensus_text() -> None:
    candidates = [
        cand(0, "Paris is the capital of France."),
        cand(1, "The capital of France is Paris."),
        cand(2, "Lyon, I believe."),
    ]
    (scores,) = score({"type": "mbr"}, candidates).views.values()
    assert scores[0] == pytest.approx(scores[1]) and scores[0] > scores[2]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_mbr_compares_tool_calls_canonically() -> None:
    def call(args: str, call_id: str) -> dict:
        return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": args}}

    candidates = [
        cand(0, None, tool_calls=[call('{"a":1}', "i1")]),
        cand(1, None, tool_calls=[call('{ "a": 1 }', "i2")]),
    ]
    assert score({"type": "mbr"}, candidates).views["mbr"] == [1.0, 1.0]


# --- LLM judge: pointwise --------------------------------------------------------------------


def grading_judge(messages: list[Message]) -> str:
    """Scores by what the response says; 'garbled' responses get an unparseable reply."""
    response = response_of(messages)
    prompt = messages[-1]["content"]
    if "garbled" in response:
        return "I refuse to use your format."
    good = "42" in response
    if "Score: N" in prompt:
        return f"Reasoning...\nScore: {9 if good else 3}"
    if "Rating: N" in prompt:
        return f"Rating: {5 if good else 1}"
    return f"Checked.\nVerdict: {'yes' if good else 'no'}"


def test_judge_pointwise_views_scores_usage_and_temperature() -> None:
    services = FakeServices(grading_judge)
    candidates = [cand(0, "It is 42."), cand(1, "It is 41."), cand(2, "garbled text")]
    scored = score(
        {"type": "llm_judge", "name": "judge", "upstream": "judge-model"},
        candidates,
        ctx_for(services),
    )
    assert scored.views == {
        "judge:rubric_10": [pytest.approx(8 / 9), pytest.approx(2 / 9), None],
        "judge:correctness_yesno": [1.0, 0.0, None],
    }
    assert scored.errors == 2  # the two unparseable replies
    assert scored.usage == Usage(60, 12)  # six calls, each Usage(10, 2)
    assert len(services.chat_calls) == 6
    assert all(
        upstream == "judge-model" and params == {"temperature": 0}
        for upstream, _, params in services.chat_calls
    )
    assert "What is 6*7?" in services.chat_calls[0][1][-1]["content"]


def test_judge_unparseable_reply_is_missing_never_zero() -> None:
    scored = score(
        {"type": "llm_judge", "upstream": "j", "templates": ["likert_5"]},
        [cand(0, "garbled"), cand(1, "garbled too")],
        ctx_for(FakeServices(grading_judge)),
    )
    assert scored.views == {"llm_judge:likert_5": [None, None]}


def test_judge_out_of_range_and_failed_calls_are_missing() -> None:
    replies = iter(["Score: 11", "Score: 0", RuntimeError("judge down"), "Score: 10"])
    services = FakeServices(lambda _m: next(replies))
    scored = score(
        {"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"], "concurrency": 1},
        [cand(i, f"c{i}") for i in range(4)],
        ctx_for(services),
    )
    assert scored.views["llm_judge:rubric_10"] == [None, None, None, 1.0]
    assert scored.errors == 3
    assert scored.usage == Usage(30, 6)  # the failed call cost nothing we know of


def test_judge_memoizes_per_candidate_and_only_judges_new_ones() -> None:
    services = FakeServices(grading_judge)
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"]}, 0)
    first = asyncio.run(verifier.score(ctx, [cand(0, "42"), cand(1, "garbled")]))
    assert len(services.chat_calls) == 2 and first.usage == Usage(20, 4)

    second = asyncio.run(verifier.score(ctx, [cand(0, "42"), cand(1, "garbled"), cand(2, "41")]))
    assert (
        len(services.chat_calls) == 3
    )  # only candidate 2 was judged; the unparseable one is not retried
    assert response_of(services.chat_calls[-1][1]) == "41"
    assert second.usage == Usage(10, 2)
    assert second.views["llm_judge:rubric_10"] == [pytest.approx(8 / 9), None, pytest.approx(2 / 9)]

    # A fresh request starts with an empty cache and judges again.
    asyncio.run(verifier.score(ctx_for(services), [cand(0, "42")]))
    assert len(services.chat_calls) == 4


def test_judge_does_not_redo_a_failed_call_in_the_next_round() -> None:
    # The upstream client already retried it; redoing it every round multiplied the calls.
    outcomes = iter([RuntimeError("timeout"), "Score: 10"])
    services = FakeServices(lambda _m: next(outcomes))
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"]}, 0)
    assert asyncio.run(verifier.score(ctx, [cand(0, "x")])).views["llm_judge:rubric_10"] == [None]
    assert asyncio.run(verifier.score(ctx, [cand(0, "x"), cand(1, "y")])).views["llm_judge:rubric_10"] == [None, 1.0]
    assert len(services.chat_calls) == 2


def test_a_failing_judge_stops_being_called_within_a_request() -> None:
    services = FakeServices(lambda _m: RuntimeError("judge down"))
    ctx = ctx_for(services)
    spec = {"type": "llm_judge", "upstream": "j", "templates": ["rubric_10", "likert_5"], "concurrency": 1}
    verifier = build_verifier(spec, 0)
    first = asyncio.run(verifier.score(ctx, [cand(i, f"c{i}") for i in range(4)]))
    assert len(services.chat_calls) == 3  # then the rest are missing without a call
    assert first.errors == 8
    asyncio.run(verifier.score(ctx, [cand(i, f"c{i}") for i in range(8)]))
    assert len(services.chat_calls) == 3


def test_judge_calls_run_concurrently_within_the_bound() -> None:
    services = FakeServices(lambda _m: "Score: 5")
    candidates = [cand(i, f"answer {i}") for i in range(10)]
    score(
        {"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"], "concurrency": 3},
        candidates,
        ctx_for(services),
    )
    assert services.max_in_flight == 3
    services = FakeServices(lambda _m: "Score: 5")
    score(
        {"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"], "concurrency": 64},
        candidates,
        ctx_for(services),
    )
    assert services.max_in_flight == 10


def test_judge_sees_tool_calls_as_name_and_json() -> None:
    services = FakeServices(lambda _m: "Verdict: yes")
    call = {
        "id": "z",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    score(
        {"type": "llm_judge", "upstream": "j", "templates": ["correctness_yesno"]},
        [cand(0, None, tool_calls=[call])],
        ctx_for(services),
    )
    assert 'get_weather({"city":"Oslo"})' in services.chat_calls[0][1][-1]["content"]


def test_judge_prompt_is_not_reformatted_by_braces_in_responses() -> None:
    services = FakeServices(lambda _m: "Score: 5")
    score(
        {"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"]},
        [cand(0, "literal {conversation} and {response}")],
        ctx_for(services),
    )
    prompt = services.chat_calls[0][1][-1]["content"]
    assert "literal {conversation} and {response}" in prompt


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Verdict: yes", 1.0),
        ("verdict: No.", 0.0),
        ("Yes", 1.0),
        ("Verdict: yes\nVerdict: no", 0.0),
        (" Yes\n\n# Response to grade", 1.0),
        ("no, it is wrong", 0.0),
        ("maybe", None),
        ("nothing to say", None),
    ],
)
def test_parse_yesno(reply: str, expected: float | None) -> None:
    assert parse_yesno(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Verdict: A", "a"),
        ("Verdict: **B**", "b"),
        ("[[tie]]", "tie"),
        ("B", "b"),
        ("both are fine", None),
    ],
)
def test_parse_pairwise(reply: str, expected: str | None) -> None:
    assert parse_pairwise(reply) == expected


# --- LLM judge: pairwise ---------------------------------------------------------------------


def test_pairwise_position_bias_cancels_across_both_orders() -> None:
    """A judge that always prefers slot A: each order is biased, their mean is not."""
    services = FakeServices(lambda _m: "Verdict: A")
    spec = {
        "type": "llm_judge",
        "name": "judge",
        "upstream": "j",
        "mode": "pairwise",
        "templates": [],
    }
    scored = score(spec, [cand(0, "a"), cand(1, "b"), cand(2, "c")], ctx_for(services))
    assert scored.views == {
        "judge:pairwise:ab": [0.5, 1.0, 1.0],
        "judge:pairwise:ba": [0.5, 0.0, 0.0],
    }
    means = [(x + y) / 2 for x, y in zip(*scored.views.values(), strict=True)]
    assert means == [0.5, 0.5, 0.5]
    assert len(services.chat_calls) == 4  # two non-anchors, both orders
    assert scored.usage == Usage(40, 8)


def test_pairwise_both_orders_show_both_slots() -> None:
    """An unbiased judge prefers '42' in either slot; the anchor (candidate 0) is wrong."""

    def judge(messages: list[Message]) -> str:
        a, b = pair_of(messages)
        if "42" in a and "42" not in b:
            return "Verdict: A"
        if "42" in b and "42" not in a:
            return "Verdict: B"
        if "garbled" in a + b:
            return "no verdict here"
        return "Verdict: tie"

    services = FakeServices(judge)
    spec = {"type": "llm_judge", "upstream": "j", "mode": "pairwise", "templates": []}
    candidates = [cand(0, "41"), cand(1, "42"), cand(2, "40"), cand(3, "garbled")]
    scored = score(spec, candidates, ctx_for(services))
    assert scored.views["llm_judge:pairwise:ab"] == [0.5, 1.0, 0.5, None]
    assert scored.views["llm_judge:pairwise:ba"] == [0.5, 1.0, 0.5, None]
    orders = {pair_of(m) for _, m, _ in services.chat_calls}
    assert ("42", "41") in orders and ("41", "42") in orders


def test_pairwise_anchor_is_the_best_pointwise_candidate_and_sticky() -> None:
    def judge(messages: list[Message]) -> str:
        prompt = messages[-1]["content"]
        if "# Response A" in prompt:
            return "Verdict: tie"
        return {"good": "Score: 9", "bad": "Score: 2", "best": "Score: 10"}.get(
            response_of(messages), "Score: 5"
        )

    services = FakeServices(judge)
    ctx = ctx_for(services)
    verifier = build_verifier(
        {"type": "llm_judge", "upstream": "j", "mode": "pairwise", "templates": ["rubric_10"]}, 0
    )
    first = asyncio.run(verifier.score(ctx, [cand(0, "bad"), cand(1, "good")]))
    assert set(first.views) == {
        "llm_judge:rubric_10",
        "llm_judge:pairwise:ab",
        "llm_judge:pairwise:ba",
    }
    pair_calls = [
        pair_of(m) for _, m, _ in services.chat_calls if "# Response A" in m[-1]["content"]
    ]
    assert sorted(pair_calls) == [("bad", "good"), ("good", "bad")]  # anchor = "good"

    services.chat_calls.clear()
    asyncio.run(verifier.score(ctx, [cand(0, "bad"), cand(1, "good"), cand(2, "meh")]))
    # "meh" (5/10) does not beat the anchor: one pointwise call plus its two comparisons.
    assert len(services.chat_calls) == 3

    services.chat_calls.clear()
    third = asyncio.run(
        verifier.score(ctx, [cand(0, "bad"), cand(1, "good"), cand(2, "meh"), cand(3, "best")])
    )
    # A strictly better candidate becomes the anchor; everyone is compared with it.
    pair_calls = [
        pair_of(m) for _, m, _ in services.chat_calls if "# Response A" in m[-1]["content"]
    ]
    assert all("best" in pair for pair in pair_calls) and len(pair_calls) == 6
    assert third.views["llm_judge:pairwise:ab"][3] == 0.5


# --- reward model ------------------------------------------------------------------------------


ENDPOINT = {"url": "http://127.0.0.1:9/score", "api": "vllm_score", "model": "rm"}


def test_reward_sigmoid_squash_and_missing() -> None:
    services = FakeServices(reward=lambda answers: [0.0, 2.0, None, float("nan")])
    scored = score(
        {"type": "reward_model", "endpoint": ENDPOINT},
        [cand(i, f"a{i}") for i in range(4)],
        ctx_for(services),
    )
    assert scored.views == {
        "reward_model": [0.5, pytest.approx(1 / (1 + math.exp(-2))), None, None]
    }
    assert scored.usage == Usage(20, 0)
    ((endpoint, messages, answers),) = services.reward_calls
    assert (
        endpoint == RewardEndpoint(**ENDPOINT)
        and messages == QUESTION
        and answers == ["a0", "a1", "a2", "a3"]
    )


def test_reward_center_scale_none_and_minmax() -> None:
    cands = [cand(i, f"a{i}") for i in range(3)]
    raw = lambda answers: [1.0, 3.0, 5.0]  # noqa: E731
    centered = score(
        {"type": "reward_model", "endpoint": ENDPOINT, "center": 3, "scale": 2},
        cands,
        ctx_for(FakeServices(reward=raw)),
    )
    assert centered.views["reward_model"] == [
        pytest.approx(sigmoid(-1)),
        0.5,
        pytest.approx(sigmoid(1)),
    ]
    minmax = score(
        {"type": "reward_model", "endpoint": ENDPOINT, "squash": "minmax"},
        cands,
        ctx_for(FakeServices(reward=raw)),
    )
    assert minmax.views["reward_model"] == [0.0, 0.5, 1.0]
    clipped = score(
        {"type": "reward_model", "endpoint": ENDPOINT, "squash": "none"},
        cands,
        ctx_for(FakeServices(reward=lambda a: [-0.2, 0.3, 1.7])),
    )
    assert clipped.views["reward_model"] == [0.0, 0.3, 1.0]
    flat = score(
        {"type": "reward_model", "endpoint": ENDPOINT, "squash": "minmax"},
        cands,
        ctx_for(FakeServices(reward=lambda a: [2.0, 2.0, None])),
    )
    assert flat.views["reward_model"] == [0.5, 0.5, None]


def test_sigmoid_is_stable_at_extremes() -> None:
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0 and sigmoid(0.0) == 0.5


def test_reward_memoizes_and_sends_only_new_candidates() -> None:
    services = FakeServices(reward=lambda answers: [float(len(a)) for a in answers])
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "reward_model", "endpoint": ENDPOINT, "squash": "none"}, 0)
    asyncio.run(verifier.score(ctx, [cand(0, "x")]))
    second = asyncio.run(verifier.score(ctx, [cand(0, "x"), cand(1, "")]))
    assert [answers for _, _, answers in services.reward_calls] == [["x"], [""]]
    assert second.views["reward_model"] == [1.0, 0.0]
    assert second.usage == Usage(5, 0)


def test_reward_failure_and_wrong_length_are_missing_and_retried() -> None:
    outcomes = iter([RuntimeError("down"), [0.1], [0.0, 0.0]])
    services = FakeServices(reward=lambda answers: next(outcomes))
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "reward_model", "endpoint": ENDPOINT}, 0)
    pair = [cand(0, "a"), cand(1, "b")]
    down = asyncio.run(verifier.score(ctx, pair))
    assert down.views["reward_model"] == [None, None] and down.errors == 1
    short = asyncio.run(verifier.score(ctx, pair))
    assert short.views["reward_model"] == [None, None] and short.errors == 1
    good = asyncio.run(verifier.score(ctx, pair))
    assert good.views["reward_model"] == [0.5, 0.5] and good.errors == 0


def test_reward_shows_tool_calls_as_text() -> None:
    services = FakeServices(reward=lambda answers: [0.0])
    call = {"id": "q", "type": "function", "function": {"name": "f", "arguments": '{"b":2, "a":1}'}}
    score(
        {"type": "reward_model", "endpoint": ENDPOINT},
        [cand(0, None, tool_calls=[call])],
        ctx_for(services),
    )
    assert services.reward_calls[0][2] == ['[tool call] f({"a":1,"b":2})']


# --- logprob ---------------------------------------------------------------------------------


def test_logprob_geometric_mean_probability() -> None:
    candidates = [
        cand(0, "x", token_logprobs=[math.log(0.5), math.log(0.5)]),
        cand(1, "y", token_logprobs=[0.0, math.log(0.25)]),
        cand(2, "z", token_logprobs=None),
        cand(3, "w", token_logprobs=[]),
    ]
    scored = score({"type": "logprob"}, candidates)
    assert scored.views["logprob"] == [pytest.approx(0.5), pytest.approx(0.5), None, None]
    assert build_verifier({"type": "logprob"}, 0).needs_logprobs


# --- regex -----------------------------------------------------------------------------------


def test_regex_hard_constraint_both_polarities() -> None:
    candidates = [cand(0, "The answer is 4."), cand(1, "four")]
    must = score({"type": "regex", "pattern": r"answer is \d+"}, candidates)
    assert must.views["regex"] == [1.0, 0.0] and must.hard
    must_not = score(
        {"type": "regex", "pattern": r"answer is \d+", "must_match": False}, candidates
    )
    assert must_not.views["regex"] == [0.0, 1.0] and must_not.hard


def test_regex_checks_tool_only_candidates_by_call_key() -> None:
    call = {"id": "q", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    scored = score(
        {"type": "regex", "pattern": r"^tool:search\("}, [cand(0, None, tool_calls=[call])]
    )
    assert scored.views["regex"] == [1.0]


# --- JSON schema -------------------------------------------------------------------------------


PERSON = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


def test_json_schema_from_config() -> None:
    candidates = [
        cand(0, '{"age": 3}'),
        cand(1, '{"age": "3"}'),
        cand(2, "not json"),
        cand(3, '```json\n{"age": 3}\n```'),
    ]
    scored = score({"type": "json_schema", "schema": PERSON}, candidates)
    assert scored.views["json_schema"] == [1.0, 0.0, 0.0, 0.0] and scored.hard


def test_json_schema_from_request_response_format() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}
    scored = score(
        {"type": "json_schema"},
        [cand(0, '{"age": 3}'), cand(1, "{}")],
        ctx_for(response_format=fmt),
    )
    assert scored.views["json_schema"] == [1.0, 0.0]


def test_json_schema_config_and_request_both_apply() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "p", "schema": {"type": "object", "required": ["name"]}},
    }
    candidates = [
        cand(0, '{"age": 3, "name": "x"}'),
        cand(1, '{"age": 3}'),
        cand(2, '{"name": "x"}'),
    ]
    scored = score(
        {"type": "json_schema", "schema": PERSON}, candidates, ctx_for(response_format=fmt)
    )
    assert scored.views["json_schema"] == [1.0, 0.0, 0.0]


def test_json_object_mode_and_plain_parse() -> None:
    candidates = [cand(0, '{"a": 1}'), cand(1, "[1, 2]"), cand(2, "{bad")]
    obj = score(
        {"type": "json_schema"}, candidates, ctx_for(response_format={"type": "json_object"})
    )
    assert obj.views["json_schema"] == [1.0, 0.0, 0.0]
    plain = score({"type": "json_schema"}, candidates)
    assert plain.views["json_schema"] == [1.0, 1.0, 0.0]


def test_json_schema_tool_call_is_missing_and_broken_request_schema_is_an_error() -> None:
    call = {"id": "q", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert score({"type": "json_schema"}, [cand(0, None, tool_calls=[call])]).views[
        "json_schema"
    ] == [None]
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}
    scored = score({"type": "json_schema"}, [cand(0, "{}")], ctx_for(response_format=broken))
    assert scored.errors == 1 and scored.views["json_schema"] == [1.0]


# --- plugin ------------------------------------------------------------------------------------


PLUGIN_SOURCE = textwrap.dedent(
    """
    import asyncio
    from strategies.contract import Scored, Usage

    def by_length(ctx, candidates):
        return [len(c.text) / 4 for c in candidates]

    async def async_scores(ctx, candidates):
        await asyncio.sleep(0)
        return [None if not c.text else 0.25 for c in candidates]

    def full(ctx, candidates):
        n = len(candidates)
        return Scored(views={"x": [2.0] * n, "y": [-1.0] * n}, usage=Usage(3, 1))

    def wrong_length(ctx, candidates):
        return [0.5]

    def broken(ctx, candidates):
        raise RuntimeError("plugin bug")
    """
)


@pytest.fixture()
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "rvr_test_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rvr_test_plugin"


def test_plugin_sync_scores_are_clipped(plugin_module: str) -> None:
    scored = score(
        {"type": "plugin", "function": f"{plugin_module}:by_length"},
        [cand(0, "ab"), cand(1, "abcdefgh")],
    )
    assert scored.views == {"plugin": [0.5, 1.0]} and not scored.hard


def test_plugin_async_and_hard(plugin_module: str) -> None:
    scored = score(
        {"type": "plugin", "name": "p", "function": f"{plugin_module}:async_scores", "hard": True},
        [cand(0, ""), cand(1, "x")],
    )
    assert scored.views == {"p": [None, 0.25]} and scored.hard


def test_plugin_returning_scored_keeps_views_and_usage(plugin_module: str) -> None:
    scored = score(
        {"type": "plugin", "name": "p", "function": f"{plugin_module}:full"}, [cand(0, "a")]
    )
    assert scored.views == {"p:x": [1.0], "p:y": [0.0]} and scored.usage == Usage(3, 1)


@pytest.mark.parametrize("function", ["wrong_length", "broken"])
def test_plugin_failures_are_missing_not_fatal(plugin_module: str, function: str) -> None:
    scored = score(
        {"type": "plugin", "function": f"{plugin_module}:{function}"}, [cand(0, "a"), cand(1, "b")]
    )
    assert scored.views == {"plugin": [None, None]} and scored.errors == 1


def test_plugin_is_imported_once_at_build(plugin_module: str, tmp_path: Path) -> None:
    verifier = build_verifier({"type": "plugin", "function": f"{plugin_module}:by_length"}, 0)
    (tmp_path / "rvr_test_plugin.py").unlink()  # the request path never imports again
    assert asyncio.run(verifier.score(ctx_for(), [cand(0, "abcd")])).views["plugin"] == [1.0]


# --- shared properties -------------------------------------------------------------------------


def test_view_names_are_label_safe_and_scores_in_range(plugin_module: str) -> None:
    def judge(messages: list[Message]) -> str:
        return (
            "Verdict: A"
            if "# Response A" in messages[-1]["content"]
            else "Score: 7\nVerdict: yes\nRating: 4"
        )

    services = FakeServices(judge, reward=lambda answers: [1.5] * len(answers))
    specs = [
        *MINIMAL_SPECS.values(),
        {
            "type": "llm_judge",
            "name": "pair",
            "upstream": "j",
            "mode": "pairwise",
            "templates": ["likert_5"],
        },
    ]
    specs = [dict(s) for s in specs]
    specs[-2] = {"type": "plugin", "function": f"{plugin_module}:by_length"}
    verifiers = build_verifiers(specs)
    candidates = [
        cand(0, "The answer is 42", token_logprobs=[-0.1]),
        cand(1, '{"a": 1}', token_logprobs=[-1.0]),
    ]
    ctx = ctx_for(services)
    for verifier in verifiers:
        scored = asyncio.run(verifier.score(ctx, candidates))
        for view, scores in scored.views.items():
            assert re.fullmatch(r"[A-Za-z0-9_.:-]+", view) and view.split(":")[0] == verifier.name
            assert len(scores) == len(candidates)
            assert all(s is None or 0.0 <= s <= 1.0 for s in scores)
        assert scored.hard == verifier.hard


def test_judge_reply_length_cap_is_passed_on() -> None:
    services = FakeServices(grading_judge)
    score({"type": "llm_judge", "upstream": "j", "templates": ["rubric_10"], "max_tokens": 3}, [cand(0, "42")],
          ctx_for(services))
    assert services.chat_calls[0][2] == {"temperature": 0, "max_tokens": 3}


def test_judge_adds_a_template_view_only_when_asked() -> None:
    services = FakeServices(grading_judge)
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "llm_judge", "upstream": "j", "initial_views": 1}, 0)
    candidates = [cand(0, "42"), cand(1, "41")]
    first = asyncio.run(verifier.score(ctx, candidates))
    assert set(first.views) == {"llm_judge:rubric_10"} and len(services.chat_calls) == 2

    assert asyncio.run(verifier.add_views(ctx)) is True
    second = asyncio.run(verifier.score(ctx, candidates))
    assert set(second.views) == {"llm_judge:rubric_10", "llm_judge:correctness_yesno"}
    assert len(services.chat_calls) == 4  # only the new template's calls
    assert asyncio.run(verifier.add_views(ctx)) is False  # nothing more to offer

    # The expansion is per request: a new request starts from one view again.
    assert set(asyncio.run(verifier.score(ctx_for(services), candidates)).views) == {"llm_judge:rubric_10"}


def test_mbr_embedding_consensus_embeds_each_candidate_once() -> None:
    services = FakeServices()
    ctx = ctx_for(services)
    verifier = build_verifier({"type": "mbr", "similarity": "embedding", "upstream": "emb"}, 0)
    assert verifier.upstreams == ("emb",)
    first = asyncio.run(verifier.score(ctx, [cand(0, "It is 42"), cand(1, "42!"), cand(2, "41")]))
    # cosine mapped to [0, 1]: agreeing pair 1.0, orthogonal 0.5
    assert first.views["mbr"] == [pytest.approx(0.75), pytest.approx(0.75), pytest.approx(0.5)]
    assert first.usage == Usage(3, 0)
    second = asyncio.run(verifier.score(ctx, [cand(0, "It is 42"), cand(1, "42!"), cand(2, "41"), cand(3, "43")]))
    assert services.embed_calls[-1] == ("emb", ["43"])  # only the new candidate
    assert second.views["mbr"][3] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_mbr_embedding_needs_an_upstream_and_failures_are_missing() -> None:
    with pytest.raises(ValueError, match="upstream"):
        build_verifier({"type": "mbr", "similarity": "embedding"}, 0)

    class Broken(FakeServices):
        async def embed(self, upstream: str, texts: Sequence[str]) -> EmbedReply:
            raise RuntimeError("embedding upstream down")

    verifier = build_verifier({"type": "mbr", "similarity": "embedding", "upstream": "emb"}, 0)
    scored = asyncio.run(verifier.score(ctx_for(Broken()), [cand(0, "a"), cand(1, "b")]))
    assert scored.views["mbr"] == [None, None] and scored.errors == 1
