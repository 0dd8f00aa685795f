"""The shared vocabulary: one home for each small behaviour, and the declared capabilities."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from proxy.config.probe_set import ProbeSettings
from proxy.config.scale import KeySettings, StateSettings
from proxy.config.settings import Config, ConfigError, RouteSettings, parse_config
from proxy.pipeline.endpoints import CHAT, ENDPOINTS, TEXT
from proxy.pipeline.requests import CHAT_PARAMS, TEXT_PARAMS, ChatRequest, CompletionRequest
from proxy.routing import Router
from strategies.best_of_n.loop import BestOfN
from strategies.best_of_n.settings import BestOfNSettings
from strategies.contract import (
    KEY_NAME_PATTERN,
    MODEL_NAME_PATTERN,
    Batch,
    Candidate,
    Outcome,
    RequestOverrides,
    RewardEndpoint,
    RiskReport,
    Sample,
    StopReason,
    Strategy,
    StrategyRequest,
    StrictModel,
    Usage,
    Verifier,
    content_text,
)
from strategies.passthrough import Passthrough, PassthroughSettings
from strategies.registry import STRATEGIES
from strategies.selection.settings import SelectionSettings
from strategies.selection.weighted import canonical_answer
from strategies.settings import StrategySpec
from strategies.verifiers import build_verifiers
from strategies.verifiers.llm_judge import LlmJudgeSettings
from strategies.verifiers.reward_model import RewardModelSettings

ROOT = Path(__file__).resolve().parents[2]
IMAGE = {"type": "image_url", "image_url": {"url": "data:,"}}


# --- content text: one home, explicit joining --------------------------------------------


def test_content_parts_join_with_a_newline() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert content_text(parts) == "first\nsecond"  # never "firstsecond"


def test_attachments_are_dropped_or_marked_on_request() -> None:
    parts = [IMAGE, {"type": "text", "text": "what is this?"}]
    assert content_text(parts) == "what is this?"
    assert content_text(parts, mark_attachments=True) == "[image_url]\nwhat is this?"


def test_content_text_of_every_shape() -> None:
    assert content_text(None) == ""
    assert content_text("plain") == "plain"
    assert content_text({"type": "text", "text": "lone part"}) == "lone part"
    assert content_text([{"type": "refusal", "refusal": "no"}]) == "no"
    assert content_text([{"type": "text", "text": ""}, {"type": "text", "text": "x"}]) == "x"


def test_candidate_text_and_text_prompts_use_the_same_joining() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    candidate = Candidate(0, "original", {"role": "assistant", "content": parts})
    assert candidate.text == "a\nb"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]
    assert TEXT.upstream_input(messages) == "be brief\n\na\nb"


# --- tool calls: one canonical key, order-free ---------------------------------------------


def call(name: str, args: str) -> dict[str, Any]:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": args}}


def test_parallel_tool_calls_in_another_order_are_the_same_answer() -> None:
    one = Candidate(0, "original", {"role": "assistant", "tool_calls": [call("a", '{"x":1, "y":2}'), call("b", "{}")]})
    two = Candidate(1, "original", {"role": "assistant", "tool_calls": [call("b", "{ }"), call("a", '{"y":2,"x":1}')]})
    assert canonical_answer(one) == canonical_answer(two) == 'tool:a({"x":1,"y":2})|b({})'


# --- usage: one parser -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, Usage(3, 4)),
        ({"prompt_tokens": 2.0}, Usage(2, 0)),
        (None, Usage()),
        ([1, 2], Usage()),
        ({"prompt_tokens": "7", "completion_tokens": True}, Usage()),
        ({"prompt_tokens": -5, "completion_tokens": float("nan")}, Usage()),
    ],
)
def test_usage_from_openai_never_fails(raw: Any, expected: Usage) -> None:
    assert Usage.from_openai(raw) == expected


# --- verifier settings: one discriminated parse ---------------------------------------------


def test_verifier_settings_parse_by_type_in_one_pass() -> None:
    settings = BestOfNSettings.model_validate(
        {"verifiers": [{"type": "llm_judge", "upstream": "judge"}, {"type": "self_consistency"}]}
    )
    assert isinstance(settings.verifiers[0], LlmJudgeSettings)
    assert settings.upstreams() == ("judge",)
    assert [v.name for v in build_verifiers(settings.verifiers)] == ["llm_judge", "self_consistency"]


def test_duplicate_verifier_names_fail_the_parse() -> None:
    with pytest.raises(ValueError, match=r"verifiers\.1\.name: 'mbr'"):
        BestOfNSettings.model_validate({"verifiers": [{"type": "mbr"}, {"type": "mbr"}]})


def config(strategy: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "up", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9"}}],
        "routes": [{"model": "r", "upstream": "up", "strategy": strategy}],
        **extra,
    }


def test_config_errors_name_the_verifier_field_without_the_union_tag() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config({"name": "best_of_n", "verifiers": [{"type": "llm_judge", "upstream": "up", "mode": "x"}]}))
    assert "routes.0.strategy.verifiers.0.mode" in str(info.value)
    assert "llm_judge.mode" not in str(info.value)


def test_unknown_verifier_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.verifiers\.0"):
        parse_config(config({"name": "best_of_n", "verifiers": [{"type": "oracle"}]}))


def test_config_asks_verifiers_which_upstreams_they_call() -> None:
    with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.verifiers\.1: unknown upstream 'judge'"):
        parse_config(
            config({"name": "best_of_n", "verifiers": [{"type": "mbr"}, {"type": "llm_judge", "upstream": "judge"}]})
        )
    with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.paraphrase_upstream: unknown upstream 'p'"):
        parse_config(config({"name": "best_of_n", "variants": ["paraphrase"], "paraphrase_upstream": "p"}))


def test_config_asks_verifiers_for_their_secrets() -> None:
    reward = {"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/s", "api_key": "os.environ/RM_KEY"}}
    parsed = parse_config(config({"name": "best_of_n", "verifiers": [reward]}), environ={"RM_KEY": "sk-reward-canary"})
    assert isinstance(parsed.routes[0].strategy, BestOfNSettings)
    assert isinstance(parsed.routes[0].strategy.verifiers[0], RewardModelSettings)
    assert "sk-reward-canary" in parsed.secrets()


# --- strategies: built per route, capabilities declared -------------------------------------


def test_routes_hold_built_strategies_with_declared_capabilities() -> None:
    best_of_n = {"name": "best_of_n", "verifiers": [{"type": "llm_judge", "upstream": "up"}, {"type": "logprob"}]}
    router = Router(parse_config({
        **config({"name": "passthrough"}),
        "routes": [
            {"model": "plain", "upstream": "up"},
            {"model": "best", "upstream": "up", "strategy": best_of_n},
        ],
    }))
    plain, best = router.routes["plain"].strategy, router.routes["best"].strategy
    assert isinstance(plain, Passthrough) and isinstance(best, BestOfN)
    assert (plain.reports, plain.relays_stream, plain.takes_prompt_batches) == (False, True, True)
    assert (best.reports, best.relays_stream, best.takes_prompt_batches) == (True, False, False)
    assert best.needs_logprobs and not plain.needs_logprobs
    assert best.upstreams == ("up",)


def test_capabilities_default_to_not_offered() -> None:
    class Bare(Verifier):
        name = "bare"

    bare = Bare()
    assert (bare.hard, bare.needs_logprobs, bare.extracts_answers, bare.upstreams) == (False, False, False, ())
    assert bare.answer_of(Candidate(0, "original", {"role": "assistant", "content": "4"})) is None
    assert asyncio.run(bare.add_views(None)) is False  # type: ignore[arg-type]
    assert Strategy.reports and not Strategy.relays_stream


def test_the_vote_rule_uses_the_first_verifier_that_extracts_answers() -> None:
    settings = BestOfNSettings.model_validate({"verifiers": [{"type": "mbr"}, {"type": "self_consistency"}]})
    verifiers = build_verifiers(settings.verifiers)
    strategy = BestOfN(settings, verifiers, [])
    assert strategy.answer_of == verifiers[1].answer_of
    assert BestOfN(BestOfNSettings.model_validate({"verifiers": [{"type": "mbr"}]}), [], []).answer_of is None


class ForwardOnly:
    """Services whose only working calls are `forward*`: passthrough must need nothing else."""

    def __init__(self) -> None:
        self.forwarded: list[int] = []
        self.streamed: list[int] = []

    def forward_stream(self, n: int) -> object:
        self.streamed.append(n)
        return iter(())

    async def forward(self, n: int) -> Batch:
        self.forwarded.append(n)
        samples = [Sample({"role": "assistant", "content": f"c{i}"}, "stop") for i in range(n)]
        return Batch(samples, Usage(3, n), errors=1)


def test_passthrough_forwards_the_request_and_returns_every_choice() -> None:
    services = ForwardOnly()
    outcome = asyncio.run(Passthrough().run(StrategyRequest([], n=3), services))  # type: ignore[arg-type]
    assert services.forwarded == [3]
    assert [c.text for c in outcome.candidates] == ["c0", "c1", "c2"]
    assert outcome.stop_reason is StopReason.PASSTHROUGH and outcome.usage == Usage(3, 3)
    assert outcome.upstream_errors == 1 and outcome.risk is None


def test_passthrough_streams_every_choice_the_client_asked_for() -> None:
    services = ForwardOnly()
    Passthrough().stream(StrategyRequest([], n=3), services)  # type: ignore[arg-type]
    assert services.streamed == [3] and services.forwarded == []


# --- endpoints as data -------------------------------------------------------------------------


def test_each_endpoint_is_one_record() -> None:
    assert [(e.name, e.path, e.object, e.chunk_object, e.id_prefix) for e in ENDPOINTS] == [
        ("chat", "/v1/chat/completions", "chat.completion", "chat.completion.chunk", "chatcmpl"),
        ("text", "/v1/completions", "text_completion", "text_completion", "cmpl"),
    ]
    assert (CHAT.request_model, CHAT.params, CHAT.logprobs_on) == (ChatRequest, CHAT_PARAMS, True)
    assert (TEXT.request_model, TEXT.params, TEXT.logprobs_on) == (CompletionRequest, TEXT_PARAMS, 1)


def test_endpoints_render_a_candidate_their_own_way() -> None:
    candidate = Candidate(0, "original", {"role": "assistant", "content": "x" * 100}, "length")
    assert CHAT.choice(candidate) == {"message": {**candidate.message, "refusal": None}}  # OpenAI's fields, null
    upstreams = {"role": "assistant", "content": "y", "refusal": "no", "annotations": []}
    assert CHAT.choice(Candidate(1, "original", upstreams)) == {"message": upstreams}  # kept as sent
    assert TEXT.choice(candidate) == {"text": "x" * 100}
    chat_pieces = CHAT.pieces(candidate, 0)
    assert chat_pieces[0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(p["delta"]["content"] for p in chat_pieces) == "x" * 100
    assert "".join(p["text"] for p in TEXT.pieces(candidate, 0)) == "x" * 100
    assert CHAT.final_piece(candidate, 2) == {"index": 2, "delta": {}, "finish_reason": "length"}
    assert TEXT.final_piece(candidate, 2) == {"index": 2, "text": "", "finish_reason": "length"}


def test_text_prompt_batches_are_not_one_conversation() -> None:
    single = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    batch = CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]})
    assert TEXT.single_input(single) and TEXT.messages(single) == [{"role": "user", "content": "hi"}]
    assert not TEXT.single_input(batch) and TEXT.messages(batch) == []


# --- adding a strategy: one module, one registry line -----------------------------------------


class EchoSettings(StrategySpec):
    name: Literal["echo_first"] = "echo_first"
    prefix: str = Field("echo: ", max_length=20)
    fallback: str | None = None

    def route_references(self) -> list[tuple[str, str]]:
        return [("fallback", self.fallback)] if self.fallback is not None else []


class EchoFirst(Strategy):
    """A toy kind, written as a new module would be: its settings, its build, its run."""

    name = "echo_first"
    Settings = EchoSettings

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @classmethod
    def build(cls, settings: EchoSettings) -> EchoFirst:
        return cls(settings.prefix)

    async def run(self, request: StrategyRequest, services: Any) -> Outcome:
        text = self.prefix + content_text(request.messages[-1]["content"])
        candidate = Candidate(0, "original", {"role": "assistant", "content": text}, "stop")
        return Outcome([candidate], 0, StopReason.MAX_N, Usage(), self.name)


@pytest.fixture
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, EchoFirst.name, EchoFirst)  # the one line a new kind adds


def test_a_new_strategy_is_one_module_and_one_registry_line(echo_registered: None) -> None:
    parsed = parse_config(config({"name": "echo_first", "prefix": ">> "}))
    assert isinstance(parsed.routes[0].strategy, EchoSettings)  # config found its settings type
    route = Router(parsed).routes["r"]
    assert isinstance(route.strategy, EchoFirst)
    outcome = asyncio.run(route.strategy.run(StrategyRequest([{"role": "user", "content": "hi"}]), None))
    assert outcome.candidates[0].text == ">> hi"
    # Its settings are checked like every kind's, located by field; its capabilities are asked.
    with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.prefix"):
        parse_config(config({"name": "echo_first", "prefix": "x" * 21}))
    with pytest.raises(ConfigError, match=r"routes\.0\.strategy\.fallback: 'nowhere' is not another route"):
        parse_config(config({"name": "echo_first", "fallback": "nowhere"}))


def test_an_unknown_strategy_names_the_known_kinds(echo_registered: None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config({"name": "beam_search"}))
    assert "routes.0.strategy" in str(info.value)
    for kind in ("passthrough", "best_of_n", "echo_first"):
        assert kind in str(info.value)


def test_strategy_capabilities_are_declared_with_defaults() -> None:
    class Bare(Strategy):
        name = "bare"

    bare = Bare.build(None)
    assert (bare.verifiers, bare.state, bare.upstreams) == ((), None, ())
    assert bare.use_selector(lambda: None) is None  # offered to every kind; a kind that selects overrides it
    spec = PassthroughSettings()
    assert (spec.route_references(), spec.verifier_specs(), spec.selection_settings()) == ([], (), None)
    assert (spec.reference_k(), spec.token_budget(), spec.upstream_calls(3), spec.secrets()) == (None, None, 3, ())


def test_verifiers_declare_what_audits_and_knockouts_need() -> None:
    judge, pairwise, reward, vote = build_verifiers([
        {"type": "llm_judge", "upstream": "up"},
        {"type": "llm_judge", "upstream": "up", "name": "pairs", "mode": "pairwise"},
        {"type": "reward_model", "endpoint": {"url": "http://127.0.0.1:9/s"}},
        {"type": "self_consistency"},
    ])
    assert [v.kind for v in (judge, reward, vote)] == ["llm_judge", "reward_model", "self_consistency"]
    assert [v.auditable for v in (judge, reward, vote)] == [True, True, False]
    assert [v.judges_pairs for v in (judge, reward, vote)] == [True, False, False]
    assert (judge.orders_itself, pairwise.orders_itself) == (False, True)
    with pytest.raises(NotImplementedError):
        asyncio.run(vote.compare(None, *[Candidate(i, "original", {"content": "x"}) for i in range(2)]))  # type: ignore[arg-type]


# --- one home for each small helper -----------------------------------------------------------


def test_every_config_and_request_model_refuses_unknown_fields() -> None:
    for model in (Config, RouteSettings, KeySettings, StateSettings, ProbeSettings, BestOfNSettings,
                  SelectionSettings, LlmJudgeSettings, RequestOverrides, RewardEndpoint, PassthroughSettings):
        assert issubclass(model, StrictModel), model


def test_label_name_patterns_live_in_the_contract_only() -> None:
    homes = {}
    for path in sorted([*(ROOT / "proxy").rglob("*.py"), *(ROOT / "strategies").rglob("*.py")]):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(r"""^\s*\w*PATTERN\w*\s*=\s*r?["']""", line):
                homes.setdefault(path.relative_to(ROOT).as_posix(), []).append(line.split("=")[0].strip())
    assert homes == {"strategies/contract.py": ["NAME_PATTERN", "MODEL_NAME_PATTERN", "KEY_NAME_PATTERN"]}
    assert KeySettings.model_fields["name"].metadata[0].pattern == KEY_NAME_PATTERN
    assert RouteSettings.model_fields["model"].metadata[0].pattern == MODEL_NAME_PATTERN


def test_risk_components_are_declared_once_and_name_risk_report_fields() -> None:
    from proxy.telemetry.metrics import RISK_COMPONENTS, RISK_TERMS

    assert set(RISK_TERMS) <= {f.name for f in dataclasses.fields(RiskReport)}
    assert RISK_COMPONENTS == (*RISK_TERMS, "recovered")
