"""The adaptive loop, driven by scripted async callables (no server, no network)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.best_of_n.loop import BestOfN, plan_request
from strategies.best_of_n.panel import split
from strategies.best_of_n.settings import BestOfNSettings, StopSettings
from strategies.contract import (
    Batch,
    Candidate,
    Message,
    NoCandidatesError,
    Outcome,
    OverrideError,
    Reply,
    RequestOverrides,
    RewardReply,
    Sample,
    Scored,
    StopReason,
    StrategyRequest,
    Usage,
    Verifier,
    VerifyContext,
)
from strategies.risk.estimators import RouteRiskState

MESSAGES: list[Message] = [{"role": "user", "content": "What is 2 + 2?"}]
SAMPLE_TOKENS = Usage(5, 5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeVariant:
    name: str
    render_usage: Usage = field(default_factory=Usage)
    renders: int = 0

    async def render(self, messages: Sequence[Message], services: object) -> tuple[list[Message], Usage]:
        self.renders += 1
        if self.name == "original":
            return list(messages), Usage()
        return [{"role": "system", "content": f"variant:{self.name}"}, *messages], self.render_usage


def variant_of(messages: Sequence[Message]) -> str:
    first = str(messages[0].get("content"))
    return first.removeprefix("variant:") if first.startswith("variant:") else "original"


class FakeServices:
    """generate() answers from a script: `answer(variant, k)` for the k-th sample overall."""

    def __init__(self, answer: Callable[[str, int], str], *, fail: set[str] = frozenset(),
                 drop_one: bool = False, clock: FakeClock | None = None, tick: float = 0.0,
                 slow_after: int | None = None) -> None:
        self.answer, self.fail, self.drop_one = answer, fail, drop_one
        self.clock, self.tick, self.slow_after = clock, tick, slow_after
        self.calls: list[tuple[str, int]] = []
        self.counter = itertools.count()

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        variant = variant_of(messages)
        self.calls.append((variant, n))
        if self.clock is not None:
            self.clock.now += self.tick
        if self.slow_after is not None and len(self.calls) > self.slow_after:
            await asyncio.sleep(30)
        await asyncio.sleep(0)
        if variant in self.fail:
            raise ConnectionError(f"upstream down for {variant}")
        produced = n - 1 if self.drop_one and n > 1 else n
        samples = [Sample({"role": "assistant", "content": self.answer(variant, next(self.counter))},
                          finish_reason="stop") for _ in range(produced)]
        usage = Usage(SAMPLE_TOKENS.prompt_tokens * produced, SAMPLE_TOKENS.completion_tokens * produced)
        return Batch(samples, usage, errors=n - produced)

    async def chat(self, upstream: str, messages: Sequence[Message], **params: object) -> Reply:
        raise AssertionError("not used")

    async def reward(self, endpoint: object, messages: Sequence[Message], answers: Sequence[str]) -> RewardReply:
        raise AssertionError("not used")


@dataclass
class FakeVerifier(Verifier):
    name: str
    score_of: Callable[[Candidate], float | None]
    weight: float = 1.0
    hard: bool = False
    usage: Usage = field(default_factory=Usage)
    calls: int = 0
    views: int = 1

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        self.calls += 1
        values = [self.score_of(c) for c in candidates]
        shifted = lambda k: [None if v is None else min(max(v + 0.05 * k * (-1) ** c.index, 0), 1)
                             for v, c in zip(values, candidates)]
        return Scored({f"v{k}": shifted(k) for k in range(self.views)}, self.usage, self.hard)


@dataclass
class OpposedViews(Verifier):
    """Views that disagree loudly about near-equal candidates; can add a third view."""

    name: str = "judge"
    weight: float = 1.0
    views: int = 2
    expansions: int = 0

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        def view(k: int) -> list[float | None]:
            high = 0.8 if k % 2 == 0 else 0.81
            return [(0.2 if k % 2 == 0 else high) if c.index % 2 == 0 else (high if k % 2 == 0 else 0.2)
                    for c in candidates]
        return Scored({f"v{k}": view(k) for k in range(self.views)})

    async def add_views(self, ctx: VerifyContext) -> bool:
        if self.views >= 3:
            return False
        self.views += 1
        self.expansions += 1
        return True


class BrokenVerifier(Verifier):
    name, weight = "broken", 1.0

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        raise RuntimeError("judge reply did not parse")


def number_score(c: Candidate) -> float:
    """Distinct, spread-out scores so that no adaptive rule fires by accident."""
    return (int(c.text.split()[-1]) * 0.37) % 1.0


def distinct(variant: str, k: int) -> str:
    return f"answer {k}"


def run(settings: BestOfNSettings, services: FakeServices, *, verifiers: Sequence[object] | None = None,
        variants: Sequence[FakeVariant] | None = None, overrides: RequestOverrides | None = None,
        audit: bool = False, route: RouteRiskState | None = None, clock: Callable[[], float] | None = None,
        answer_of: Callable[[Candidate], str | None] | None = None) -> Outcome:
    verifiers = [FakeVerifier("rm", number_score)] if verifiers is None else verifiers
    variants = [FakeVariant("original")] if variants is None else variants
    strategy = BestOfN(
        settings, verifiers, variants, state=route, answer_of=answer_of,  # type: ignore[arg-type]
        rng=lambda: np.random.default_rng(0), clock=clock or FakeClock(),
    )
    request = StrategyRequest(MESSAGES, overrides=overrides, audit=audit)
    return asyncio.run(strategy.run(request, services))  # type: ignore[arg-type]


SEARCHING = StopSettings(min_gain=0.0, verifier_first=False)  # only caps can stop it


def test_unanimous_votes_stop_after_the_second_batch() -> None:
    services = FakeServices(lambda v, k: "The answer is 4")
    out = run(BestOfNSettings(max_n=16), services, answer_of=lambda c: c.text[-1])
    assert out.stop_reason is StopReason.VOTE_CONFIDENT
    assert len(out.candidates) == 4 and [n for _, n in services.calls] == [2, 2]


def test_batches_double_until_max_n() -> None:
    services = FakeServices(distinct)
    out = run(BestOfNSettings(max_n=12, stop=SEARCHING), services)
    assert out.stop_reason is StopReason.MAX_N
    assert [n for _, n in services.calls] == [2, 2, 4, 4]  # n: 2 → 4 → 8 → 12 (capped)
    assert [c.index for c in out.candidates] == list(range(12))


def test_fixed_n_samples_exactly_max_n_in_one_batch() -> None:
    services = FakeServices(lambda v, k: "4")
    out = run(BestOfNSettings(max_n=8, adaptive=False), services, answer_of=lambda c: c.text)
    assert len(out.candidates) == 8 and services.calls == [("original", 8)]
    assert out.stop_reason is StopReason.MAX_N


def test_deadline_stops_between_batches() -> None:
    clock = FakeClock()
    services = FakeServices(distinct, clock=clock, tick=1.0)
    out = run(BestOfNSettings(max_n=64, deadline_s=1.5, stop=SEARCHING), services, clock=clock)
    assert out.stop_reason is StopReason.DEADLINE and len(out.candidates) == 4


def test_deadline_cuts_a_slow_batch_short() -> None:
    services = FakeServices(distinct, slow_after=1)
    started = time.monotonic()
    out = run(BestOfNSettings(max_n=64, deadline_s=0.2, stop=SEARCHING), services, clock=time.monotonic)
    assert time.monotonic() - started < 5
    assert out.stop_reason is StopReason.DEADLINE and len(out.candidates) == 2


def test_token_budget_is_never_exceeded() -> None:
    services = FakeServices(distinct)  # 10 tokens per candidate, verifier adds none
    out = run(BestOfNSettings(max_n=64, max_tokens_budget=55, stop=SEARCHING), services)
    assert out.stop_reason is StopReason.TOKEN_BUDGET
    assert out.usage.total_tokens <= 55 and len(out.candidates) == 5


def test_partial_upstream_failure_uses_what_succeeded() -> None:
    services = FakeServices(distinct, fail={"cot"}, drop_one=True)
    variants = [FakeVariant("original"), FakeVariant("cot")]
    out = run(BestOfNSettings(max_n=4, adaptive=False), services, variants=variants)
    assert {c.variant for c in out.candidates} == {"original"} and len(out.candidates) == 3
    # batch 1: cot raises + original drops one; then cot raises in each of the three refills
    assert out.upstream_errors == 5
    assert out.stop_reason is StopReason.UPSTREAM_ERRORS  # the last refill produced nothing


def test_every_call_failing_raises() -> None:
    services = FakeServices(distinct, fail={"original"})
    with pytest.raises(NoCandidatesError, match="failed") as info:
        run(BestOfNSettings(max_n=4), services)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_candidates_go_round_robin_over_variants() -> None:
    assert split(0, 5, ["a", "b", "c"], [], set()) == {("a", None): 2, ("b", None): 2, ("c", None): 1}
    assert split(5, 4, ["a", "b", "c"], [], set()) == {("c", None): 2, ("a", None): 1, ("b", None): 1}
    services = FakeServices(distinct)
    variants = [FakeVariant("original"), FakeVariant("cot"), FakeVariant("terse")]
    out = run(BestOfNSettings(max_n=6, adaptive=False), services, variants=variants)
    assert sorted(services.calls) == [("cot", 2), ("original", 2), ("terse", 2)]
    assert [c.variant for c in out.candidates].count("terse") == 2
    assert [c.index for c in out.candidates] == list(range(6))
    assert all(v.renders == 1 for v in variants)


def test_audit_samples_every_variant_to_its_own_budget_and_feeds_the_route() -> None:
    route = RouteRiskState()
    services = FakeServices(lambda v, k: "The answer is 4")
    variants = [FakeVariant("original"), FakeVariant("cot")]
    scores = FakeVerifier("rm", lambda c: 0.9 if c.variant == "cot" else 0.4 + 0.01 * c.index)
    out = run(BestOfNSettings(max_n=4, audit_max_n=10), services, variants=variants, audit=True,
              route=route, verifiers=[scores], answer_of=lambda c: "4")
    assert out.audit and len(out.candidates) == 10
    assert {c.variant for c in out.candidates} == {"original", "cot"}
    assert out.risk is not None and out.risk.sources["prompt"] == "request"
    assert out.risk.prompt is not None and out.risk.prompt > 0
    assert route.count("prompt") == 1 and route.count("candidate") == 1
    plain = run(BestOfNSettings(max_n=2), FakeServices(distinct), route=route)
    assert plain.risk is not None and plain.risk.sources["prompt"] == "route"
    assert plain.risk.prompt == pytest.approx(out.risk.prompt)


def test_overrides_narrow_and_lower_never_raise() -> None:
    base = BestOfNSettings(max_n=4, adaptive=False)
    variants = [FakeVariant("original"), FakeVariant("cot")]
    out = run(base, FakeServices(distinct), variants=variants,
              overrides=RequestOverrides(max_n=100, variants=["cot"]))
    assert len(out.candidates) == 4 and {c.variant for c in out.candidates} == {"cot"}
    with pytest.raises(OverrideError, match="nope"):
        run(base, FakeServices(distinct), overrides=RequestOverrides(variants=["nope"]))
    with pytest.raises(ValueError, match="unknown verifiers"):
        run(base, FakeServices(distinct), overrides=RequestOverrides(verifiers=["judge"]))
    with pytest.raises(OverrideError):
        run(base, FakeServices(distinct), overrides=RequestOverrides(variants=[]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.one_of(st.none(), st.integers(1, 40)), st.booleans(), st.booleans())
def test_overrides_never_raise_the_cap(route_max: int, asked: int | None, adaptive: bool, audit: bool) -> None:
    s = BestOfNSettings(max_n=route_max, audit_max_n=max(route_max, 2), stop=SEARCHING)
    overrides = RequestOverrides(max_n=asked, adaptive=adaptive)
    plan = plan_request(s, overrides, [FakeVariant("original")], [], audit)
    cap = s.audit_max_n if audit else route_max
    assert plan.max_n == (cap if asked is None else min(cap, asked))
    out = run(s, FakeServices(distinct), overrides=overrides, audit=audit)
    assert len(out.candidates) <= plan.max_n


def test_usage_counts_generation_rendering_and_verification() -> None:
    verifier = FakeVerifier("judge", number_score, usage=Usage(3, 1))
    variants = [FakeVariant("original"), FakeVariant("para", render_usage=Usage(7, 2))]
    out = run(BestOfNSettings(max_n=4, adaptive=False), FakeServices(distinct), verifiers=[verifier],
              variants=variants)
    assert out.usage == Usage(5 * 4 + 7 + 3 * verifier.calls, 5 * 4 + 2 + verifier.calls)
    assert set(out.timings) >= {"generate", "verify", "select", "risk"}


def test_a_broken_verifier_is_missing_not_fatal() -> None:
    out = run(BestOfNSettings(max_n=4, adaptive=False), FakeServices(distinct),
              verifiers=[BrokenVerifier(), FakeVerifier("rm", number_score)])
    assert list(out.view_scores) == ["rm:v0"]
    best = max(range(4), key=lambda i: number_score(out.candidates[i]))
    assert out.selected == best


def test_outcome_carries_choice_scores_and_risk() -> None:
    verifier = FakeVerifier("judge", number_score, views=2)
    out = run(BestOfNSettings(max_n=8, adaptive=False), FakeServices(distinct), verifiers=[verifier])
    assert out.strategy == "best_of_n" and out.variants == ["original"]
    assert len(out.scores) == 8 and out.scores[out.selected] == max(out.scores)  # type: ignore[type-var]
    assert set(out.view_scores) == {"judge:v0", "judge:v1"}
    assert out.risk is not None and out.risk.k_ref == 64
    assert out.risk.residual_terms == ["candidate", "verifier"]  # a judge's scores: no vote floor
    assert out.verifier_disagreement == out.risk.verifier


def test_verifier_first_asks_for_more_views_before_more_candidates() -> None:
    # near-equal utilities (tiny D_n), loudly disagreeing views (large V̂r)
    verifier = OpposedViews()
    services = FakeServices(distinct)
    out = run(BestOfNSettings(max_n=8, stop=StopSettings(min_gain=0.0)), services, verifiers=[verifier])
    assert verifier.expansions == 1 and len(out.view_scores) == 3
    assert [n for _, n in services.calls] == [2, 2, 4]  # views were added, sampling still went on


def test_verifier_first_can_be_switched_off() -> None:
    verifier = OpposedViews()
    run(BestOfNSettings(max_n=8, stop=StopSettings(min_gain=0.0, verifier_first=False)),
        FakeServices(distinct), verifiers=[verifier])
    assert verifier.expansions == 0


# --- answers without numbers: the majority is seen (the candidate sets) ----------------

EVERYDAY = {
    "capital of France": (
        ["Paris", "31.5 million", "17,942,365", "Paris", "Paris", "France is a country in Western Europe.", "Paris",
         "Paris"],
        "Paris",
    ),
    "capital of Italy": (["25.", "Rome", "Rome.", "The capital of Italy is Rome.", "Rome", "Milan", "Rome", "rome"],
                         "Rome"),
    "thank you in Spanish": (
        ["1. La gente agradece mucho.", "Gracias", "Gracias.", "gracias", "Muchas gracias", "Gracias!", "Gracias",
         "De nada"],
        "Gracias",
    ),
}


@pytest.mark.parametrize("question", sorted(EVERYDAY))
def test_a_free_text_majority_beats_a_lone_number(question: str) -> None:
    answers, expected = EVERYDAY[question]
    settings = BestOfNSettings(max_n=8, adaptive=False)
    strategy = BestOfN.build(settings)  # the default verifier: self-consistency
    services = FakeServices(lambda variant, k: answers[k])
    request = StrategyRequest([{"role": "user", "content": f"What is the {question}?"}])
    out = asyncio.run(strategy.run(request, services))  # type: ignore[arg-type]
    chosen = out.candidates[out.selected].text
    assert chosen.lower().strip(".!") == expected.lower()


def test_prose_without_an_extractable_answer_is_clustered_not_left_unscored() -> None:
    prose = "It depends on the season and on where you stand in the valley, honestly speaking."
    answers = [prose, prose.replace("honestly", "truly"), prose, "42 apples", prose.upper(), prose, "I don't know.",
               prose]
    strategy = BestOfN.build(BestOfNSettings(max_n=8, adaptive=False))
    out = asyncio.run(strategy.run(StrategyRequest(MESSAGES), FakeServices(lambda v, k: answers[k])))  # type: ignore[arg-type]
    assert "season" in out.candidates[out.selected].text.lower()  # six alike beat one number
    scores = out.view_scores["self_consistency"]
    assert scores[3] == 1 / 8 and scores[6] is None  # the number keeps its share; "I don't know" abstains
    assert scores[0] == 6 / 8


def test_eight_distinct_answers_under_the_vote_are_never_reported_risk_free() -> None:
    strategy = BestOfN.build(BestOfNSettings(max_n=8, adaptive=False))  # self-consistency: a vote
    out = asyncio.run(strategy.run(StrategyRequest(MESSAGES), FakeServices(distinct)))  # type: ignore[arg-type]
    assert out.risk is not None and out.risk.disagreement is not None
    low, high = out.risk.intervals["residual"]
    assert out.risk.residual is not None and out.risk.residual > 0 and high > low
    assert "disagreement" in out.risk.residual_terms
