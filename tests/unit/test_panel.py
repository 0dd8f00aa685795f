"""Panels (issue 23): candidates from several upstreams, split by weight, failures dropped."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.config.settings import ConfigError, call_ceiling, parse_config
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.panel import PanelistSettings, drop_reason, split, weighted_order
from strategies.best_of_n.settings import BestOfNSettings
from strategies.contract import Batch, Message, NoCandidatesError, Sample, StrategyRequest, Usage
from strategies.verifiers import build_verifiers


class Failure(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class PanelServices:
    """Each upstream answers with its own text; `failing` upstreams raise with their code."""

    def __init__(self, answers: dict[str, str], failing: dict[str, str] | None = None) -> None:
        self.answers = answers
        self.failing = failing or {}
        self.calls: list[tuple[str | None, int]] = []

    async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
        self.calls.append((upstream, n))
        if upstream in self.failing:
            raise Failure(self.failing[upstream])
        text = self.answers[upstream or "own"]
        return Batch([Sample({"role": "assistant", "content": text}, "stop") for _ in range(n)], Usage(3, n))


class _Original:
    name = "original"

    async def render(self, messages: Sequence[Message], services: object) -> tuple[list[Message], Usage]:
        return list(messages), Usage()


def route(**settings: object) -> BestOfN:
    parsed = BestOfNSettings.model_validate({"verifiers": [{"type": "self_consistency"}], **settings})
    return BestOfN(parsed, build_verifiers(parsed.verifiers), [_Original()], rng=lambda: np.random.default_rng(0))


def ask(strategy: BestOfN, services: PanelServices, question: str = "What is 6 times 7?"):
    return asyncio.run(strategy.run(StrategyRequest([{"role": "user", "content": question}]), services))  # type: ignore[arg-type]


@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(1, 200))
def test_the_weighted_order_keeps_every_prefix_within_one_of_its_share(weights: list[int], length: int) -> None:
    order = weighted_order([float(w) for w in weights], length)
    for prefix in range(1, length + 1):
        counts = Counter(order[:prefix])
        for i, w in enumerate(weights):
            assert abs(counts[i] - prefix * w / sum(weights)) < 1.0 + 1e-9


def test_a_batch_splits_by_weight_and_every_variant_reaches_every_panelist() -> None:
    panel = [PanelistSettings(upstream="big", weight=1), PanelistSettings(upstream="small", weight=3)]
    assert split(0, 8, ["original"], panel, set()) == {("original", "small"): 6, ("original", "big"): 2}
    both = split(0, 8, ["a", "b"], [PanelistSettings(upstream="x"), PanelistSettings(upstream="y")], set())
    assert both == {("a", "x"): 2, ("b", "x"): 2, ("a", "y"): 2, ("b", "y"): 2}
    assert split(0, 4, ["a"], [], set()) == {("a", None): 4}  # no panel: the route's own upstream


def test_a_dropped_panelists_share_goes_to_the_others() -> None:
    panel = [PanelistSettings(upstream="big"), PanelistSettings(upstream="small")]
    assert split(2, 4, ["original"], panel, {"big"}) == {("original", "small"): 4}
    assert split(2, 4, ["original"], panel, {"big", "small"}) == {}


def test_drop_reasons_come_from_the_errors_code() -> None:
    assert drop_reason(Failure("rate_limited")) == "rate_limited"
    assert drop_reason(Failure("upstream_timeout")) == "timeout"
    assert drop_reason(TimeoutError()) == "timeout"
    assert drop_reason(ValueError("x")) == "error"


def test_a_panel_route_pools_candidates_from_every_panelist() -> None:
    services = PanelServices({"big": "42", "small": "42"})
    out = ask(route(max_n=8, adaptive=False, panel=[{"upstream": "big"}, {"upstream": "small", "weight": 3}]), services)
    assert [c.upstream for c in out.candidates].count("small") == 6
    assert out.panel is not None and out.panel["candidates"] == {"big": 2, "small": 6}
    assert out.panel["dropped"] == {} and out.panel["selected_upstream"] in ("big", "small")


def test_a_failing_panelist_is_dropped_and_the_request_goes_on() -> None:
    services = PanelServices({"small": "42"}, failing={"big": "rate_limited"})
    out = ask(route(max_n=8, adaptive=False, panel=[{"upstream": "big"}, {"upstream": "small"}]), services)
    assert len(out.candidates) == 8 and {c.upstream for c in out.candidates} == {"small"}
    assert out.panel is not None and out.panel["dropped"] == {"big": "rate_limited"}
    assert services.calls.count(("big", 4)) == 1  # asked once, then never again in this request


def test_min_panel_refuses_an_answer_from_too_few_panelists() -> None:
    services = PanelServices({"small": "42"}, failing={"big": "upstream_timeout"})
    strategy = route(max_n=4, adaptive=False, min_panel=2, panel=[{"upstream": "big"}, {"upstream": "small"}])
    with pytest.raises(NoCandidatesError, match="1 of the panel's 2 upstreams"):
        ask(strategy, services)


def test_clusters_carry_cross_model_features() -> None:
    services = PanelServices({"big": "42", "small": "41"})
    out = ask(route(max_n=4, adaptive=False, panel=[{"upstream": "big"}, {"upstream": "small"}]), services)
    features = {row["representative"]: row["features"] for row in out.clusters}
    for row in features.values():
        assert row["panel_support"] == 0.5  # each answer came from one of the two models
        assert sorted((row["m:big"], row["m:small"])) == [0.0, 1.0]


def test_panel_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="once"):
        BestOfNSettings.model_validate({"panel": [{"upstream": "a"}, {"upstream": "a"}]})
    with pytest.raises(ValidationError, match="min_panel"):
        BestOfNSettings.model_validate({"panel": [{"upstream": "a"}], "min_panel": 2})
    with pytest.raises(ValidationError, match="min_panel needs"):
        BestOfNSettings.model_validate({"min_panel": 2})


def _config(route: dict) -> dict:
    ups = [{"name": name, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9/v1"},
            "retries": retries} for name, retries in (("big", 0), ("small", 3), ("fuse", 1))]
    return {"upstreams": ups, "routes": [route]}


def test_a_route_has_an_upstream_or_a_panel_and_the_ceiling_counts_the_panel() -> None:
    panel = {"name": "best_of_n", "max_n": 4, "panel": [{"upstream": "big"}, {"upstream": "small"}]}
    config = parse_config(_config({"model": "p", "strategy": panel}))
    route_settings = config.routes[0]
    assert route_settings.primary_upstream == "big"
    assert call_ceiling(config, route_settings) == route_settings.strategy.upstream_calls(8) * 4  # small's 1 + 3 retries
    with pytest.raises(ConfigError, match="not both"):
        parse_config(_config({"model": "p", "upstream": "big", "strategy": panel}))
    with pytest.raises(ConfigError, match="unknown upstream 'nope'"):
        parse_config(_config({"model": "p", "strategy": {**panel, "panel": [{"upstream": "nope"}]}}))
    with pytest.raises(ConfigError, match="upstream: required"):
        parse_config(_config({"model": "p"}))


def test_auto_weights_follow_gold_accuracy_per_token_and_never_starve_a_panelist() -> None:
    from strategies.best_of_n.panel import AUTO_MIN_SHARE, PanelStats

    stats = PanelStats(min_items=10)
    panel = [PanelistSettings(upstream="big", weight="auto"), PanelistSettings(upstream="small", weight="auto"),
             PanelistSettings(upstream="fixed", weight=2.0)]
    assert [p.weight for p in stats.resolve(panel)] == [1.0, 1.0, 2.0]  # learning: equal
    for i in range(10):
        stats.observe_gold("big", 1.0)
        stats.observe_gold("small", 1.0 if i < 5 else 0.0)
    stats.observe_tokens("big", 1000, 10)  # 100 tokens a candidate, right every time
    assert [p.weight for p in stats.resolve(panel)] == [1.0, 1.0, 2.0]  # small's cost is not known yet
    stats.observe_tokens("small", 200, 10)  # 20 tokens a candidate, right half the time: 2.5× the value
    big, small, fixed = (p.weight for p in stats.resolve(panel))
    assert fixed == 2.0 and big + small == pytest.approx(2.0) and small / big == pytest.approx(2.5)
    stats = PanelStats(min_items=1)  # a panelist never right keeps the floor
    stats.observe_gold("big", 1.0), stats.observe_gold("small", 0.0)
    stats.observe_tokens("big", 10, 1), stats.observe_tokens("small", 10, 1)
    big, small, _ = (p.weight for p in stats.resolve(panel))
    assert small / (big + small) == pytest.approx(AUTO_MIN_SHARE)


def test_an_auto_panel_learns_its_split_from_gold_and_requests() -> None:
    strategy = route(max_n=8, adaptive=False, panel_min_items=4,
                     panel=[{"upstream": "big", "weight": "auto"}, {"upstream": "small", "weight": "auto"}])
    services = PanelServices({"big": "42", "small": "41"})
    first = ask(strategy, services)
    assert first.panel is not None and first.panel["weights"] == {"big": 1.0, "small": 1.0}
    request = StrategyRequest([{"role": "user", "content": "What is 6 times 7?"}])
    reference = asyncio.run(strategy.reference(request, services, 8))  # type: ignore[arg-type]
    assert Counter(c.upstream for c in reference) == {"big": 4, "small": 4}

    def right(candidate: object) -> float:
        return 1.0 if getattr(candidate, "text") == "42" else 0.0

    asyncio.run(strategy.learn_from_gold(request, services, reference, right, "q0"))  # type: ignore[arg-type]
    later = ask(strategy, services)
    assert later.panel is not None
    weights = later.panel["weights"]
    assert weights["big"] > weights["small"] and [c.upstream for c in later.candidates].count("big") >= 6


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=8), st.floats(0.0, 0.12))
def test_floored_shares_sum_to_one_and_respect_the_floor(values: list[float], floor: float) -> None:
    from strategies.best_of_n.panel import floored

    shares = floored(values, floor)
    assert sum(shares) == pytest.approx(1.0)
    assert all(share >= floor - 1e-12 for share in shares)
    above = [(v, s) for v, s in zip(values, shares, strict=True) if s > floor + 1e-9]
    for (v1, s1), (v2, s2) in zip(above, above[1:], strict=False):  # the unfloored keep their proportions
        assert s1 * v2 == pytest.approx(s2 * v1, abs=1e-9)


def test_a_tied_vote_goes_to_the_answer_other_models_agree_with() -> None:
    """3 votes for 41 from one model against 3 for 42 from both: within a model, agreement is the
    correlation a panel is there to outvote, so the tie goes to what the other model also says."""
    answers = {"big": ["41", "41", "41", "42"], "small": ["42", "42", "43", "44"]}

    class Split(PanelServices):
        async def generate(self, messages: Sequence[Message], n: int, upstream: str | None = None) -> Batch:
            texts, answers[upstream or ""] = answers[upstream or ""][:n], answers[upstream or ""][n:]
            return Batch([Sample({"role": "assistant", "content": f"The answer is {t}."}, "stop") for t in texts])

    out = ask(route(max_n=8, adaptive=False, panel=[{"upstream": "big"}, {"upstream": "small"}]), Split({}))
    assert out.chosen.text == "The answer is 42."
    assert out.selection is not None and out.selection["tie_break"]["by"] == "consensus"


def test_a_tie_is_not_decided_by_the_last_bit_of_a_sum() -> None:
    from strategies.contract import Candidate
    from strategies.selection.weighted import break_tie

    # Equal similarities summed in another order: #4..#6 came out one rounding step above #0, #2, #7.
    answers = [94927, 20302, 94927, 20302, 68860, 68860, 68860, 94927]
    text = "Working through item 2 step by step, checking each part. The answer is {}."
    candidates = [Candidate(i, "o", {"role": "assistant", "content": text.format(a)})
                  for i, a in enumerate(answers)]
    assert break_tie(candidates, [0, 2, 4, 5, 6, 7])[0] == 0
