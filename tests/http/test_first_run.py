"""What a new user meets first: a fast config check, and the documented per-request behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import upstream
from tests.proxy_process import ROOT, ProxyProcess
from tests.stub_upstream import StubServer

CONFIG = {
    "upstreams": [{"name": "up", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}}],
    "routes": [{"model": "best", "upstream": "up", "strategy": {"name": "best_of_n"}}],
}


def test_check_config_does_not_import_litellm(tmp_path: Path) -> None:
    # litellm's import alone made check-config take 8-13 s; it needs none of it
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    probe = (
        "import sys\n"
        "from proxy.cli import main\n"
        f"code = main(['check-config', {str(file)!r}])\n"
        "assert 'litellm' not in sys.modules, 'check-config imported litellm'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "route best: at most" in result.stdout


def test_rvr_options_on_a_passthrough_route_are_ignored_openly(client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], extra_body={"rvr": {"max_n": 2}}
    )
    assert raw.http_response.status_code == 200
    assert "rvr options do not apply to passthrough routes" in raw.headers["x-rvr-ignored"]
    assert "rvr" not in raw.parse().model_extra  # nothing was chosen, so there is nothing to report
    plain = client.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert "x-rvr-ignored" not in plain.headers


@pytest.fixture(scope="module")
def failing_judge(stub: StubServer) -> Iterator[ProxyProcess]:
    config = {
        "upstreams": [upstream("math", stub.api_base, retries=0), upstream("fail", stub.api_base, retries=0)],
        "routes": [{"model": "judged", "upstream": "math", "strategy": {
            "name": "best_of_n", "max_n": 4, "adaptive": False,
            "verifiers": [{"type": "self_consistency"}, {"type": "llm_judge", "upstream": "fail"}]}}],
    }
    with ProxyProcess(config, env={"UPSTREAM_KEY": "sk-x-000000"}) as process:
        yield process


def test_judge_failures_reach_the_client_and_the_log(failing_judge: ProxyProcess) -> None:
    response = httpx.post(
        f"{failing_judge.base_url}/v1/chat/completions",
        json={"model": "judged", "messages": [{"role": "user", "content": "What is 6 x 7?"}]},
        timeout=60,
    )
    assert response.status_code == 200
    rvr = response.json()["rvr"]
    errors = rvr["verifier_errors"]["llm_judge"]
    assert errors["missing"] > 0 and errors["cause"] == "upstream 'fail' failed with HTTP 500"
    assert "verifier call(s) failed or unparsed" in rvr["summary"]
    assert "self_consistency" not in rvr["verifier_errors"]
    time.sleep(0.3)
    lines = [json.loads(line) for line in failing_judge.log().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("route") == "judged"]
    assert logged[-1]["verifier_errors"] == {"llm_judge": "upstream 'fail' failed with HTTP 500"}


def test_the_summary_reads_as_a_sentence(client: Any) -> None:
    reply = client.chat.completions.create(
        model="math-fixed", messages=[{"role": "user", "content": "What is 6 x 7?"}]
    )
    summary = reply.model_extra["rvr"]["summary"]
    assert summary.startswith("8 candidates from 1 prompt variant(s); ")
    assert "stopped: max n" in summary and "not checked against gold answers" in summary
