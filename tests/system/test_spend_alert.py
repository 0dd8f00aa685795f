"""What best-of-N buys, as an operator meets it (method §4.8): a real Prometheus with the shipped
rules scrapes a proxy whose routes' gold shows no gain. Fixed best-of-4, ~3× a plain call, meets
`RvrSpendWithoutGain`'s condition (pending: its `for` is an hour); the one with `adapt_n` serves one
sample and does not. The stub's `math` model at p=1.0 is always right, so no n beats one sample.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import UPSTREAM_KEY, upstream
from tests.prometheus_server import running_prometheus
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def alert_expr(name: str) -> str:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    return next(r["expr"] for r in rules if r.get("alert") == name)


@pytest.fixture(scope="module")
def gold_without_gain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    items = tmp_path_factory.mktemp("spend") / "sure.jsonl"
    items.write_text("".join(
        json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}: 6*7? p=1.0"}],
                    "answer": "42"}) + "\n"
        for i in range(32)  # a route without adapt_n reports its gain from 30 items on
    ))
    probes = {"file": str(items), "every_s": 0.05, "items_per_run": 8, "checker": "numeric"}
    best = {"name": "best_of_n", "max_n": 4, "k_ref": 4}
    with StubServer() as stub:
        config = {
            "upstreams": [upstream("math", stub.api_base, retries=0)],
            "routes": [
                {"model": "spender", "upstream": "math", "strategy": {**best, "adaptive": False}, "probes": probes},
                {"model": "saver", "upstream": "math", "strategy": {**best, "adapt_n": {"min_items": 4}},
                 "probes": probes},
            ],
        }
        with ProxyProcess(config, env=ENV) as proxy:
            yield proxy


def ask(proxy: ProxyProcess, model: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "6*7? p=1.0"}])
    return response.model_dump()["rvr"]  # type: ignore[no-any-return]


def test_spending_without_measured_gain_meets_the_alert_and_adapt_n_does_not(
    gold_without_gain: ProxyProcess,
) -> None:
    proxy = gold_without_gain
    deadline = time.monotonic() + 120
    while not all(ask(proxy, m)["cost"]["gain"] is not None for m in ("spender", "saver")):
        assert time.monotonic() < deadline, "the probes measured no gain curve"
        time.sleep(0.3)
    stop = threading.Event()

    def traffic() -> None:  # rate() needs requests across scrapes
        while not stop.is_set():
            for model in ("spender", "saver"):
                ask(proxy, model)
            time.sleep(0.2)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        with running_prometheus([f"127.0.0.1:{proxy.port}"], rule_files=[ALERTS]) as prom:
            firing = prom.wait_for(alert_expr("RvrSpendWithoutGain"), lambda r: len(r) > 0, timeout=45)
            assert {r["metric"]["route"] for r in firing} == {"spender"}
            spent = ask(proxy, "spender")["cost"]["multiple"]  # best-of-4 in one call with n=4: ~3x
            assert float(firing[0]["value"][1]) == pytest.approx(spent, rel=0.15)
            pending = prom.wait_for('ALERTS{alertname="RvrSpendWithoutGain"}', lambda r: len(r) > 0, timeout=30)
            assert {(r["metric"]["route"], r["metric"]["alertstate"]) for r in pending} == {("spender", "pending")}
            gain = prom.query('rvr_route_gain{bound="estimate"}')
            assert {r["metric"]["route"]: float(r["value"][1]) for r in gain} == {"spender": 0.0, "saver": 0.0}
    finally:
        stop.set()
        sender.join()
