"""Stopping that learns the route's prior (method §4.6) and smaller steps after the first batch (§4.7)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.prior import VotePrior, tally
from strategies.best_of_n.settings import BestOfNSettings, PriorSettings, StopSettings
from strategies.best_of_n.stopping import Caps, Evidence, decide
from strategies.contract import Batch, Message, Sample, StopReason, StrategyRequest, Usage

QUESTION: list[Message] = [{"role": "user", "content": "What is 6*7?"}]
CAPS = Caps(n=2, max_n=16)


def certain(counts: tuple[int, int, int]) -> float:
    return 0.999


class Answers:
    """A `Services` whose samples follow a script of answers, in order, request after request."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.batches: list[int] = []
        self.position = 0

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        self.batches.append(n)
        texts = [self.answers[(self.position + i) % len(self.answers)] for i in range(n)]
        self.position += n
        return Batch([Sample({"role": "assistant", "content": f"The answer is {t}."}, "stop") for t in texts],
                     Usage(3 * n, 5 * n))


def serve(strategy: BestOfN, services: Answers) -> tuple[int, StopReason]:
    outcome = asyncio.run(strategy.run(StrategyRequest(QUESTION), services))  # type: ignore[arg-type]
    return len(outcome.candidates), outcome.stop_reason


def test_a_learned_prior_stops_two_agreeing_votes_that_the_beta_rule_would_not() -> None:
    evidence = Evidence(answers=["42", "42"])
    assert decide(StopSettings(), evidence, CAPS).stop is None  # the Beta rule needs four
    assert decide(StopSettings(), evidence, CAPS, posterior=certain).stop is StopReason.VOTE_CONFIDENT
    assert decide(StopSettings(prior=None), evidence, CAPS, posterior=certain).stop is None  # switched off
    assert decide(StopSettings(prior=PriorSettings(confidence=0.9999)), evidence, CAPS, posterior=certain).stop is None


def test_one_vote_is_never_agreement_and_nothing_learned_adds_nothing() -> None:
    assert decide(StopSettings(), Evidence(answers=["42", None]), CAPS, posterior=certain).stop is None
    assert decide(StopSettings(), Evidence(answers=["42", "42"]), CAPS, posterior=lambda c: None).stop is None


def doubtful(counts: tuple[int, int, int]) -> float:
    return 0.5  # a prior that trusts nothing


def test_the_learned_rule_only_adds_stops_to_the_beta_rule() -> None:
    assert decide(StopSettings(), Evidence(answers=["42"] * 4), Caps(n=4, max_n=16), posterior=doubtful).stop \
        is StopReason.VOTE_CONFIDENT


def test_a_route_learns_its_prior_from_its_requests_and_then_stops_at_two() -> None:
    prior = VotePrior(min_requests=5, window_s=3600, refit_s=0.0)
    strategy = BestOfN.build(BestOfNSettings(max_n=16))
    strategy = BestOfN(strategy.settings, strategy.verifiers, strategy.variants, prior=prior,
                       rng=lambda: np.random.default_rng(0))
    easy = Answers(["42"])
    seen = [serve(strategy, easy) for _ in range(5)]
    assert seen == [(4, StopReason.VOTE_CONFIDENT)] * 5  # the Beta rule alone: four unanimous votes
    assert serve(strategy, easy) == (2, StopReason.VOTE_CONFIDENT)
    assert prior.histogram() == {(4, 0, 0): 5.0, (2, 0, 0): 1.0}
    assert strategy.shared_counts["vote_prior"] is prior.counts  # what the proxy shares


def test_a_hard_route_keeps_sampling() -> None:
    prior = VotePrior(min_requests=5, window_s=3600, refit_s=0.0)
    for _ in range(40):  # two answers neck and neck, request after request
        prior.observe(["42", "41"] * 4)
    strategy = BestOfN.build(BestOfNSettings(max_n=16))
    strategy = BestOfN(strategy.settings, strategy.verifiers, strategy.variants, prior=prior)
    assert serve(strategy, Answers(["42"])) == (4, StopReason.VOTE_CONFIDENT)  # as the Beta rule would


def test_later_batches_can_grow_by_smaller_steps() -> None:
    services = Answers(["42", "41", "43", "42", "44", "45", "46"])
    strategy = BestOfN.build(BestOfNSettings(max_n=6, later_batch=1, stop=StopSettings(prior=None)))
    n, stop = serve(strategy, services)
    assert services.batches == [2, 1, 1, 1, 1] and (n, stop) == (6, StopReason.MAX_N)
    doubling = Answers(["42", "41", "43", "42", "44", "45", "46"])
    serve(BestOfN.build(BestOfNSettings(max_n=6, stop=StopSettings(prior=None))), doubling)
    assert doubling.batches == [2, 2, 2]


def test_smaller_steps_raise_the_call_ceiling_with_the_number_of_batches() -> None:
    judged = {"type": "llm_judge", "upstream": "judge", "mode": "pairwise"}
    doubling = BestOfNSettings.model_validate({"max_n": 16, "verifiers": [judged]})
    stepping = BestOfNSettings.model_validate({"max_n": 16, "later_batch": 1, "verifiers": [judged]})
    assert stepping.upstream_calls(1) > doubling.upstream_calls(1)


def test_probe_reference_draws_teach_the_prior_unstopped() -> None:
    prior = VotePrior(min_requests=1, window_s=3600, refit_s=0.0)
    strategy = BestOfN.build(BestOfNSettings(max_n=4, k_ref=8))
    strategy = BestOfN(strategy.settings, strategy.verifiers, strategy.variants, prior=prior)
    reference = asyncio.run(strategy.reference(StrategyRequest(QUESTION), Answers(["42", "42", "41"]), 8))  # type: ignore[arg-type]
    asyncio.run(strategy.learn_from_gold(StrategyRequest(QUESTION), Answers([]), reference,  # type: ignore[arg-type]
                                         lambda c: 1.0 if "42" in c.text else 0.0, "q1"))
    assert prior.histogram() == {tally(["42"] * 6 + ["41"] * 2): 1.0}
