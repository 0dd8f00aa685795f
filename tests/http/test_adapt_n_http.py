"""`strategy.adapt_n` over HTTP (method §4.8): a stub route whose gold shows no gain serves one
sample and says why, in `rvr.stop_reason`, `rvr.cost` and the metrics.

The stub's `math` model answers 42 with the probability the prompt names; at p=1.0 every n is
always right, so no n > 1 beats one sample. The gold comes from the route's own background probes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
MIN_ITEMS = 4


@pytest.fixture(scope="module")
def adapting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    directory = tmp_path_factory.mktemp("adapt")
    items = directory / "sure.jsonl"
    items.write_text("".join(
        json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}: what is 6*7? p=1.0"}],
                    "answer": "42"}) + "\n"
        for i in range(8)
    ))
    best = {"name": "best_of_n", "max_n": 4, "k_ref": 4}
    with StubServer() as stub:
        config = {
            "upstreams": [upstream("math", stub.api_base, retries=0)],
            "routes": [
                {"model": "adapting", "upstream": "math",
                 "strategy": {**best, "adapt_n": {"min_gain": 0.01, "min_items": MIN_ITEMS}},
                 "probes": {"file": str(items), "every_s": 0.1, "items_per_run": 4, "checker": "numeric"}},
                {"model": "fixed", "upstream": "math", "strategy": best},
            ],
        }
        with ProxyProcess(config, env=ENV) as proxy:
            yield proxy


def ask(proxy: ProxyProcess, model: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "what is 6*7? p=1.0"}])
    return response.model_dump()["rvr"]  # type: ignore[no-any-return]


def metric_lines(proxy: ProxyProcess, name: str) -> list[str]:
    return [line for line in httpx.get(f"{proxy.base_url}/metrics").text.splitlines() if line.startswith(name)]


def test_a_route_without_measured_gain_serves_one_sample_and_says_so(adapting: ProxyProcess) -> None:
    deadline = time.monotonic() + 60
    while True:
        rvr = ask(adapting, "adapting")
        if rvr["cost"]["gain"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rvr["candidates"] == 1 and rvr["stop_reason"] == "no_measured_gain"
    cost = rvr["cost"]
    assert cost["gain"]["n"] == 1 and cost["gain"]["adapted"] and cost["gain"]["items"] >= MIN_ITEMS
    assert cost["gain"]["estimate"] == 0 and cost["multiple"] == pytest.approx(1.0)
    assert "stopped: no measured gain" in rvr["summary"]

    fixed = ask(adapting, "fixed")  # the same questions on a route without adapt_n: as configured
    assert fixed["candidates"] == 4 and fixed["cost"]["multiple"] > 2

    stops = " ".join(metric_lines(adapting, "rvr_stop_total"))
    assert 'rvr_stop_total{reason="no_measured_gain",route="adapting"}' in stops
    gains = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metric_lines(adapting, "rvr_route_gain")}
    assert gains['rvr_route_gain{bound="estimate",route="adapting"}'] == 0.0
    assert 'rvr_tokens_per_point{route="adapting"} +Inf' in metric_lines(adapting, "rvr_tokens_per_point")

