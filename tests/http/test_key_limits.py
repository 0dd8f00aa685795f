"""A key's token and candidate limits hold under concurrency: admission reserves each request's
estimate before it runs, so parallel requests cannot together overshoot (issue: `tpm: 2000` and
64 parallel requests once admitted all 64, 3.3× the limit; `max_candidates_per_min: 40` and 32
parallel best-of-8 requests once sampled 256 candidates).

A real proxy on loopback in front of the stub upstream, the official openai SDK as the client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import upstream
from tests.proxy_process import ProxyProcess
from tests.stub_upstream import StubServer

KEY = "sk-limits-team-0123456789"
TPM = 2_000
CANDIDATES_PER_MIN = 40
# About 300 words: the stub counts a token per word, the proxy estimates bytes / 3 (it errs high).
PROMPT = " ".join(f"word{i % 97}" for i in range(300))


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    with StubServer(slow_s=1.5) as stub, ProxyProcess(_config(stub), env=ENV) as process:
        yield process


ENV = {"UPSTREAM_KEY": "sk-upstream-limits", "TPM_KEY": KEY + "-tpm", "CPM_KEY": KEY + "-cpm"}


def _config(stub: StubServer) -> dict[str, Any]:
    best_of = {"name": "best_of_n", "max_n": 8, "adaptive": False}
    return {
        "server": {
            "keys": [
                {"key": "os.environ/TPM_KEY", "name": "team-tpm", "tpm": TPM},
                {"key": "os.environ/CPM_KEY", "name": "team-cpm", "max_candidates_per_min": CANDIDATES_PER_MIN},
            ],
        },
        "upstreams": [upstream("slow", stub.api_base, retries=0)],
        "routes": [
            {"model": "slow", "upstream": "slow"},
            {"model": "best-slow", "upstream": "slow", "strategy": best_of},
        ],
    }


def fresh_minute() -> None:
    """Limits count per clock minute: start a burst early in one, so it cannot straddle two."""
    second = time.time() % 60
    if second > 45:
        time.sleep(60.5 - second)


async def burst(proxy: ProxyProcess, key: str, model: str, count: int, **extra: Any) -> list[Any]:
    """`count` requests at once; each result is the response or the error it raised."""
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=key, max_retries=0, timeout=30)
    async with client:
        calls = [
            client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": PROMPT}], **extra
            )
            for _ in range(count)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)


def charged_tokens(proxy: ProxyProcess, name: str) -> float:
    text = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    found = re.search(rf'^rvr_key_tokens_total\{{key_name="{name}"\}} (\S+)$', text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def test_parallel_requests_cannot_overshoot_a_tokens_per_minute_limit(proxy: ProxyProcess) -> None:
    fresh_minute()
    results = asyncio.run(burst(proxy, KEY + "-tpm", "slow", 64, max_tokens=50))
    served = [r.parse() for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) + len(refused) == 64, [r for r in results if isinstance(r, Exception)][:3]
    assert served and refused
    assert all(r.response.json()["error"]["type"] == "tokens" for r in refused)
    spent = sum(answer.usage.total_tokens for answer in served)
    assert charged_tokens(proxy, "team-tpm") == spent
    # Every admitted request held its estimate (≥ what it cost) while it ran: together within
    # the limit. The stub's usage per request is about 335 tokens, so 64 admitted would be ~21,000.
    assert spent <= TPM


def test_parallel_best_of_n_requests_cannot_overshoot_a_candidates_per_minute_limit(proxy: ProxyProcess) -> None:
    fresh_minute()
    results = asyncio.run(burst(proxy, KEY + "-cpm", "best-slow", 32, max_tokens=20))
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) + len(refused) == 32, [r for r in results if isinstance(r, Exception)][:3]
    candidates = sum(int(r.headers["x-rvr-candidates"]) for r in served)
    assert 0 < candidates <= CANDIDATES_PER_MIN  # 8 each: 5 requests, not 32 (256 candidates)
    assert all(r.response.json()["error"]["type"] == "requests" for r in refused)
