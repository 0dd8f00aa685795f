"""Strategy routes through the real proxy, the openai SDK and the loopback stub upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer


def ask(client: openai.OpenAI, model: str, content: str = "What is 6*7? p=0.6", **kwargs: Any) -> Any:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )
    return raw, raw.parse()


def rvr(completion: Any) -> dict[str, Any]:
    extension = completion.model_extra["rvr"]
    assert isinstance(extension, dict)
    return extension


def test_adaptive_stops_once_the_vote_is_confident(client: openai.OpenAI) -> None:
    raw, completion = ask(client, "math-best", "What is 6*7? p=1.0")
    info = rvr(completion)
    # Two unanimous votes give P = 0.875 < 0.95; four give 0.969: the loop stops at four.
    assert info["candidates"] == 4 and info["stop_reason"] == "vote_confident"
    assert raw.headers["x-rvr-route"] == "math-best" and raw.headers["x-rvr-candidates"] == "4"
    assert completion.choices[0].message.content == "Let me think. The answer is 42."
    assert completion.model == "math-best"
    assert info["route"] == "math-best" and info["strategy"] == "best_of_n"
    assert len(info["scores"]) == 4 and info["selected"] in range(4)


def test_fixed_best_of_n_samples_exactly_max_n_and_counts_every_token(client: openai.OpenAI, stub: StubServer) -> None:
    _, completion = ask(client, "math-fixed")
    info = rvr(completion)
    assert info["candidates"] == 8 and info["stop_reason"] == "max_n"
    # Each candidate is "Let me think. The answer is NN." = 7 words; prompt "What is 6*7? p=0.6" = 4 words,
    # paid once for the single n=8 call.
    assert completion.usage.completion_tokens == 8 * 7
    assert completion.usage.prompt_tokens == 4
    risk = info["risk"]
    assert risk["k_ref"] == 64
    assert set(risk) >= {"baseline", "residual", "candidate", "prompt", "verifier"}
    assert risk["candidate"] is not None and risk["prompt"] is None  # no variants: unknown, not 0


def test_majority_answer_wins_with_self_consistency(client: openai.OpenAI) -> None:
    prompt = "What is 6*7? p=0.8"
    wins = sum("42" in (ask(client, "math-fixed", prompt)[1].choices[0].message.content or "") for _ in range(6))
    assert wins >= 5  # p=0.8 against four scattered wrong answers: majority of 8 is wrong < 0.1% of the time


def test_client_overrides_lower_caps_but_never_raise_them(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    _, low = ask(client, "math-fixed", extra_body={"rvr": {"max_n": 2}})
    assert rvr(low)["candidates"] == 2
    _, high = ask(client, "math-fixed", extra_body={"rvr": {"max_n": 500}})
    assert rvr(high)["candidates"] == 8
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "math-fixed", extra_body={"rvr": {"verifiers": ["no_such_verifier"]}})
    assert caught.value.body["param"] == "rvr"
    with pytest.raises(openai.BadRequestError):
        ask(client, "math-fixed", extra_body={"rvr": {"max_n": 0}})
    _, detailed = ask(client, "math-fixed", extra_body={"rvr": {"max_n": 2, "details": True}})
    assert len(rvr(detailed)["candidate_texts"]) == 2
    assert rvr(detailed)["answer_types"] == ["number", "number"] and rvr(detailed)["answer_type"] == "number"


def test_variants_spread_candidates_and_reach_the_upstream(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("math"))
    _, completion = ask(
        client, "math-variants", "What is 6*7? p=0.5", extra_body={"rvr": {"max_n": 6, "adaptive": False}}
    )
    info = rvr(completion)
    assert info["variants"] == ["original", "step_by_step", "reread"]
    assert sorted(info["candidate_variants"]) == sorted(["original", "step_by_step", "reread"] * 2)
    sent = [json.dumps(b["messages"]) for b in stub.state.bodies("math")[before:]]
    assert any("step by step" in s.lower() for s in sent)
    assert any("again" in s.lower() for s in sent)  # re-reading repeats the question


def test_paraphrase_variant_is_an_llm_call_counted_in_usage(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("paraphrase"))
    _, completion = ask(
        client,
        "math-variants",
        "What is 6*7? p=0.5",
        extra_body={"rvr": {"max_n": 2, "adaptive": False, "variants": ["original"]}},
    )
    assert rvr(completion)["variants"] == ["original"]
    assert len(stub.state.bodies("paraphrase")) == before  # not asked for, not paid for


def test_llm_judge_views_and_their_tokens(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("judge"))
    _, completion = ask(client, "math-judge", "What is 6*7? p=0.5")
    info = rvr(completion)
    judged = stub.state.bodies("judge")[before:]
    assert len(judged) == 4 * 2  # four candidates, two templates, each a separate view
    assert set(info["views"]) == {"llm_judge:rubric_10", "llm_judge:correctness_yesno"}
    assert all(b.get("temperature") == 0 for b in judged)
    candidate_tokens = 4 * 7
    assert completion.usage.completion_tokens > candidate_tokens  # judges' replies are counted
    assert "42" in (completion.choices[0].message.content or "") or all(
        s is not None and s < 0.5 for s in info["scores"]
    )


@pytest.mark.parametrize(("model", "rules"), [
    ("math-fixed", {"vote", "consensus"}),  # self-consistency alone: a vote (consensus if all agree)
    ("math-judge", {"score", "consensus"}),
    ("math-all", {"score", "consensus"}),
])
def test_the_response_explains_its_own_choice(client: openai.OpenAI, model: str, rules: set[str]) -> None:
    info = rvr(ask(client, model, "What is 6*7? p=0.5")[1])
    selection, scores, selected = info["selection"], info["scores"], info["selected"]
    assert selection["rule"] in rules and selection["over"] == "candidates" and selection["chosen"] == selected
    compared = selection["compared"]
    assert len(compared) == len(scores) and compared[selected] is not None
    assert compared[selected] >= max(v for v in compared if v is not None) - 1e-9  # the winner of what it compared
    served = scores[selected]
    higher = [i for i, s in enumerate(scores) if s is not None and (served is None or s > served + 1e-9)]
    assert selection["higher_scores"] == higher and all(f"#{i}" in selection["why"] for i in higher)
    assert f"#{selected} chosen by {selection['rule']}" in info["summary"]
    assert "clusters" not in selection  # the answers stay behind `details`


def test_every_verifier_kind_scores(client: openai.OpenAI, stub: StubServer) -> None:
    scored_before = len([r for r in stub.state.requests if r["_path"].endswith("/score")])
    math_before = len(stub.state.bodies("math"))
    _, completion = ask(client, "math-all", "What is 6*7? p=0.5")
    info = rvr(completion)
    assert set(info["views"]) == {"self_consistency", "mbr", "logprob", "reward_model", "regex"}
    for name, values in info["views"].items():
        assert len(values) == 4 and all(v is None or 0 <= v <= 1 for v in values), name
    assert len([r for r in stub.state.requests if r["_path"].endswith("/score")]) > scored_before
    assert all(b.get("logprobs") is True for b in stub.state.bodies("math")[math_before:])
    if any("42" in t for t in [completion.choices[0].message.content or ""]):
        assert info["scores"][info["selected"]] == max(s for s in info["scores"] if s is not None)


def test_json_schema_from_response_format_disqualifies_invalid_candidates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    for _ in range(3):
        _, completion = ask(
            client,
            "json-best",
            "Answer in JSON",
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
        info = rvr(completion)
        if any(v == 1.0 for v in info["views"]["json_schema"]):
            assert json.loads(completion.choices[0].message.content) == {"answer": 42}


def test_plugin_verifier(client: openai.OpenAI) -> None:
    _, completion = ask(client, "math-plugin", "What is 6*7? p=0.5")
    info = rvr(completion)
    assert set(info["views"]) == {"plugin"}
    lengths = [len(t) for t in [completion.choices[0].message.content or ""]]
    assert info["scores"][info["selected"]] == max(info["scores"])
    assert lengths


def test_tool_call_candidates_stay_structured(client: openai.OpenAI) -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    ]
    _, completion = ask(client, "tools-best", "weather?", tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert rvr(completion)["stop_reason"] == "vote_confident"  # identical calls vote together


def test_upstream_ignoring_n_still_yields_every_candidate(client: openai.OpenAI) -> None:
    _, completion = ask(client, "one-best")
    assert rvr(completion)["candidates"] == 4


def test_all_candidates_failing_is_a_clean_502(proxy: ProxyProcess) -> None:
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        timeout=30,
        json={"model": "fail-best", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_client_n_returns_the_best_candidates_first(client: openai.OpenAI) -> None:
    _, completion = ask(client, "math-fixed", n=3)
    info = rvr(completion)
    assert len(completion.choices) == 3
    assert completion.choices[0].message.content is not None
    scores = sorted((s for s in info["scores"] if s is not None), reverse=True)
    assert info["scores"][info["selected"]] == scores[0]


def test_streaming_a_strategy_route(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    chunks = list(
        client.chat.completions.create(
            model="math-best",
            messages=[{"role": "user", "content": "6*7? p=1.0"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me think. The answer is 42."
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 4 * 7
    assert chunks[-1].model_extra.get("rvr", {}).get("candidates") == 4


def test_streaming_keeps_the_connection_alive_while_sampling(proxy: ProxyProcess) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/v1/chat/completions",
        timeout=30,
        json={"model": "slow-best", "messages": [{"role": "user", "content": "x"}], "stream": True},
    ) as response:
        body = b"".join(response.iter_raw()).decode()
    assert body.startswith(": keep-alive")
    assert body.rstrip().endswith("data: [DONE]")


def test_audit_requests_sample_every_variant_beyond_the_route_cap(client: openai.OpenAI) -> None:
    _, completion = ask(client, "math-audit", "What is 6*7? p=0.5")
    info = rvr(completion)
    assert info["audit"] is True
    assert info["candidates"] == 8
    assert set(info["candidate_variants"]) == {"original", "step_by_step"}
    assert info["risk"]["prompt"] is not None  # measured, since both variants were sampled


def test_strategy_metrics(proxy: ProxyProcess, client: openai.OpenAI) -> None:
    ask(client, "math-fixed")
    text = httpx.get(f"{proxy.base_url}/metrics").text
    assert 'rvr_stop_total{reason="max_n",route="math-fixed"}' in text
    assert 'rvr_candidates_bucket{le="8.0",route="math-fixed"}' in text
    assert 'rvr_risk_count{component="candidate",route="math-fixed"}' in text
    assert 'rvr_tokens_total{kind="completion",route="math-fixed"}' in text
    assert 'rvr_passthrough_equivalent_tokens_total{kind="completion",route="math-fixed"}' in text


def test_verifier_runs_are_counted_by_outcome(proxy: ProxyProcess, client: openai.OpenAI) -> None:
    ask(client, "math-judge", "What is 6*7? p=0.5")
    text = httpx.get(f"{proxy.base_url}/metrics").text
    assert 'rvr_verifier_runs_total{outcome="ok",route="math-judge",verifier="llm_judge"}' in text


def test_mbr_over_embeddings_from_an_upstream(client: openai.OpenAI, stub: StubServer) -> None:
    before = len(stub.state.bodies("embedder"))
    _, completion = ask(client, "math-mbr-embedding", "What is 6*7? p=0.5")
    info = rvr(completion)
    assert set(info["views"]) == {"mbr"} and all(v is not None for v in info["views"]["mbr"])
    sent = stub.state.bodies("embedder")[before:]
    assert len(sent) == 1 and len(sent[0]["input"]) == 4  # one call, every candidate once
    assert completion.usage.prompt_tokens > 4  # the embedding call's tokens are counted


def test_a_seeded_request_draws_different_samples_reproducibly(client: openai.OpenAI, stub: StubServer) -> None:
    """A client `seed` moves by the samples drawn before: every call of a best-of-N request (each
    parallel single call, each later batch) gets its own, so N candidates are not one sample N
    times, and the same seed asks the same calls again."""
    sent: list[list[int]] = []
    for _ in range(2):
        before = len(stub.state.bodies("one"))
        client.chat.completions.create(model="one-best", messages=[{"role": "user", "content": "6*7?"}], seed=7)
        sent.append(sorted(b["seed"] for b in stub.state.bodies("one")[before:]))
    assert sent[0] == sent[1] and set(sent[0]) == {7, 8, 9, 10}  # `one` answers one choice: four single calls
    before = len(stub.state.bodies("math"))
    client.chat.completions.create(model="math-best", messages=[{"role": "user", "content": "6*7? p=0.3"}], seed=7)
    seeds = [b["seed"] for b in stub.state.bodies("math")[before:]]
    assert len(seeds) > 1 and len(set(seeds)) == len(seeds)  # every batch its own seed
