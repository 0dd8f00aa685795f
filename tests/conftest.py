from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.proxy_process import ProxyProcess  # noqa: E402
from tests.stub_upstream import StubServer  # noqa: E402

API_KEY = "sk-test-proxy-key-123456"
UPSTREAM_KEY = "sk-upstream-secret-abcdef"


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    with StubServer(slow_s=5.0) as server:
        yield server


def upstream(name: str, api_base: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "litellm_params": {"model": f"openai/{name}", "api_base": api_base, "api_key": "os.environ/UPSTREAM_KEY"},
        **extra,
    }


def main_config(api_base: str) -> dict[str, Any]:
    names = ["echo", "math", "one", "reject-n", "tools", "slow", "fail", "cut", "judge", "paraphrase", "json", "embedder"]
    ups = [upstream(n, api_base, retries=0) for n in names]
    ups.append(upstream("timeout", api_base, timeout_s=0.5, retries=0))
    ups.append(upstream("flaky", api_base, retries=2, retry_backoff_s=0.05))
    ups.append(upstream("busy", api_base, max_concurrency=2))
    ups.append({**upstream("fail", api_base, retries=0), "name": "fails-over", "fallback": "echo"})
    routes: list[dict[str, Any]] = [
        {"model": n, "upstream": n} for n in names + ["timeout", "fails-over", "flaky", "busy"]
    ]
    routes.append({"model": "capped", "upstream": "echo", "limits": {"max_n": 2, "max_tokens": 50}})
    return {"upstreams": ups, "routes": routes}


@pytest.fixture(scope="session")
def proxy(stub: StubServer, strategy_routes: list[dict[str, Any]]) -> Iterator[ProxyProcess]:
    config = main_config(stub.api_base)
    config["routes"] += strategy_routes
    with ProxyProcess(config, env={"UPSTREAM_KEY": UPSTREAM_KEY}) as process:
        yield process


@pytest.fixture(scope="session")
def strategy_routes(stub: StubServer) -> list[dict[str, Any]]:
    """Strategy routes over the stub; the strategy tests use them through the same proxy."""
    reward = {"url": stub.api_base.removesuffix("/v1") + "/score", "api": "generic"}
    return [
        {"model": "math-best", "upstream": "math", "strategy": {"name": "best_of_n", "max_n": 16}},
        {"model": "math-fixed", "upstream": "math", "strategy": {"name": "best_of_n", "max_n": 8, "adaptive": False}},
        {
            "model": "math-variants",
            "upstream": "math",
            "strategy": {
                "name": "best_of_n",
                "max_n": 12,
                "variants": ["original", "step_by_step", "reread"],
                "paraphrase_upstream": "paraphrase",
            },
        },
        {
            "model": "math-judge",
            "upstream": "math",
            "strategy": {
                "name": "best_of_n",
                "max_n": 4,
                "adaptive": False,
                "verifiers": [{"type": "llm_judge", "upstream": "judge", "weight": 2}],
            },
        },
        {
            "model": "math-all",
            "upstream": "math",
            "strategy": {
                "name": "best_of_n",
                "max_n": 4,
                "adaptive": False,
                "verifiers": [
                    {"type": "self_consistency"},
                    {"type": "mbr"},
                    {"type": "logprob"},
                    {"type": "reward_model", "endpoint": reward},
                    {"type": "regex", "pattern": "answer is"},
                ],
            },
        },
        {"model": "math-mbr-embedding", "upstream": "math", "strategy": {
            "name": "best_of_n", "max_n": 4, "adaptive": False,
            "verifiers": [{"type": "mbr", "similarity": "embedding", "upstream": "embedder"}]}},
        {"model": "tools-best", "upstream": "tools", "strategy": {"name": "best_of_n", "max_n": 4}},
        {"model": "one-best", "upstream": "one", "strategy": {"name": "best_of_n", "max_n": 4, "adaptive": False}},
        {"model": "fail-best", "upstream": "fail", "strategy": {"name": "best_of_n", "max_n": 4}},
        {"model": "slow-best", "upstream": "slow", "strategy": {"name": "best_of_n", "max_n": 2, "adaptive": False}},
        {
            "model": "json-best",
            "upstream": "json",
            "strategy": {
                "name": "best_of_n",
                "max_n": 6,
                "adaptive": False,
                "verifiers": [{"type": "json_schema"}, {"type": "mbr"}],
            },
        },
        {
            "model": "math-plugin",
            "upstream": "math",
            "strategy": {
                "name": "best_of_n",
                "max_n": 4,
                "adaptive": False,
                "verifiers": [{"type": "plugin", "function": "tests.plugin_verifier:prefers_short"}],
            },
        },
        {
            "model": "math-audit",
            "upstream": "math",
            "strategy": {
                "name": "best_of_n",
                "max_n": 2,
                "variants": ["original", "step_by_step"],
                "audit_rate": 1.0,
                "audit_max_n": 8,
            },
        },
    ]


@pytest.fixture
def client(proxy: ProxyProcess) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
