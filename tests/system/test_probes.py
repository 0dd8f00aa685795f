"""Gold probes end to end: probe sets run in the background, calibration in every strategy
response, the `probe` and `check-config` commands, and the metrics a real Prometheus scrapes.

The stub upstream's `math` model answers 42 with the probability the prompt names (`p=0.5`), else
41, 43, 24 or 7. A plugin verifier that likes every answer and the wrong ones best is the shared
verifier bias the online numbers cannot see; one that knows 42 is a verifier whose numbers should hold up against gold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from proxy.config.settings import ConfigError, build_strategy_of, load_config
from tests.conftest import UPSTREAM_KEY, upstream
from tests.prometheus_server import running_prometheus
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def items(p: float, count: int = 20) -> str:
    lines = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}: what is 6*7? p={p}"}], "answer": "42"}
        for i in range(count)
    ]
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def route(name: str, verifier: str, probes: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": name,
        "upstream": "math",
        "strategy": {
            "name": "best_of_n", "max_n": 4, "adaptive": False, "k_ref": 4,
            "verifiers": [{"type": "plugin", "function": f"tests.plugin_verifier:{verifier}"}],
        },
        "probes": {"every_s": 0.2, "items_per_run": 4, "checker": "numeric", **probes},
    }


def write_config(directory: Path, api_base: str, routes: list[dict[str, Any]], **server: Any) -> dict[str, Any]:
    (directory / "half.jsonl").write_text(items(0.5))
    (directory / "easy.jsonl").write_text(items(0.95))
    config = {"server": server, "upstreams": [upstream("math", api_base, retries=0)], "routes": routes}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Path]]:
    directory = tmp_path_factory.mktemp("probes")
    with StubServer() as stub:
        config = write_config(
            directory, stub.api_base,
            [
                route("biased", "prefers_wrong", {"file": str(directory / "half.jsonl")}),
                # 20 items cannot pin a bias within the default ±0.03: this route accepts ±0.2
                route("honest", "knows_42", {"file": str(directory / "easy.jsonl"), "tolerance": 0.2}),
                route("later", "knows_42", {"file": str(directory / "easy.jsonl"), "every_s": 3600}),
                route("broken", "knows_42", {"file": str(directory / "easy.jsonl"),
                                              "checker": "plugin:tests.plugin_verifier:broken_checker"}),
                route("tight", "knows_42", {"file": str(directory / "easy.jsonl"), "max_tokens_per_hour": 20}),
            ],
        )
        with ProxyProcess(config, workers=2, env=ENV) as proxy:
            yield proxy, directory


def ask(proxy: ProxyProcess, model: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "what is 6*7? p=0.5"}]
    )
    return response.model_dump()["rvr"]  # type: ignore[no-any-return]


def calibration_after(proxy: ProxyProcess, model: str, gold: int, timeout: float = 60.0) -> dict[str, Any]:
    """The route's calibration once it rests on at least `gold` gold records (runs of its items)."""
    deadline = time.monotonic() + timeout
    while True:
        rvr = ask(proxy, model)
        calibration = rvr["risk"]["calibration"]
        if calibration["n_records"] >= gold:
            return rvr
        assert time.monotonic() < deadline, f"{model}: {calibration['n_records']} gold records after {timeout}s"
        time.sleep(0.3)


def test_a_shared_verifier_bias_is_caught_and_the_residual_anchored(probed: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = probed
    rvr = calibration_after(proxy, "biased", 24)
    calibration = rvr["risk"]["calibration"]
    assert calibration["status"] == "uncalibrated"
    # the items cycle: the runs count as records, the intervals count the 20 items
    assert calibration["n_items"] == calibration["n_gold"] <= 20 < calibration["n_records"]
    # Every answer looks good to the verifier, so online little seems left to gain...
    assert rvr["risk"]["residual"] is not None and rvr["risk"]["residual"] < 0.1
    # ...while gold shows wrong answers served where right ones were there to take: the whole
    # gold-anchored interval lies above the online number.
    assert calibration["residual"]["ci90"][0] > rvr["risk"]["residual"]
    assert calibration["verifier_bias"]["ci95"][0] > 0
    assert {"estimate", "ci90", "method", "lambda"} <= set(calibration["residual"])
    assert "uncalibrated" in rvr["summary"] and "gold" in rvr["summary"]


def test_a_verifier_that_is_right_is_calibrated(probed: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = probed
    calibration = calibration_after(proxy, "honest", 24)["risk"]["calibration"]
    assert calibration["status"] == "calibrated" and calibration["tolerance"] == 0.2
    assert calibration["residual"]["ci90"][0] <= 0.05


def test_without_gold_the_numbers_say_so(probed: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = probed
    rvr = ask(proxy, "later")
    calibration = rvr["risk"]["calibration"]
    assert calibration["status"] == "no_gold" and calibration["n_gold"] == 0
    assert all(calibration[c] is None for c in ("residual", "baseline", "candidate", "prompt", "verifier"))
    assert "uncalibrated" in rvr["summary"]


def test_probe_traffic_is_counted_apart_and_errors_never_become_gold(probed: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = probed
    calibration_after(proxy, "biased", 8)
    broken, tight = ask(proxy, "broken"), ask(proxy, "tight")
    with running_prometheus([f"127.0.0.1:{proxy.port}"], rule_files=[ROOT / "deploy" / "prometheus" / "alerts.yml"]) as prom:
        def value(query: str) -> float:
            result = prom.query(query)
            return float(result[0]["value"][1]) if result else 0.0

        prom.wait_for('rvr_probe_errors_total{route="tight",reason="budget"}', lambda r: len(r) > 0)
        prom.wait_for('rvr_probe_errors_total{route="broken",reason="checker"}', lambda r: len(r) > 0)
        assert value('sum(rvr_probe_requests_total{route="biased"})') >= 8
        assert value('sum(rvr_probe_tokens_total{route="biased"})') > 0
        # Only client requests count as requests; the probes ran dozens of items meanwhile.
        assert value('sum(rvr_requests_total{route="biased"})') < value('sum(rvr_probe_requests_total{route="biased"})')
        assert value('sum(rvr_probe_requests_total{route="tight"})') >= 1
        assert value('sum(rvr_probe_tokens_total{route="tight"})') <= 20  # the hour's budget holds
        prom.wait_for('rvr_calibration_status{route="biased",status="uncalibrated"} == 1', lambda r: len(r) > 0)
        assert value('rvr_calibration_status{route="biased",status="calibrated"}') == 0
        assert value('rvr_gold_items{route="biased"}') >= 8
        estimate = value('rvr_calibrated_risk{route="biased",component="residual",bound="estimate"}')
        lower = value('rvr_calibrated_risk{route="biased",component="residual",bound="lower"}')
        assert 0 < lower < estimate
    assert broken["risk"]["calibration"]["n_gold"] == 0  # a checker failure is no 0
    assert tight["risk"]["calibration"]["n_gold"] == 0
    assert "probe_budget_spent" in proxy.log()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**ENV, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


def test_the_probe_command_prints_the_table_and_keeps_gold_in_the_state_dir(tmp_path: Path) -> None:
    with StubServer() as stub:
        write_config(
            tmp_path, stub.api_base,
            [route("biased", "prefers_wrong", {"file": "half.jsonl", "every_s": 0})],  # relative to the config
            state_dir=str(tmp_path / "state"),
        )
        done = run_cli("probe", "--config", "config.yaml", "--route", "biased", "--items", "12",
                       "--out", "gold.jsonl", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "12 items probed, 12 recorded" in done.stdout
        assert "status: uncalibrated" in done.stdout and "residual" in done.stdout
        assert "probing biased [" in done.stderr
        assert len((tmp_path / "gold.jsonl").read_text().splitlines()) == 12
        # A serving proxy with the same state_dir starts from the run's records.
        config = yaml.safe_load((tmp_path / "config.yaml").read_text())
        config["routes"][0]["probes"]["file"] = str(tmp_path / "half.jsonl")
        with ProxyProcess(config, env=ENV) as proxy:
            rvr = ask(proxy, "biased")
        assert rvr["risk"]["calibration"]["n_gold"] == 12
        missing = run_cli("probe", "--config", "config.yaml", "--route", "nope", cwd=tmp_path)
        assert missing.returncode == 2 and "no route 'nope'" in missing.stderr


def test_a_bad_probe_file_fails_check_config_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", UPSTREAM_KEY)
    (tmp_path / "probes.jsonl").write_text(items(0.5, 2) + '{"id": "q9", "prompt": "hi"}\n')
    config = {
        "upstreams": [upstream("math", "http://127.0.0.1:9/v1")],
        "routes": [route("r", "knows_42", {"file": "probes.jsonl"})],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("check-config", "config.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert f"routes.0.probes.file: {tmp_path / 'probes.jsonl'}:3: \"answer\" is required" in done.stderr
    for line, reason in [
        ("not json", "not valid JSON"),
        ('{"id": "q0", "prompt": "x", "answer": 1}', "duplicate id 'q0'"),
        ('{"id": "z", "messages": [], "answer": 1}', '"messages" must be a non-empty list'),
        ('{"id": "z", "prompt": "x", "messages": [{"role": "user", "content": "x"}], "answer": 1}', 'give exactly one'),
        ('{"id": "z", "prompt": "x", "answer": 1, "extra": 2}', "unknown field(s) ['extra']"),
    ]:
        (tmp_path / "probes.jsonl").write_text(items(0.5, 2) + line + "\n")
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path / "config.yaml")
        assert f"probes.jsonl:3: {reason}" in str(caught.value)
    config["routes"][0]["strategy"] = {"name": "passthrough"}
    (tmp_path / "probes.jsonl").write_text(items(0.5, 2))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="routes.0.probes: gold probes calibrate risk numbers"):
        build_strategy_of(load_config(tmp_path / "config.yaml").routes[0], "routes.0")


def test_metrics_endpoint_lists_calibration_for_every_reporting_route(probed: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = probed
    ask(proxy, "later")
    text = httpx.get(f"{proxy.base_url}/metrics").text
    assert 'rvr_calibration_status{route="later",status="no_gold"} 1.0' in text
