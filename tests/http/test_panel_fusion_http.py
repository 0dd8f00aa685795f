"""Panels and fusion over HTTP (issue 23): candidates from several loopback upstreams, a failing
panelist dropped, judges blind to who wrote what, a fuser's answer streamed as it is written,
its failure answered by the selected candidate, and every token charged to its upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import DRIP_S, StubServer

ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
QUESTION = [{"role": "user", "content": "What is 6 times 7?"}]
RIGHT, WRONG = "answer-42", "answer-41"


def fixed(max_n: int, **more: Any) -> dict[str, Any]:
    return {"name": "best_of_n", "max_n": max_n, "adaptive": False, **more}


def panel(*names: str, weights: tuple[float, ...] = ()) -> list[dict[str, Any]]:
    return [{"upstream": name, "weight": weights[i] if weights else 1} for i, name in enumerate(names)]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ProxyProcess, StubServer]]:
    fusion = {"fuser": "drip-answer-42", "top_k": 4, "when": "always"}
    with StubServer() as stub:
        names = [RIGHT, WRONG, "fail", "judge", "drip-answer-42"]
        config = {
            "upstreams": [upstream(name, stub.api_base, retries=0) for name in names],
            "routes": [
                {"model": "panel", "strategy": fixed(8, panel=panel(RIGHT, WRONG, weights=(1, 3)))},
                {"model": "panel-failing", "strategy": fixed(4, panel=panel("fail", RIGHT))},
                {"model": "panel-min2", "strategy": fixed(4, panel=panel("fail", RIGHT), min_panel=2)},
                {"model": "panel-judged", "strategy": fixed(
                    4, panel=panel(RIGHT, WRONG), verifiers=[{"type": "llm_judge", "upstream": "judge"}])},
                {"model": "fused", "strategy": fixed(4, panel=panel(RIGHT, WRONG), selection={"fusion": fusion})},
                {"model": "fused-budget", "strategy": fixed(
                    4, panel=panel(RIGHT, WRONG), selection={"fusion": fusion}, max_tokens_budget=150)},
                {"model": "fused-failing", "strategy": fixed(
                    4, panel=panel(RIGHT, WRONG), selection={"fusion": {**fusion, "fuser": "fail"}})},
            ],
        }
        with ProxyProcess(config, env=ENV) as proxy:
            yield proxy, stub


def client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)


def ask(proxy: ProxyProcess, model: str, **extra: Any) -> dict[str, Any]:
    response = client(proxy).chat.completions.create(model=model, messages=QUESTION, **extra)  # type: ignore[arg-type]
    return response.model_dump()


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in httpx.get(f"{proxy.base_url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


def test_a_panel_splits_candidates_by_weight_and_charges_each_upstream(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, _ = served
    body = ask(proxy, "panel")
    rvr = body["rvr"]
    assert rvr["panel"]["candidates"] == {RIGHT: 2, WRONG: 6}
    assert sorted(rvr["candidate_upstreams"]) == sorted([RIGHT] * 2 + [WRONG] * 6)
    by_upstream = rvr["cost"]["by_upstream"]
    assert set(by_upstream) == {RIGHT, WRONG}
    assert sum(u["total_tokens"] for u in by_upstream.values()) == body["usage"]["total_tokens"] > 0
    assert metric(proxy, "rvr_panel_candidates_total", route="panel", upstream=WRONG) >= 6
    selected = rvr["panel"]["selected_upstream"]
    assert metric(proxy, "rvr_panel_selected_total", route="panel", upstream=selected) >= 1
    lowered = ask(proxy, "panel", extra_body={"rvr": {"max_n": 2}})["rvr"]  # a client lowers the cap, never raises it
    assert sum(lowered["panel"]["candidates"].values()) == 2


def test_a_failing_panelist_is_dropped_and_the_others_answer(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, _ = served
    body = ask(proxy, "panel-failing")
    rvr = body["rvr"]
    assert rvr["panel"]["dropped"] == {"fail": "error"} and rvr["panel"]["candidates"] == {"fail": 0, RIGHT: 4}
    assert body["choices"][0]["message"]["content"] == "The answer is 42."
    assert metric(proxy, "rvr_panel_dropped_total", route="panel-failing", upstream="fail", reason="error") >= 1


def test_min_panel_turns_too_few_panelists_into_an_upstream_error(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, "panel-min2")
    assert raised.value.status_code == 502
    assert "the route needs 2" in raised.value.message


def test_judges_never_see_which_model_wrote_an_answer(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, stub = served
    before = len(stub.state.bodies("judge"))
    rvr = ask(proxy, "panel-judged")["rvr"]
    prompts = [str(b["messages"]) for b in stub.state.bodies("judge")[before:]]
    assert prompts and rvr["panel"]["candidates"] == {RIGHT: 2, WRONG: 2}
    for prompt in prompts:
        assert RIGHT not in prompt and WRONG not in prompt and "upstream" not in prompt


def test_the_fuser_writes_the_answer_from_anonymized_clusters(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, stub = served
    before = len(stub.state.bodies("drip-answer-42"))
    body = ask(proxy, "fused", extra_body={"rvr": {"details": True}})
    rvr = body["rvr"]
    fusion = rvr["fusion"]
    assert fusion["fused"] is True and fusion["answers"] == 2 and sorted(fusion["shown"]) != []
    assert rvr["selected"] == 4 and rvr["candidate_upstreams"][4] == "drip-answer-42"
    assert rvr["selection"]["rule"] == "fusion" and len(rvr["scores"]) == 5
    assert body["choices"][0]["message"]["content"] == "The answer is 42."
    assert "drip-answer-42" in rvr["cost"]["by_upstream"]
    (sent,) = stub.state.bodies("drip-answer-42")[before:]
    prompt = sent["messages"][-1]["content"]
    assert prompt.startswith("What is 6 times 7?") and "Candidate 1:" in prompt and "Candidate 2:" in prompt
    assert RIGHT not in prompt and WRONG not in prompt
    assert metric(proxy, "rvr_fusions_total", route="fused", result="fused") >= 1


def test_a_streamed_fusion_relays_the_fusers_pieces_as_they_arrive(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, _ = served
    stream = client(proxy).chat.completions.create(
        model="fused", messages=QUESTION, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    )
    arrivals: list[tuple[float, str]] = []
    tail: dict[str, Any] = {}
    for chunk in stream:
        data = chunk.model_dump()
        for choice in data["choices"]:
            if choice["delta"].get("content"):
                arrivals.append((time.monotonic(), choice["delta"]["content"]))
        if not data["choices"]:
            tail = data
    assert "".join(piece for _, piece in arrivals) == "The answer is 42."
    assert len(arrivals) == 4  # the fuser's own pieces, not the replay's slices
    # Each piece left when the fuser wrote it: the first came a drip's wait before the last.
    assert arrivals[-1][0] - arrivals[0][0] >= 2 * DRIP_S
    assert tail["rvr"]["fusion"]["fused"] is True and tail["rvr"]["cost"]["by_upstream"]["drip-answer-42"]
    assert tail["usage"]["total_tokens"] == sum(u["total_tokens"] for u in tail["rvr"]["cost"]["by_upstream"].values())


def test_a_failing_fuser_is_answered_by_the_selected_candidate(served: tuple[ProxyProcess, StubServer]) -> None:
    proxy, _ = served
    for streamed in (False, True):
        if streamed:
            chunks = list(client(proxy).chat.completions.create(model="fused-failing", messages=QUESTION, stream=True))  # type: ignore[arg-type]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            rvr = next(c.model_dump()["rvr"] for c in chunks if not c.choices)
        else:
            body = ask(proxy, "fused-failing")
            text, rvr = body["choices"][0]["message"]["content"], body["rvr"]
        assert text in ("The answer is 42.", "The answer is 41.")
        assert rvr["fusion"]["fused"] is False and rvr["fusion"]["error"]
        assert "fuser failed" in rvr["selection"]["fallback_reason"]
    assert metric(proxy, "rvr_fusions_total", route="fused-failing", result="failed") >= 2


def test_the_token_budget_covers_the_fuser(served: tuple[ProxyProcess, StubServer]) -> None:
    """A fuser call the route's budget cannot pay for is never made: the selected answer serves."""
    proxy, stub = served
    before = len(stub.state.bodies("drip-answer-42"))
    for streamed in (False, True):
        if streamed:
            chunks = list(client(proxy).chat.completions.create(
                model="fused-budget", messages=QUESTION, max_tokens=10, stream=True))  # type: ignore[arg-type]
            rvr = next(c.model_dump()["rvr"] for c in chunks if not c.choices)
        else:
            rvr = ask(proxy, "fused-budget", max_tokens=10)["rvr"]
        assert rvr["fusion"]["fused"] is False and "budget" in rvr["fusion"]["error"]
        assert rvr["cost"]["upstream_tokens"] <= 150 and "drip-answer-42" not in rvr["cost"]["by_upstream"]
    assert len(stub.state.bodies("drip-answer-42")) == before
