"""Cost in plain sight (method §4.8): `rvr.cost`, and the gain and tokens-per-point gauges."""

from __future__ import annotations

import math

from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

from proxy.server.openapi import COST
from proxy.server.responses import rvr_body
from proxy.telemetry.recording import RequestRecord, finish
from strategies.contract import Candidate, Outcome, StopReason, Usage

GAIN = {"n": 4, "estimate": 0.05, "ci90": [0.01, 0.09], "items": 40, "best_n": 8, "adapted": True}


def outcome(tokens: int, plain: int | None, gain: dict | None = None, n: int = 4) -> Outcome:
    candidates = [Candidate(i, "original", {"role": "assistant", "content": "42"}) for i in range(n)]
    return Outcome(candidates, 0, StopReason.VOTE_CONFIDENT, Usage(tokens // 2, tokens - tokens // 2), "best_of_n",
                   plain_usage=None if plain is None else Usage(plain // 2, plain - plain // 2), gain=gain)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_rvr_cost_names_tokens_candidates_the_multiple_and_the_gain() -> None:
    answered = outcome(400, 100, GAIN)
    answered.usage_by_upstream = {"big": Usage(150, 150), "judge": Usage(90, 10)}
    cost = rvr_body(answered, "r", details=False)["cost"]
    assert cost == {
        "upstream_tokens": 400, "candidates": 4, "single_call_tokens": 100, "multiple": 4.0, "gain": GAIN,
        "by_upstream": {
            "big": {"prompt_tokens": 150, "completion_tokens": 150, "total_tokens": 300},
            "judge": {"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100},
        },
    }
    Draft202012Validator(COST).validate(cost)


def test_rvr_cost_without_a_plain_call_or_gold_says_so() -> None:
    cost = rvr_body(outcome(0, None), "r", details=False)["cost"]
    assert cost["multiple"] is None and cost["single_call_tokens"] is None and cost["gain"] is None
    Draft202012Validator(COST).validate(cost)


def test_a_finished_request_sets_the_gain_and_tokens_per_point() -> None:
    record = RequestRecord("req-1", "chat", route="cost-route", strategy="best_of_n", outcome=outcome(400, 100, GAIN))
    finish(record, log_prompts=False)
    assert gauge("rvr_route_gain", route="cost-route", bound="estimate") == 0.05
    assert gauge("rvr_route_gain", route="cost-route", bound="lower") == 0.01
    assert gauge("rvr_route_gain", route="cost-route", bound="upper") == 0.09
    assert gauge("rvr_tokens_per_point", route="cost-route") == 300 / 5  # 300 extra tokens for 5 points


def test_a_gain_of_nothing_costs_infinitely_many_tokens_per_point() -> None:
    nothing = {**GAIN, "n": 1, "estimate": 0.0, "ci90": [0.0, 0.0]}
    finish(RequestRecord("req-2", "chat", route="flat-route", strategy="best_of_n",
                         outcome=outcome(300, 100, nothing)), log_prompts=False)
    assert gauge("rvr_tokens_per_point", route="flat-route") == math.inf


def test_no_gold_no_gauge() -> None:
    finish(RequestRecord("req-3", "chat", route="new-route", strategy="best_of_n", outcome=outcome(300, 100)),
           log_prompts=False)
    assert gauge("rvr_route_gain", route="new-route", bound="estimate") is None
    assert gauge("rvr_tokens_per_point", route="new-route") is None
