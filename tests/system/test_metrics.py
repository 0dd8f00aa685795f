"""Metrics as an operator meets them: a real Prometheus scraping real multi-worker proxies."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from tests.conftest import UPSTREAM_KEY, main_config
from tests.prometheus_server import running_prometheus
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

HELLO = [{"role": "user", "content": "hi"}]


def counter(text: str, route: str) -> float:
    pattern = rf'^rvr_requests_total{{route="{re.escape(route)}",status="success",strategy="[a-z_]+"}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def send(proxy: ProxyProcess, model: str, count: int) -> None:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.chat.completions.create(model=model, messages=HELLO), range(count)))


def test_counters_sum_across_workers_and_instances_keep_their_own_files(stub: StubServer) -> None:
    config = main_config(stub.api_base)
    config["routes"].append(
        {"model": "math-fixed", "upstream": "math", "strategy": {"name": "best_of_n", "max_n": 4, "adaptive": False}}
    )
    env = {"UPSTREAM_KEY": UPSTREAM_KEY}
    with ProxyProcess(config, workers=2, env=env) as a, ProxyProcess(config, workers=2, env=env) as b:
        send(a, "echo", 30)
        send(b, "echo", 12)
        send(a, "math-fixed", 5)
        # Each scrape lands on one worker; multiprocess mode must still show the whole instance.
        for _ in range(6):
            assert counter(httpx.get(f"{a.base_url}/metrics").text, "echo") == 30
            assert counter(httpx.get(f"{b.base_url}/metrics").text, "echo") == 12
        with running_prometheus(
            [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], rule_files=[ROOT / "deploy" / "prometheus" / "alerts.yml"]
        ) as prom:
            prom.wait_for('sum by (instance) (rvr_requests_total{route="echo"})', lambda r: len(r) == 2)
            result = prom.query('sum by (instance) (rvr_requests_total{route="echo"})')
            by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
            assert by_instance == {f"127.0.0.1:{a.port}": 30.0, f"127.0.0.1:{b.port}": 12.0}
            candidates = prom.query(
                'sum(rvr_candidates_sum{route="math-fixed"}) / sum(rvr_candidates_count{route="math-fixed"})'
            )
            assert float(candidates[0]["value"][1]) == 4.0
            stops = prom.query('sum(rvr_stop_total{route="math-fixed",reason="max_n"})')
            assert float(stops[0]["value"][1]) == 5.0
            risk = prom.query('sum(rvr_risk_count{route="math-fixed",component="candidate"})')
            assert float(risk[0]["value"][1]) == 5.0
        directory = _metrics_dir(a)
    assert directory is not None and not Path(directory).exists()  # cleaned up with its instance


def _metrics_dir(proxy: ProxyProcess) -> str | None:
    for line in proxy.log().splitlines():
        if '"multiprocess_metrics_dir"' in line:
            return str(json.loads(line)["path"])
    return None


def test_single_worker_metrics_have_no_request_content_in_labels(proxy: ProxyProcess) -> None:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "secret-label-probe"}])
    try:
        client.chat.completions.create(model="made-up-model-probe", messages=HELLO)
    except openai.NotFoundError:
        pass
    text = httpx.get(f"{proxy.base_url}/metrics").text
    assert "secret-label-probe" not in text and "made-up-model-probe" not in text
